"""Standalone files that hand a trained network from one stage to the next (victim file, generator file).

A file is a plain dict of tensors and JSON-like values, read with ``torch.load(weights_only=True)`` so loading
never runs code from the file. It holds what rebuilds the network (its class path and constructor arguments),
the weights, and metadata; never the training hyperparameters.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

FORMAT = "pfo"
VERSION = 1


_FILE_DIGESTS: dict[tuple[str, int, int], str] = {}


def file_digest(path: str | os.PathLike) -> str:
    """SHA-256 of a file's content: the identity of a victim, prior, encoder or decoder file whatever its path
    (remembered per path, size and modification time within a process)."""
    path = Path(path).resolve()
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    if key not in _FILE_DIGESTS:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        _FILE_DIGESTS[key] = digest.hexdigest()
    return _FILE_DIGESTS[key]


class ArtifactError(ValueError):
    """A file that is not the pfo artifact expected (another kind, another format, or damaged)."""


ZIP_MAGIC = b"PK\x03\x04"  # torch.save's format since torch 1.6 is a zip archive
LEGACY_TORCH_MAGIC = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19"  # the format before it

# What writes each kind of file, and its name in the run folder: the fix an error about such a file names.
MADE_BY = {
    "victim": ("`python train.py fit --config configs/victim_*.yaml`", "victim.pt", "Victims, split points and files"),
    "generator": ("`python train.py fit --config configs/gan_*.yaml`", "generator.pt", "Priors"),
    "decoder": ("`python train.py fit --config configs/in_*.yaml`", "decoder.pt", "Baselines, defenses, benchmark"),
    "features": ("`pfo.attacks.save_features`", "features.pt", "Baselines, defenses, benchmark"),
    "encoder": (
        "`python train.py fit --config configs/encoder_*.yaml`",
        "encoder.pt",
        "Baselines, defenses, benchmark",
    ),
}


def how_to_make(kind: str) -> str:
    """Where a ``kind`` file comes from, for error messages: the command that writes it and the README section."""
    command, name, section = MADE_BY.get(kind, ("the stage that makes it", f"{kind}.pt", "The three stages"))
    return f"{command} writes one ({name} in its run folder; README: '{section}')"


def damage(path: str | os.PathLike) -> str | None:
    """Why ``path`` looks like a file cut short (an empty file, or a torch zip archive without its end), or None.

    A copy or a download that stopped part-way is the usual cause; the fix is to copy or write the file again,
    not to look for another format."""
    path = Path(path)
    if path.stat().st_size == 0:
        return "the file is empty"
    with open(path, "rb") as f:
        head = f.read(len(ZIP_MAGIC))
    if head == ZIP_MAGIC and not zipfile.is_zipfile(path):
        return "a torch file cut short: its zip archive has no end"
    return None


def load_failure(path: str | os.PathLike, what: str, error: Exception) -> str:
    """Why ``torch.load(weights_only=True)`` could not read ``path``, in words that fit a file we never unpickle
    unsafely. torch's own message advises ``weights_only=False``, which runs any code the file carries: never
    relay that advice for a file of unknown origin."""
    path = Path(path)
    why = damage(path)
    if why is not None:
        return f"{path} is damaged or incomplete ({why}); copy or write it again"
    with open(path, "rb") as f:
        head = f.read(len(LEGACY_TORCH_MAGIC))
    if not (head.startswith(ZIP_MAGIC) or head == LEGACY_TORCH_MAGIC):
        return f"{path} is not {what}: it is not a file torch.save wrote (another kind of file, or damaged)"
    if "weights only load failed" in str(error).lower() or isinstance(error, pickle.UnpicklingError):
        return (
            f"{path} is not {what}: it holds Python objects beyond tensors and plain values, which pfo never "
            f"unpickles (that would run code from the file)"
        )
    return f"{path} is damaged or incomplete (torch could not read it: {type(error).__name__}); copy or write it again"


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
        raise ArtifactError(f"{load_failure(path, f'a pfo {kind} file', error)}; {how_to_make(kind)}") from error
    if isinstance(payload, dict) and "state_dict" in payload and "pytorch-lightning_version" in payload:
        name = MADE_BY.get(kind, ("", f"{kind}.pt", ""))[1]
        folder = path.parent.parent if path.parent.name == "checkpoints" else path.parent
        raise ArtifactError(
            f"{path} is a Lightning checkpoint, not a pfo {kind} file: give `{folder / name}`, which `train.py fit` "
            f"writes when the run ends (if it is missing, rerun the same `train.py fit` command: it resumes from "
            f"its last checkpoint, finishes and writes it)"
        )
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ArtifactError(f"{path} is not a pfo {kind} file; {how_to_make(kind)}")
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
