"""Differentiable augmentation for GAN training on small data sets (DiffAugment, Zhao et al., NeurIPS 2020).

With few images the discriminator memorises the training set and its gradients stop guiding the generator. Showing
D only randomly transformed images, real and fake alike, prevents that; because every transform is differentiable,
the generator's gradient flows through the transform, so G learns the untransformed distribution (the transforms do
not "leak" into its samples). Randomness comes from torch's global RNG (seeded by ``seed_everything``), drawn
independently per image and per call.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

COLOR = ("brightness", "saturation", "contrast")
TRANSFORMS = (*COLOR, "translation", "cutout")


def parse_policy(policy: str | None) -> tuple[str, ...]:
    """``"color,translation,cutout"`` -> the transforms in application order; ``None`` or ``""`` -> none.

    ``color`` stands for brightness, saturation and contrast (DiffAugment's grouping).
    """
    if not policy:
        return ()
    names: list[str] = []
    for part in (p.strip() for p in policy.split(",")):
        if part == "color":
            names.extend(COLOR)
        elif part in TRANSFORMS:
            names.append(part)
        elif part:
            raise ValueError(
                f"unknown augmentation {part!r} in policy {policy!r}; use any of color, {', '.join(TRANSFORMS)}"
            )
    return tuple(names)


def brightness(x: Tensor) -> Tensor:
    """Add one offset in [-0.5, 0.5) per image (images in [-1, 1])."""
    return x + (torch.rand(x.shape[0], 1, 1, 1, dtype=x.dtype, device=x.device) - 0.5)


def saturation(x: Tensor) -> Tensor:
    """Scale each pixel's distance from its grey value by a factor in [0, 2) per image."""
    mean = x.mean(dim=1, keepdim=True)
    return (x - mean) * (torch.rand(x.shape[0], 1, 1, 1, dtype=x.dtype, device=x.device) * 2) + mean


def contrast(x: Tensor) -> Tensor:
    """Scale each image's distance from its mean by a factor in [0.5, 1.5)."""
    mean = x.mean(dim=[1, 2, 3], keepdim=True)
    return (x - mean) * (torch.rand(x.shape[0], 1, 1, 1, dtype=x.dtype, device=x.device) + 0.5) + mean


def translation(x: Tensor, ratio: float = 0.125) -> Tensor:
    """Shift each image by up to ``ratio`` of its size in x and y (integer pixels), filling with zeros."""
    n, _, h, w = x.shape
    sy, sx = int(h * ratio + 0.5), int(w * ratio + 0.5)
    if sy == 0 and sx == 0:
        return x
    dy = torch.randint(-sy, sy + 1, (n, 1, 1), device=x.device)
    dx = torch.randint(-sx, sx + 1, (n, 1, 1), device=x.device)
    # Read pixel (i - dy, j - dx) of the zero-padded image: a gather, so gradients reach the kept pixels.
    rows = (torch.arange(h, device=x.device)[None, :, None] - dy + sy).expand(n, h, w)
    cols = (torch.arange(w, device=x.device)[None, None, :] - dx + sx).expand(n, h, w)
    padded = F.pad(x, [sx, sx, sy, sy])
    batch = torch.arange(n, device=x.device)[:, None, None]
    return padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2)


def cutout(x: Tensor, ratio: float = 0.5) -> Tensor:
    """Zero one square of ``ratio`` times the image size at a random place per image (it may overhang)."""
    n, _, h, w = x.shape
    ch, cw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    if ch == 0 or cw == 0:
        return x
    cy = torch.randint(0, h + (1 - ch % 2), (n, 1, 1), device=x.device)
    cx = torch.randint(0, w + (1 - cw % 2), (n, 1, 1), device=x.device)
    dy = torch.arange(h, device=x.device)[None, :, None] - (cy - ch // 2)  # row offset into the square
    dx = torch.arange(w, device=x.device)[None, None, :] - (cx - cw // 2)
    inside = (dy >= 0) & (dy < ch) & (dx >= 0) & (dx < cw)
    return x * (~inside).unsqueeze(1).to(x.dtype)


class DiffAugment(nn.Module):
    """Apply the transforms of ``policy`` in order to a batch [N, C, H, W] in [-1, 1]; identity when empty."""

    def __init__(
        self,
        policy: str | None = "color,translation,cutout",  # Comma-separated transforms; None or "" = off.
        translation_ratio: float = 0.125,  # Largest shift, as a fraction of the image size.
        cutout_ratio: float = 0.5,  # Side of the cut-out square, as a fraction of the image size.
    ) -> None:
        super().__init__()
        self.policy = policy or ""
        self.transforms = parse_policy(policy)
        self.translation_ratio = translation_ratio
        self.cutout_ratio = cutout_ratio

    def forward(self, x: Tensor) -> Tensor:
        for name in self.transforms:
            if name == "translation":
                x = translation(x, self.translation_ratio)
            elif name == "cutout":
                x = cutout(x, self.cutout_ratio)
            else:
                x = {"brightness": brightness, "saturation": saturation, "contrast": contrast}[name](x)
        return x

    def extra_repr(self) -> str:
        return f"policy={self.policy!r}"
