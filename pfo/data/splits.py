"""Deterministic, disjoint data splits.

A victim is trained on a ``private`` split and an attacker's prior on a ``public`` split of the same data set. The
two must never overlap, whatever a user edits in either config, so the assignment of an item to a split is a pure
function of the item's stable key (its relative path, or its class and rank) and of constants fixed in code: a
config only *names* a split, it cannot redefine one.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass


def unit_hash(namespace: str, key: str) -> float:
    """Map ``key`` to a number in [0, 1) that is stable across machines, Python versions and runs."""
    digest = hashlib.blake2b(f"{namespace}/{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


@dataclass(frozen=True)
class FractionSplits:
    """Assign keys to named splits by fraction: item ``key`` goes to the split whose cumulative range holds
    ``unit_hash(namespace, key)``. Adding or removing files never moves the other files between splits."""

    namespace: str
    fractions: Mapping[str, float]

    def __post_init__(self) -> None:
        total = sum(self.fractions.values())
        if abs(total - 1.0) > 1e-9 or any(f < 0 for f in self.fractions.values()):
            raise ValueError(f"split fractions must be non-negative and sum to 1, got {dict(self.fractions)}")

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.fractions)

    def assign(self, key: str) -> str:
        u = unit_hash(self.namespace, key)
        upper = 0.0
        for name, fraction in self.fractions.items():
            upper += fraction
            if u < upper:
                return name
        return next(reversed(list(self.fractions)))  # u rounds up to 1.0 at most: last split


def check_split_name(split: str, valid: tuple[str, ...], dataset: str) -> None:
    """Raise a clear error for a split name the data set does not define."""
    if split not in valid:
        raise ValueError(f"{dataset} has no split {split!r}; its splits are {', '.join(valid)}")
