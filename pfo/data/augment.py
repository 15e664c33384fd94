"""Batched augmentation, applied to whole batches after they reach the device (cheaper than per-image
transforms in loader workers, which compete with training for the CPU cores)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def random_crop_flip(images: torch.Tensor, padding: int = 4, flip: bool = True) -> torch.Tensor:
    """Random translation by up to ``padding`` pixels (reflect padding) and random horizontal flips, per image."""
    n, _, h, w = images.shape
    if padding > 0:
        padded = F.pad(images, (padding,) * 4, mode="reflect")
        dy = torch.randint(0, 2 * padding + 1, (n,), device=images.device)
        dx = torch.randint(0, 2 * padding + 1, (n,), device=images.device)
        rows = (dy[:, None] + torch.arange(h, device=images.device))[:, None, :, None]
        cols = (dx[:, None] + torch.arange(w, device=images.device))[:, None, None, :]
        batch = torch.arange(n, device=images.device)[:, None, None, None]
        chans = torch.arange(images.shape[1], device=images.device)[None, :, None, None]
        images = padded[batch, chans, rows, cols]
    if flip:
        mask = torch.rand(n, device=images.device) < 0.5
        images = torch.where(mask[:, None, None, None], images.flip(-1), images)
    return images
