"""An attack's run folder: one result file per finished target, merged into tables, tensors and figures.

Each target's result is written atomically (a temporary file renamed into place) the moment its batch ends, so
a killed run loses at most the batch in flight and never leaves a half-written result that looks finished; a
rerun skips every target that has a file. The merge is cheap and idempotent: any process can redo it.
"""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
from pathlib import Path

import torch
from torchvision.utils import make_grid, save_image

from pfo.metrics import summarize

TARGETS_DIR = "targets"


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
        torch.save(result, tmp)
        os.replace(tmp, path)
        return path

    def read_target(self, index: int) -> dict:
        return torch.load(self.path(index), map_location="cpu", weights_only=True)

    def results(self) -> list[dict]:
        return [self.read_target(i) for i in sorted(self.finished())]

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
            *sorted({k for r in results for k in r["metrics"]}),
            "seconds",
            "peak_memory_mb",
        ]
        path = self.folder / "metrics.csv"
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, columns)
            writer.writeheader()
            for r in results:
                row = {k: r.get(k) for k in ("index", "label", "status", "best_stage", "seconds", "peak_memory_mb")}
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
