"""A user's own network as the victim: any ``nn.Module`` the client runs, with or without the server's part.

Every attack needs only what the client computes (the head) and the input it expects (size, normalisation).
``Head`` gives a plain module that shape, so "what does *my* head leak?" needs no subclass. Without a tail, the
metrics that need the server's prediction (``top1``, ``utility_top1``) are left empty.

A victim file rebuilds the module from its class path and constructor arguments (never by unpickling code), so
a ``Head`` can be written to one when its module is given in that form: ``{"class_path": "pkg.MyHead",
"init_args": {...}}``, the class importable wherever the file is loaded.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from pfo.models.pretrained import load_pretrained_state
from pfo.models.split import SplitModel


def build_module(spec: nn.Module | Mapping[str, Any], role: str) -> tuple[nn.Module, dict[str, Any] | None]:
    """The module, and its ``class_path``/``init_args`` when it was given in that form (else None)."""
    if isinstance(spec, nn.Module):
        return spec, None
    if not isinstance(spec, Mapping) or not isinstance(spec.get("class_path"), str):
        raise TypeError(
            f"the {role} must be an nn.Module or {{'class_path': 'package.Class', 'init_args': {{...}}}}, got "
            f"{type(spec).__name__}"
        )
    path, init_args = spec["class_path"], dict(spec.get("init_args") or {})
    module_name, _, class_name = path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError, ValueError) as error:
        raise ValueError(f"cannot import the {role}'s class {path!r}; make its module importable ({error})") from error
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise TypeError(f"the {role}'s class {path!r} is not an nn.Module")
    return cls(**init_args), {"class_path": path, "init_args": init_args}


class Head(SplitModel):
    """Any ``nn.Module`` as what the client runs on its private images (and, optionally, the server's part).

    ``Head(MyHead(), input_size=64)`` is a victim every attack accepts. The head receives images in [0, 1]
    normalised by ``mean``/``std`` (the defaults leave them as they are) and may return any tensor.
    """

    def __init__(
        self,
        module: dict[str, Any],
        input_size: int,
        mean: tuple[float, float, float] = (0.0, 0.0, 0.0),
        std: tuple[float, float, float] = (1.0, 1.0, 1.0),
        tail: dict[str, Any] | None = None,
        num_classes: int = 0,
        weights: str | None = None,
        split_point: str = "head",
    ) -> None:
        """
        Args:
            module: what the client runs: ``{"class_path": "pkg.MyHead", "init_args": {...}}`` (the form YAML
                gives and a victim file can hold) or, from Python, the ``nn.Module`` itself.
            input_size: side of the square images the head takes.
            mean: per-channel mean subtracted before the head (images are in [0, 1]).
            std: per-channel standard deviation divided out before the head.
            tail: the server's part, if the attacker has it (then ``top1`` is measured); same forms as ``module``.
                (Both are typed as the dict form so that YAML keeps it: jsonargparse would otherwise build the
                module itself and its constructor arguments would be lost.)
            num_classes: the tail's outputs (0 without a tail); found by running the tail once when left 0.
            weights: a local state-dict file of ``module`` (read with ``weights_only=True``).
            split_point: the one split point, ``head`` (kept for the victim file's round trip).
        """
        head, head_spec = build_module(module, "head")
        server, tail_spec = build_module(tail, "tail") if tail is not None else (None, None)
        if weights is not None:
            head.load_state_dict(load_pretrained_state(weights, None, option="weights"))
        net = nn.ModuleDict({"head": head} if server is None else {"head": head, "tail": server})
        stages = [("head", head)] + ([("tail", server)] if server is not None else [])
        super().__init__(net, stages, ["head"], split_point, tuple(mean), tuple(std), input_size, num_classes)
        if server is not None and not num_classes:
            self.num_classes = self._count_outputs()
        given = (("module", head, head_spec), ("tail", server, tail_spec))
        self._unrecorded = [role for role, part, spec in given if part is not None and spec is None]
        self._record_config(
            module=head_spec,
            input_size=input_size,
            mean=list(mean),
            std=list(std),
            tail=tail_spec,
            num_classes=self.num_classes,
            weights=None,  # the weights travel in the victim file
        )

    @torch.no_grad()
    def _count_outputs(self) -> int:
        training = self.training
        try:
            probe = self.eval()(torch.zeros(1, 3, self.input_size, self.input_size))
        finally:
            self.train(training)
        return int(probe.shape[-1])

    def export_config(self) -> dict[str, Any]:
        if self._unrecorded:
            raise ValueError(
                f"this Head's {self._unrecorded[0]} was given as a module object, which a victim file cannot "
                f"rebuild; give it as {{'class_path': 'your_package.YourModule', 'init_args': {{...}}}} (importable "
                f"where the file is loaded) and load its weights with `weights:` or load_state_dict"
            )
        return self.config
