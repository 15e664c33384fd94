"""The DCGAN generator (pfo.models.dcgan): the tutorial's layout and state-dict keys, block-by-block synthesis that
reproduces the full forward, the prior view over it, and the pretrained DigiFace prior against the package's own
forward."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import SHARED
from torch import nn

from pfo.models.dcgan import DCGANGenerator, dcgan_from_state_dict, is_dcgan_checkpoint, load_dcgan
from pfo.models.prior import DCGANPrior, as_prior

RES = 16
DIGIFACE = SHARED / "weights" / "digiface_dcgan64_weights.tar"


def tiny_dcgan(seed: int = 3, resolution: int = RES) -> DCGANGenerator:
    """A small DCGAN (nz 8, ngf 8; at 16 px the blocks b4, b8, b16) whose images have contrast (He-scaled
    transposed convolutions; the default initialisation renders nearly flat grey) and whose BatchNorm layers hold
    statistics and affine parameters that are not the identity, so that eval-mode BatchNorm matters."""
    torch.manual_seed(seed)
    G = DCGANGenerator(nz=8, ngf=8, nc=3, resolution=resolution)
    for m in G.modules():
        if isinstance(m, nn.ConvTranspose2d):
            taps = m.in_channels * (1 if m.stride[0] == 1 else 4)  # inputs reaching one output pixel
            m.weight.data.normal_(0, math.sqrt(2 / taps))
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    return G.eval()


def tutorial_generator(nz: int, ngf: int, nc: int) -> nn.Sequential:
    """The PyTorch DCGAN tutorial's 64-px generator body, written out layer by layer as the tutorial has it (an
    independent reference for the layout; ``main`` of its Generator)."""
    return nn.Sequential(
        nn.ConvTranspose2d(nz, ngf * 8, 4, 1, 0, bias=False),
        nn.BatchNorm2d(ngf * 8),
        nn.ReLU(True),
        nn.ConvTranspose2d(ngf * 8, ngf * 4, 4, 2, 1, bias=False),
        nn.BatchNorm2d(ngf * 4),
        nn.ReLU(True),
        nn.ConvTranspose2d(ngf * 4, ngf * 2, 4, 2, 1, bias=False),
        nn.BatchNorm2d(ngf * 2),
        nn.ReLU(True),
        nn.ConvTranspose2d(ngf * 2, ngf, 4, 2, 1, bias=False),
        nn.BatchNorm2d(ngf),
        nn.ReLU(True),
        nn.ConvTranspose2d(ngf, nc, 4, 2, 1, bias=False),
        nn.Tanh(),
    )


def test_the_tutorial_layout_loads_unchanged_and_renders_the_same():
    torch.manual_seed(0)
    reference = tutorial_generator(nz=10, ngf=4, nc=3)
    for m in reference.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 2.0)
    reference.eval()
    state = {f"main.{k}": v for k, v in reference.state_dict().items()}
    G = DCGANGenerator(nz=10, ngf=4, nc=3, resolution=64)
    assert set(G.state_dict()) == set(state)
    G.load_state_dict(state)  # strict
    G.eval()
    z = torch.randn(3, 10)
    with torch.no_grad():
        assert torch.equal(G(z), reference(z[:, :, None, None]))
        assert torch.equal(G(z[:, :, None, None]), G(z))
    # The architecture read back from the weights alone.
    rebuilt = dcgan_from_state_dict(state)
    assert rebuilt.config == {"nz": 10, "ngf": 4, "nc": 3, "resolution": 64}
    assert is_dcgan_checkpoint({"netG_state_dict": state}) and is_dcgan_checkpoint(state)
    assert not is_dcgan_checkpoint({"g_ema": {}})
    with torch.no_grad():
        assert torch.equal(load_dcgan({"netG_state_dict": state})(z), G(z))


@pytest.mark.parametrize("resolution", [8, 16, 64])
def test_synthesis_from_every_blocks_state_equals_the_full_forward(resolution):
    G = tiny_dcgan(resolution=resolution)
    assert G.block_resolutions == [2**i for i in range(2, int(math.log2(resolution)) + 1)]
    z = torch.randn(3, 8)
    with torch.no_grad():
        image = G(z)
        assert image.shape == (3, 3, resolution, resolution)
        assert image.abs().max() <= 1 and image.std() > 0.1  # Tanh output with contrast
        state = G.state_at(0, z)
        for k in range(G.num_blocks + 1):
            assert torch.equal(G.state_at(k, z), state)
            assert list(state.shape[1:]) == (G.state_shape(k) if k < G.num_blocks else [3, resolution, resolution])
            assert torch.equal(G.synthesize_from(k, state), image), k
            if k < G.num_blocks:
                state = G.run_blocks(k, k + 1, state)  # one block at a time reaches the same states
        assert torch.equal(state, image)


def test_a_state_of_the_wrong_shape_names_the_block():
    G = tiny_dcgan()
    with pytest.raises(AssertionError, match=r"input of b8 has shape \[2, 9, 4, 4\], expected \[\*, 16, 4, 4\]"):
        G.synthesize_from(1, torch.zeros(2, 9, 4, 4))
    with pytest.raises(AssertionError, match="z has shape"):
        G(torch.zeros(2, 7))
    with pytest.raises(IndexError, match="block range"):
        G.run_blocks(2, 4, torch.zeros(1, 8, 8, 8))
    with pytest.raises(ValueError, match="power of two"):
        DCGANGenerator(resolution=48)


def test_a_foreign_state_dict_is_refused_with_its_reason():
    G = tiny_dcgan()
    state = G.state_dict()
    del state["main.1.running_var"]
    with pytest.raises(ValueError, match="does not fit the tutorial DCGAN generator layout"):
        dcgan_from_state_dict(state)
    with pytest.raises(ValueError, match="not a DCGAN generator"):
        dcgan_from_state_dict({"main.0.weight": torch.zeros(8, 16, 4, 4)})


def test_the_prior_view_steps_the_dcgan_block_by_block():
    G = tiny_dcgan()
    prior = as_prior(G)
    assert isinstance(prior, DCGANPrior)
    assert prior.state_names == ("x",) and prior.wplus_shape is None and prior.latent_name == "z"
    assert (prior.num_blocks, prior.block_resolutions, prior.resolution, prior.img_channels) == (3, [4, 8, 16], 16, 3)
    assert prior.z_dim == 8 and prior.c_dim == 0 and prior.value_range == (-1.0, 1.0)
    z = prior.sample_z(3, torch.Generator().manual_seed(0))
    assert torch.equal(z, torch.randn(3, 8, generator=torch.Generator().manual_seed(0)))
    assert torch.equal(prior.map(z, truncation=0.5), 0.5 * z)  # truncation: towards the mean of z, 0
    assert prior.map(z) is z
    expanded = prior.expand(z)
    assert torch.equal(expanded, z) and expanded.data_ptr() != z.data_ptr()  # a new tensor, for a new leaf
    with torch.no_grad():
        image = prior.render(z)
        for k in range(1, prior.num_blocks):
            state = prior.state_at(k, z)
            assert len(state) == 1
            assert prior.latent_split(k) is None  # no later block reads the latent
            assert torch.equal(prior.synthesize_from(k, state, z), image)
            if k + 1 < prior.num_blocks:
                assert torch.equal(prior.run_blocks(k, k + 1, state, z)[0], prior.state_at(k + 1, z)[0])
    with pytest.raises(ValueError, match="unconditional"):
        prior.map(z, c=torch.zeros(3, 2))


def test_the_digiface_prior_reproduces_the_packages_own_forward():
    """Reference numbers: the Generator class of gan_face_generate 1.1.1 (its models.py, read from the wheel that
    ``pip download gan-face-generate==1.1.1 --no-deps`` fetches and run outside this repository), with the same
    weights file, on z = torch.randn(4, 100, generator=torch.Generator().manual_seed(0)), in eval mode. pfo's
    generator matched it bitwise there."""
    if not DIGIFACE.is_file():
        pytest.skip(f"no DigiFace weights at {DIGIFACE}: the shared folder is absent")
    G = load_dcgan(torch.load(DIGIFACE, map_location="cpu", weights_only=True), str(DIGIFACE))
    assert G.config == {"nz": 100, "ngf": 64, "nc": 3, "resolution": 64}
    assert not G.training
    z = torch.randn(4, 100, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        image = G(z)
    pixels = {
        (0, 0, 0, 0): -0.4899461269378662,
        (0, 1, 32, 32): -0.24740734696388245,
        (1, 2, 10, 50): -0.783765971660614,
        (2, 0, 63, 63): -0.252151757478714,
        (3, 1, 20, 5): -0.1411677598953247,
    }
    for where, value in pixels.items():
        assert float(image[where]) == pytest.approx(value, abs=1e-5), where
    means = [-0.5985766649246216, -0.44154632091522217, -0.3216446042060852, 0.027504781261086464]
    stds = [0.24504725635051727, 0.31868547201156616, 0.2899707555770874, 0.37608569860458374]
    torch.testing.assert_close(image.mean((1, 2, 3)), torch.tensor(means), rtol=0, atol=1e-5)
    torch.testing.assert_close(image.std((1, 2, 3)), torch.tensor(stds), rtol=0, atol=1e-5)
