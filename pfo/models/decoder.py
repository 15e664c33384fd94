"""The inverse network's decoder: features at a split point -> image, learned from public (image, feature) pairs."""

from __future__ import annotations

import math

import torch
from torch import nn


def feature_grid(h: torch.Tensor) -> torch.Tensor:
    """Features as a [N, C, s, s] grid: CNN features pass through; ViT tokens [N, T, D] lose their prefix tokens
    (class, registers) and fold into the patch grid."""
    if h.ndim == 4:
        return h
    if h.ndim == 3:
        n, tokens, dim = h.shape
        side = math.isqrt(tokens)  # prefix tokens (class, a few registers) are fewer than 2 * side + 1
        patches = h[:, tokens - side * side :]
        return patches.transpose(1, 2).reshape(n, dim, side, side)
    raise ValueError(f"cannot decode features of shape {tuple(h.shape)}; expected [N, C, H, W] or [N, T, D]")


class FeatureDecoder(nn.Module):
    """Conv decoder: 3x3 conv to ``width``, then (x2 up-sample, conv, BN, ReLU) until ``image_size``, then RGB."""

    def __init__(self, in_channels: int, in_size: int, image_size: int, width: int = 128) -> None:
        """
        Args:
            in_channels: feature channels (ViT: embedding dimension).
            in_size: side of the feature grid.
            image_size: side of the reconstructed image.
            width: channels of the hidden layers.
        """
        super().__init__()
        if image_size % in_size or (image_size // in_size) & (image_size // in_size - 1):
            raise ValueError(f"image size {image_size} must be the feature size {in_size} times a power of two")
        self.config = {"in_channels": in_channels, "in_size": in_size, "image_size": image_size, "width": width}
        layers: list[nn.Module] = [nn.Conv2d(in_channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU()]
        size = in_size
        while size < image_size:
            layers += [
                nn.Upsample(scale_factor=2, mode="nearest"),
                nn.Conv2d(width, width, 3, padding=1),
                nn.BatchNorm2d(width),
                nn.ReLU(),
            ]
            size *= 2
        layers += [
            nn.Conv2d(width, width, 3, padding=1),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.Conv2d(width, 3, 3, padding=1),
            nn.Sigmoid(),
        ]
        self.net = nn.Sequential(*layers)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.net(feature_grid(h))

    @classmethod
    def for_features(cls, h: torch.Tensor, image_size: int, width: int = 128) -> FeatureDecoder:
        grid = feature_grid(h)
        return cls(grid.shape[1], grid.shape[-1], image_size, width)
