"""The SLURM job scripts (``scripts/slurm/``) against a real scheduler, on CPU, with a 16-px victim and prior and
ten synthetic targets: a two-task attack job, the same job interrupted by the requeue signal, an array job of two
shards merged into one result, and a victim training job interrupted and resumed at its step.

Every test here is marked ``slurm``. Where no scheduler answers (``sinfo`` missing or failing, no usable node)
they skip, saying so; under ``CI=true`` they fail instead (CI brings a local cluster up first:
``scripts/slurm/cluster.sh up``, see ``.ci/run``). The jobs run from this checkout with this interpreter
(``PFO_REPO``, ``PFO_PYTHON``) and ``tests/`` on their ``PYTHONPATH`` for ``tests/slurm_jobs.py``; every output goes
under ``tmp_path``. Tests wait on job states and files with generous timeouts, never on exact times.

The yardstick is one uninterrupted single-process run (``python attack.py``, no scheduler): every job must end
with each target done exactly once and results bitwise equal to it (timings apart).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import torch
import yaml
from run_folders import assert_same_results, journal

from pfo.attacks import AttackOutputs
from pfo.models import ResNet, save_victim
from pfo.models.generator_file import save_generator
from pfo.models.stylegan2 import Generator

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "scripts" / "slurm"
COUNT = 10  # targets, spread over the 16 synthetic test images
JOB_TIMEOUT = 900  # seconds a job may take, queueing and restarts included (a loaded 2-core machine is slow)
TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE"}

pytestmark = pytest.mark.slurm


# ----- the scheduler --------------------------------------------------------------------------------------------


def scheduler_problem() -> str | None:
    """Why no SLURM scheduler can run our jobs here, or None where one can."""
    if shutil.which("sinfo") is None or shutil.which("sbatch") is None:
        return "sinfo/sbatch not found"
    try:
        result = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as error:
        return f"sinfo failed: {error}"
    if result.returncode != 0:
        return f"sinfo failed: {(result.stderr or result.stdout).strip()[:300]}"
    states = result.stdout.split()
    if not any(s.rstrip("*~#$@^-").startswith(("idle", "mixed", "allocated", "completing")) for s in states):
        return f"no usable node (sinfo: {' '.join(states) or 'none'})"
    return None


@pytest.fixture(scope="module")
def scheduler() -> None:
    problem = scheduler_problem()
    if problem is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true but no SLURM scheduler is reachable ({problem}): .ci/run brings one up as root")
    pytest.skip(f"no SLURM scheduler reachable ({problem}); as root, `scripts/slurm/cluster.sh up` starts a local one")


def job_environment() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_") and k != "PFO_DATA_ROOT"}
    env.update(
        PFO_PYTHON=sys.executable,
        PFO_REPO=str(REPO),
        PFO_ACCELERATOR="cpu",  # bitwise comparisons with the CPU reference
        OMP_NUM_THREADS="1",
        PYTHONPATH=os.pathsep.join([str(REPO / "tests"), str(REPO)]),
    )
    return env


def sbatch(script: str, *args: str, options: list[str], cwd: Path) -> str:
    """Submit ``scripts/slurm/<script>`` and return the job id (for an array, the array's)."""
    command = ["sbatch", "--parsable", "--export=ALL", *options, str(SCRIPTS / script), *args]
    result = subprocess.run(command, capture_output=True, text=True, cwd=cwd, env=job_environment(), timeout=60)
    assert result.returncode == 0, f"{' '.join(command)}\n{result.stderr}"
    return result.stdout.strip().split(";")[0]


def jobs(job_id: str) -> list[dict[str, str]]:
    """``scontrol show job`` as one dict per job (per array task), empty once SLURM has forgotten the job."""
    result = subprocess.run(["scontrol", "-o", "show", "job", job_id], capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        return []
    rows = []
    for line in result.stdout.splitlines():
        fields = dict(token.split("=", 1) for token in line.split() if "=" in token)
        if fields:
            rows.append(fields)
    return rows


def logs_of(folder: Path, tail: int | None = None) -> str:
    """The jobs' output files in ``folder`` (``sbatch --output``), each cut to its last ``tail`` characters."""
    texts = [(p.name, p.read_text(errors="replace")) for p in sorted(folder.glob("*.out"))]
    return "\n".join(f"--- {name}\n{text[-tail:] if tail else text}" for name, text in texts)


def wait_for(condition, what: str, job_id: str, logs: Path, timeout: float = JOB_TIMEOUT):
    """Poll ``condition()`` until it returns something true; fail (with the job's state and log) on timeout or
    when the job ended without it."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        rows = jobs(job_id)
        ended = rows and all(r.get("JobState") in TERMINAL for r in rows)
        if ended:  # one last look: the job may have ended right after the condition was checked
            value = condition()
            if value:
                return value
        if ended or time.monotonic() > deadline:
            states = [(r.get("JobId"), r.get("JobState"), r.get("Restarts"), r.get("ExitCode")) for r in rows]
            pytest.fail(f"waiting for {what}: job {job_id} {states}\n{logs_of(logs, 4000)}")
        time.sleep(0.5)


def wait_until_done(job_id: str, logs: Path, tasks: int = 1) -> list[dict[str, str]]:
    def done():
        rows = jobs(job_id)
        return rows if len(rows) == tasks and all(r.get("JobState") in TERMINAL for r in rows) else None

    rows = wait_for(done, "the job to end", job_id, logs)
    assert all(r["JobState"] == "COMPLETED" and r["ExitCode"] == "0:0" for r in rows), (rows, logs_of(logs, 4000))
    return rows


def requeue_signal(job_id: str) -> None:
    """What SLURM sends before a time limit (``--signal=USR1@90``) or on preemption, to every task of the job."""
    subprocess.run(["scancel", "--signal=USR1", job_id], check=True, timeout=60)


def restarts(job_id: str) -> int:
    rows = jobs(job_id)
    return int(rows[0].get("Restarts", 0)) if rows else 0


# ----- artefacts, configs, the reference run --------------------------------------------------------------------


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("slurm")


@pytest.fixture(scope="module")
def artefacts(root) -> dict[str, str]:
    torch.manual_seed(1)
    victim = ResNet(depth=18, num_classes=4, stem="cifar", input_size=16, split_point="layer1").eval()
    torch.manual_seed(2)
    G = Generator(z_dim=16, w_dim=16, resolution=16, n_mlp=2, channel_base=128, channel_max=16)
    return {
        "victim": str(save_victim(victim, root / "victim.pt")),
        "generator": str(save_generator(G, root / "generator.pt")),
    }


def attack_config(artefacts: dict, folder: Path, name: str, delay: float = 0.0) -> Path:
    """configs/pfo_resnet.yaml shrunk (three PFO stages of 6 + 3 + 3 steps), targets one per batch, results in
    ``folder/logs/<name>``; the attack keeps a journal of the results it writes (tests/slurm_jobs.py)."""
    config = {
        "seed_everything": 0,
        "model": {
            "class_path": "slurm_jobs.JournalledPFO",
            "init_args": {
                **artefacts,
                "n_init": 4,
                "init_chunk": 4,
                "steps": [6, 3, 3],
                "progress": False,
                "delay": delay,
            },
        },
        "data": {
            "data": {"class_path": "pfo.data.SyntheticImages", "init_args": {"resolution": 16}},
            "split": "test",
            "count": COUNT,
            "batch_size": 1,
        },
        "trainer": {
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "logger": {
                "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                "init_args": {"save_dir": str(folder / "logs"), "name": name, "version": ""},
            },
        },
    }
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def reference(scheduler, artefacts, root) -> Path:
    """One uninterrupted single-process run, no scheduler: ``python attack.py --config ...``."""
    folder = root / "reference"
    config = attack_config(artefacts, folder, "reference")
    env = job_environment()
    command = [sys.executable, str(REPO / "attack.py"), "--config", str(config), "--trainer.accelerator", "cpu"]
    result = subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True, timeout=JOB_TIMEOUT)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    run = folder / "logs" / "reference"
    assert len(AttackOutputs(run).finished()) == COUNT
    return run


# ----- stage 3 --------------------------------------------------------------------------------------------------


def test_a_two_task_attack_job_does_every_target_once(scheduler, artefacts, reference, root):
    """``sbatch --ntasks-per-node=2 attack.sbatch``: two ranks (``independent``), every target exactly once."""
    folder = root / "two_tasks"
    config = attack_config(artefacts, folder, "attack")
    job = sbatch("attack.sbatch", str(config), options=["--ntasks-per-node=2", f"--output={folder}/%j.out"], cwd=folder)
    wait_until_done(job, folder)
    run = folder / "logs" / "attack"
    written = journal(run)
    assert Counter(i for i, _, _ in written) == Counter(sorted(AttackOutputs(reference).finished()))
    assert {rank for _, rank, _ in written} == {0, 1}
    assert "Initializing distributed: GLOBAL_RANK: 1, MEMBER: 2/2" in logs_of(folder)
    assert_same_results(run, reference)


def test_an_attack_job_requeued_midway_finishes_every_target_once(scheduler, artefacts, reference, root):
    """The same job sent the requeue signal once a few targets are done: it requeues itself, restarts, attacks
    only the targets left, and ends with the uninterrupted result. Nothing is restored from a Lightning checkpoint
    (none is written); a finished target is never redone."""
    folder = root / "requeued"
    config = attack_config(artefacts, folder, "attack", delay=1.0)
    job = sbatch("attack.sbatch", str(config), options=["--ntasks-per-node=2", f"--output={folder}/%j.out"], cwd=folder)
    run = folder / "logs" / "attack"
    wait_for(lambda: len(journal(run)) >= 2, "two finished targets", job, folder)
    first_files = {p.name: p.stat().st_ino for p in (run / "targets").glob("*.pt")}
    requeue_signal(job)
    wait_for(lambda: restarts(job) >= 1, "the requeue", job, folder)
    rows = wait_until_done(job, folder)
    assert int(rows[0]["Restarts"]) >= 1

    written = journal(run)
    indices = sorted(AttackOutputs(reference).finished())
    assert sorted(i for i, _, _ in written) == indices, f"each target exactly once: {written}"
    before = {i for i, _, restart in written if restart == 0}
    after = {i for i, _, restart in written if restart >= 1}
    assert before and after, f"the signal did not interrupt the run midway: {written}"
    # the files finished before the signal were never rewritten (a rewrite replaces the file: a new inode)
    assert {name: (run / "targets" / name).stat().st_ino for name in first_files} == first_files
    assert f"scontrol requeue {job}: done" in logs_of(folder)
    assert not list(run.glob("hpc_ckpt_*.ckpt"))
    assert_same_results(run, reference)


def test_an_array_job_of_two_shards_merges_into_the_single_run(scheduler, artefacts, reference, root):
    """``sbatch --array=0-1 attack_array.sbatch``: each task attacks every other target in its own folder
    (``logs/<name>/shard-<i>-of-2``); ``python -m pfo.attacks.merge`` joins them into ``logs/<name>``."""
    folder = root / "array"
    config = attack_config(artefacts, folder, "attack")
    job = sbatch(
        "attack_array.sbatch", str(config), options=["--array=0-1", f"--output={folder}/%A_%a.out"], cwd=folder
    )
    wait_until_done(job, folder, tasks=2)
    run = folder / "logs" / "attack"
    indices = sorted(AttackOutputs(reference).finished())
    shards = [run / f"shard-{i}-of-2" for i in range(2)]
    for i, shard in enumerate(shards):
        assert sorted(AttackOutputs(shard).finished()) == indices[i::2]
        assert sorted(idx for idx, _, _ in journal(shard)) == indices[i::2]

    command = [sys.executable, "-m", "pfo.attacks.merge", "--out", str(run), *map(str, shards)]
    result = subprocess.run(command, cwd=REPO, env=job_environment(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"merged {COUNT} targets from 2 shards" in result.stdout
    assert_same_results(run, reference)


# ----- stages 1 and 2 -------------------------------------------------------------------------------------------


def victim_config(folder: Path, steps: int) -> Path:
    """A victim run shaped like configs/victim_*.yaml: a two-block ViT at 16 px on 64 synthetic images, ``steps``
    optimiser steps; no periodic checkpoint (the requeue's is the only one); a journal of every step."""
    config = {
        "seed_everything": 3,
        "ckpt_path": "last",
        "model": {
            "class_path": "pfo.victim.VictimClassifier",
            "init_args": {
                "net": {
                    "class_path": "pfo.models.ViT",
                    "init_args": {
                        "variant": "test_vit",
                        "num_classes": 4,
                        "img_size": 16,
                        "patch_size": 8,
                        "split_point": "blocks.0",
                        "model_kwargs": {"depth": 2},
                    },
                },
                "optimizer": {"class_path": "torch.optim.AdamW", "init_args": {"lr": 0.001}},
                "warmup_epochs": 0.5,
            },
        },
        "data": {
            "class_path": "pfo.data.SyntheticImages",
            "init_args": {"resolution": 16, "num_classes": 4, "sizes": {"private": 64, "test": 8}, "batch_size": 8},
        },
        "trainer": {
            "max_steps": steps,
            "max_epochs": 1000,
            "limit_val_batches": 0,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "logger": {
                "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                "init_args": {"save_dir": str(folder / "logs"), "name": "victim", "version": ""},
            },
            "callbacks": [
                {
                    "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                    "init_args": {"save_last": True, "every_n_train_steps": 10_000},
                },
                {
                    "class_path": "slurm_jobs.StepJournal",
                    "init_args": {"path": str(folder / "steps.txt"), "delay": 0.3},
                },
            ],
        },
    }
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "victim.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_a_victim_training_job_requeued_midway_resumes_at_its_step(scheduler, root):
    """``train.sbatch`` sent the requeue signal midway: Lightning saves ``hpc_ckpt_1.ckpt`` in the run folder and
    requeues; the restarted job resumes at that checkpoint's global step (not at 0) and trains to the end."""
    folder, steps = root / "victim", 40
    config = victim_config(folder, steps)
    job = sbatch("train.sbatch", str(config), options=[f"--output={folder}/%j.out"], cwd=folder)

    def journal_steps() -> list[tuple[int, int]]:
        path = folder / "steps.txt"
        if not path.exists():
            return []
        return [tuple(int(x) for x in line.split()) for line in path.read_text().splitlines() if line.strip()]

    wait_for(lambda: len(journal_steps()) >= 8, "eight training steps", job, folder)
    requeue_signal(job)
    wait_for(lambda: restarts(job) >= 1, "the requeue", job, folder)
    wait_until_done(job, folder)

    run = folder / "logs" / "victim"
    checkpoint = run / "hpc_ckpt_1.ckpt"
    assert checkpoint.exists(), sorted(p.name for p in run.iterdir())
    saved = torch.load(checkpoint, map_location="cpu", weights_only=False)["global_step"]
    first = [s for s, restart in journal_steps() if restart == 0]
    second = [s for s, restart in journal_steps() if restart >= 1]
    assert first[0] == 0 and first == list(range(len(first)))
    assert 0 < saved <= first[-1] + 1
    assert second == list(range(saved, steps)), f"resumed at {second[:1]}, the checkpoint holds step {saved}"
    log = logs_of(folder)
    assert "Restored all states from the checkpoint at" in log and "hpc_ckpt_1.ckpt" in log
    assert (run / "victim.pt").exists()
