"""``scripts/demo.sh`` (what ``make demo`` runs) end to end at test size, on a tiny CIFAR-10 folder in the class-folder
layout (generated images): every stage runs with the options the demo passes, so a renamed option breaks this test,
not the README's first command. ``PFO_DEMO_SCALE=test`` is the one knob: a few steps of everything, two targets."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from test_configs import TINY_DATA

from pfo.models import load_prior, load_victim

REPO = Path(__file__).resolve().parents[1]
ALEXNET = REPO.parent / "shared" / "weights" / "alexnet_features.pth"  # LPIPS is checked where it is present
ATTACKS = {"PFO": "demo_pfo", "GLASS": "demo_glass", "rMLE": "demo_rmle"}


@pytest.mark.slow
def test_the_demo_runs_every_stage_and_reports_where_everything_went(tmp_path):
    TINY_DATA["pfo.data.CIFAR10"](tmp_path / "data" / "cifar10")  # 4 training and 1 test image per class
    logs = tmp_path / "logs"
    stale = logs / "demo_pfo" / "summary.json"  # what an earlier demo left: the rerun must start afresh
    stale.parent.mkdir(parents=True)
    stale.write_text('{"targets": 99}')
    env = {
        **os.environ,
        "PFO_DEMO_SCALE": "test",
        "PFO_DEMO_LOGS": str(logs),
        "PFO_DATA_ROOT": str(tmp_path / "data"),
        "PYTHON": sys.executable,
        "OMP_NUM_THREADS": "1",
    }
    env.pop("PFO_LPIPS_WEIGHTS", None)
    if ALEXNET.is_file():
        env["PFO_LPIPS_WEIGHTS"] = str(ALEXNET)
    done = subprocess.run(
        ["bash", str(REPO / "scripts" / "demo.sh")], env=env, capture_output=True, text=True, timeout=1200
    )
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    out = done.stdout

    assert load_victim(logs / "demo_victim" / "victim.pt").split_point
    assert load_prior(logs / "demo_prior" / "generator.pt").config["resolution"] == 32
    for name, run in ATTACKS.items():
        summary = json.loads((logs / run / "summary.json").read_text())
        assert summary["targets"] == 2 and summary["failed"] == 0, (name, summary)
        assert (logs / run / "comparison.png").is_file() and (logs / run / "metrics.csv").is_file()
        assert yaml.safe_load((logs / run / "config.yaml").read_text())["model"]["init_args"]["split_point"] == "conv1"
        # the printed table row: PSNR and SSIM mean / median, as summary.json has them
        psnr, ssim = summary["metrics"]["psnr"], summary["metrics"]["ssim"]
        row = re.search(rf"^{name}\s+2\s+(\S+) / (\S+)\s+(\S+) / (\S+)", out, re.M)
        assert row, out[-3000:]
        assert row.groups()[:4] == (
            f"{psnr['mean']:.2f}",
            f"{psnr['median']:.2f}",
            f"{ssim['mean']:.3f}",
            f"{ssim['median']:.3f}",
        )
        if ALEXNET.is_file():
            assert "lpips" in summary["metrics"], "PFO_LPIPS_WEIGHTS was set but LPIPS was not reported"
    assert (logs / "demo_comparison.png").is_file()  # originals, then one row per attack
    for path in ("demo_victim/victim.pt", "demo_prior/generator.pt", "demo_pfo/", "demo_comparison.png"):
        assert str(logs / path) in out, f"{path} is not in the demo's closing lines"


def test_an_unknown_scale_is_one_line(tmp_path):
    env = {**os.environ, "PFO_DEMO_SCALE": "huge", "PFO_DEMO_LOGS": str(tmp_path)}
    done = subprocess.run(["bash", str(REPO / "scripts" / "demo.sh")], env=env, capture_output=True, text=True)
    assert done.returncode == 2 and done.stderr.strip() == "error: PFO_DEMO_SCALE must be full or test, got 'huge'"
