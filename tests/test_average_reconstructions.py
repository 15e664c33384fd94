"""bench/average_reconstructions.py: the per-target average of several runs' reconstructions, scored like a run."""

from __future__ import annotations

import math

import pytest
import torch

from bench import average_reconstructions as avg
from pfo.attacks.outputs import AttackOutputs


def write_run(folder, originals: dict[int, torch.Tensor], noise: float, seed: int) -> None:
    """A finished run whose reconstructions are the originals plus independent Gaussian noise."""
    generator = torch.Generator().manual_seed(seed)
    outputs = AttackOutputs(folder)
    for index, original in originals.items():
        recon = original + noise * torch.randn(original.shape, generator=generator)
        outputs.write_target(index, {"index": index, "reconstruction": recon, "original": original, "metrics": {}})


def test_the_average_of_independent_reconstructions_gains_ten_log_k_decibels(tmp_path):
    """K reconstructions with independent errors of equal size: their mean's squared error is 1/K of each one's,
    +10 log10(K) dB of PSNR (what the mean of a posterior gains over its samples)."""
    torch.manual_seed(0)
    originals = {i: torch.rand(3, 32, 32) for i in (0, 3, 7)}
    folders = [tmp_path / f"run{k}" for k in range(4)]
    for k, folder in enumerate(folders):
        write_run(folder, originals, noise=0.1, seed=k)
    runs, loaded = avg.load_runs(folders)
    assert set(runs) == {f"run{k}" for k in range(4)} and set(loaded) == set(originals)
    single = [sum(avg.scores(run, loaded)["psnr"]) / 3 for run in runs.values()]
    assert all(s == pytest.approx(20.0, abs=0.2) for s in single)  # noise 0.1: MSE 0.01, 20 dB
    mean = sum(avg.scores(avg.average(runs), loaded)["psnr"]) / 3
    assert mean - sum(single) / 4 == pytest.approx(10 * math.log10(4), abs=0.2)

    text = avg.table(folders)
    assert "| average of the 4 runs above |" in text and "3 targets." in text


def test_runs_of_other_targets_are_refused(tmp_path):
    write_run(tmp_path / "a", {0: torch.rand(3, 8, 8), 1: torch.rand(3, 8, 8)}, 0.1, 0)
    write_run(tmp_path / "b", {0: torch.rand(3, 8, 8)}, 0.1, 1)
    with pytest.raises(SystemExit, match="same targets"):
        avg.load_runs([tmp_path / "a", tmp_path / "b"])
    write_run(tmp_path / "c", {0: torch.rand(3, 8, 8), 1: torch.rand(3, 8, 8)}, 0.1, 2)  # other images, same indices
    with pytest.raises(SystemExit, match="another image"):
        avg.load_runs([tmp_path / "a", tmp_path / "c"])
    with pytest.raises(SystemExit):
        avg.main([str(tmp_path / "a")])  # one run: nothing to average
