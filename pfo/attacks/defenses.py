"""Inference-time defenses: what the client does to its features before sending them.

A defense runs on the client, so the attacker only ever sees its output. Random defenses draw from one
generator per target (seeded from the run seed and the target's index), so a target's defended features, like
its reconstruction, do not depend on which other targets share its batch.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from pfo.attacks.options import check_count, check_number
from pfo.attacks.targets import target_generators
from pfo.models.split import has_tail

# Offsets the run seed for the defense's draws, so they never coincide with the attack's own per-target draws.
DEFENSE_SEED_OFFSET = 1_000_003


def defense_generators(seed: int, indices: torch.Tensor) -> list[torch.Generator]:
    """One (CPU) generator per sample for a random defense, from the run ``seed`` and each sample's index in its
    split, so a target's defended features are the same on a laptop and on a GPU cluster."""
    return target_generators(seed + DEFENSE_SEED_OFFSET, indices)


class Defense(nn.Module):
    """Base: ``forward(h, generators)`` with one ``torch.Generator`` per sample (ignored by deterministic ones)."""

    def forward(self, h: torch.Tensor, generators: list[torch.Generator] | None = None) -> torch.Tensor:
        raise NotImplementedError

    @staticmethod
    def _per_sample(h: torch.Tensor, generators: list[torch.Generator] | None, draw) -> torch.Tensor:
        """``draw(shape, generator, device)`` once per sample on its generator's device, moved to ``h``'s device;
        without generators, one draw for the whole batch from the global generator of ``h``'s device."""
        if generators is None:
            return draw(h.shape, None, h.device)
        if len(generators) != h.shape[0]:
            raise ValueError(f"need one generator per sample: {len(generators)} for a batch of {h.shape[0]}")
        return torch.stack([draw(h.shape[1:], g, g.device) for g in generators]).to(h.device)


class AdditiveNoise(Defense):
    """Adds ``scale`` times unit noise of the subclass's distribution to every feature."""

    def __init__(self, scale: float = 0.1) -> None:
        """
        Args:
            scale: noise scale: the standard deviation for Gaussian noise, the scale b for Laplace noise (whose
                standard deviation is b * sqrt(2)).
        """
        super().__init__()
        check_number("scale", scale)
        self.scale = scale

    def extra_repr(self) -> str:
        return f"scale={self.scale}"

    def unit_noise(self, shape: torch.Size, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, h, generators=None):
        noise = self._per_sample(h, generators, self.unit_noise)
        return h + self.scale * noise.to(h.dtype)


class GaussianNoise(AdditiveNoise):
    """Adds N(0, scale^2) noise to every feature."""

    def unit_noise(self, shape, generator, device):
        return torch.randn(shape, generator=generator, device=device)


class LaplaceNoise(AdditiveNoise):
    """Adds Laplace(0, scale) noise (the differential-privacy mechanism) to every feature."""

    def unit_noise(self, shape, generator, device):
        u = torch.rand(shape, generator=generator, device=device) - 0.5
        return -torch.sign(u) * torch.log1p(-2 * u.abs().clamp(max=0.5 - 1e-7))


class Dropout(Defense):
    """Zeroes each feature with probability ``rate`` (no rescaling: the server's tail sees smaller activations)."""

    def __init__(self, rate: float = 0.5) -> None:
        """
        Args:
            rate: probability that a feature is dropped.
        """
        super().__init__()
        check_number("rate", rate, below=1)
        self.rate = rate

    def extra_repr(self) -> str:
        return f"rate={self.rate}"

    def forward(self, h, generators=None):
        keep = self._per_sample(h, generators, lambda s, g, device: torch.rand(s, generator=g, device=device))
        keep = keep >= self.rate
        return h * keep.to(h.dtype)


class Quantization(Defense):
    """Uniform quantisation of each sample's features to ``2**bits`` levels between its min and max."""

    def __init__(self, bits: int = 4) -> None:
        """
        Args:
            bits: bits per feature (2**bits levels).
        """
        super().__init__()
        check_count("bits", bits, 1)
        if bits > 16:
            raise ValueError(f"`bits` {bits!r} must be at most 16")
        self.bits = bits

    def extra_repr(self) -> str:
        return f"bits={self.bits}"

    def forward(self, h, generators=None):
        flat = h.flatten(1)
        low, high = flat.min(1, keepdim=True).values, flat.max(1, keepdim=True).values
        step = (high - low).clamp_min(1e-12) / (2**self.bits - 1)
        return (torch.round((flat - low) / step) * step + low).view_as(h)


class TopKPruning(Defense):
    """Keeps the ``keep`` fraction of each sample's features with the largest magnitude and zeroes the rest."""

    def __init__(self, keep: float = 0.5) -> None:
        """
        Args:
            keep: fraction of features kept, in (0, 1].
        """
        super().__init__()
        check_number("keep", keep, positive=True)
        if keep > 1:
            raise ValueError(f"`keep` {keep!r} must be a fraction in (0, 1]")
        self.keep = keep

    def extra_repr(self) -> str:
        return f"keep={self.keep}"

    def forward(self, h, generators=None):
        flat = h.flatten(1)
        k = max(1, round(self.keep * flat.shape[1]))
        threshold = flat.abs().topk(k, dim=1).values[:, -1:]
        return torch.where(flat.abs() >= threshold, flat, torch.zeros_like(flat)).view_as(h)


@torch.no_grad()
def accuracy_under_defense(victim: nn.Module, defense: Defense | None, batches: Iterable[dict], seed: int = 0) -> float:
    """Top-1 accuracy of the server's predictions from the defended features: the utility a defense leaves.

    ``victim`` is a ``SplitModel`` (put in eval mode here); ``batches`` yields dicts with ``image`` in [0, 1],
    ``label`` and ``index`` (a data module's loader). Each sample's noise is drawn as an attack run with the same
    ``seed`` draws it for the same index, so this is the accuracy under the very features the attacker sees.
    """
    if not has_tail(victim):
        raise ValueError(
            "accuracy_under_defense needs the server's part of the victim (its tail) to score predictions; this "
            "victim has none (a head given alone, or a split after the last layer): give the whole network"
        )
    victim.eval()
    correct = total = 0
    for batch in batches:
        h = victim.forward_head(batch["image"])
        if defense is not None:
            h = defense(h, defense_generators(seed, batch["index"]))
        correct += int((victim.tail(h).argmax(1) == batch["label"].to(h.device)).sum())
        total += h.shape[0]
    if total == 0:
        raise ValueError("accuracy_under_defense got no images; check the data split and its loader")
    return correct / total
