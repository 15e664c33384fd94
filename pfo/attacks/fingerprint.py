"""The settings that decide an attack's results, recorded in its run folder so that a rerun can never mix results
of different settings.

A target's reconstruction (and its scores) is a function of the networks the attack holds (victim, prior,
decoder: identified by a digest of their weights, whatever file or path they came from), the attack's options
(its hyperparameters: steps, learning rates, radii, distance, seed, ...), the effective split point, the defense
and its parameters, the targets' data (its class and options, the split, and which image each index names) and
the batch size (results are bitwise only at a fixed batch size). The fingerprint is built from all of these
generically, from the attack's ``hparams`` and every constructor argument of the defense and the data modules, and
leaves out only what ``BOOKKEEPING`` names: an option added tomorrow is part of it unless someone declares it
bookkeeping.

Names follow the command line (``model.init_args.steps``, ``data.data.init_args.resolution``), so a difference
reads as the option to change. A value naming a file is identified by the file's content (``{"file", "sha256"}``):
moving or copying a file changes nothing, replacing its content does.

Other tools key results with the same function; a benchmark cell, for one::

    settings = run_fingerprint(attack, datamodule)  # a flat dict of JSON values
    key = fingerprint_digest(settings)  # equal keys: interchangeable results
    compare_fingerprints(read_fingerprint(folder), settings)  # [] when the folder holds results of these settings
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn

from pfo.artifacts import file_digest

FINGERPRINT_FILE = "fingerprint.json"
FORMAT = 1

# Options that do not change any target's result, with the reason. Everything else is part of the fingerprint.
BOOKKEEPING: dict[str, str] = {
    "model.init_args.progress": "a progress bar",
    "model.init_args.fresh": "what to do with an earlier run's results, not how to compute them",
    "model.init_args.save_stage_images": "which PNG files the merge writes (every stage's tensor is kept anyway)",
    "data.count": "how many targets (a run may be extended with more)",
    "data.indices": "which targets (a run may be extended with more)",
    "data.shard": "which share of the targets a job attacks, not how each is attacked",
    "data.num_shards": "which share of the targets a job attacks, not how each is attacked",
    "data.data.init_args.root": "where the data lives; which image each index names is `data.items`",
    "data.data.init_args.batch_size": "the data module's own loaders (the targets batch by `data.batch_size`)",
    "data.data.init_args.num_workers": "how the data is loaded",
    "data.data.init_args.cache": "how the data is loaded",
    "data.data.init_args.download": "how the data is obtained",
}


class Difference(NamedTuple):
    """One setting that differs between two fingerprints (None: the setting is absent)."""

    name: str
    old: Any
    new: Any


# ----- identities -----------------------------------------------------------------------------------------------


def module_digest(module: nn.Module) -> str:
    """SHA-256 of a network's state (names, dtypes, shapes and bytes of every parameter and buffer), whatever
    device it is on and whatever file it came from."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def class_name(obj: Any) -> str:
    cls = obj if isinstance(obj, type) else type(obj)
    return f"{cls.__module__}.{cls.__qualname__}"


def init_parameters(cls: type) -> list[str]:
    """The named constructor arguments of ``cls`` and of its bases (which receive ``**kwargs``), in order."""
    names: list[str] = []
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        try:
            parameters = inspect.signature(init).parameters.values()
        except (TypeError, ValueError):
            continue
        for p in list(parameters)[1:]:
            if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) and p.name not in names:
                names.append(p.name)
    return names


def object_settings(obj: Any) -> dict | None:
    """``{"class_path", "init_args"}`` of an object built from a config (a defense, a data module): each
    constructor argument read back from the attribute of that name (or ``_name``); arguments kept under another
    name are not seen, so a class whose options matter keeps them under their own names."""
    if obj is None:
        return None
    init_args = {}
    for name in init_parameters(type(obj)):
        for attribute in (name, f"_{name}"):
            kept = attribute in getattr(obj, "__dict__", {})
            if kept or isinstance(getattr(type(obj), attribute, None), property):
                try:
                    init_args[name] = plain(getattr(obj, attribute))
                except Exception:  # a property that cannot be read now is not a setting
                    continue
                break
    return {"class_path": class_name(obj), "init_args": init_args}


def _names_a_file(text: str) -> bool:
    """A setting's text that is a path to a file (a split named ``test`` is not, whatever lies in the working
    folder)."""
    return (os.sep in text or "." in Path(text).name) and os.path.isfile(text)


def plain(value: Any) -> Any:
    """A JSON value for a setting: files by content, patterns by text, objects by their own settings."""
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, (str, os.PathLike)):
        text = os.fspath(value)
        return {"file": text, "sha256": file_digest(text)} if _names_a_file(text) else text
    if isinstance(value, re.Pattern):
        return value.pattern
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, torch.Tensor):
        return value.tolist() if value.numel() <= 64 else {"sha256": _tensor_digest(value)}
    if isinstance(value, nn.Module) and any(True for _ in value.parameters()):
        return {"class": class_name(value), "sha256": module_digest(value)}
    if hasattr(value, "__dict__") and not callable(value):
        return object_settings(value)
    return class_name(value)  # a callable or an opaque value: its kind, never a memory address


def _tensor_digest(tensor: torch.Tensor) -> str:
    tensor = tensor.detach().cpu().contiguous()
    return hashlib.sha256(tensor.reshape(-1).view(torch.uint8).numpy().tobytes()).hexdigest()


def items_digest(data: Any, split: str) -> dict | None:
    """Which image each target index names: a digest of the split's item keys and labels (no pixels read), or
    None for a data module that does not list its items."""
    records = getattr(data, "records", None)
    if records is None:
        return None
    digest = hashlib.sha256()
    count = 0
    for record in records(split):
        digest.update(f"{record.key}\t{record.label}\n".encode())
        count += 1
    return {"items": count, "sha256": digest.hexdigest()}


# ----- the fingerprint ------------------------------------------------------------------------------------------


def attack_settings(attack: nn.Module) -> dict:
    """``{"class_path", "init_args"}`` of an attack: its hyperparameters, its effective split point, its defense,
    and every network it holds by a digest of its weights."""
    hparams = dict(getattr(attack, "hparams", {}))
    # Names with a leading underscore are not options (LightningCLI records `_class_path`, `_instantiator`).
    init_args = {name: plain(value) for name, value in hparams.items() if not name.startswith("_")}
    victim = getattr(attack, "victim", None)
    if victim is not None and hasattr(victim, "split_point"):
        init_args["split_point"] = victim.split_point  # the default (null) means the file's split point
    init_args["defense"] = object_settings(getattr(attack, "defense", None))
    for name, child in attack.named_children():
        if name != "defense" and any(True for _ in child.parameters()):
            init_args[name] = {"class": class_name(child), "sha256": module_digest(child)}
    return {"class_path": class_name(attack), "init_args": init_args}


def data_settings(datamodule: Any) -> dict | None:
    """The targets' settings (``pfo.attacks.Targets``: its options, its data module's, and ``items``)."""
    if datamodule is None:
        return None
    settings = object_settings(datamodule)["init_args"]
    data, split = getattr(datamodule, "data", None), getattr(datamodule, "split", None)
    if data is not None and getattr(datamodule, "features_file", None) is None and split is not None:
        settings["items"] = items_digest(data, split)
    return settings


def flatten(settings: Mapping, prefix: str = "") -> dict[str, Any]:
    """``{"model": {"init_args": {"steps": ...}}}`` -> ``{"model.init_args.steps": ...}``; a file or network
    identity (a dict with ``sha256``) stays one value."""
    flat: dict[str, Any] = {}
    for key, value in settings.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping) and value and "sha256" not in value:
            flat.update(flatten(value, name))
        else:
            flat[name] = value
    return flat


def run_fingerprint(attack: nn.Module, datamodule: Any = None) -> dict[str, Any]:
    """The settings that decide the results of ``attack`` on the targets of ``datamodule``: a flat dict from
    command-line names to JSON values, bookkeeping (``BOOKKEEPING``) left out. Equal fingerprints give bitwise equal
    results on the same device (reads the split's item list and digests the networks: about a second per
    hundred million weights)."""
    settings = {"model": attack_settings(attack), "data": data_settings(datamodule)}
    flat = flatten(json.loads(json.dumps(settings)))  # tuples become lists, as they come back from the file
    return {name: value for name, value in flat.items() if name not in BOOKKEEPING}


def _comparable(value: Any) -> Any:
    """A file or network compares by its digest alone (its path is only a hint for the reader)."""
    return value["sha256"] if isinstance(value, Mapping) and "sha256" in value else value


def compare_fingerprints(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[Difference]:
    """The settings that differ between two fingerprints, by name (a setting absent from one is None there);
    names in ``BOOKKEEPING`` never differ. Empty: the results of one are the results of the other."""
    differences = []
    for name in sorted(set(old) | set(new)):
        if name in BOOKKEEPING:
            continue
        a, b = old.get(name), new.get(name)
        if _comparable(a) != _comparable(b):
            differences.append(Difference(name, a, b))
    return differences


def fingerprint_digest(fingerprint: Mapping[str, Any]) -> str:
    """One key for a fingerprint: equal keys, interchangeable results (a file or network by its digest)."""
    comparable = {k: _comparable(v) for k, v in fingerprint.items() if k not in BOOKKEEPING}
    return hashlib.sha256(json.dumps(comparable, sort_keys=True).encode()).hexdigest()


def show(value: Any) -> str:
    if isinstance(value, Mapping) and "sha256" in value:
        where = value.get("file") or value.get("class") or ""
        return f"{where} (sha256 {value['sha256'][:12]})".strip()
    return "(none)" if value is None else json.dumps(value)


def describe_differences(differences: list[Difference]) -> str:
    """One line per difference: ``name: old -> new``."""
    return "\n".join(f"  {d.name}: {show(d.old)} -> {show(d.new)}" for d in differences)


# ----- the record in a run folder -------------------------------------------------------------------------------


def write_fingerprint(folder: str | os.PathLike, fingerprint: Mapping[str, Any]) -> Path:
    """Write ``fingerprint.json`` atomically (a temporary file renamed into place)."""
    path = Path(folder) / FINGERPRINT_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"format": FORMAT, "settings": dict(fingerprint)}, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)
    return path


def read_fingerprint(folder: str | os.PathLike) -> dict[str, Any] | None:
    """The fingerprint a run folder records, or None when it records none (or the record is unreadable)."""
    path = Path(folder) / FINGERPRINT_FILE
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    settings = record.get("settings") if isinstance(record, dict) else None
    return settings if isinstance(settings, dict) else None
