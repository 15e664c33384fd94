"""An attack's run folder: one result file per finished target, merged into tables, tensors and figures.

Each target's result is written atomically (a temporary file, synced, renamed into place) the moment its batch
ends, so a killed run loses at most the batch in flight and never leaves a half-written result that looks
finished; a rerun skips every target that has a file, after reading it back: a file damaged since (a full disk, a
copy cut short) is set aside and its target attacked again. The merge is cheap and idempotent: any process can
redo it, and it skips (with a warning) a file it cannot read.

One run at a time owns a folder: ``RunLock`` is an exclusive ``flock`` on ``run.lock`` held for the run's life,
which the kernel drops when the process ends however it ends (a killed or requeued run never leaves it stuck).
``FolderSnapshot`` puts a folder back as it was when a run fails before its first target.
"""

from __future__ import annotations

import csv
import fcntl
import json
import math
import os
import shutil
import socket
import time
import warnings
from pathlib import Path

import torch
from torchvision.utils import make_grid, save_image

from pfo.metrics import summarize

TARGETS_DIR = "targets"
LOCK_FILE = "run.lock"
DAMAGED_SUFFIX = ".damaged"


class DamagedTargetFile(ValueError):
    """A target's result file that cannot be read back (cut short, overwritten, not a result)."""


class RunFolderInUse(OSError):
    """Another run holds the run folder's lock (an OSError, as a busy resource is)."""


class AttackOutputs:
    """Reads and writes the files of one attack run folder."""

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)
        self.targets = self.folder / TARGETS_DIR

    def path(self, index: int) -> Path:
        return self.targets / f"{int(index):07d}.pt"

    def finished(self) -> set[int]:
        """Indices of targets whose result file is complete (only complete files ever carry the final name)."""
        if not self.targets.is_dir():
            return set()
        return {int(p.stem) for p in self.targets.glob("*.pt") if p.stem.isdigit()}

    def clear(self) -> None:
        """Start over: forget every finished target and the merged results."""
        shutil.rmtree(self.targets, ignore_errors=True)
        for name in ("metrics.csv", "summary.json", "reconstructions.pt", "comparison.png"):
            (self.folder / name).unlink(missing_ok=True)
        shutil.rmtree(self.folder / "images", ignore_errors=True)

    def write_target(self, index: int, result: dict) -> Path:
        self.targets.mkdir(parents=True, exist_ok=True)
        path = self.path(index)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as f:
            torch.save(result, f)
            f.flush()
            os.fsync(f.fileno())  # the content reaches the disk before the name says "finished"
        os.replace(tmp, path)
        return path

    def read_target(self, index: int) -> dict:
        """Target ``index``'s result; ``DamagedTargetFile`` (naming the file) when it cannot be read back."""
        path = self.path(index)
        try:
            result = torch.load(path, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise
        except Exception as error:  # torch reports a cut-short file as a RuntimeError of its zip reader
            reason = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise DamagedTargetFile(f"target file {path} cannot be read ({reason})") from error
        if not isinstance(result, dict) or result.get("index") != int(index):
            raise DamagedTargetFile(f"target file {path} does not hold the result of target {int(index)}")
        if not isinstance(result.get("reconstruction"), torch.Tensor) or not isinstance(result.get("metrics"), dict):
            raise DamagedTargetFile(f"target file {path} holds an incomplete result (no reconstruction or metrics)")
        return result

    def set_aside_damaged(self) -> list[tuple[int, Path, str]]:
        """Read back every finished target's file; rename those that cannot be read to ``<name>.damaged`` (kept for
        inspection, no longer counted as finished). Returns (index, file, why) of each."""
        damaged = []
        for index in sorted(self.finished()):
            try:
                self.read_target(index)
            except DamagedTargetFile as error:
                path = self.path(index)
                os.replace(path, path.with_name(path.name + DAMAGED_SUFFIX))
                damaged.append((index, path, str(error)))
        return damaged

    def results(self) -> list[dict]:
        """Every finished target's result, by index; a file that cannot be read is left out with a warning."""
        results = []
        for index in sorted(self.finished()):
            try:
                results.append(self.read_target(index))
            except DamagedTargetFile as error:
                warnings.warn(f"{error}; target {index} is left out (rerun the attack to redo it)", stacklevel=2)
        return results

    def merge(
        self, originals: dict[int, torch.Tensor] | None = None, stage_images: bool = False, grid_size: int = 16
    ) -> dict:
        """Write ``metrics.csv``, ``summary.json``, ``reconstructions.pt``, PNGs and ``comparison.png``."""
        results = self.results()
        if not results:
            return {}
        kept = {r["index"]: r["original"] for r in results if r.get("original") is not None}
        originals = {**kept, **(originals or {})}
        self.write_metrics_csv(results)
        summary = self.write_summary(results)
        torch.save(
            {
                "index": torch.tensor([r["index"] for r in results]),
                "reconstructions": torch.stack([r["reconstruction"] for r in results]),
            },
            self.folder / "reconstructions.pt",
        )
        images = self.folder / "images"
        images.mkdir(exist_ok=True)
        for r in results:
            save_image(r["reconstruction"].float(), images / f"{r['index']:07d}.png")
            if stage_images and r.get("stage_images") is not None:
                for k, img in enumerate(r["stage_images"]):
                    save_image(img.float(), images / f"{r['index']:07d}_stage{k}.png")
        grid = comparison_grid(results[:grid_size], originals)
        save_image(grid, self.folder / "comparison.png")
        return summary

    def write_metrics_csv(self, results: list[dict]) -> Path:
        columns = [
            "index",
            "label",
            "status",
            "best_stage",
            *sorted({k for r in results for k in (*r["metrics"], *r.get("unreported", {}))}),
            "seconds",
            "peak_memory_mb",
        ]
        if any(r.get("prior_class") is not None for r in results):  # a class-conditional prior's class per target
            columns.insert(columns.index("best_stage") + 1, "prior_class")
        path = self.folder / "metrics.csv"
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, columns)
            writer.writeheader()
            for r in results:
                row = {k: r.get(k) for k in columns if k in r and k != "metrics"}
                row.update({k: _scalar(v) for k, v in r["metrics"].items()})
                writer.writerow(row)
        return path

    def write_summary(self, results: list[dict]) -> dict:
        names = sorted({k for r in results for k in r["metrics"]})
        values = {n: torch.tensor([_scalar(r["metrics"].get(n, math.nan)) for r in results]) for n in names}
        values["seconds"] = torch.tensor([float(r["seconds"]) for r in results])
        values["peak_memory_mb"] = torch.tensor([float(r["peak_memory_mb"]) for r in results])
        summary = {
            "targets": len(results),
            "failed": sum(r["status"] != "ok" for r in results),
            "collapsed": int(sum(bool(r["metrics"].get("collapsed", False)) for r in results)),
            "metrics": summarize(values),
        }
        unreported = {k: v for r in results for k, v in r.get("unreported", {}).items()}
        if unreported:
            summary["unreported"] = unreported  # metric -> why its column is empty
        (self.folder / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        return summary


def _scalar(v) -> float:
    if isinstance(v, torch.Tensor):
        v = v.item()
    return float(v)


def comparison_grid(results: list[dict], originals: dict[int, torch.Tensor] | None = None) -> torch.Tensor:
    """Rows: the originals (when known) and the reconstructions; columns: targets."""
    recon = [r["reconstruction"].float() for r in results]
    rows = recon
    if originals:
        known = [originals.get(r["index"]) for r in results]
        if all(o is not None for o in known):
            rows = [o.float() for o in known] + recon
    return make_grid(torch.stack(rows), nrow=len(results), padding=1, pad_value=1.0)


class RunLock:
    """An exclusive lock on a run folder (``flock`` on ``run.lock``), held from ``acquire`` to ``release`` or the
    end of the process. The kernel drops it with the process, so a killed run, or a SLURM job stopped to be
    requeued, never leaves it held; on network file systems ``flock`` maps to the server's locks (NFS v4, Lustre
    with ``flock`` mounted). The lock file itself is never deleted while in use (a deleted lock file could be
    locked twice)."""

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK_FILE
        self._file = None

    @property
    def held(self) -> bool:
        return self._file is not None

    def acquire(self) -> None:
        """Take the lock without waiting; ``RunFolderInUse`` names the holder when another run has it."""
        if self._file is not None:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        f = open(self.path, "a+")  # noqa: SIM115 (open for the lock's life, closed by release)
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            f.close()
            raise RunFolderInUse(
                f"{self.folder} is in use by another attack run ({holder}); wait for it to end, or give this run "
                "its own folder (`--trainer.logger.init_args.name NEW`)"
            ) from None
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        f.flush()
        self._file = f

    def release(self) -> None:
        if self._file is None:
            return
        try:
            fcntl.flock(self._file.fileno(), fcntl.LOCK_UN)
        finally:
            self._file.close()
            self._file = None


class FolderSnapshot:
    """What a run folder held before a run started, to put it back when the run fails before it begins: a new
    folder is removed, an existing one loses what appeared in it and gets back the small files that were
    rewritten (``config.yaml``, ``run_info.json``). Results are never touched: none is written before that point."""

    def __init__(self, folder: str | os.PathLike, small: int = 1 << 20) -> None:
        self.folder = Path(folder)
        self.existed = self.folder.is_dir()
        self.entries = set(os.listdir(self.folder)) if self.existed else set()
        self.files = {}
        for name in self.entries:
            path = self.folder / name
            if path.is_file() and not path.is_symlink() and path.stat().st_size <= small:
                self.files[name] = path.read_bytes()

    def restore(self) -> None:
        if not self.existed:
            shutil.rmtree(self.folder, ignore_errors=True)
            return
        if not self.folder.is_dir():
            return
        for name in set(os.listdir(self.folder)) - self.entries:
            path = self.folder / name
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        for name, content in self.files.items():
            path = self.folder / name
            if not path.is_file() or path.read_bytes() != content:
                path.write_bytes(content)
