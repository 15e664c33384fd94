"""Tests of the pure-PyTorch StyleGAN2 (tiny configurations, CPU, a few seconds in all)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pfo.models.stylegan2 import BlockState, Discriminator, Generator, MinibatchStdLayer
from pfo.models.stylegan2_ops import (
    MODCONV_IMPLS,
    downsample2d,
    modulated_conv2d,
    resolve_modconv,
    setup_filter,
    upfirdn2d,
    upsample2d,
)

TINY = dict(z_dim=16, w_dim=16, resolution=16, channel_base=64, channel_max=16, n_mlp=2)


def tiny_generator(seed: int = 0, **overrides) -> Generator:
    """A tiny generator with non-zero noise strengths and biases, so noise and bias paths are exercised."""
    torch.manual_seed(seed)
    G = Generator(**{**TINY, **overrides}).eval()
    with torch.no_grad():
        for name, p in G.named_parameters():
            if name.endswith("noise_strength"):
                p.fill_(0.5)
            elif name.endswith(".bias") and "affine" not in name:
                p.normal_(0, 0.1)
        G.mapping.w_avg.normal_()
    return G


def naive_upfirdn2d(x, f, up=1, down=1, pad=(0, 0, 0, 0), gain=1.0):
    """Reference: explicit zero insertion, pad, true convolution with the filter, subsample."""
    n, c, h, w = x.shape
    if up > 1:
        z = x.new_zeros(n, c, h * up, w * up)
        z[:, :, ::up, ::up] = x
        x = z
    x = F.pad(x, list(pad))
    k = (f * gain).flip([0, 1]).to(x.dtype)[None, None].repeat(c, 1, 1, 1)
    return F.conv2d(x, k, groups=c)[:, :, ::down, ::down]


def naive_modconv(x, weight, styles, up, demodulate):
    """Reference: one sample at a time with explicitly modulated weights (NVlabs semantics)."""
    f = setup_filter([1, 3, 3, 1])
    outs = []
    for i in range(x.shape[0]):
        w = weight * styles[i].reshape(1, -1, 1, 1)
        if demodulate:
            w = w / (w.square().sum(dim=[1, 2, 3], keepdim=True) + 1e-8).sqrt()
        xi = x[i : i + 1]
        if up == 2:  # upsampling layers convolve (flipped kernel) the FIR-upsampled input, filter tails kept
            outs.append(F.conv2d(naive_upfirdn2d(xi, f, up=2, pad=(3, 2, 3, 2), gain=4), w.flip([2, 3])))
        else:
            outs.append(F.conv2d(xi, w, padding=1))
    return torch.cat(outs)


# ----------------------------------------------------------------------------------------------------------
# Ops.


@pytest.mark.parametrize(
    "up,down,pad",
    [
        (2, 1, (2, 1, 2, 1)),
        (1, 2, (1, 1, 1, 1)),
        (2, 1, (0, 3, 1, -1)),
        (1, 1, (2, -1, 0, 1)),
        (3, 1, (1, 2, 2, 2)),
    ],
)
def test_upfirdn2d_matches_naive_reference(up, down, pad):
    x = torch.randn(2, 3, 5, 6, dtype=torch.float64)
    f = setup_filter(torch.rand(4, 3))  # asymmetric: catches flips and offsets
    out = upfirdn2d(x, f, up=up, down=down, padding=pad, gain=up * up)
    torch.testing.assert_close(out, naive_upfirdn2d(x, f, up, down, pad, up * up), rtol=0, atol=1e-12)


def test_resampling_shapes_and_dc_gain():
    f = setup_filter([1, 3, 3, 1])
    x = torch.ones(1, 2, 8, 8)
    up, down = upsample2d(x, f), downsample2d(x, f)
    assert up.shape == (1, 2, 16, 16) and down.shape == (1, 2, 4, 4)
    torch.testing.assert_close(up[..., 2:-2, 2:-2], torch.ones_like(up[..., 2:-2, 2:-2]))  # gain preserves DC
    torch.testing.assert_close(down[..., 1:-1, 1:-1], torch.ones_like(down[..., 1:-1, 1:-1]))


@pytest.mark.parametrize("up", [1, 2])
@pytest.mark.parametrize("demodulate", [True, False])
def test_modconv_formulations_agree(up, demodulate):
    torch.manual_seed(0)
    x = torch.randn(3, 4, 5, 5, dtype=torch.float64)
    weight = torch.randn(6, 4, 3, 3, dtype=torch.float64)
    styles = torch.randn(3, 4, dtype=torch.float64)  # a different style per sample
    f = setup_filter([1, 3, 3, 1])
    ref = naive_modconv(x, weight, styles, up, demodulate)
    for impl in MODCONV_IMPLS:
        kwargs = dict(padding=1, resample_filter=f, demodulate=demodulate, flip_weight=up == 1, impl=impl)
        out = modulated_conv2d(x, weight, styles, up=up, **kwargs)
        assert out.shape == (3, 6, 5 * up, 5 * up)
        torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)


def test_generator_formulations_agree():
    G = tiny_generator(modconv="grouped").double()
    G2 = Generator(**{**G.config, "modconv": "scaled"}).double().eval()
    G2.load_state_dict(G.state_dict())
    ws = torch.randn(2, G.num_ws, TINY["w_dim"], dtype=torch.float64)
    torch.testing.assert_close(G.synthesis(ws), G2.synthesis(ws), rtol=1e-12, atol=1e-12)


# ----------------------------------------------------------------------------------------------------------
# Generator: block-level access.


@pytest.mark.parametrize("modconv", MODCONV_IMPLS)
def test_synthesize_from_every_block_is_bitwise_full_synthesis(modconv):
    G = tiny_generator(modconv=modconv)
    ws = torch.randn(2, G.num_ws, TINY["w_dim"])  # W+: distinct style per layer
    full = G.synthesis(ws)
    assert G.num_blocks == len(G.blocks) == 3
    for k in range(G.num_blocks + 1):
        state = G.state_at(k, ws)
        assert isinstance(state, BlockState)
        assert torch.equal(G.synthesize_from(k, state, ws), full), f"block {k}"
    assert G.state_at(0, ws) == BlockState(None, None)
    assert torch.equal(G.state_at(G.num_blocks, ws).img, full)


def test_state_shapes_and_ws_slices():
    G = tiny_generator()
    ws = torch.randn(2, G.num_ws, TINY["w_dim"])
    assert G.block_resolutions == [4, 8, 16] and G.num_ws == 6
    assert [G.ws_slice(k) for k in range(3)] == [slice(0, 2), slice(1, 4), slice(3, 6)]
    for k, res in enumerate(G.block_resolutions, start=1):
        x, img = G.state_at(k, ws)
        assert x.shape == (2, min(64 // res, 16), res, res) and img.shape == (2, 3, res, res)


def test_later_styles_only_affect_later_blocks():
    G = tiny_generator()
    ws = torch.randn(1, G.num_ws, TINY["w_dim"])
    ws2 = ws.clone()
    ws2[:, G.ws_slice(2).start + 1 :] += 1.0  # styles read only by block 2
    assert torch.equal(G.state_at(2, ws).x, G.state_at(2, ws2).x)
    assert not torch.equal(G.synthesis(ws), G.synthesis(ws2))


def test_gradients_reach_state_and_styles():
    G = tiny_generator().requires_grad_(False)
    ws = torch.randn(2, G.num_ws, TINY["w_dim"])
    x, img = G.state_at(1, ws)
    x, img = x.clone().requires_grad_(True), img.clone().requires_grad_(True)
    ws = ws.clone().requires_grad_(True)
    G.synthesize_from(1, BlockState(x, img), ws).square().sum().backward()
    assert x.grad.abs().sum() > 0 and img.grad.abs().sum() > 0
    assert ws.grad[:, G.ws_slice(1).start :].abs().sum() > 0
    assert ws.grad[:, 0].abs().sum() == 0  # style of b4's conv1 is upstream of the state


def test_w_equals_repeated_wplus():
    G = tiny_generator()
    w = torch.randn(2, TINY["w_dim"])
    assert torch.equal(G.synthesis(w), G.synthesis(w.unsqueeze(1).repeat(1, G.num_ws, 1)))


# ----------------------------------------------------------------------------------------------------------
# Generator: mapping and truncation.


def test_truncation():
    G = tiny_generator()
    z = torch.randn(3, TINY["z_dim"])
    w = G.mapping(z)
    assert w.shape == (3, TINY["w_dim"])
    assert torch.equal(G.mapping(z, truncation_psi=0.0), G.mapping.w_avg.expand(3, -1))
    torch.testing.assert_close(G.mapping(z, truncation_psi=0.5) - G.mapping.w_avg, (w - G.mapping.w_avg) / 2)
    wc = G.mapping(z, truncation_psi=0.0, truncation_cutoff=2)
    assert wc.shape == (3, G.num_ws, TINY["w_dim"])
    assert torch.equal(wc[:, :2], G.mapping.w_avg.expand(3, 2, -1))
    assert torch.equal(wc[:, 2:], w.unsqueeze(1).expand(-1, G.num_ws - 2, -1))


def test_w_avg_tracked_only_in_training():
    G = tiny_generator()
    z = torch.randn(4, TINY["z_dim"])
    before = G.mapping.w_avg.clone()
    G.mapping(z)
    assert torch.equal(G.mapping.w_avg, before)
    G.train()
    w = G.mapping(z)
    torch.testing.assert_close(G.mapping.w_avg, 0.995 * before + 0.005 * w.detach().mean(0))


# ----------------------------------------------------------------------------------------------------------
# Generator: outputs, noise, config.


@pytest.mark.parametrize("resolution", [8, 16, 32])
def test_output_shapes(resolution):
    G = tiny_generator(resolution=resolution, channel_base=128)
    img = G(torch.randn(2, TINY["z_dim"]))
    assert img.shape == (2, 3, resolution, resolution)
    assert G.num_ws == 2 * resolution.bit_length() - 4  # 2 * log2(R) - 2


def test_per_sample_independence():
    G = tiny_generator()
    ws = torch.randn(3, G.num_ws, TINY["w_dim"])
    batch = G.synthesis(ws, noise_mode="const")
    for i in range(3):
        torch.testing.assert_close(batch[i : i + 1], G.synthesis(ws[i : i + 1]), rtol=1e-5, atol=1e-5)


def test_noise_modes():
    G = tiny_generator()
    ws = torch.randn(2, TINY["w_dim"])
    assert torch.equal(G.synthesis(ws, noise_mode="const"), G.synthesis(ws, noise_mode="const"))
    assert not torch.equal(G.synthesis(ws, noise_mode="random"), G.synthesis(ws, noise_mode="random"))
    assert not torch.equal(G.synthesis(ws, noise_mode="none"), G.synthesis(ws, noise_mode="const"))
    with pytest.raises(ValueError, match="noise_mode"):
        G.synthesis(ws, noise_mode="fixed")


def test_config_rebuilds_generator():
    G = tiny_generator()
    G2 = Generator(**G.config).eval()
    G2.load_state_dict(G.state_dict())
    z = torch.randn(2, TINY["z_dim"])
    assert torch.equal(G(z, truncation_psi=0.7, noise_mode="const"), G2(z, truncation_psi=0.7, noise_mode="const"))


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="power of two"):
        Generator(**{**TINY, "resolution": 24})
    G = tiny_generator()
    with pytest.raises(AssertionError, match="ws"):
        G.synthesis(torch.randn(2, G.num_ws + 1, TINY["w_dim"]))


def test_generator_parameter_names_and_shapes():
    """Checkpoint importers rely on exactly these names and shapes (NVlabs layout)."""
    G = Generator(**TINY)
    wd = TINY["w_dim"]
    expected = {"mapping.w_avg": (wd,)}
    for i in range(TINY["n_mlp"]):
        expected |= {
            f"mapping.fc{i}.weight": (wd, TINY["z_dim"] if i == 0 else wd),
            f"mapping.fc{i}.bias": (wd,),
        }

    def layer(prefix, cin, cout, res, k=3, rgb=False):
        d = {
            f"{prefix}.weight": (cout, cin, k, k),
            f"{prefix}.bias": (cout,),
            f"{prefix}.affine.weight": (cin, wd),
            f"{prefix}.affine.bias": (cin,),
        }
        if not rgb:
            d |= {f"{prefix}.noise_strength": (), f"{prefix}.noise_const": (res, res)}
        return d

    ch = {4: 16, 8: 8, 16: 4}  # min(64 // res, 16)
    expected["synthesis.b4.const"] = (16, 4, 4)
    for res in (4, 8, 16):
        if res > 4:
            expected |= layer(f"synthesis.b{res}.conv0", ch[res // 2], ch[res], res)
        expected |= layer(f"synthesis.b{res}.conv1", ch[res], ch[res], res)
        expected |= layer(f"synthesis.b{res}.torgb", ch[res], 3, res, k=1, rgb=True)
    got = {k: tuple(v.shape) for k, v in G.state_dict().items()}
    assert got == expected
    assert G.synthesis.b8.conv0.affine.bias.detach().eq(1).all()  # styles start at 1


# ----------------------------------------------------------------------------------------------------------
# Discriminator.


def test_discriminator_shapes_names_and_input_gradient():
    torch.manual_seed(0)
    D = Discriminator(resolution=16, channel_base=64, channel_max=16)
    img = torch.randn(5, 3, 16, 16, requires_grad=True)  # 5: not a multiple of the group size 4
    logits = D(img)
    assert logits.shape == (5, 1)
    (grad,) = torch.autograd.grad(logits.sum(), img, create_graph=True)  # R1 needs a differentiable gradient
    assert grad.abs().sum() > 0
    grad.square().sum().backward()
    assert D.b16.conv0.weight.grad is not None
    expected = {
        "b16.fromrgb.weight": (4, 3, 1, 1), "b16.fromrgb.bias": (4,),
        "b16.conv0.weight": (4, 4, 3, 3), "b16.conv0.bias": (4,),
        "b16.conv1.weight": (8, 4, 3, 3), "b16.conv1.bias": (8,), "b16.skip.weight": (8, 4, 1, 1),
        "b8.conv0.weight": (8, 8, 3, 3), "b8.conv0.bias": (8,),
        "b8.conv1.weight": (16, 8, 3, 3), "b8.conv1.bias": (16,), "b8.skip.weight": (16, 8, 1, 1),
        "b4.conv.weight": (16, 17, 3, 3), "b4.conv.bias": (16,),
        "b4.fc.weight": (16, 256), "b4.fc.bias": (16,), "b4.out.weight": (1, 16), "b4.out.bias": (1,),
    }  # fmt: skip
    assert {k: tuple(v.shape) for k, v in D.state_dict().items()} == expected
    D2 = Discriminator(**D.config)
    D2.load_state_dict(D.state_dict())
    assert torch.equal(D2(img), logits)


def test_minibatch_std():
    torch.manual_seed(0)
    x = torch.randn(8, 6, 4, 4, dtype=torch.float64)
    out = MinibatchStdLayer(group_size=4, num_channels=2)(x)
    # NVlabs' grouping when N is a multiple of G: sample i is in group i % (N / G).
    y = x.reshape(4, 2, 2, 3, 4, 4)
    std = (y.var(dim=0, unbiased=False) + 1e-8).sqrt().mean(dim=[2, 3, 4])  # [n, F]
    torch.testing.assert_close(out[:, 6:, 0, 0], std.repeat(4, 1))
    assert torch.equal(out[:, :6], x)
    # N = 5: groups {0, 2, 4} and {1, 3}.
    x5 = x[:5]
    out5 = MinibatchStdLayer(group_size=4, num_channels=1)(x5)[:, 6, 0, 0]
    g0 = (x5[[0, 2, 4]].var(dim=0, unbiased=False) + 1e-8).sqrt().mean()
    g1 = (x5[[1, 3]].var(dim=0, unbiased=False) + 1e-8).sqrt().mean()
    torch.testing.assert_close(out5, torch.stack([g0, g1, g0, g1, g0]))


def test_modconv_auto_and_unknown():
    x = torch.zeros(1)
    assert resolve_modconv("auto", x) == resolve_modconv("auto", x, training=True) == "scaled"  # CPU
    assert [resolve_modconv(m, x) for m in MODCONV_IMPLS] == list(MODCONV_IMPLS)
    with pytest.raises(ValueError, match="modconv"):
        resolve_modconv("fused", x)


def test_training_step_runs():
    """One generator/discriminator step in training mode (w_avg tracking on) differentiates everything."""
    G = tiny_generator().train()
    D = Discriminator(resolution=16, channel_base=64, channel_max=16)
    D(G(torch.randn(3, TINY["z_dim"]))).sum().backward()
    assert all(p.grad is not None for p in G.parameters())


# ----------------------------------------------------------------------------------------------------------
# Class-conditional generator (c_dim > 0, NVlabs' mapping.embed).


def test_unconditional_generator_is_unchanged_by_conditioning():
    """Numbers pinned before c_dim existed (same seed, same tiny generator): c_dim = 0 computes what it did."""
    G = tiny_generator(seed=0)
    z = torch.randn(2, TINY["z_dim"], generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        img = G(z, truncation_psi=0.7, noise_mode="const")
        w = G.mapping(z)
    assert "mapping.embed.weight" not in G.state_dict() and len(G.state_dict()) == 48
    assert G.mapping.fc0.weight.shape == (TINY["w_dim"], TINY["z_dim"])
    pins = {
        (0, 0, 0, 0): -0.5380496978759766,
        (0, 2, 0, 0): -0.5237881541252136,
        (1, 0, 7, 9): -0.769629955291748,
        (1, 2, 7, 9): -1.7566790580749512,
    }
    for index, value in pins.items():
        assert img[index].item() == pytest.approx(value, abs=1e-6), index
    assert img.double().sum().item() == pytest.approx(-368.7692207917571, abs=1e-3)
    torch.testing.assert_close(
        w[0, :4], torch.tensor([-0.09805434942245483, 2.769940137863159, 0.20950624346733093, 0.5483694076538086])
    )
    assert torch.equal(G(z, None, truncation_psi=0.7, noise_mode="const"), img)  # c=None is the default


def tiny_conditional(seed: int = 0, c_dim: int = 4) -> Generator:
    G = tiny_generator(seed, c_dim=c_dim)
    with torch.no_grad():
        G.mapping.embed.bias.normal_(0, 0.3)
        for i in range(TINY["n_mlp"]):  # stored weights are N(0, 1) / lr_mlp, as a trained network's are
            getattr(G.mapping, f"fc{i}").weight.mul_(100)
    return G


def test_conditional_mapping_embeds_and_normalises_the_label():
    """fc0 reads [z / rms(z), e / rms(e)] with e = embed(c), a linear layer with lr multiplier 1 (NVlabs)."""
    G = tiny_conditional().double()
    m = G.mapping
    assert m.embed.weight.shape == (TINY["w_dim"], 4) and m.fc0.weight.shape == (
        TINY["w_dim"],
        TINY["z_dim"] + TINY["w_dim"],
    )
    z = torch.randn(3, TINY["z_dim"], dtype=torch.float64)
    c = torch.eye(4, dtype=torch.float64)[[0, 2, 3]]
    e = c @ (m.embed.weight / 2).T + m.embed.bias  # weight gain 1 / sqrt(c_dim) = 1/2
    x = torch.cat(
        [z / z.square().mean(1, keepdim=True).add(1e-8).sqrt(), e / e.square().mean(1, keepdim=True).add(1e-8).sqrt()],
        1,
    )
    for i in range(TINY["n_mlp"]):
        fc = getattr(m, f"fc{i}")
        x = F.leaky_relu(x @ (fc.weight * 0.01 / fc.weight.shape[1] ** 0.5).T + fc.bias * 0.01, 0.2) * 2**0.5
    torch.testing.assert_close(m(z, c), x, rtol=1e-12, atol=1e-12)


def test_conditional_block_equivalence_and_classes_matter():
    G = tiny_conditional()
    z = torch.randn(2, TINY["z_dim"], generator=torch.Generator().manual_seed(5))
    ws = G.mapping(z, torch.eye(4)[[1, 3]]).unsqueeze(1).repeat(1, G.num_ws, 1)
    ws[:, 2:] += 0.1 * torch.randn(2, G.num_ws - 2, TINY["w_dim"], generator=torch.Generator().manual_seed(6))
    full = G.synthesis(ws)
    for k in range(G.num_blocks + 1):
        assert torch.equal(G.synthesize_from(k, G.state_at(k, ws), ws), full), f"block {k}"
    images = [G(z, torch.eye(4)[[j, j]], noise_mode="const") for j in range(4)]
    for a in range(4):
        for b in range(a + 1, 4):  # every class renders the same z differently
            assert (images[a] - images[b]).abs().mean() > 1e-2, (a, b)
    both = G(z, torch.eye(4)[[0, 2]], noise_mode="const")  # each sample follows its own label
    torch.testing.assert_close(both[0], images[0][0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(both[1], images[2][1], rtol=1e-5, atol=1e-5)


def test_conditional_truncation_pulls_every_class_to_the_global_w_avg():
    G = tiny_conditional()
    z = torch.randn(3, TINY["z_dim"])
    c = torch.eye(4)[[0, 1, 3]]
    w = G.mapping(z, c)
    assert torch.equal(G.mapping(z, c, truncation_psi=0.0), G.mapping.w_avg.expand(3, -1))
    torch.testing.assert_close(G.mapping(z, c, truncation_psi=0.5) - G.mapping.w_avg, (w - G.mapping.w_avg) / 2)
    G.train()
    before = G.mapping.w_avg.clone()
    w = G.mapping(z, c)  # one average over every class, as NVlabs tracks it
    torch.testing.assert_close(G.mapping.w_avg, 0.995 * before + 0.005 * w.detach().mean(0))


def test_class_labels_are_checked():
    G, U = tiny_conditional(), tiny_generator()
    z = torch.randn(2, TINY["z_dim"])
    with pytest.raises(ValueError, match=r"class-conditional \(c_dim = 4\).*one-hot labels c \[N, 4\]"):
        G(z)
    with pytest.raises(ValueError, match=r"one-hot \[N, c_dim\] = \[2, 4\], got shape \[2, 3\]"):
        G.mapping(z, torch.eye(3)[:2])
    with pytest.raises(ValueError, match=r"\[2, 4\], got shape \[3, 4\]"):
        G.mapping(z, torch.eye(4)[:3])
    with pytest.raises(ValueError, match=r"got shape \[4\]"):
        G.mapping(z, torch.eye(4)[0])
    with pytest.raises(ValueError, match="unconditional.*pass c=None"):
        U(z, torch.eye(4)[:2])
    with pytest.raises(ValueError, match="c_dim must be a non-negative int"):
        Generator(**TINY, c_dim=-1)


def test_conditional_config_rebuilds_and_training_system_refuses_it():
    from pfo.prior import GANSystem

    G = tiny_conditional()
    assert G.config["c_dim"] == 4 and G.c_dim == 4 and tiny_generator().config["c_dim"] == 0
    G2 = Generator(**G.config).eval()
    G2.load_state_dict(G.state_dict())
    z, c = torch.randn(2, TINY["z_dim"]), torch.eye(4)[[3, 0]]
    assert torch.equal(G(z, c, noise_mode="const"), G2(z, c, noise_mode="const"))
    D = Discriminator(resolution=16, channel_base=64, channel_max=16)
    with pytest.raises(ValueError, match=r"unconditional generators only, this one has c_dim=4; set .*c_dim: 0"):
        GANSystem(G, D)
