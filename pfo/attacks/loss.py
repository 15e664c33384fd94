"""The attack objective: how far a candidate image's features are from the observed ones, per sample.

Every function returns one value per sample, and attacks minimise their SUM: the gradient reaching sample i's
variables then depends on sample i alone, so a target's reconstruction does not depend on its batch neighbours.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from pfo.attacks.options import check_choice, check_number
from pfo.models.split import SplitModel

FeatureDistance = Literal["mse", "cosine", "l1"]
DISTANCES = ("mse", "cosine", "l1")


def feature_distance(h: torch.Tensor, h_star: torch.Tensor, kind: FeatureDistance = "mse") -> torch.Tensor:
    """Distance between candidate features ``h`` and observed features ``h_star``, one value per sample."""
    h, h_star = h.flatten(1), h_star.flatten(1)
    if kind == "mse":
        return (h - h_star).pow(2).mean(1)
    if kind == "l1":
        return (h - h_star).abs().mean(1)
    if kind == "cosine":
        return 1.0 - F.cosine_similarity(h, h_star, dim=1, eps=1e-8)
    raise ValueError(f"unknown feature distance {kind!r}; choose mse, cosine or l1")


def total_variation(images: torch.Tensor) -> torch.Tensor:
    """Anisotropic total variation (mean absolute difference of neighbouring pixels), one value per image."""
    dx = (images[..., :, 1:] - images[..., :, :-1]).abs().flatten(1).mean(1)
    dy = (images[..., 1:, :] - images[..., :-1, :]).abs().flatten(1).mean(1)
    return dx + dy


def to_victim_input(images: torch.Tensor, victim: SplitModel, value_range: tuple[float, float]) -> torch.Tensor:
    """Map images in ``value_range`` (the generator's [-1, 1], or [0, 1]) to the victim's input: [0, 1] at its
    resolution. The victim's own normalisation is the first layer of its head."""
    low, high = value_range
    x = (images - low) / (high - low)
    if x.shape[-1] != victim.input_size or x.shape[-2] != victim.input_size:
        antialias = x.shape[-1] > victim.input_size
        x = F.interpolate(
            x, size=(victim.input_size, victim.input_size), mode="bilinear", align_corners=False, antialias=antialias
        )
    return x


class AttackLoss(torch.nn.Module):
    """``D(head(T(image)), h*) + tv_weight * TV(T(image)) + l2_weight * mean(T(image)^2)``, per sample."""

    def __init__(self, distance: FeatureDistance = "mse", tv_weight: float = 0.0, l2_weight: float = 0.0) -> None:
        super().__init__()
        check_choice("distance", distance, DISTANCES)
        check_number("tv_weight", tv_weight)
        check_number("l2_weight", l2_weight)
        self.distance, self.tv_weight, self.l2_weight = distance, tv_weight, l2_weight

    def forward(self, x: torch.Tensor, victim: SplitModel, h_star: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x``: candidate images already in victim space. Returns (total loss, feature distance), each [N]."""
        distance = feature_distance(victim.head(x), h_star, self.distance)
        loss = distance
        if self.tv_weight:
            loss = loss + self.tv_weight * total_variation(x)
        if self.l2_weight:
            loss = loss + self.l2_weight * x.pow(2).flatten(1).mean(1)
        return loss, distance
