"""Standalone files that hand a trained network from one stage to the next (victim file, generator file).

A file is a plain dict of tensors and JSON-like values, read with ``torch.load(weights_only=True)`` so loading
never runs code from the file. It holds what rebuilds the network (its class path and constructor arguments),
the weights, and metadata; never the training hyperparameters.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any

import torch

FORMAT = "pfo"
VERSION = 1


class ArtifactError(ValueError):
    """A file that is not the pfo artifact expected (another kind, another format, or damaged)."""


def save_artifact(path: str | os.PathLike, kind: str, config: dict, state_dict: dict, **meta: Any) -> Path:
    """Write atomically (a temporary file renamed into place), so an interrupted save never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "kind": kind,
        "config": config,
        "state_dict": state_dict,
        "meta": meta,
    }
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)
    return path


def load_artifact(path: str | os.PathLike, kind: str) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no {kind} file at {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise ArtifactError(
            f"{path} is not a readable {kind} file: {error}. It may be damaged or of another kind; "
            f"re-export it (see README: 'Stages and files')"
        ) from error
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        hint = (
            " (a Lightning checkpoint: export it first)"
            if isinstance(payload, dict) and "state_dict" in payload and "pytorch-lightning_version" in payload
            else ""
        )
        raise ArtifactError(f"{path} is not a pfo {kind} file{hint}")
    if payload.get("kind") != kind:
        raise ArtifactError(f"{path} is a pfo {payload.get('kind')} file, not a {kind} file")
    if payload.get("version", 0) > VERSION:
        raise ArtifactError(f"{path} was written by a newer pfo (format version {payload['version']}); upgrade pfo")
    return payload


def build_from_config(config: dict, base: type) -> Any:
    """Instantiate ``config['class_path']`` with ``config['init_args']``, refusing classes that are not ``base``."""
    module_name, _, class_name = config["class_path"].rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as error:
        raise ArtifactError(f"cannot import {config['class_path']} named in the file: {error}") from error
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise ArtifactError(f"{config['class_path']} is not a {base.__name__}")
    return cls(**config["init_args"])
