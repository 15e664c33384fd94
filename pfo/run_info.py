"""What every run folder records besides its config: seed, package versions, command, code version."""

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


def write_run_info(folder: str | os.PathLike, seed: int | None) -> Path:
    path = Path(folder) / "run_info.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(run_info(seed), indent=2) + "\n")
    return path


class RunInfo(L.Callback):
    """Writes ``run_info.json`` into the run folder when a run starts (rank 0 only)."""

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        folder = trainer.log_dir or trainer.default_root_dir  # a collective call: every rank must make it
        if trainer.is_global_zero:
            seed = os.environ.get("PL_GLOBAL_SEED")
            write_run_info(folder, int(seed) if seed is not None else None)
