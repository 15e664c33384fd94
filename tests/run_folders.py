"""Comparing attack run folders, for the cluster tests: the merged files and every target's result, timings
apart (the only values that differ between runs of the same attack)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from pfo.attacks import AttackOutputs

TIMINGS = {"seconds", "peak_memory_mb"}


def journal(run: Path) -> list[tuple[int, int, int]]:
    """(target index, rank, restart count) of every result the attack wrote, in order."""
    path = run / "journal.txt"
    if not path.exists():
        return []
    return [tuple(int(x) for x in line.split()) for line in path.read_text().splitlines() if line.strip()]


def read_rows(run: Path) -> list[dict[str, str]]:
    with open(run / "metrics.csv", newline="") as f:
        return [{k: v for k, v in row.items() if k not in TIMINGS} for row in csv.DictReader(f)]


def pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))


def assert_same_results(run: Path, reference: Path) -> None:
    """The merged files of ``run`` equal the reference's, timings apart; every target's result bitwise."""
    indices = sorted(AttackOutputs(reference).finished())
    assert sorted(AttackOutputs(run).finished()) == indices
    rows = read_rows(run)
    assert [int(r["index"]) for r in rows] == indices  # each target once
    assert rows == read_rows(reference)
    ours, theirs = AttackOutputs(run), AttackOutputs(reference)
    for i in indices:
        a, b = ours.read_target(i), theirs.read_target(i)
        assert torch.equal(a["reconstruction"], b["reconstruction"]), f"target {i} differs"
        assert torch.equal(a["stage_losses"], b["stage_losses"]), f"target {i}: stage losses differ"
    merged, expected = (torch.load(r / "reconstructions.pt", weights_only=True) for r in (run, reference))
    assert torch.equal(merged["index"], expected["index"])
    assert torch.equal(merged["reconstructions"], expected["reconstructions"])
    summary, expected = (json.loads((r / "summary.json").read_text()) for r in (run, reference))
    for s in (summary, expected):
        for name in TIMINGS:
            s["metrics"].pop(name)
    assert summary == expected
    assert np.array_equal(pixels(run / "comparison.png"), pixels(reference / "comparison.png"))
    names = sorted(p.name for p in (reference / "images").glob("*.png"))
    assert sorted(p.name for p in (run / "images").glob("*.png")) == names
    for name in names:
        assert np.array_equal(pixels(run / "images" / name), pixels(reference / "images" / name)), name
