"""Classifiers cut in two at a named layer: the client runs ``head``, the server runs ``tail``.

A ``SplitModel`` owns the original network (``net``) and its input normalisation; ``head`` and ``tail`` are views
made of the same module objects, so the state dict never depends on where the model is split and re-splitting
a trained victim elsewhere is free (``with_split``). ``tail(head(x))`` runs exactly the operations of the whole
network, in the same order, so it equals ``model(x)`` bitwise.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import torch
from torch import nn


class Normalize(nn.Module):
    """Per-channel input normalisation, kept as buffers so it travels with the weights."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class SplitModel(nn.Module):
    """Base of split classifiers. Subclasses build ``net`` and list its stages in execution order (or override
    ``_halves`` and ``_resolve_split_point`` to cut it another way, as ``GraphSplitModel`` does).

    Inputs are images in [0, 1] at ``input_size``; the head normalises them first, so an attacker (or a client)
    feeds raw images. ``config`` records the constructor arguments so a victim file can rebuild the model.
    """

    def __init__(
        self,
        net: nn.Module,
        stages: list[tuple[str, nn.Module]],
        split_points: list[str],
        split_point: str,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        input_size: int,
        num_classes: int,
    ) -> None:
        super().__init__()
        self.net = net
        self.normalize = Normalize(mean, std)
        self.input_size = input_size
        self.num_classes = num_classes
        self._stages = stages
        self._split_points = list(split_points)
        self.config: dict[str, Any] = {}
        self._cut(split_point)

    @property
    def split_points(self) -> list[str]:
        """The valid split points, in execution order."""
        return list(self._split_points)

    @property
    def split_point(self) -> str:
        return self._split_point

    def _cut(self, split_point: str) -> None:
        split_point = self._resolve_split_point(split_point)
        head, tail = self._halves(split_point)
        # Plain attributes (not registered submodules): the modules already live in ``net``.
        self.__dict__["head"] = nn.Sequential(OrderedDict([("normalize", self.normalize), *head]))
        self.__dict__["tail"] = nn.Sequential(OrderedDict(tail))
        self._split_point = split_point
        if self.config:
            self.config["init_args"]["split_point"] = split_point

    def _resolve_split_point(self, split_point: str) -> str:
        """The name ``split_point`` is recorded under; refuses an unknown one, listing the valid ones."""
        if split_point not in self._split_points:
            raise ValueError(
                f"unknown split point {split_point!r} for {type(self).__name__}; "
                f"valid split points: {', '.join(self._split_points)}"
            )
        return split_point

    def _halves(self, split_point: str) -> tuple[list[tuple[str, nn.Module]], list[tuple[str, nn.Module]]]:
        """The head's modules (after the normalisation) and the tail's, each as ``(name, module)`` in order."""
        cut = [name for name, _ in self._stages].index(split_point) + 1
        # nn.Sequential refuses dotted names such as ``blocks.3``; these names never reach the state dict.
        stages = [(name.replace(".", "_"), module) for name, module in self._stages]
        return stages[:cut], stages[cut:]

    def with_split(self, split_point: str) -> SplitModel:
        """Re-split the same weights at another point (in place) and return self."""
        self._cut(split_point)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        return self.tail(self.head(x))

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        """What the client sends: the features at the split point."""
        self.check_input(x)
        return self.head(x)

    def check_input(self, x: torch.Tensor) -> None:
        if x.ndim != 4 or x.shape[1] != 3 or x.shape[-1] != self.input_size or x.shape[-2] != self.input_size:
            raise ValueError(
                f"{type(self).__name__} expects images of shape (N, 3, {self.input_size}, {self.input_size}), "
                f"got {tuple(x.shape)}; set the data module's `resolution` to {self.input_size} "
                f"(or build the model with input_size={x.shape[-1]})"
            )

    def export_config(self) -> dict[str, Any]:
        """The class path and constructor arguments a victim file rebuilds this model from (its weights travel
        beside them)."""
        return self.config

    def _record_config(self, **init_args: Any) -> None:
        cls = type(self)
        self.config = {"class_path": f"{cls.__module__}.{cls.__qualname__}", "init_args": dict(init_args)}
        self.config["init_args"]["split_point"] = self._split_point


def has_tail(victim: nn.Module) -> bool:
    """Whether the split leaves the server a part (the tail) whose predictions can be scored: a victim given only as
    its head (``pfo.models.Head``), or cut after its last layer, has none."""
    tail = getattr(victim, "tail", None)
    if tail is None or isinstance(tail, nn.Identity):
        return False
    return not (isinstance(tail, nn.Sequential) and len(tail) == 0)
