"""What every run folder records besides its config: seed, package versions, command, code version, and which
data splits the run reads and its networks were trained on (the threat model, ``pfo.threat_model``)."""

from __future__ import annotations

import json
import os
import platform
import socket
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

import lightning as L
import torch

from pfo.threat_model import allowed_exceptions, data_splits

PACKAGES = (
    "pfo",
    "torch",
    "torchvision",
    "lightning",
    "timm",
    "torchmetrics",
    "lpips",
    "jsonargparse",
    "numpy",
)


def package_versions() -> dict[str, str | None]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def git_commit() -> str | None:
    try:
        root = Path(__file__).resolve().parents[1]
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain"], capture_output=True, text=True, timeout=5
        )
        return (out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")) or None
    except (OSError, subprocess.SubprocessError):
        return None


def run_info(seed: int | None) -> dict:
    return {
        "seed": seed,
        "command": [sys.executable, *sys.argv],
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "host": socket.gethostname(),
        "python": platform.python_version(),
        "packages": package_versions(),
        "git_commit": git_commit(),
        "cuda": torch.version.cuda if torch.cuda.is_available() else None,
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
    }


def splits_record(data, module, stage: str | None = None) -> dict:
    """Which data splits a run reads (a training run's splits per loop, or an attack's target split) and which
    splits the networks it loads were trained on (as their files record), with any threat-model option set."""
    record: dict = {"stage": stage}
    if data is not None and hasattr(data, "features_file"):  # an attack's targets (pfo.attacks.Targets)
        from_file = data.features_file is not None
        inner = getattr(data, "data", None)
        record["targets"] = {
            "split": None if from_file else data.split,
            "dataset": type(inner).__name__ if inner is not None and not from_file else None,
            "features_file": str(data.features_file) if from_file else None,
        }
    elif data is not None:
        splits = data_splits(data)
        record["data"] = {"dataset": type(data).__name__, **(splits if splits is not None else {"splits": "unknown"})}
    networks = {}
    for name, attribute in (("victim", "victim"), ("prior", "generator")):
        meta = getattr(getattr(module, attribute, None), "meta", None)
        if isinstance(meta, dict):
            networks[name] = meta.get("splits_seen", "not recorded")
    for name in ("decoder", "encoder"):  # IN's decoder (IN, PFOExtended's guide), PFOExtended's encoder
        meta = getattr(module, f"{name}_meta", None)
        if isinstance(meta, dict):
            networks[name] = meta.get("splits_seen", "not recorded")
    if networks:
        record["networks_trained_on"] = networks
    record["threat_model_exceptions"] = allowed_exceptions(module, data)
    return record


def write_run_info(folder: str | os.PathLike, seed: int | None, splits: dict | None = None) -> Path:
    path = Path(folder) / "run_info.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    info = run_info(seed)
    if splits is not None:
        info["data_splits"] = splits
    path.write_text(json.dumps(info, indent=2) + "\n")
    return path


class RunInfo(L.Callback):
    """Writes ``run_info.json`` into the run folder when a run starts (rank 0 only), with the data splits the run
    reads (``data_splits``)."""

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        folder = trainer.log_dir or trainer.default_root_dir  # a collective call: every rank must make it
        if trainer.is_global_zero:
            seed = os.environ.get("PL_GLOBAL_SEED")
            splits = splits_record(getattr(trainer, "datamodule", None), pl_module, stage)
            write_run_info(folder, int(seed) if seed is not None else None, splits)
