"""Reconstruction metrics, per image.

Every image metric takes images in [0, 1] of shape ``[N, C, H, W]`` and returns one value **per image** (an
``[N]`` tensor), never a value pooled over the batch: a batch's mean squared error gives a different PSNR
from the mean of per-image PSNRs, and the benchmark reports mean, standard deviation and median over targets
(GUIDE §6). Keeping per-image values also lets distributed runs gather them and lets ``summarize`` see every
target.

LPIPS uses the AlexNet variant of the ``lpips`` package.  That package ships only the linear heads; the
AlexNet backbone weights must come from a local file or from torchvision's cache (nothing here downloads),
and LPIPS is never computed on a randomly initialised backbone: without weights it is reported as missing.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import Tensor
from torchmetrics.functional.image import structural_similarity_index_measure

__all__ = [
    "ALEXNET_FEATURE_SHAPES",
    "LPIPS_MIN_SIZE",
    "ReconstructionMetrics",
    "feature_distance",
    "is_collapsed",
    "load_lpips",
    "lpips_distance",
    "psnr",
    "ssim",
    "summarize",
    "top1_correct",
]


def _check_images(x: Tensor, y: Tensor) -> None:
    if x.ndim != 4 or x.shape != y.shape:
        raise ValueError(
            f"expected two image batches of the same shape [N, C, H, W], got {tuple(x.shape)} and {tuple(y.shape)}"
        )


def psnr(x: Tensor, y: Tensor) -> Tensor:
    """Peak signal-to-noise ratio in dB per image, data range 1: ``10 log10(1 / mse_i)``.

    The mean squared error is taken over each image's own pixels.  Identical images give ``+inf``;
    ``summarize`` caps it for the summary statistics.
    """
    _check_images(x, y)
    mse = (x - y).pow(2).reshape(x.shape[0], -1).mean(dim=1)
    return 10.0 * torch.log10(1.0 / mse)


# SSIM's standard Gaussian window: sigma 1.5, 11 x 11 (torchmetrics derives the size from sigma:
# 2 * int(3.5 * sigma + 0.5) + 1).
_SSIM_SIGMA = 1.5
_SSIM_KERNEL = 11


def _ssim_sigma(height: int, width: int) -> float:
    """Gaussian sigma for SSIM: the standard 1.5, or a smaller one whose window fits a small image."""
    side = min(height, width)
    if side >= _SSIM_KERNEL:
        return _SSIM_SIGMA
    k = side if side % 2 == 1 else side - 1  # the largest odd window that fits
    # torchmetrics uses a window of 2 * int(3.5 sigma + 0.5) + 1; sigma = (k - 1) / 7 gives exactly k.
    return max((k - 1) / 7.0, 0.05)


def ssim(x: Tensor, y: Tensor) -> Tensor:
    """Structural similarity per image (torchmetrics, Gaussian window, data range 1).

    The standard window is 11 x 11 (sigma 1.5).  For images smaller than that (e.g. 8 x 8 test images) the
    window shrinks to the largest odd size that fits, with sigma scaled to match (``(k - 1) / 7``), instead of
    averaging statistics over mostly reflected padding; values on such images are not comparable with
    standard-window SSIM on larger images.
    """
    _check_images(x, y)
    sigma = _ssim_sigma(x.shape[-2], x.shape[-1])
    out = structural_similarity_index_measure(x, y, sigma=sigma, data_range=1.0, reduction="none")
    return out.reshape(x.shape[0])


def feature_distance(h: Tensor, h_star: Tensor) -> Tensor:
    """Mean squared error per sample over the flattened features (the attack's default objective)."""
    if h.shape != h_star.shape or h.ndim == 0:
        raise ValueError(f"feature shapes differ: {tuple(h.shape)} vs {tuple(h_star.shape)}")
    return (h - h_star).pow(2).reshape(h.shape[0], -1).mean(dim=1)


def top1_correct(logits: Tensor, labels: Tensor) -> Tensor:
    """Whether the victim's top-1 prediction on each reconstruction is the target's label ([N] bool)."""
    if logits.ndim != 2 or labels.shape != (logits.shape[0],):
        raise ValueError(f"expected logits [N, K] and labels [N], got {tuple(logits.shape)} and {tuple(labels.shape)}")
    return logits.argmax(dim=1) == labels


def is_collapsed(
    img: Tensor,
    *,
    min_std: float = 0.02,
    low: float = 0.02,
    high: float = 0.98,
    max_saturated: float = 0.9,
) -> Tensor:
    """Flag flat or saturated reconstructions ([N] bool).

    Latent optimisation sometimes collapses to flat white or black images (GUIDE §9).  An image counts as
    collapsed when its pixel standard deviation (over all channels and pixels) is below ``min_std`` (flat, of
    any colour), or when more than ``max_saturated`` of its values are ``<= low`` or ``>= high`` (saturated).
    The defaults flag a uniform image and a white or black image with little structure, not a natural image
    with a dark or bright background: on 2,000 CIFAR-10 test images none was flagged (smallest std 0.054,
    largest saturated fraction 0.71).
    """
    if img.ndim < 2:
        raise ValueError(f"expected images [N, ...], got shape {tuple(img.shape)}")
    flat = img.reshape(img.shape[0], -1)
    std = flat.float().std(dim=1, correction=0)
    saturated = ((flat <= low) | (flat >= high)).float().mean(dim=1)
    return (std < min_std) | (saturated > max_saturated)


# ----------------------------------------------------------------------------------------------------
# LPIPS

# torchvision's AlexNet ``features`` convolutions, the backbone LPIPS(net='alex') uses.
ALEXNET_FEATURE_SHAPES: dict[str, tuple[int, ...]] = {
    "features.0.weight": (64, 3, 11, 11),
    "features.0.bias": (64,),
    "features.3.weight": (192, 64, 5, 5),
    "features.3.bias": (192,),
    "features.6.weight": (384, 192, 3, 3),
    "features.6.bias": (384,),
    "features.8.weight": (256, 384, 3, 3),
    "features.8.bias": (256,),
    "features.10.weight": (256, 256, 3, 3),
    "features.10.bias": (256,),
}
# lpips.pretrained_networks.alexnet splits torchvision's ``features`` into slices that keep the layer indices.
_LPIPS_SLICE = {0: 1, 3: 2, 6: 3, 8: 4, 10: 5}
_EXPECTED_LAYOUT = (
    "a torchvision-layout AlexNet state dict: either only the 'features.*' entries "
    f"({', '.join(ALEXNET_FEATURE_SHAPES)}) or a full torchvision alexnet state dict"
)


def _torchvision_alexnet_cache() -> Path:
    """Where torchvision caches its ImageNet AlexNet checkpoint (the file may not exist)."""
    from torchvision.models import AlexNet_Weights

    name = AlexNet_Weights.IMAGENET1K_V1.url.rsplit("/", 1)[-1]
    return Path(torch.hub.get_dir()) / "checkpoints" / name


def _read_alexnet_features(path: Path) -> dict[str, Tensor]:
    """Read and check the backbone weights; raise ``ValueError`` naming the expected layout otherwise."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # corrupt file, pickle of something else, truncated download...
        raise ValueError(f"could not read AlexNet weights from {path}: {err}. Expected {_EXPECTED_LAYOUT}.") from err
    if not isinstance(state, Mapping):
        raise ValueError(f"{path} holds a {type(state).__name__}, not a state dict. Expected {_EXPECTED_LAYOUT}.")
    missing = [k for k in ALEXNET_FEATURE_SHAPES if k not in state]
    extra = [k for k in state if str(k).startswith("features.") and k not in ALEXNET_FEATURE_SHAPES]
    if missing or extra:
        raise ValueError(
            f"{path} is not an AlexNet state dict (missing {missing[:4]}, unexpected {extra[:4]}). "
            f"Expected {_EXPECTED_LAYOUT}."
        )
    out = {}
    for key, shape in ALEXNET_FEATURE_SHAPES.items():
        value = state[key]
        if not isinstance(value, Tensor) or tuple(value.shape) != shape:
            got = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
            raise ValueError(f"{path}: '{key}' has shape {got}, expected {shape}. Expected {_EXPECTED_LAYOUT}.")
        if not torch.isfinite(value).all():
            raise ValueError(f"{path}: '{key}' holds non-finite values")
        out[key] = value.float()
    return out


def load_lpips(alexnet_weights: str | Path | None = None) -> torch.nn.Module | None:
    """Build LPIPS (AlexNet, v0.1) with real backbone weights, or return ``None`` with a warning.

    The linear heads ship inside the ``lpips`` package; the backbone comes, in order, from
    ``alexnet_weights`` (a torchvision-layout ``features.*`` state dict such as
    ``../shared/weights/alexnet_features.pth``, or a full torchvision alexnet state dict), else torchvision's
    cache (``torch.hub.get_dir()/checkpoints/``).  Without either, LPIPS is unavailable: computing it on a
    random backbone would give meaningless numbers.  Every backbone weight must be present (strict loading).
    The model is returned in eval mode, frozen, on the CPU.
    """
    if alexnet_weights is not None:
        path = Path(alexnet_weights).expanduser()
    else:
        path = _torchvision_alexnet_cache()
        if not path.is_file():
            warnings.warn(
                "LPIPS will be reported as missing: no AlexNet backbone weights were given and torchvision's "
                f"cache has no {path.name} (looked in {path.parent}). Pass the path of a torchvision-layout "
                "AlexNet state dict (e.g. lpips_weights='../shared/weights/alexnet_features.pth'), or put "
                f"torchvision's {path.name} in that folder.",
                stacklevel=2,
            )
            return None
    if not path.is_file():
        raise FileNotFoundError(f"AlexNet weights for LPIPS not found: {path}")
    features = _read_alexnet_features(path)

    import lpips  # imported here: it is only needed when LPIPS is reported

    with warnings.catch_warnings():
        # lpips passes torchvision's deprecated ``pretrained=`` argument; pnet_rand=True avoids any download.
        warnings.simplefilter("ignore", UserWarning)
        model = lpips.LPIPS(net="alex", version="0.1", pretrained=True, pnet_rand=True, verbose=False)
    mapped = {}
    for key, value in features.items():
        _, index, kind = key.split(".")
        mapped[f"slice{_LPIPS_SLICE[int(index)]}.{index}.{kind}"] = value
    model.net.load_state_dict(mapped, strict=True)  # every backbone parameter must come from the file
    model.eval()
    model.requires_grad_(False)
    return model


# AlexNet's strides and max-pools leave nothing of an input smaller than this (per side).
LPIPS_MIN_SIZE = 31


def lpips_distance(model: torch.nn.Module, x: Tensor, y: Tensor) -> Tensor:
    """LPIPS distance per image for images in [0, 1] (rescaled to the [-1, 1] the metric expects).

    Images must be at least ``LPIPS_MIN_SIZE`` (31) pixels per side; AlexNet's pooling fails below that.
    """
    _check_images(x, y)
    if min(x.shape[-2:]) < LPIPS_MIN_SIZE:
        raise ValueError(
            f"LPIPS (AlexNet) needs images of at least {LPIPS_MIN_SIZE}x{LPIPS_MIN_SIZE} pixels, "
            f"got {tuple(x.shape[-2:])}"
        )
    if model.training:
        model.eval()
    with torch.no_grad():
        out = model(x, y, normalize=True)  # normalize=True maps [0, 1] to [-1, 1]
    return out.reshape(x.shape[0])


# ----------------------------------------------------------------------------------------------------
# Summary and the thin class


def _as_float64(values: Tensor | Sequence[float]) -> Tensor:
    return torch.as_tensor(values).detach().reshape(-1).to("cpu", torch.float64)


def summarize(
    values: Mapping[str, Tensor | Sequence[float]] | Sequence[Mapping[str, Tensor | Sequence[float]]],
    *,
    caps: Mapping[str, float] | None = None,
) -> dict[str, dict[str, float]]:
    """Mean, standard deviation and median per metric over all images.

    ``values`` maps a metric name to per-image values, or is a list of such mappings (e.g. one per batch),
    which are concatenated.  NaN values are ignored (``n`` counts the values used, ``n_nan`` those dropped).
    Boolean metrics (``top1``, ``collapsed``) summarise as rates.  Metrics named in ``caps`` are clipped at
    that value first: by default PSNR is capped at 100 dB, so an exact reconstruction (PSNR ``+inf``) counts
    as 100 dB rather than making the mean infinite; ``n_inf`` counts the infinite values before capping.
    The standard deviation is the population one (``ddof=0``, as ``numpy.std``), so one image gives 0.
    """
    caps = {"psnr": 100.0} if caps is None else dict(caps)
    if isinstance(values, Mapping):
        merged = {k: _as_float64(v) for k, v in values.items()}
    else:
        merged = {}
        for row in values:
            for k, v in row.items():
                merged.setdefault(k, []).append(_as_float64(v))
        merged = {k: torch.cat(v) for k, v in merged.items()}
    out: dict[str, dict[str, float]] = {}
    for name, v in merged.items():
        nan = torch.isnan(v)
        n_inf = int(torch.isinf(v).sum())
        v = v[~nan]
        if name in caps:
            v = v.clamp(max=caps[name])
        if v.numel() == 0:
            mean = std = median = math.nan
        else:
            mean = float(v.mean())
            std = float(v.std(correction=0)) if torch.isfinite(v).all() else math.nan
            s, m = v.sort().values, v.numel() // 2
            median = float(s[m]) if v.numel() % 2 == 1 else float((s[m - 1] + s[m]) / 2)
        out[name] = {
            "mean": mean,
            "std": std,
            "median": median,
            "n": int(v.numel()),
            "n_nan": int(nan.sum()),
            "n_inf": n_inf,
        }
    return out


class ReconstructionMetrics(torch.nn.Module):
    """Per-image PSNR, SSIM and LPIPS (when its weights are available) for reconstructions in [0, 1].

    The LPIPS network is deliberately not registered as a submodule: its weights are not part of an attack's
    state, so checkpoints neither store them nor require them when loaded.  It follows the inputs' device.
    """

    def __init__(self, lpips_weights: str | None = None) -> None:
        super().__init__()
        self._lpips = (load_lpips(lpips_weights),)  # a tuple hides it from nn.Module registration
        self._warned_small = False

    @property
    def lpips_available(self) -> bool:
        return self._lpips[0] is not None

    @torch.no_grad()
    def forward(
        self,
        recon: Tensor,
        target: Tensor,
        *,
        features: Tensor | None = None,
        target_features: Tensor | None = None,
        logits: Tensor | None = None,
        labels: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """Per-image metrics: ``psnr``, ``ssim``, ``collapsed``, ``lpips`` (omitted when unavailable).

        ``lpips`` is NaN for images below ``LPIPS_MIN_SIZE`` (tiny test images), which ``summarize`` ignores.

        Optionally ``feature_distance`` (given the reconstruction's and the target's features) and ``top1``
        (given the victim's logits on the reconstructions and the targets' labels).
        """
        recon, target = recon.detach(), target.detach()
        out = {"psnr": psnr(recon, target), "ssim": ssim(recon, target), "collapsed": is_collapsed(recon)}
        model = self._lpips[0]
        if model is not None:
            if min(recon.shape[-2:]) < LPIPS_MIN_SIZE:
                if not self._warned_small:
                    warnings.warn(
                        f"LPIPS is reported as NaN: images of {tuple(recon.shape[-2:])} are below AlexNet's "
                        f"minimum of {LPIPS_MIN_SIZE}x{LPIPS_MIN_SIZE}",
                        stacklevel=2,
                    )
                    self._warned_small = True
                out["lpips"] = torch.full((recon.shape[0],), math.nan, device=recon.device)
            else:
                model = model.to(recon.device)
                self._lpips = (model,)
                out["lpips"] = lpips_distance(model, recon.float(), target.float())
        if (features is None) != (target_features is None):
            raise ValueError("give both features and target_features, or neither")
        if features is not None:
            out["feature_distance"] = feature_distance(features.detach(), target_features.detach())
        if (logits is None) != (labels is None):
            raise ValueError("give both logits and labels, or neither")
        if logits is not None:
            out["top1"] = top1_correct(logits.detach(), labels)
        return out

    @staticmethod
    def summary(
        values: Mapping[str, Tensor | Sequence[float]] | Sequence[Mapping[str, Tensor | Sequence[float]]],
        **kwargs,
    ) -> dict[str, dict[str, float]]:
        """See ``summarize``."""
        return summarize(values, **kwargs)
