"""Cluster operation without a scheduler: target shards and their merge (``python -m pfo.attacks.merge``), every
process kept in step when the targets do not split evenly, what a SLURM requeue's checkpoint may and may not
restore (attack: nothing; training: the step it was saved at), and the run folder as ``default_root_dir``.

The real scheduler runs the same paths in ``tests/test_slurm.py``. Here a SLURM requeue is simulated the way
Lightning does it: a checkpoint ``hpc_ckpt_1.ckpt`` in ``default_root_dir``, then a run started with the
variables ``srun`` sets, which makes Lightning restore from that checkpoint by itself.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml
from lightning.pytorch.callbacks import ModelCheckpoint
from run_folders import assert_same_results, pixels

import attack
import train
from pfo.attacks import AttackOutputs, Targets
from pfo.attacks.merge import main as merge_main
from pfo.attacks.merge import merge_runs
from pfo.attacks.targets import InStep, ShardedBatches
from pfo.cli import logger_folder, resume_checkpoint, use_run_folder_as_root
from pfo.data import SyntheticImages
from pfo.models import ResNet, save_victim
from pfo.models.generator_file import save_generator
from pfo.models.stylegan2 import Generator

TARGETS = [0, 2, 4, 6, 8, 10, 12, 14]  # eight targets spread over the 16 synthetic test images
SLURM_STEP = {  # what srun sets for a one-task job step (enough for Lightning to pick SLURMEnvironment)
    "SLURM_NTASKS": "1",
    "SLURM_NTASKS_PER_NODE": "1",
    "SLURM_JOB_NAME": "pfo-test",
    "SLURM_JOB_ID": "4242",
    "SLURM_NODELIST": "localhost",
    "SLURM_NNODES": "1",
    "SLURM_PROCID": "0",
    "SLURM_LOCALID": "0",
    "SLURM_NODEID": "0",
}

pytestmark = [
    pytest.mark.filterwarnings("ignore:LPIPS will be reported as missing"),
    pytest.mark.filterwarnings("ignore:.*module\\(s\\) in eval mode"),
    pytest.mark.filterwarnings("ignore:.*returned `None`, this fit will run with no optimizer"),
    pytest.mark.filterwarnings("ignore:.*isinstance\\(treespec, LeafSpec\\)"),
    pytest.mark.filterwarnings("ignore:.*`srun` command is available"),
    pytest.mark.filterwarnings('ignore:.*ckpt_path="last"\\) is set, but there is no last checkpoint'),
]

_DATA = SyntheticImages(resolution=16)


# ----- shards ---------------------------------------------------------------------------------------------------


def test_shard_i_takes_every_nth_target_of_the_sorted_list():
    whole = Targets(data=_DATA, count=8).target_indices
    assert whole == TARGETS
    shards = [Targets(data=_DATA, count=8, shard=i, num_shards=3).target_indices for i in range(3)]
    assert shards == [whole[0::3], whole[1::3], whole[2::3]]
    assert sorted(i for s in shards for i in s) == whole  # a partition: none lost, none twice
    assert Targets(data=_DATA, count=8, shard=1, num_shards=3).target_indices == shards[1]  # deterministic
    # explicit indices are sorted before they are dealt out
    assert Targets(data=_DATA, indices=[9, 1, 5, 3], shard=0, num_shards=2).target_indices == [1, 5]


@pytest.mark.parametrize(
    ("shard", "num_shards", "message"),
    [(2, 2, "must be in \\[0, num_shards\\)"), (-1, 2, "must be in"), (0, 0, "must be in")],
)
def test_a_shard_outside_its_range_is_refused(shard, num_shards, message):
    with pytest.raises(ValueError, match=message):
        Targets(data=_DATA, count=8, shard=shard, num_shards=num_shards)


def test_more_shards_than_targets_is_refused():
    with pytest.raises(ValueError, match="3 targets cannot be split into 4 shards"):
        _ = Targets(data=_DATA, count=3, shard=0, num_shards=4).target_indices


# ----- every process in step ------------------------------------------------------------------------------------


def loader_batches(count: int, world: int, batch_size: int, skip: set[int] = frozenset()) -> list[list[list]]:
    """Each rank's batches of ``Targets.train_dataloader`` as lists of (index, valid)."""
    ranks = []
    for rank in range(world):
        targets = Targets(data=_DATA, count=count, batch_size=batch_size)
        targets.skip = set(skip)
        targets.trainer = type("FakeTrainer", (), {"global_rank": rank, "world_size": world})()
        loader = targets.train_dataloader()
        batches = [list(zip(b["index"].tolist(), b["valid"].tolist())) for b in loader]
        assert len(batches) == len(loader)
        ranks.append(batches)
    return ranks


def test_every_process_runs_the_same_number_of_steps_when_targets_do_not_split_evenly():
    ranks = loader_batches(count=5, world=2, batch_size=1)
    assert [len(r) for r in ranks] == [3, 3]
    assert ranks[1][-1] == [(0, False)]  # rank 1's third step: one ghost, nothing to attack
    real = sorted(i for r in ranks for b in r for i, valid in b if valid)
    assert real == Targets(data=_DATA, count=5).target_indices


def test_a_process_with_no_target_left_still_runs_one_step_and_a_finished_run_too():
    whole = Targets(data=_DATA, count=3).target_indices
    ranks = loader_batches(count=3, world=2, batch_size=2, skip=set(whole[:2]))  # one target left for two ranks
    assert [[v for _, v in b] for r in ranks for b in r] == [[True, False], [False]]  # a padded batch, a ghost
    ranks = loader_batches(count=3, world=1, batch_size=2, skip=set(whole))  # all done: the merge still runs
    assert [[v for _, v in b] for r in ranks for b in r] == [[False]]


def test_in_step_pads_with_single_ghost_batches():
    assert list(InStep(ShardedBatches(3, 2, 1, 2), 2)) == [[(1, False), (1, True)], [(0, True)]]
    assert len(InStep(ShardedBatches(0, 2), 0)) == 1


# ----- attack runs ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def artefacts(tmp_path_factory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("artefacts")
    torch.manual_seed(1)
    victim = ResNet(depth=18, num_classes=4, stem="cifar", input_size=16, split_point="layer1").eval()
    torch.manual_seed(2)
    G = Generator(z_dim=16, w_dim=16, resolution=16, n_mlp=2, channel_base=128, channel_max=16)
    return {
        "victim": str(save_victim(victim, folder / "victim.pt")),
        "generator": str(save_generator(G, folder / "generator.pt")),
    }


def write_attack_config(artefacts: dict, root: Path, name: str = "run", **data) -> Path:
    """configs/pfo_resnet.yaml shrunk: three PFO stages of 6 + 3 + 3 steps, eight targets one per batch; the run
    folder is ``root/logs/<name>``."""
    config = {
        "seed_everything": 0,
        "model": {
            "class_path": "pfo.attacks.PFO",
            "init_args": {**artefacts, "n_init": 4, "init_chunk": 4, "steps": [6, 3, 3], "progress": False},
        },
        "data": {
            "data": {"class_path": "pfo.data.SyntheticImages", "init_args": {"resolution": 16}},
            "count": len(TARGETS),
            "batch_size": 1,
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
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def run_attack(config: Path, *extra: str, environ: dict[str, str] | None = None) -> Path:
    """``attack.cli_main`` in this process; returns the run folder. Restores the environment and the signal
    handlers Lightning (and the requeue callback) change; module fixtures need it too."""
    saved = dict(os.environ)
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)}
    argv, sys.argv = sys.argv, ["attack.py"]
    os.environ.update(environ or {})
    try:
        cli = attack.cli_main(["--config", str(config), *extra])
    finally:
        sys.argv = argv
        os.environ.clear()
        os.environ.update(saved)
        for s, handler in handlers.items():
            signal.signal(s, handler)
    return Path(cli.trainer.log_dir)


@pytest.fixture(scope="module")
def reference(artefacts, tmp_path_factory) -> Path:
    """One uninterrupted single-process run over the eight targets."""
    root = tmp_path_factory.mktemp("reference")
    return run_attack(write_attack_config(artefacts, root, "reference"))


@pytest.fixture
def written(monkeypatch) -> list[int]:
    """The index of every target result written in this process."""
    indices: list[int] = []
    original = AttackOutputs.write_target

    def write_target(self, index, result):
        indices.append(int(index))
        return original(self, index, result)

    monkeypatch.setattr(AttackOutputs, "write_target", write_target)
    return indices


def test_the_comparison_figure_shows_the_originals_of_targets_done_by_any_process(reference, tmp_path):
    """Each result file keeps its target's image, so a merge shows the originals row whoever did the target."""
    assert all(torch.is_tensor(AttackOutputs(reference).read_target(i)["original"]) for i in TARGETS)
    rows = pixels(reference / "comparison.png").shape[0]
    assert rows == 2 * (16 + 1) + 1  # originals and reconstructions


@pytest.mark.slow
def test_shards_merged_equal_the_single_run(artefacts, reference, tmp_path, isolated, capsys):
    shards = [
        run_attack(
            write_attack_config(artefacts, tmp_path, "run", shard=i, num_shards=3),
            "--trainer.logger.init_args.version",
            f"shard-{i}-of-3",
        )
        for i in range(3)
    ]
    assert [sorted(AttackOutputs(s).finished()) for s in shards] == [TARGETS[i::3] for i in range(3)]
    out = tmp_path / "logs" / "run"
    assert merge_main(["--out", str(out), *map(str, shards)]) == 0
    assert f"merged {len(TARGETS)} targets from 3 shards into {out}" in capsys.readouterr().out
    assert_same_results(out, reference)
    assert (out / "merged_from.json").exists()
    assert merge_main(["--out", str(out), *map(str, shards)]) == 0  # merging again changes nothing
    assert_same_results(out, reference)

    # what the merge refuses, each with a message that names the fix
    with pytest.raises(ValueError, match="shards \\[2\\] of 3 are missing"):
        merge_runs(tmp_path / "two", shards[:2])
    assert sorted(AttackOutputs(merge_runs_partial(tmp_path / "two", shards[:2])).finished()) == sorted(
        TARGETS[0::3] + TARGETS[1::3]
    )
    with pytest.raises(ValueError, match="shards must be disjoint"):
        merge_runs(tmp_path / "twice", [shards[0], shards[0]])
    (shards[2] / "metrics.csv").unlink()
    with pytest.raises(ValueError, match="has not finished"):
        merge_runs(tmp_path / "unfinished", shards)
    with pytest.raises(ValueError, match="already holds results for targets"):
        merge_runs(reference, shards[:1], partial=True)
    assert merge_main(["--out", str(tmp_path / "x"), str(tmp_path / "nowhere")]) == 1
    assert "does not exist" in capsys.readouterr().err


def merge_runs_partial(out: Path, shards: list[Path]) -> Path:
    merge_runs(out, shards, partial=True)
    return out


def test_shards_of_different_attacks_are_not_merged(artefacts, tmp_path):
    for i, steps in enumerate(([6, 3, 3], [5, 3, 3])):
        config = yaml.safe_load(write_attack_config(artefacts, tmp_path, f"s{i}", shard=i, num_shards=2).read_text())
        config["model"]["init_args"]["steps"] = steps
        folder = tmp_path / f"s{i}"
        (folder / "targets").mkdir(parents=True)
        (folder / "config.yaml").write_text(yaml.safe_dump(config))
        AttackOutputs(folder).write_target(i, {"index": i})
    with pytest.raises(ValueError, match="ran different attacks or targets \\(model.init_args.steps"):
        merge_runs(tmp_path / "out", [tmp_path / "s0", tmp_path / "s1"], partial=True)


# ----- a requeued attack restores nothing -----------------------------------------------------------------------


class Preempted(Exception):
    """Ends a run the way a requeue does (the process stops; what it wrote stays)."""


class PreemptedHere(L.Callback):
    """After two batches, write ``hpc_ckpt_1.ckpt`` where Lightning's SLURM handler does, then stop the run as a
    requeue does. The checkpoint is written the way Lightning's own would be without the attack's hook: with the
    loop's progress (two batches done), and with weights that are not this run's."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if batch_idx < 1:
            return
        checkpoint = trainer._checkpoint_connector.dump_checkpoint()
        checkpoint["loops"] = trainer._checkpoint_connector._get_loops_state_dict()
        checkpoint["state_dict"] = {k: v + 1 if v.is_floating_point() else v for k, v in pl_module.state_dict().items()}
        trainer.strategy.save_checkpoint(checkpoint, os.path.join(trainer.default_root_dir, "hpc_ckpt_1.ckpt"))
        raise Preempted


def test_a_requeued_attack_ignores_the_loop_progress_and_weights_of_the_checkpoint(
    artefacts, reference, tmp_path, isolated, written, caplog
):
    """Restoring the loop's progress would end the restarted epoch after as many batches as the first run had
    left, but its loader already leaves out the finished targets: the last ones would be lost."""
    config = write_attack_config(artefacts, tmp_path)
    with pytest.raises(Preempted):
        run_attack(config, f"--trainer.callbacks+={__name__}.PreemptedHere")
    run = tmp_path / "logs" / "run"
    checkpoint = run / "hpc_ckpt_1.ckpt"  # the run folder is default_root_dir
    assert checkpoint.exists()
    progress = torch.load(checkpoint, weights_only=False)["loops"]["fit_loop"]["epoch_loop.batch_progress"]
    assert progress["total"]["ready"] == 2  # restored, the restarted epoch would stop a batch or two early
    first = sorted(written)
    assert first == TARGETS[:2]

    written.clear()
    caplog.set_level(logging.INFO)
    assert run_attack(config, environ=SLURM_STEP) == run  # Lightning restores hpc_ckpt_1.ckpt under srun
    assert f"Restored all states from the checkpoint at {checkpoint}" in caplog.text
    assert sorted(written) == TARGETS[2:], "finished targets were redone or the last ones were lost"
    assert_same_results(run, reference)


class SaveOnce(L.Callback):
    """What Lightning's own SLURM handler does: ``trainer.save_checkpoint`` into ``default_root_dir``."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        trainer.save_checkpoint(trainer._checkpoint_connector.hpc_save_path(trainer.default_root_dir))
        raise Preempted


def test_the_attacks_own_checkpoint_holds_no_progress_and_no_weights(artefacts, tmp_path, isolated):
    with pytest.raises(Preempted):
        run_attack(write_attack_config(artefacts, tmp_path), f"--trainer.callbacks+={__name__}.SaveOnce")
    saved = torch.load(tmp_path / "logs" / "run" / "hpc_ckpt_1.ckpt", weights_only=False)
    assert "loops" not in saved and saved["state_dict"] == {}


def test_the_requeue_signal_only_requeues_the_attack_job(artefacts, tmp_path, isolated, monkeypatch, capsys):
    """Under srun the attack's handler replaces Lightning's: ``scontrol requeue <job>`` at once, no checkpoint, no
    barrier (tests/test_slurm.py does it for real)."""
    calls, run = [], subprocess.run

    def fake_run(command, **kwargs):
        if command[0] != "scontrol":
            return run(command, **kwargs)
        calls.append(command)
        return subprocess.CompletedProcess(command, 0, "", "")

    monkeypatch.setattr(subprocess, "run", fake_run)
    config = write_attack_config(artefacts, tmp_path)
    run = run_attack(config, f"--trainer.callbacks+={__name__}.SignalOnce", environ=SLURM_STEP)
    assert calls == [["scontrol", "requeue", "4242"]]
    assert "scontrol requeue 4242: done" in capsys.readouterr().out
    assert not list(run.glob("hpc_ckpt_*.ckpt"))


class SignalOnce(L.Callback):
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if batch_idx == 0:
            os.kill(os.getpid(), signal.SIGUSR1)
            os.kill(os.getpid(), signal.SIGUSR1)  # a second signal does not requeue twice
            trainer.should_stop = True


# ----- training runs resume at the requeue's step ---------------------------------------------------------------


def test_the_run_folder_is_the_default_root_dir():
    logger = {"class_path": "TensorBoardLogger", "init_args": {"save_dir": "logs", "name": "gan", "version": ""}}
    trainer = {"logger": logger, "default_root_dir": None}
    use_run_folder_as_root(trainer)
    assert trainer["default_root_dir"] == os.path.join("logs", "gan", "")
    trainer = {"logger": logger, "default_root_dir": "/elsewhere"}
    use_run_folder_as_root(trainer)
    assert trainer["default_root_dir"] == "/elsewhere"
    assert logger_folder({"init_args": {"save_dir": "l", "name": "n", "version": 3}}) == os.path.join(
        "l", "n", "version_3"
    )
    assert logger_folder({"init_args": {"save_dir": "l", "name": "n", "version": None}}) is None  # not known yet
    assert logger_folder(False) is None


def test_last_means_the_newer_of_the_last_and_the_requeue_checkpoint(tmp_path):
    checkpoints = tmp_path / "checkpoints"
    checkpoints.mkdir()
    trainer = L.Trainer(
        default_root_dir=tmp_path, logger=False, callbacks=[ModelCheckpoint(dirpath=checkpoints, save_last=True)]
    )
    assert resume_checkpoint(trainer) is None
    last = checkpoints / "last.ckpt"
    last.write_bytes(b"")
    assert resume_checkpoint(trainer) == str(last)
    for n in (1, 2, 10):
        (tmp_path / f"hpc_ckpt_{n}.ckpt").write_bytes(b"")
    now = time.time()
    os.utime(last, (now - 60, now - 60))
    assert resume_checkpoint(trainer) == str(tmp_path / "hpc_ckpt_10.ckpt")
    os.utime(last, (now + 60, now + 60))
    assert resume_checkpoint(trainer) == str(last)


def victim_config(root: Path, steps: int, **trainer) -> Path:
    """A two-block ViT at 16 px on 64 synthetic images, ``steps`` steps, no periodic checkpoint, ``ckpt_path:
    last``, a journal of the steps (tests/slurm_jobs.py)."""
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
            "accelerator": "cpu",
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "logger": {
                "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                "init_args": {"save_dir": str(root / "logs"), "name": "victim", "version": ""},
            },
            "callbacks": [
                {
                    "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                    "init_args": {"save_last": True, "every_n_train_steps": 10_000},
                },
                {"class_path": "slurm_jobs.StepJournal", "init_args": {"path": str(root / "steps.txt")}},
            ],
            **trainer,
        },
    }
    path = root / "victim.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


class RequeuedAtStep5(L.Callback):
    """Saves ``hpc_ckpt_1.ckpt`` as Lightning's SLURM handler does, at the start of step 5, and stops the run."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == 5:
            trainer.save_checkpoint(trainer._checkpoint_connector.hpc_save_path(trainer.default_root_dir))
            raise Preempted


@pytest.mark.slow
def test_a_requeued_training_run_resumes_at_the_step_it_was_stopped(tmp_path, isolated, plain_argv):
    config = victim_config(tmp_path, steps=12)
    with pytest.raises(Preempted):
        train.cli_main(["fit", "--config", str(config), f"--trainer.callbacks+={__name__}.RequeuedAtStep5"])
    run = tmp_path / "logs" / "victim"
    assert (run / "hpc_ckpt_1.ckpt").exists() and not (run / "checkpoints").exists()
    train.cli_main(["fit", "--config", str(config)])  # `ckpt_path: last` finds the requeue's checkpoint
    steps = [int(line.split()[0]) for line in (tmp_path / "steps.txt").read_text().splitlines()]
    assert steps == list(range(6)) + list(range(5, 12))  # step 5 was cut short and is redone
    assert (run / "victim.pt").exists()


# ----- the benchmark job ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("cpus", "threads", "jobs"), [("8", "2", 4), ("16", None, 16), ("1", "4", 1), (None, None, 1)])
def test_the_benchmark_job_runs_one_attack_run_per_threads_of_its_cpus(tmp_path, cpus, threads, jobs):
    """``benchmark.sbatch`` hands ``bench/benchmark.py`` ``--jobs`` = CPUs / threads per run (at least 1), every CPU
    as ``OMP_NUM_THREADS`` (the benchmark splits them among its runs), in the checkout ``PFO_REPO``, through srun."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text('#!/bin/sh\necho "srun"\nexec "$@"\n')
    (bin_dir / "python").write_text('#!/bin/sh\necho "cwd=$(pwd) threads=$OMP_NUM_THREADS args=$*"\n')
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "PFO_", "OMP_"))}
    env.update(PATH=f"{bin_dir}:{env['PATH']}", PFO_PYTHON=str(bin_dir / "python"), PFO_REPO=str(tmp_path))
    if cpus:
        env["SLURM_CPUS_PER_TASK"] = cpus
    if threads:
        env["PFO_BENCH_THREADS"] = threads
    script = Path(__file__).resolve().parents[1] / "scripts" / "slurm" / "benchmark.sbatch"
    out = subprocess.run(
        ["bash", str(script), "--targets", "4"], env=env, capture_output=True, text=True, check=True
    ).stdout.splitlines()
    assert out[1] == "srun"
    assert out[2] == f"cwd={tmp_path} threads={cpus or 1} args=bench/benchmark.py --jobs {jobs} --targets 4"
