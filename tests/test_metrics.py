"""Tests for the per-image reconstruction metrics."""

import math
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torchmetrics.image import StructuralSimilarityIndexMeasure

from pfo.metrics import (
    ALEXNET_FEATURE_SHAPES,
    ReconstructionMetrics,
    feature_distance,
    is_collapsed,
    load_lpips,
    lpips_distance,
    psnr,
    ssim,
    summarize,
    top1_correct,
)

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
ALEXNET_WEIGHTS = SHARED / "weights" / "alexnet_features.pth"
LPIPS_EXAMPLES = SHARED / "data" / "lpips_examples"  # ex_ref.png, ex_p0.png, ex_p1.png (richzhang/PerceptualSimilarity)
needs_alexnet = pytest.mark.skipif(
    not ALEXNET_WEIGHTS.is_file(),
    reason=f"LPIPS backbone weights not found at {ALEXNET_WEIGHTS}; LPIPS checks need real AlexNet weights",
)


def _smooth_images(n: int, size: int, seed: int = 0) -> torch.Tensor:
    """Natural-like images: smooth colour gradients plus mild texture, in [0, 1]."""
    gen = torch.Generator().manual_seed(seed)
    ramp = torch.linspace(0, 1, size)
    base = 0.5 * ramp.view(1, 1, size, 1) + 0.3 * ramp.view(1, 1, 1, size)
    colour = torch.rand(n, 3, 1, 1, generator=gen) * 0.3
    texture = torch.nn.functional.avg_pool2d(torch.rand(n, 3, size, size, generator=gen), 3, 1, 1) * 0.2
    return (base + colour + texture).clamp(0, 1)


@pytest.fixture(autouse=True)
def _no_torchvision_cache(tmp_path_factory, monkeypatch):
    """Point torch's hub cache at an empty folder so no test picks up a user's cached AlexNet by accident."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path_factory.mktemp("torch_home")))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)


# ----------------------------------------------------------------------------------------------------
# PSNR


def test_psnr_matches_numpy_reference():
    x = _smooth_images(4, 16, seed=1)
    gen = torch.Generator().manual_seed(2)
    y = (x + torch.randn(x.shape, generator=gen) * torch.tensor([0.01, 0.05, 0.1, 0.2]).view(4, 1, 1, 1)).clamp(0, 1)
    got = psnr(x, y)
    assert got.shape == (4,)
    xn, yn = x.double().numpy(), y.double().numpy()
    for i in range(4):
        mse = np.mean((xn[i] - yn[i]) ** 2)
        assert float(got[i]) == pytest.approx(10 * np.log10(1.0 / mse), rel=1e-5)


def test_psnr_per_image_not_pooled():
    x = _smooth_images(3, 16, seed=3)
    y = x.clone()
    y[0] += 0.01
    y[1] += 0.1
    y[2, :, :4] = 1 - y[2, :, :4]
    batch = psnr(x, y)
    alone = torch.cat([psnr(x[i : i + 1], y[i : i + 1]) for i in range(3)])
    assert torch.equal(batch, alone)
    pooled = 10 * torch.log10(1 / (x - y).pow(2).mean())
    assert not torch.allclose(batch.mean(), pooled, atol=0.5)
    assert float(batch[0]) == pytest.approx(40.0, abs=1e-3)  # mse 1e-4
    assert float(batch[1]) == pytest.approx(20.0, abs=1e-3)  # mse 1e-2


def test_psnr_identical_is_inf():
    x = _smooth_images(2, 8)
    assert torch.isinf(psnr(x, x)).all()


def test_shape_mismatch_raises():
    with pytest.raises(ValueError, match="same shape"):
        psnr(torch.zeros(2, 3, 8, 8), torch.zeros(2, 3, 8, 9))
    with pytest.raises(ValueError, match="same shape"):
        ssim(torch.zeros(3, 8, 8), torch.zeros(3, 8, 8))


# ----------------------------------------------------------------------------------------------------
# SSIM


@pytest.mark.parametrize("size", [8, 32])
def test_ssim_identical_and_decreasing_with_noise(size):
    x = _smooth_images(1, size, seed=4).expand(4, -1, -1, -1).contiguous()
    gen = torch.Generator().manual_seed(5)
    noise = torch.randn(x.shape, generator=gen) * torch.tensor([0.0, 0.02, 0.1, 0.3]).view(4, 1, 1, 1)
    values = ssim((x + noise).clamp(0, 1), x)
    assert values.shape == (4,)
    assert float(values[0]) == pytest.approx(1.0, abs=1e-6)
    assert bool((values[1:] < values[:-1]).all()), values


def test_ssim_matches_torchmetrics_class():
    x = _smooth_images(1, 32, seed=6)
    gen = torch.Generator().manual_seed(7)
    y = (x + 0.05 * torch.randn(x.shape, generator=gen)).clamp(0, 1)
    reference = StructuralSimilarityIndexMeasure(data_range=1.0)(y, x)
    torch.testing.assert_close(ssim(y, x)[0], reference)


def test_ssim_small_images_use_a_window_that_fits():
    x = _smooth_images(2, 8, seed=8)
    y = (x + 0.05).clamp(0, 1)
    # An 8x8 image gets a 7x7 window: sigma 6/7 (torchmetrics sizes it as 2 * int(3.5 sigma + 0.5) + 1).
    reference = StructuralSimilarityIndexMeasure(data_range=1.0, sigma=6 / 7, reduction="none")(y, x)
    torch.testing.assert_close(ssim(y, x), reference)


def test_ssim_per_image_not_pooled():
    x = _smooth_images(3, 16, seed=9)
    y = x.clone()
    y[1] = (y[1] + 0.2).clamp(0, 1)
    batch = ssim(y, x)
    alone = torch.cat([ssim(y[i : i + 1], x[i : i + 1]) for i in range(3)])
    torch.testing.assert_close(batch, alone)
    assert float(batch[0]) == pytest.approx(1.0, abs=1e-6) and float(batch[1]) < 0.99


# ----------------------------------------------------------------------------------------------------
# Feature distance, top-1, collapse


def test_feature_distance_per_sample():
    gen = torch.Generator().manual_seed(10)
    h = torch.randn(3, 4, 5, 5, generator=gen)
    h_star = h.clone()
    h_star[1] += 2.0
    h_star[2, 0] += 1.0
    d = feature_distance(h, h_star)
    torch.testing.assert_close(d, torch.tensor([0.0, 4.0, 25.0 / 100.0]))
    torch.testing.assert_close(feature_distance(h.flatten(1), h_star.flatten(1)), d)
    with pytest.raises(ValueError):
        feature_distance(h, h_star[:2])


def test_top1_correct():
    logits = torch.tensor([[0.1, 2.0, 0.3], [5.0, 0.0, 1.0], [0.0, 0.0, 9.0]])
    labels = torch.tensor([1, 2, 2])
    got = top1_correct(logits, labels)
    assert got.dtype == torch.bool
    assert got.tolist() == [True, False, True]
    with pytest.raises(ValueError):
        top1_correct(logits, labels[:2])


def test_is_collapsed_flat_and_saturated():
    gen = torch.Generator().manual_seed(11)
    flat_grey = 0.5 + 0.005 * torch.randn(1, 3, 32, 32, generator=gen)
    white = torch.ones(1, 3, 32, 32)
    white[..., :3, :3] = 0.4  # a few non-white pixels: std above the flat threshold, still collapsed
    black = torch.zeros(1, 3, 32, 32)
    natural = _smooth_images(2, 32, seed=12)
    dark_background = natural[:1].clone()
    dark_background[..., :, :16] = 0.0  # half the image black: a natural image with a dark background
    imgs = torch.cat([flat_grey, white, black, natural, dark_background])
    assert is_collapsed(imgs).tolist() == [True, True, True, False, False, False]
    # Thresholds are keyword arguments.
    assert bool(is_collapsed(dark_background, max_saturated=0.4)[0])
    assert not bool(is_collapsed(flat_grey, min_std=0.001)[0])


def test_is_collapsed_on_real_images():
    folder = SHARED / "data" / "cifar10" / "test" / "airplane"
    if not folder.is_dir():
        pytest.skip(f"CIFAR-10 images not found under {folder}")
    from PIL import Image

    files = sorted(folder.glob("*.jpg"))[:50]
    imgs = torch.stack(
        [torch.from_numpy(np.array(Image.open(f).convert("RGB"))).permute(2, 0, 1) for f in files]
    ).float()
    assert not bool(is_collapsed(imgs / 255).any())


# ----------------------------------------------------------------------------------------------------
# LPIPS


@pytest.fixture(scope="module")
def lpips_model():
    if not ALEXNET_WEIGHTS.is_file():
        pytest.skip(f"LPIPS backbone weights not found at {ALEXNET_WEIGHTS}")
    return load_lpips(str(ALEXNET_WEIGHTS))


@needs_alexnet
def test_lpips_identical_zero_and_grows_with_noise(lpips_model):
    x = _smooth_images(1, 64, seed=13).expand(4, -1, -1, -1).contiguous()
    gen = torch.Generator().manual_seed(14)
    noise = torch.randn(x.shape, generator=gen) * torch.tensor([0.0, 0.02, 0.1, 0.3]).view(4, 1, 1, 1)
    d = lpips_distance(lpips_model, (x + noise).clamp(0, 1), x)
    assert d.shape == (4,)
    assert float(d[0]) == pytest.approx(0.0, abs=1e-6)
    assert bool((d[1:] > d[:-1]).all()), d
    assert not lpips_model.training


@needs_alexnet
def test_lpips_backbone_is_the_file(lpips_model):
    """Every backbone parameter comes from the file (strict mapping), not from the random initialisation."""
    state = torch.load(ALEXNET_WEIGHTS, map_location="cpu", weights_only=True)
    params = dict(lpips_model.net.named_parameters())
    assert len(params) == len(ALEXNET_FEATURE_SHAPES)
    for key in ALEXNET_FEATURE_SHAPES:
        index, kind = key.split(".")[1:]
        match = [v for k, v in params.items() if k.endswith(f".{index}.{kind}")]
        assert len(match) == 1 and torch.equal(match[0], state[key]), key


def _example_images_dir() -> Path | None:
    """The LPIPS example images: a folder named by PFO_LPIPS_EXAMPLES, else the project's shared folder
    (``../shared/data/lpips_examples``, on our machines and in CI), else a copy shipped in the lpips package."""
    import lpips

    candidates = [LPIPS_EXAMPLES / "ex_ref.png", *Path(lpips.__file__).resolve().parent.rglob("ex_ref.png")]
    if os.environ.get("PFO_LPIPS_EXAMPLES"):
        candidates.insert(0, Path(os.environ["PFO_LPIPS_EXAMPLES"]) / "ex_ref.png")
    for ref in candidates:
        if ref.is_file() and (ref.parent / "ex_p0.png").is_file() and (ref.parent / "ex_p1.png").is_file():
            return ref.parent
    return None


@needs_alexnet
def test_lpips_reproduces_reference_distances(lpips_model):
    folder = _example_images_dir()
    if folder is None:
        pytest.skip(
            f"no LPIPS example images (ex_ref.png, ex_p0.png, ex_p1.png) in {LPIPS_EXAMPLES} or the lpips package; "
            "set PFO_LPIPS_EXAMPLES to a folder holding them (imgs/ of richzhang/PerceptualSimilarity) to check "
            "0.722 / 0.138"
        )
    from PIL import Image

    def load(name: str) -> torch.Tensor:
        arr = np.array(Image.open(folder / name).convert("RGB"))
        return torch.from_numpy(arr).permute(2, 0, 1)[None].float() / 255

    ref, p0, p1 = load("ex_ref.png"), load("ex_p0.png"), load("ex_p1.png")
    d = lpips_distance(lpips_model, torch.cat([ref, ref]), torch.cat([p0, p1]))
    assert round(float(d[0]), 3) == 0.722
    assert round(float(d[1]), 3) == 0.138


@needs_alexnet
def test_lpips_accepts_full_torchvision_state_dict(tmp_path, lpips_model):
    state = torch.load(ALEXNET_WEIGHTS, map_location="cpu", weights_only=True)
    state["classifier.1.weight"] = torch.zeros(4096, 9216)
    state["classifier.1.bias"] = torch.zeros(4096)
    path = tmp_path / "alexnet_full.pth"
    torch.save(state, path)
    model = load_lpips(str(path))
    x = _smooth_images(2, 32, seed=15)
    y = (x + 0.1).clamp(0, 1)
    torch.testing.assert_close(lpips_distance(model, x, y), lpips_distance(lpips_model, x, y))


@needs_alexnet
def test_lpips_found_in_torchvision_cache(monkeypatch, tmp_path):
    checkpoints = tmp_path / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    (checkpoints / "alexnet-owt-7be5be79.pth").write_bytes(ALEXNET_WEIGHTS.read_bytes())
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_lpips(None) is not None


def test_lpips_without_weights_warns_and_returns_none(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.warns(UserWarning, match="LPIPS will be reported as missing"):
        assert load_lpips(None) is None


def test_lpips_corrupt_or_foreign_weights_raise(tmp_path):
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"this is not a checkpoint")
    with pytest.raises(ValueError, match="torchvision-layout AlexNet"):
        load_lpips(str(corrupt))
    foreign = tmp_path / "foreign.pth"
    torch.save({"conv.weight": torch.zeros(3)}, foreign)
    with pytest.raises(ValueError, match="torchvision-layout AlexNet"):
        load_lpips(str(foreign))
    wrong_shape = tmp_path / "wrong_shape.pth"
    torch.save({k: torch.zeros(1) for k in ALEXNET_FEATURE_SHAPES}, wrong_shape)
    with pytest.raises(ValueError, match="has shape"):
        load_lpips(str(wrong_shape))
    with pytest.raises(FileNotFoundError):
        load_lpips(str(tmp_path / "absent.pth"))


def test_lpips_rejects_tiny_images():
    with pytest.raises(ValueError, match="at least 31x31"):
        lpips_distance(torch.nn.Identity(), torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 8))


# ----------------------------------------------------------------------------------------------------
# Summary and the thin class


def test_summarize_against_numpy():
    values = {
        "psnr": torch.tensor([20.0, 30.0, math.inf, 25.0]),
        "ssim": torch.tensor([0.5, math.nan, 0.7, 0.9]),
        "top1": torch.tensor([True, False, True, True]),
    }
    s = summarize(values)
    capped = np.array([20.0, 30.0, 100.0, 25.0])
    assert s["psnr"]["mean"] == pytest.approx(capped.mean())
    assert s["psnr"]["std"] == pytest.approx(capped.std())
    assert s["psnr"]["median"] == pytest.approx(np.median(capped))
    assert s["psnr"]["n_inf"] == 1 and s["psnr"]["n"] == 4
    kept = np.array([0.5, 0.7, 0.9])
    assert s["ssim"]["mean"] == pytest.approx(kept.mean())
    assert s["ssim"]["median"] == pytest.approx(0.7)
    assert s["ssim"]["n"] == 3 and s["ssim"]["n_nan"] == 1
    assert s["top1"]["mean"] == pytest.approx(0.75)
    # Rows (e.g. per batch) are concatenated; other caps can be given.
    rows = [{"psnr": torch.tensor([20.0, 30.0])}, {"psnr": [math.inf, 25.0]}]
    assert summarize(rows)["psnr"] == s["psnr"]
    assert summarize(rows, caps={"psnr": 60.0})["psnr"]["mean"] == pytest.approx((20 + 30 + 60 + 25) / 4)
    assert math.isnan(summarize({"lpips": [math.nan]})["lpips"]["mean"])


def test_reconstruction_metrics_without_lpips():
    with pytest.warns(UserWarning, match="missing"):
        metrics = ReconstructionMetrics(lpips_weights=None)
    assert not metrics.lpips_available
    x = _smooth_images(3, 8, seed=16)
    y = (x + 0.05).clamp(0, 1)
    out = metrics(y, x, features=x, target_features=y, logits=torch.eye(3), labels=torch.tensor([0, 0, 2]))
    assert set(out) == {"psnr", "ssim", "collapsed", "feature_distance", "top1"}
    assert all(v.shape == (3,) for v in out.values())
    torch.testing.assert_close(out["psnr"], psnr(y, x))
    assert out["top1"].tolist() == [True, False, True]
    assert set(ReconstructionMetrics.summary(out)) == set(out)
    with pytest.raises(ValueError, match="both"):
        metrics(y, x, features=x)


@needs_alexnet
def test_reconstruction_metrics_with_lpips():
    metrics = ReconstructionMetrics(lpips_weights=str(ALEXNET_WEIGHTS))
    assert metrics.lpips_available
    assert len(metrics.state_dict()) == 0  # LPIPS weights stay out of checkpoints
    x = _smooth_images(2, 32, seed=17)
    y = (x + 0.1).clamp(0, 1)
    out = metrics(y, x)
    assert set(out) == {"psnr", "ssim", "collapsed", "lpips"}
    assert out["lpips"].shape == (2,) and bool((out["lpips"] > 0).all())
    # Tiny images: LPIPS is NaN (with a warning), the other metrics are still computed.
    with pytest.warns(UserWarning, match="NaN"):
        small = metrics(y[..., :8, :8], x[..., :8, :8])
    assert torch.isnan(small["lpips"]).all() and torch.isfinite(small["ssim"]).all()
