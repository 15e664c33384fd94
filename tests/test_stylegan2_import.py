"""Importing rosinality .pt and NVlabs .pkl StyleGAN2 checkpoints (tiny configs, CPU, a few seconds)."""

from __future__ import annotations

import builtins
import io
import os
import pickle
from collections import OrderedDict

import pytest
import torch
from stylegan_checkpoints import (  # tests/ is on sys.path under pytest's default import mode
    Persistent,
    dump_nvlabs,
    fill_seeded,
    nvlabs_snapshot,
    rosinality_discriminator_state,
    rosinality_generator_state,
    rosinality_mapping,
    rosinality_reference_images,
    rosinality_reference_logits,
    save_nvlabs_pkl,
    save_rosinality,
)

from pfo.models.generator_file import load_prior, save_generator
from pfo.models.stylegan2 import Discriminator, Generator
from pfo.models.stylegan2_import import (
    PersistentStub,
    RestrictedUnpickler,
    import_generator,
    load_discriminator,
    load_nvlabs_pkl,
    load_pickle_safely,
    load_rosinality,
)

# Channels 16 at 4 and 8, 8 at 16: exercises channel inference and a conv0 with in != out.
G_CFG = dict(z_dim=16, w_dim=16, resolution=16, img_channels=3, n_mlp=2, channel_base=128, channel_max=16)
D_CFG = dict(resolution=16, img_channels=3, channel_base=128, channel_max=16)


def _randomize(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Random values everywhere (noise strengths, biases, w_avg too) so no rule hides behind a zero."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            scale = 0.3 if ("bias" in name or "noise_strength" in name or "w_avg" in name) else 1.0
            t.copy_(torch.randn(t.shape, generator=gen) * scale + (1.0 if name.endswith("affine.bias") else 0.0))
    return model.eval()


@pytest.fixture(scope="module")
def G() -> Generator:
    torch.manual_seed(0)
    return _randomize(Generator(**G_CFG), 1)


@pytest.fixture(scope="module")
def D() -> Discriminator:
    torch.manual_seed(0)
    return _randomize(Discriminator(**D_CFG), 2)


def _ws(G: Generator, n: int = 2) -> torch.Tensor:
    return torch.randn(n, G.num_ws, G.w_dim, generator=torch.Generator().manual_seed(3))


def _assert_same_generator(G: Generator, G2: Generator) -> None:
    assert G2.config == G.config
    sd, sd2 = G.state_dict(), G2.state_dict()
    assert sd.keys() == sd2.keys()
    for k in sd:
        assert torch.equal(sd[k], sd2[k]), k
    ws = _ws(G)
    with torch.no_grad():
        assert torch.equal(G.synthesis(ws, noise_mode="const"), G2.synthesis(ws, noise_mode="const"))


def _assert_same_discriminator(D: Discriminator, D2: Discriminator) -> None:
    assert D2.config == D.config
    sd, sd2 = D.state_dict(), D2.state_dict()
    assert sd.keys() == sd2.keys() and all(torch.equal(sd[k], sd2[k]) for k in sd)
    img = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        assert torch.equal(D(img), D2(img))


# ----------------------------------------------------------------------------------------------------------
# Round trips.


@pytest.mark.parametrize("legacy", [False, True])
def test_rosinality_round_trip(G, D, tmp_path, legacy):
    path = tmp_path / "ffhq.pt"
    save_rosinality(path, G, D, legacy=legacy)
    _assert_same_generator(G, load_rosinality(path))
    _assert_same_generator(G, import_generator(path))
    _assert_same_discriminator(D, load_discriminator(path))


def test_rosinality_training_checkpoint_and_bare_state_dict(G, tmp_path):
    """train.py checkpoints pickle argparse.Namespace and optimizer states and have no latent_avg."""
    path = tmp_path / "010000.pt"
    save_rosinality(path, G, latent_avg=False, training=True)
    G2 = import_generator(path)
    sd, sd2 = G.state_dict(), G2.state_dict()
    assert all(torch.equal(sd[k], sd2[k]) for k in sd if k != "mapping.w_avg")
    # w_avg estimated as the mean mapped w, like rosinality's mean_latent().
    with torch.no_grad():
        w_mean = G.mapping(torch.randn(20000, G.z_dim, generator=torch.Generator().manual_seed(9))).mean(0)
    torch.testing.assert_close(G2.mapping.w_avg, w_mean, atol=0.1, rtol=0)
    G_train = load_rosinality(path, which="g", w_avg_samples=0)  # the non-averaged generator
    assert torch.equal(G_train.synthesis.b16.conv0.weight, G.synthesis.b16.conv0.weight)
    G3 = load_rosinality(rosinality_generator_state(G), w_avg_samples=0)
    assert torch.equal(G3.mapping.w_avg, torch.zeros(G.w_dim))
    assert torch.equal(G3.synthesis.b16.conv0.weight, G.synthesis.b16.conv0.weight)


@pytest.mark.parametrize("protocol", [2, 3, 4])
def test_nvlabs_round_trip(G, D, tmp_path, protocol):
    path = tmp_path / "network-snapshot-000000.pkl"
    save_nvlabs_pkl(path, G, D, protocol=protocol)
    _assert_same_generator(G, load_nvlabs_pkl(path))
    _assert_same_generator(G, load_nvlabs_pkl(path, which="G"))
    _assert_same_generator(G, import_generator(path))
    _assert_same_discriminator(D, load_discriminator(path))


def test_nvlabs_config_from_pickle(tmp_path):
    """lr_mlp is invisible in the weights: read from FullyConnectedLayer.bias_gain; conv_clamp from kwargs."""
    G = _randomize(Generator(**{**G_CFG, "lr_mlp": 0.02, "conv_clamp": 256}), 5)
    path = tmp_path / "g.pkl"
    save_nvlabs_pkl(path, G)
    _assert_same_generator(G, import_generator(path))
    assert import_generator(path, modconv="grouped").config["modconv"] == "grouped"  # overrides reach the ctor


# ----------------------------------------------------------------------------------------------------------
# Class-conditional NVlabs generators (c_dim > 0).


def test_nvlabs_conditional_round_trip(tmp_path):
    """A conditional pickle (mapping.embed) imports with its c_dim, and a pfo generator file keeps it."""
    G = _randomize(Generator(**{**G_CFG, "z_dim": 12, "c_dim": 5}), 12)
    path = tmp_path / "cifar10-like.pkl"
    save_nvlabs_pkl(path, G, protocol=2)
    z = torch.randn(3, 12, generator=torch.Generator().manual_seed(13))
    c = torch.eye(5)[[4, 0, 2]]
    with torch.no_grad():
        expected = G(z, c, truncation_psi=0.8, noise_mode="const")
    saved = tmp_path / "generator.pt"
    for G2 in (load_nvlabs_pkl(path), load_nvlabs_pkl(path, which="G"), import_generator(path), load_prior(path)):
        _assert_same_generator(G, G2)
        assert G2.c_dim == 5 and G2.z_dim == 12 and G2.config["c_dim"] == 5
        with torch.no_grad():
            assert torch.equal(G2(z, c, truncation_psi=0.8, noise_mode="const"), expected)
        save_generator(G2, saved)
        G3 = load_prior(saved)
        _assert_same_generator(G, G3)
        with torch.no_grad():
            assert torch.equal(G3(z, c, truncation_psi=0.8, noise_mode="const"), expected)


# NVlabs' own code, run once (stylegan2-ada-pytorch @ d72cc7d: its dnnlib, torch_utils, training and legacy.py copied
# to a temporary folder outside this repository, never vendored; on the CPU its ops take their reference paths):
# ``training.networks.Generator(z_dim=12, c_dim=5, w_dim=16, img_resolution=16, img_channels=3,
# mapping_kwargs=dict(num_layers=2), synthesis_kwargs=dict(channel_base=128, channel_max=16, num_fp16_res=0,
# conv_clamp=None))`` given the weights of ``fill_seeded(G, 11)``, pickled as training_loop.py does (deepcopy,
# eval, requires_grad_(False), ``pickle.dump`` of {training_set_kwargs, G, D, G_ema, augment_pipe}), read back
# with NVlabs' legacy.load_network_pkl, and run with noise_mode='const' on z = randn(3, 12) from
# torch.Generator().manual_seed(21), c = eye(5)[[0, 3, 4]]. Our importer read that very pickle (in a process
# without NVlabs' modules): w was bitwise equal, the images within 3.4e-6 (values up to 8.1). The same with
# num_fp16_res=2, conv_clamp=256 (the CIFAR-10 settings; NVlabs run with force_fp32) gave the same numbers.
NVLABS_COND = dict(z_dim=12, w_dim=16, resolution=16, n_mlp=2, channel_base=128, channel_max=16, c_dim=5)
NVLABS_COND_PINS = [
    ("ws", (1, slice(0, 4)), [-0.4304741322994232, -0.15086515247821808, -0.6282601356506348, -0.33984610438346863]),
    ("img", (0, slice(None), 0, 0), [0.6765179634094238, 0.0156744122505188, -0.44642868638038635]),
    ("img", (2, slice(None), 9, 5), [-0.14421433210372925, 4.796402454376221, 0.2991945743560791]),
    ("img_psi", (1, slice(None), 3, 12), [0.30373919010162354, 2.6969335079193115, -3.4235332012176514]),
    ("img_cut", (0, slice(None), 15, 15), [1.8896329402923584, 0.3340999484062195, 0.4737072288990021]),
]
NVLABS_COND_SUMS = {"img": 1330.5277822501957, "img_psi": 589.5881254635751, "img_cut": 805.8738439977169}


def test_nvlabs_conditional_import_reproduces_nvlabs_outputs(tmp_path):
    """The same weights through our writer and importer reproduce the numbers NVlabs' code computed."""
    path = tmp_path / "cond.pkl"
    save_nvlabs_pkl(path, fill_seeded(Generator(**NVLABS_COND), 11))
    G = import_generator(path)
    z = torch.randn(3, 12, generator=torch.Generator().manual_seed(21))
    c = torch.eye(5)[[0, 3, 4]]
    with torch.no_grad():
        out = {
            "ws": G.mapping(z, c),
            "img": G(z, c, noise_mode="const"),
            "img_psi": G(z, c, truncation_psi=0.7, noise_mode="const"),
            "img_cut": G(z, c, truncation_psi=0.5, truncation_cutoff=3, noise_mode="const"),
        }
    for key, index, values in NVLABS_COND_PINS:
        torch.testing.assert_close(out[key][index], torch.tensor(values), rtol=0, atol=2e-5, msg=key)
    for key, total in NVLABS_COND_SUMS.items():
        assert out[key].double().sum().item() == pytest.approx(total, abs=2e-3), key


def test_nvlabs_conditional_refusals(tmp_path):
    G = _randomize(Generator(**{**G_CFG, "c_dim": 5}), 14)
    data = nvlabs_snapshot(G)
    data["G_ema"].state["_init_kwargs"]["c_dim"] = 0  # kwargs and weights disagree
    dump_nvlabs(data, tmp_path / "damaged.pkl")
    with pytest.raises(ValueError, match=r"says c_dim=0 but has the label embedding.*damaged or incomplete"):
        import_generator(tmp_path / "damaged.pkl")
    data = nvlabs_snapshot(G)
    del data["G_ema"].state["_modules"]["mapping"].state["_modules"]["embed"]
    dump_nvlabs(data, tmp_path / "no_embed.pkl")
    with pytest.raises(ValueError, match=r"says c_dim=5 but lacks the label embedding mapping.embed"):
        import_generator(tmp_path / "no_embed.pkl")
    wide = {"mapping.embed.weight": torch.randn(8, 5), "mapping.embed.bias": torch.zeros(8)}
    wide["mapping.fc0.weight"] = torch.randn(16, 16 + 8)  # NVlabs' embed_features=8 instead of w_dim
    dump_nvlabs(nvlabs_snapshot(G, replace=wide), tmp_path / "embed8.pkl")
    with pytest.raises(ValueError, match="label embedding has 8 features but w_dim is 16"):
        import_generator(tmp_path / "embed8.pkl")
    # NVlabs' conditional D maps c with a MappingNetwork of its own: no counterpart here, so no fine-tuning.
    D = _randomize(Discriminator(**D_CFG), 15)
    data = nvlabs_snapshot(G, D)
    embed = Persistent("FullyConnectedLayer", params={"weight": torch.randn(16, 5), "bias": torch.zeros(16)})
    data["D"].state["_modules"]["mapping"] = Persistent(
        "MappingNetwork", dict(z_dim=0, c_dim=5), modules={"embed": embed}
    )
    dump_nvlabs(data, tmp_path / "cond_d.pkl")
    with pytest.raises(ValueError, match="conditional NVlabs discriminators.*cannot be fine-tuned.*load_prior"):
        load_discriminator(tmp_path / "cond_d.pkl")
    assert import_generator(tmp_path / "cond_d.pkl").c_dim == 5  # the generator still loads


# ----------------------------------------------------------------------------------------------------------
# Hand-worked expectations, from the source projects' conventions (not from our converter).


def test_rosinality_rules_by_hand(G):
    src = rosinality_generator_state(G)
    # Known values in rosinality's layout (model.py). b16 has O=8 output, I=16 input channels.
    src["style.2.weight"] = torch.arange(256.0).reshape(16, 16) / 100  # style.0 is PixelNorm
    src["style.2.bias"] = torch.arange(16.0)
    src["input.input"] = torch.arange(16 * 16.0).reshape(1, 16, 4, 4)
    src["convs.2.conv.weight"] = torch.arange(8 * 16 * 9.0).reshape(1, 8, 16, 3, 3)  # b16 upsampling conv
    src["convs.2.conv.modulation.weight"] = torch.full((16, 16), 0.5)
    src["convs.2.conv.modulation.bias"] = torch.full((16,), 2.0)
    src["convs.3.noise.weight"] = torch.tensor([0.25])
    src["convs.3.activate.bias"] = torch.arange(8.0) - 4
    src["noises.noise_0"] = torch.arange(16.0).reshape(1, 1, 4, 4)
    src["noises.noise_3"] = torch.ones(1, 1, 16, 16) * 3
    src["noises.noise_4"] = torch.ones(1, 1, 16, 16) * 4
    src["to_rgbs.1.conv.weight"] = torch.arange(24.0).reshape(1, 3, 8, 1, 1)
    src["to_rgbs.1.bias"] = torch.tensor([1.0, 2.0, 3.0]).reshape(1, 3, 1, 1)
    latent_avg = torch.linspace(-1, 1, 16)
    G2 = load_rosinality({"g_ema": src, "latent_avg": latent_avg})
    s = G2.synthesis
    assert torch.equal(G2.mapping.fc1.weight, torch.arange(256.0).reshape(16, 16) / 100)
    assert torch.equal(G2.mapping.fc1.bias, torch.arange(16.0))
    assert G2.config["lr_mlp"] == 0.01  # EqualLinear(lr_mul=0.01) stores W/lr_mul like FullyConnectedLayer
    assert torch.equal(s.b4.const, torch.arange(256.0).reshape(16, 4, 4))
    # The up-sampling conv weight is copied: no flip of the 3x3 taps, no swap of in/out channels.
    assert s.b16.conv0.weight.shape == (8, 16, 3, 3)
    assert s.b16.conv0.weight[1, 2, 0, 2].item() == 1 * 144 + 2 * 9 + 0 * 3 + 2
    assert s.b16.conv0.weight[7, 15, 2, 0].item() == 7 * 144 + 15 * 9 + 2 * 3 + 0
    assert torch.equal(s.b16.conv0.affine.weight, torch.full((16, 16), 0.5))
    assert torch.equal(s.b16.conv0.affine.bias, torch.full((16,), 2.0))
    assert s.b16.conv1.noise_strength.shape == () and s.b16.conv1.noise_strength.item() == 0.25
    assert torch.equal(s.b16.conv1.bias, torch.arange(8.0) - 4)
    assert torch.equal(s.b4.conv1.noise_const, torch.arange(16.0).reshape(4, 4))
    assert torch.equal(s.b16.conv0.noise_const, torch.full((16, 16), 3.0))  # noise_3 feeds convs.2
    assert torch.equal(s.b16.conv1.noise_const, torch.full((16, 16), 4.0))  # noise_4 feeds convs.3
    assert torch.equal(s.b16.torgb.weight, torch.arange(24.0).reshape(3, 8, 1, 1))
    assert torch.equal(s.b16.torgb.bias, torch.tensor([1.0, 2.0, 3.0]))
    assert torch.equal(G2.mapping.w_avg, latent_avg)


def test_imported_rosinality_renders_like_rosinality(G):
    """Our generator on imported weights reproduces rosinality's forward pass (re-derived in float64)."""
    src = rosinality_generator_state(G)
    G2 = load_rosinality({"g_ema": src})
    z = torch.randn(2, 16, generator=torch.Generator().manual_seed(6))
    ws = _ws(G2)
    with torch.no_grad():
        torch.testing.assert_close(G2.mapping(z), rosinality_mapping(src, z.double()).float(), rtol=1e-5, atol=1e-5)
        ours = G2.synthesis(ws, noise_mode="const")
    ref = rosinality_reference_images(src, ws).float()
    assert ours.shape == ref.shape == (2, 3, 16, 16)
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)


def test_imported_rosinality_discriminator_scores_like_rosinality(D):
    src = rosinality_discriminator_state(D)
    D2 = load_discriminator({"d": src})
    img = torch.randn(8, 3, 16, 16, generator=torch.Generator().manual_seed(8))  # two mbstd groups of 4
    with torch.no_grad():
        ours = D2(img)
    torch.testing.assert_close(ours, rosinality_reference_logits(src, img).float(), rtol=1e-4, atol=1e-4)


def test_nvlabs_rules_by_hand(G, tmp_path):
    # networks.py: const [C, 4, 4] (359), noise_strength 0-dim (283), noise_const [r, r] (282),
    # SynthesisLayer weight [O, I, 3, 3] used unflipped for up=2 (298 + conv2d_resample.py:138).
    replace = {
        "synthesis.b4.const": torch.arange(256.0).reshape(16, 4, 4),
        "synthesis.b16.conv0.weight": torch.arange(8 * 16 * 9.0).reshape(8, 16, 3, 3),
        "synthesis.b16.conv0.noise_strength": torch.tensor(0.5),
        "synthesis.b16.conv0.noise_const": torch.arange(256.0).reshape(16, 16),
        "synthesis.b8.torgb.bias": torch.tensor([1.0, 2.0, 3.0]),
        "mapping.fc0.weight": torch.eye(16) * 7,
        "mapping.w_avg": torch.linspace(0, 1, 16),
    }
    path = tmp_path / "g.pkl"
    dump_nvlabs(nvlabs_snapshot(G, replace=replace), path)
    G2 = load_nvlabs_pkl(path)
    sd = G2.state_dict()
    for k, v in replace.items():
        assert sd[k].shape == v.shape and torch.equal(sd[k], v), k
    assert sd["synthesis.b16.conv0.weight"][1, 2, 0, 2].item() == 164


# ----------------------------------------------------------------------------------------------------------
# Safety: nothing in a pickle runs.


class _ExecPayload:
    def __init__(self, code: str) -> None:
        self.code = code

    def __reduce__(self):
        return (builtins.exec, (self.code,))


class _SystemPayload:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_malicious_reduce_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    payload = pickle.dumps({"G_ema": _ExecPayload(f"with open({str(marker)!r}, 'w') as f: f.write('x')")})
    pickle.loads(payload)  # the payload is live: the standard unpickler runs it
    assert marker.exists()
    marker.unlink()
    with pytest.raises(pickle.UnpicklingError, match="builtins.exec"):
        load_pickle_safely(io.BytesIO(payload))
    assert not marker.exists()
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"G_ema": _SystemPayload()}))  # never unpickled normally here
    with pytest.raises(pickle.UnpicklingError, match=r"posix\.system|os\.system|nt\.system"):
        load_pickle_safely(path)
    with pytest.raises(ValueError, match="rosinality.*NVlabs"):
        import_generator(path)
    for module, name in [("builtins", "eval"), ("builtins", "getattr"), ("numpy", "load"), ("torch", "load")]:
        with pytest.raises(pickle.UnpicklingError, match="refusing"):
            RestrictedUnpickler(io.BytesIO(b"")).find_class(module, name)


def test_persistent_module_src_never_runs(G, tmp_path):
    marker = tmp_path / "pwned_by_module_src"
    evil_src = f"open({str(marker)!r}, 'w').write('x')\nimport os\nos.system('echo pwned')\n"
    path = tmp_path / "evil_src.pkl"
    dump_nvlabs(nvlabs_snapshot(G, module_src=evil_src), path)
    data = load_pickle_safely(path)
    assert isinstance(data["G_ema"], PersistentStub) and data["G_ema"].class_name == "Generator"
    assert "module_src" not in vars(data["G_ema"])  # the code is not even kept
    _assert_same_generator(G, import_generator(path))
    assert not marker.exists()


def test_tensor_rebuild_checks_its_arguments():
    class BadTensor:
        def __reduce__(self):
            return (torch._utils._rebuild_tensor_v2, ("not a storage", 0, (2,), (1,), False, OrderedDict()))

    with pytest.raises(pickle.UnpicklingError, match="not a torch storage"):
        load_pickle_safely(io.BytesIO(pickle.dumps(BadTensor())))


# ----------------------------------------------------------------------------------------------------------
# Foreign files.


def test_foreign_files_get_a_clear_error(tmp_path):
    victim = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.Linear(4, 10))
    cases = {
        "random.pt": lambda p: torch.save({"weights": torch.randn(3)}, p),
        "victim.ckpt": lambda p: torch.save({"state_dict": victim.state_dict(), "epoch": 3}, p),
        "tensor.pt": lambda p: torch.save(torch.randn(3), p),
        "notes.txt": lambda p: p.write_text("not a checkpoint\n"),
        "plain.pkl": lambda p: p.write_bytes(pickle.dumps({"G_ema": [1, 2, 3]})),
        "other_persistent.pkl": lambda p: dump_nvlabs({"G_ema": Persistent("SomethingElse")}, p),
    }
    for name, write in cases.items():
        path = tmp_path / name
        write(path)
        with pytest.raises(ValueError, match="rosinality.*NVlabs") as info:
            import_generator(path)
        assert "supported" in str(info.value) or "expected" in str(info.value), name
    with pytest.raises(ValueError, match="no discriminator"):
        G = _randomize(Generator(**G_CFG), 7)
        save_rosinality(tmp_path / "g_only.pt", G)
        load_discriminator(tmp_path / "g_only.pt")


def test_unknown_rosinality_key_is_rejected(G):
    src = rosinality_generator_state(G)
    src["convs.0.dwt.weight"] = torch.zeros(1)  # e.g. a SWAGAN-style extra module
    with pytest.raises(ValueError, match="unrecognised rosinality generator key"):
        load_rosinality({"g_ema": src})
