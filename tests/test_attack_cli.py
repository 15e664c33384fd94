"""Stage 3 end to end: ``attack.cli_main(args=[...])`` (and ``python attack.py`` in a subprocess where Lightning
must relaunch it, or where the test kills it) with a 16-px victim and prior files, synthetic targets, every output
under ``tmp_path``: the run folder, resume after a simulated and a real interruption, a features file instead of
images, two processes, LPIPS, and the errors a user meets first.

One reference run (six targets in batches of two, module scope) is the yardstick the other runs must reproduce
bitwise: at a fixed batch size a target's reconstruction depends on nothing but the target.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import yaml
from PIL import Image

import attack
from pfo.attacks import AttackOutputs, save_features
from pfo.data import SyntheticImages
from pfo.metrics import psnr
from pfo.models import ResNet, load_victim, save_victim
from pfo.models.generator_file import save_generator
from pfo.models.stylegan2 import Generator

REPO = Path(__file__).resolve().parents[1]
SHARED_WEIGHTS = REPO.parent / "shared" / "weights" / "alexnet_features.pth"
TARGETS = [0, 2, 5, 8, 10, 13]  # six targets spread over the 16 synthetic test images
COLUMNS = [
    "index",
    "label",
    "status",
    "best_stage",
    "collapsed",
    "feature_distance",
    "psnr",
    "ssim",
    "top1",
    "seconds",
    "peak_memory_mb",
]

pytestmark = [
    pytest.mark.filterwarnings("ignore:LPIPS will be reported as missing"),
    pytest.mark.filterwarnings("ignore:.*module\\(s\\) in eval mode"),
    pytest.mark.filterwarnings("ignore:.*returned `None`, this fit will run with no optimizer"),
    pytest.mark.filterwarnings("ignore:.*isinstance\\(treespec, LeafSpec\\)"),
    pytest.mark.filterwarnings("ignore:.*`srun` command is available"),
]


# ----- artefacts, configs and runs ------------------------------------------------------------------------------


def make_artefacts(folder: Path, resolution: int = 16) -> dict[str, str]:
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(1)
    victim = ResNet(depth=18, num_classes=4, stem="cifar", input_size=resolution, split_point="layer1").eval()
    torch.manual_seed(2)
    G = Generator(z_dim=16, w_dim=16, resolution=resolution, n_mlp=2, channel_base=128, channel_max=16)
    return {
        "victim": str(save_victim(victim, folder / "victim.pt")),
        "generator": str(save_generator(G, folder / "generator.pt")),
    }


@pytest.fixture(scope="module")
def artefacts(tmp_path_factory) -> dict[str, str]:
    return make_artefacts(tmp_path_factory.mktemp("artefacts"))


def attack_config(artefacts: dict, root: Path, name: str = "run", **data) -> dict:
    """A run shaped like configs/pfo_resnet.yaml, shrunk: three PFO stages of 6 + 3 + 3 steps, four initial
    latents; the run folder is ``root/logs/<name>``."""
    return {
        "seed_everything": 0,
        "model": {
            "class_path": "pfo.attacks.PFO",
            "init_args": {
                **artefacts,
                "n_init": 4,
                "init_chunk": 4,
                "steps": [6, 3, 3],
                "lr": 0.05,
                "feature_radius": 0.1,
                "progress": False,
            },
        },
        "data": {
            "data": {"class_path": "pfo.data.SyntheticImages", "init_args": {"resolution": 16}},
            "split": "test",
            "count": len(TARGETS),
            "batch_size": 2,
            **data,
        },
        "trainer": {
            "accelerator": "cpu",
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "logger": {
                "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                "init_args": {"save_dir": str(root / "logs"), "name": name, "version": ""},
            },
        },
    }


def write_config(root: Path, config: dict, name: str = "attack_tiny.yaml") -> Path:
    path = root / name
    path.write_text(yaml.safe_dump(config))
    return path


def run_cli(config: Path, *extra: str) -> Path:
    """``attack.cli_main`` in this process; returns the run folder. Restores the environment variables and signal
    handlers Lightning changes (the conftest fixtures do it per test; module fixtures need it too)."""
    environ = dict(os.environ)
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    argv = sys.argv
    sys.argv = ["attack.py"]
    try:
        cli = attack.cli_main(["--config", str(config), *extra])
    finally:
        sys.argv = argv
        os.environ.clear()
        os.environ.update(environ)
        for s, handler in handlers.items():
            signal.signal(s, handler)
    return Path(cli.trainer.log_dir)


def run_script(config: Path, *extra: str, cwd: Path, **popen) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    env.pop("PFO_DATA_ROOT", None)
    command = [sys.executable, str(REPO / "attack.py"), "--config", str(config), *extra]
    return subprocess.Popen(command, cwd=cwd, env=env, **popen)


def read_csv(folder: Path) -> tuple[list[str], list[dict]]:
    with open(folder / "metrics.csv", newline="") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames), list(reader)


def assert_same_results(folder: Path, reference: Path, indices: list[int] = TARGETS) -> None:
    """Every target exactly once, reconstructions and per-stage losses bitwise equal to the reference run."""
    _, rows = read_csv(folder)
    assert [int(r["index"]) for r in rows] == indices
    assert sorted(AttackOutputs(folder).finished()) == indices
    ours, theirs = AttackOutputs(folder), AttackOutputs(reference)
    for i in indices:
        a, b = ours.read_target(i), theirs.read_target(i)
        assert torch.equal(a["reconstruction"], b["reconstruction"]), f"target {i} differs"
        assert torch.equal(a["stage_losses"], b["stage_losses"]), f"target {i}: stage losses differ"
        assert a["best_stage"] == b["best_stage"] and a["status"] == b["status"] == "ok"
    merged = torch.load(folder / "reconstructions.pt", weights_only=True)
    assert merged["index"].tolist() == indices


@pytest.fixture(scope="module")
def reference(artefacts, tmp_path_factory) -> dict:
    """The yardstick: six targets in batches of two (the last batch of each shard is padded in the two-process
    run), no defense, no LPIPS weights. Returns the run folder and the warnings the run raised."""
    root = tmp_path_factory.mktemp("reference")
    config = write_config(root, attack_config(artefacts, root))
    cwd, threads = os.getcwd(), torch.get_num_threads()
    os.chdir(root)
    torch.set_num_threads(1)  # as the scripts run (run_script): a thread count changes the last bits of a convolution
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            folder = run_cli(config)
    finally:
        os.chdir(cwd)
        torch.set_num_threads(threads)
    return {"folder": folder, "warnings": [str(w.message) for w in caught]}


@pytest.fixture
def written(monkeypatch) -> list[int]:
    """The index of every target result written in this process (wraps ``AttackOutputs.write_target``)."""
    indices: list[int] = []
    original = AttackOutputs.write_target

    def write_target(self, index, result):
        indices.append(int(index))
        return original(self, index, result)

    monkeypatch.setattr(AttackOutputs, "write_target", write_target)
    return indices


# ----- the entry point ------------------------------------------------------------------------------------------


def test_help_and_print_config(plain_argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        attack.cli_main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "--config" in text and "--data.batch_size" in text and "--trainer" in text

    with pytest.raises(SystemExit) as exit_info:
        attack.cli_main(["--config", str(REPO / "configs" / "pfo_resnet.yaml"), "--print_config"])
    assert exit_info.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    model = printed["model"]
    assert model["class_path"] == "pfo.attacks.PFO"
    assert model["init_args"]["steps"] == [200, 100, 100, 100]
    assert model["init_args"]["split_point"] == "layer2" and model["init_args"]["radius_mode"] == "per_element"
    assert printed["data"]["count"] == 32 and printed["data"]["data"]["class_path"] == "pfo.data.CIFAR10"
    assert printed["trainer"]["max_epochs"] == 1 and printed["trainer"]["use_distributed_sampler"] is False


# ----- the run folder -------------------------------------------------------------------------------------------


def test_a_run_writes_a_complete_folder(reference):
    folder = reference["folder"]
    assert folder.name == "run"
    saved = yaml.safe_load((folder / "config.yaml").read_text())
    assert saved["model"]["class_path"] == "pfo.attacks.PFO" and saved["data"]["count"] == len(TARGETS)
    info = json.loads((folder / "run_info.json").read_text())
    assert info["seed"] == 0 and info["packages"]["torch"]
    splits = info["data_splits"]  # the threat model's record: where the targets came from
    assert splits["targets"] == {"split": "test", "dataset": "SyntheticImages", "features_file": None}
    assert splits["networks_trained_on"] == {"victim": "not recorded", "prior": "not recorded"}  # files made by hand
    assert splits["threat_model_exceptions"] == []

    columns, rows = read_csv(folder)
    assert columns[:4] == COLUMNS[:4] and columns[-2:] == COLUMNS[-2:] and set(COLUMNS) <= set(columns)
    assert "lpips" not in columns  # no AlexNet weights were given ...
    assert any("LPIPS will be reported as missing" in w for w in reference["warnings"])  # ... and the user was told
    assert [int(r["index"]) for r in rows] == TARGETS
    data = SyntheticImages(resolution=16).dataset("test")
    recon = torch.load(folder / "reconstructions.pt", weights_only=True)
    assert recon["index"].tolist() == TARGETS and recon["reconstructions"].shape == (len(TARGETS), 3, 16, 16)
    assert recon["reconstructions"].min() >= 0 and recon["reconstructions"].max() <= 1
    for row, image in zip(rows, recon["reconstructions"]):
        i = int(row["index"])
        assert row["status"] == "ok" and int(row["label"]) == data[i]["label"]
        assert int(row["best_stage"]) in (0, 1, 2)
        assert float(row["seconds"]) > 0 and float(row["peak_memory_mb"]) > 0
        # PSNR is per image, on [0, 1] images, against the private original.
        expected = psnr(image[None], data[i]["image"][None])
        assert float(row["psnr"]) == pytest.approx(float(expected), rel=1e-5)
        assert torch.equal(image, AttackOutputs(folder).read_target(i)["reconstruction"])

    summary = json.loads((folder / "summary.json").read_text())
    assert summary["targets"] == len(TARGETS) and summary["failed"] == 0
    for name in ("psnr", "ssim", "feature_distance", "top1", "seconds", "peak_memory_mb"):
        assert {"mean", "std", "median"} <= summary["metrics"][name].keys()
    # Over the six targets: the mean, the median (an even count: the mean of the two middle values) and the
    # population standard deviation, as the statistics module computes them from the table's column.
    psnrs = [float(r["psnr"]) for r in rows]
    assert len(set(psnrs)) == len(psnrs)  # distinct values, so a median of the wrong pair would show
    assert summary["metrics"]["psnr"]["mean"] == pytest.approx(statistics.fmean(psnrs), rel=1e-5)
    assert summary["metrics"]["psnr"]["median"] == pytest.approx(statistics.median(psnrs), rel=1e-5)
    assert summary["metrics"]["psnr"]["std"] == pytest.approx(statistics.pstdev(psnrs), rel=1e-5)

    assert sorted(p.name for p in (folder / "images").glob("*.png")) == [f"{i:07d}.png" for i in TARGETS]
    with Image.open(folder / "comparison.png") as grid:  # originals above reconstructions, one column per target
        assert grid.size == (len(TARGETS) * 17 + 1, 2 * 17 + 1)


def test_lpips_is_reported_with_local_weights_at_32px(tmp_path, isolated, plain_argv):
    if not SHARED_WEIGHTS.is_file():
        pytest.skip(f"no AlexNet weights at {SHARED_WEIGHTS}: the project's shared folder is absent")
    config = attack_config(make_artefacts(tmp_path / "a32", resolution=32), tmp_path, count=2)
    config["model"]["init_args"].update(steps=[2], n_init=2, init_chunk=2, lpips_weights=str(SHARED_WEIGHTS))
    config["data"]["data"]["init_args"]["resolution"] = 32
    folder = run_cli(write_config(tmp_path, config))
    columns, rows = read_csv(folder)
    assert "lpips" in columns and len(rows) == 2
    assert all(0 < float(r["lpips"]) < 1.5 for r in rows)
    assert "lpips" in json.loads((folder / "summary.json").read_text())["metrics"]


# ----- resume ---------------------------------------------------------------------------------------------------


def test_resume_recomputes_only_the_missing_targets(
    artefacts, reference, tmp_path, isolated, plain_argv, written, capsys
):
    folder = tmp_path / "logs" / "run"
    shutil.copytree(reference["folder"], folder)
    # A run killed after three of six targets: three result files missing, merged files not written yet, and a
    # temporary file left by the write that was cut short. The three rerun in batches [2, 8] and [13, ghost].
    lost = [2, 8, 13]
    for i in lost:
        AttackOutputs(folder).path(i).unlink()
    for name in ("metrics.csv", "summary.json", "reconstructions.pt"):
        (folder / name).unlink()
    stray = folder / "targets" / ".0000013.pt.99999.tmp"
    stray.write_bytes(b"half a pickle")
    kept = {i: AttackOutputs(folder).path(i).stat().st_mtime_ns for i in TARGETS if i not in lost}

    config = write_config(tmp_path, attack_config(artefacts, tmp_path))
    assert run_cli(config) == folder
    assert sorted(written) == lost, "finished targets were recomputed, or missing ones were not"
    assert "resuming: 3 finished targets" in capsys.readouterr().out
    assert {i: AttackOutputs(folder).path(i).stat().st_mtime_ns for i in kept} == kept
    assert_same_results(folder, reference["folder"])

    # `fresh: true` forgets the finished targets and recomputes them all.
    written.clear()
    run_cli(config, "--model.init_args.fresh", "true")
    assert sorted(written) == TARGETS
    assert not stray.exists()
    assert_same_results(folder, reference["folder"])


def test_a_complete_folder_whose_merge_was_cut_short_is_merged_on_rerun(
    artefacts, reference, tmp_path, isolated, plain_argv, written
):
    folder = tmp_path / "logs" / "run"
    shutil.copytree(reference["folder"], folder)
    for name in ("metrics.csv", "summary.json", "reconstructions.pt"):
        (folder / name).unlink()
    run_cli(write_config(tmp_path, attack_config(artefacts, tmp_path)))
    assert written == []
    assert_same_results(folder, reference["folder"])


@pytest.mark.slow
def test_a_killed_run_resumes_to_the_uninterrupted_result(artefacts, tmp_path, isolated, plain_argv, written):
    """A real interruption: ``python attack.py`` killed (SIGKILL, no chance to clean up) once its first target
    is written, then rerun."""
    count = 10
    config = write_config(tmp_path, attack_config(artefacts, tmp_path, count=count, batch_size=1))
    targets = tmp_path / "logs" / "run" / "targets"
    with open(tmp_path / "killed.log", "wb") as log:
        process = run_script(config, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 240
            while not any(targets.glob("*.pt")):
                assert process.poll() is None, (tmp_path / "killed.log").read_text()[-3000:]
                assert time.monotonic() < deadline, "no target was finished in time"
                time.sleep(0.01)
        finally:
            process.kill()
            process.wait()
    done = AttackOutputs(tmp_path / "logs" / "run").finished()
    assert 1 <= len(done) < count, "the kill did not interrupt the run"
    assert not (tmp_path / "logs" / "run" / "metrics.csv").exists()

    resumed = run_cli(config)
    assert sorted(written) == sorted(set(written)) and not set(written) & done  # nothing finished was redone
    uninterrupted = run_cli(
        write_config(tmp_path, attack_config(artefacts, tmp_path, "whole", count=count, batch_size=1))
    )
    indices = sorted(AttackOutputs(uninterrupted).finished())
    assert len(indices) == count
    assert_same_results(resumed, uninterrupted, indices)


# ----- several processes ----------------------------------------------------------------------------------------


@pytest.mark.slow
def test_two_processes_give_the_one_process_result(artefacts, reference, tmp_path):
    """``--trainer.devices 2 --trainer.strategy independent``: Lightning relaunches the script for rank 1; each
    rank takes every other target (three each, so each rank's last batch is padded with a ghost)."""
    config = write_config(tmp_path, attack_config(artefacts, tmp_path))
    extra = ["--trainer.devices", "2", "--trainer.accelerator", "cpu", "--trainer.strategy", "independent"]
    process = run_script(config, *extra, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out, _ = process.communicate(timeout=400)
    assert process.returncode == 0, out.decode()[-3000:]
    assert "GLOBAL_RANK: 1" in out.decode()
    assert_same_results(tmp_path / "logs" / "run", reference["folder"])


def test_plain_ddp_is_refused(artefacts, tmp_path, isolated, plain_argv, monkeypatch):
    monkeypatch.setenv("PFO_TRACEBACK", "1")  # the exception itself, not the command line's one-line message
    config = write_config(tmp_path, attack_config(artefacts, tmp_path))
    try:
        with pytest.raises(ValueError, match="IndependentProcesses"):
            run_cli(config, "--trainer.strategy", "ddp", "--trainer.devices", "1")
    finally:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    assert not AttackOutputs(tmp_path / "logs" / "run").finished()


# ----- features instead of images -------------------------------------------------------------------------------


def test_a_features_file_run_reproduces_the_image_run(artefacts, reference, tmp_path, isolated, plain_argv):
    """What a client really sent, captured to a file: the same reconstructions as the run that computed the
    features from the images, image metrics skipped. One extra target whose features are NaN fails alone."""
    victim = load_victim(artefacts["victim"])
    data = SyntheticImages(resolution=16).dataset("test")
    features = []
    with torch.no_grad():
        for start in range(0, len(TARGETS), 2):  # as the client did: batches of two
            images = torch.stack([data[i]["image"] for i in TARGETS[start : start + 2]])
            features.append(victim.forward_head(images))
    features.append(torch.full_like(features[0][:1], float("nan")))
    indices = [*TARGETS, 15]
    labels = [data[i]["label"] for i in indices]
    path = save_features(tmp_path / "features.pt", torch.cat(features), torch.tensor(indices), torch.tensor(labels))

    config = attack_config(artefacts, tmp_path, features_file=str(path), count=None)
    del config["data"]["data"]
    folder = run_cli(write_config(tmp_path, config))

    columns, rows = read_csv(folder)
    assert "psnr" not in columns and "ssim" not in columns and "lpips" not in columns
    assert {"feature_distance", "collapsed", "top1"} <= set(columns)
    status = {int(r["index"]): r["status"] for r in rows}
    assert status.pop(15).startswith("failed") and set(status.values()) == {"ok"}
    assert json.loads((folder / "summary.json").read_text())["failed"] == 1
    _, reference_rows = read_csv(reference["folder"])
    for ours, theirs in zip(rows, reference_rows):
        assert float(ours["feature_distance"]) == float(theirs["feature_distance"])
    (folder / "targets" / "0000015.pt").unlink()  # compare the six shared targets
    AttackOutputs(folder).merge()
    assert_same_results(folder, reference["folder"])


# ----- bad input ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--data.indices", "[]"], "`indices` is empty"),
        (["--data.data.init_args.resolution", "8"], "data.data.init_args.resolution: 16"),
        (["--model.init_args.split_point", "layer9"], "valid split points"),
        (["--model.init_args.steps", "[2, 2, 2, 2]"], "shorten `steps`"),
    ],
    ids=["no-targets", "resolution", "split-point", "too-many-stages"],
)
def test_bad_input_names_the_fix(artefacts, tmp_path, isolated, plain_argv, args, message, monkeypatch):
    monkeypatch.setenv("PFO_TRACEBACK", "1")  # the exception itself, not the command line's one-line message
    config = write_config(tmp_path, attack_config(artefacts, tmp_path))
    with pytest.raises(ValueError, match=message):
        run_cli(config, *args)
