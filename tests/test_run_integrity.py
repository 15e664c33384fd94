"""A run's integrity (issue 13, items 1, 2, 3, 8 and 9): a run folder only ever holds results of one set of
settings, a damaged result file is redone, one run at a time uses a folder, a run that fails at setup leaves no
half-made folder, and the victim's top-1 is reported only in its own label space.

Runs go through ``attack.cli_main`` with the 16-px victim and prior of ``tests/test_attack_cli.py`` (its helpers
and module fixtures are reused), two synthetic targets one per batch, and a two-stage PFO of a few steps.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import test_attack_cli
import torch
from test_attack import quiet_trainer
from test_attack_cli import attack_config, run_cli, write_config

from pfo.attacks import PFO, AttackOutputs, GaussianNoise, Targets
from pfo.attacks.base import NO_LABELS, NO_TAIL, label_space_problem
from pfo.attacks.fingerprint import (
    BOOKKEEPING,
    FINGERPRINT_FILE,
    compare_fingerprints,
    fingerprint_digest,
    read_fingerprint,
    run_fingerprint,
)
from pfo.attacks.merge import merge_runs
from pfo.attacks.outputs import LOCK_FILE, RunFolderInUse, RunLock
from pfo.data import SyntheticImages
from pfo.models import load_victim, save_victim

# The fixtures of tests/test_attack_cli.py: its 16-px victim and prior files, and the targets each run writes.
artefacts = test_attack_cli.artefacts
written = test_attack_cli.written
TARGETS = [0, 8]  # two targets spread over the 16 synthetic test images
LEFT_EMPTY = "top1 and utility_top1 are left empty"

pytestmark = [
    pytest.mark.filterwarnings("ignore:LPIPS will be reported as missing"),
    pytest.mark.filterwarnings("ignore:.*module\\(s\\) in eval mode"),
    pytest.mark.filterwarnings("ignore:.*returned `None`, this fit will run with no optimizer"),
    pytest.mark.filterwarnings("ignore:.*isinstance\\(treespec, LeafSpec\\)"),
    pytest.mark.filterwarnings("ignore:.*`srun` command is available"),
    pytest.mark.filterwarnings("ignore:.*smaller than the logging interval"),
]


def small_config(artefacts: dict, root: Path, name: str = "run", **data) -> dict:
    config = attack_config(artefacts, root, name, **{"count": len(TARGETS), "batch_size": 1, **data})
    config["model"]["init_args"].update(steps=[3, 2], n_init=2, init_chunk=2)
    return config


def run_quietly(config: Path, *extra: str) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return run_cli(config, *extra)


@pytest.fixture(scope="module")
def finished(artefacts, tmp_path_factory) -> Path:
    """A finished run over the two targets: the folder every test copies and the results it must reproduce."""
    root = tmp_path_factory.mktemp("finished")
    cwd = os.getcwd()
    os.chdir(root)
    try:
        return run_quietly(write_config(root, small_config(artefacts, root)))
    finally:
        os.chdir(cwd)


def copy_of(finished: Path, root: Path, name: str = "run") -> Path:
    folder = root / "logs" / name
    shutil.copytree(finished, folder)
    return folder


def contents(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` by relative path -> digest of its bytes (what "nothing written" compares)."""
    if not folder.exists():
        return {}
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def error_of(capsys, config: Path, *extra: str) -> str:
    """Run; it must stop with an error. Its text, raised or printed by the command line."""
    try:
        run_quietly(config, *extra)
    except SystemExit as exit:
        assert exit.code not in (0, None)
        captured = capsys.readouterr()
        return captured.err + captured.out
    except Exception as error:  # noqa: BLE001 (the text is what the test checks)
        return str(error)
    pytest.fail("the run was not refused")


def read_rows(folder: Path) -> tuple[list[str], list[dict]]:
    with open(folder / "metrics.csv", newline="") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames), list(reader)


def assert_same_targets(folder: Path, reference: Path) -> None:
    ours, theirs = AttackOutputs(folder), AttackOutputs(reference)
    assert sorted(ours.finished()) == sorted(theirs.finished()) == TARGETS
    for i in TARGETS:
        a, b = ours.read_target(i), theirs.read_target(i)
        assert torch.equal(a["reconstruction"], b["reconstruction"]), f"target {i} differs"
        assert torch.equal(a["stage_losses"], b["stage_losses"]), f"target {i}: stage losses differ"


# ----- 1. results always match their settings -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("option", "value", "old", "new"),
    [
        ("--model.init_args.split_point", "layer2", '"layer1"', '"layer2"'),
        ("--model.init_args.steps", "[2, 2]", "[3, 2]", "[2, 2]"),
    ],
    ids=["split_point", "steps"],
)
def test_1_a_rerun_with_other_settings_is_refused_before_any_work(
    artefacts, finished, tmp_path, isolated, plain_argv, written, capsys, option, value, old, new
):
    folder = copy_of(finished, tmp_path)
    before = contents(folder)
    config = write_config(tmp_path, small_config(artefacts, tmp_path))
    message = error_of(capsys, config, option, value)
    name = option.removeprefix("--")
    assert f"{name}: {old} -> {new}" in message, message
    assert "--trainer.logger.init_args.name NEW" in message and "--model.init_args.fresh true" in message
    assert len(re.findall(r"^\s+(?:model|data)\.", message, re.MULTILINE)) == 1  # only that option differs
    assert written == []
    assert contents(folder) == before, "the refused run changed the folder"


def test_1_the_same_settings_resume_and_bookkeeping_options_do_not_count(
    artefacts, finished, tmp_path, isolated, plain_argv, written, capsys
):
    folder = copy_of(finished, tmp_path)
    recorded = (folder / FINGERPRINT_FILE).read_text()
    config = write_config(tmp_path, small_config(artefacts, tmp_path, count=3))  # one more target: 0, 5, 10
    run_quietly(config, "--model.init_args.progress", "true", "--trainer.log_every_n_steps", "1")
    assert sorted(written) == [5, 10]  # the new targets only
    assert "resuming: 2 finished targets" in capsys.readouterr().out
    assert (folder / FINGERPRINT_FILE).read_text() == recorded


def test_1_fresh_starts_over_under_the_new_settings(
    artefacts, finished, tmp_path, isolated, plain_argv, written, capsys
):
    folder = copy_of(finished, tmp_path)
    config = write_config(tmp_path, small_config(artefacts, tmp_path))
    run_quietly(config, "--model.init_args.steps", "[2, 2]", "--model.init_args.fresh", "true")
    assert sorted(written) == TARGETS
    assert read_fingerprint(folder)["model.init_args.steps"] == [2, 2]
    written.clear()
    run_quietly(config, "--model.init_args.steps", "[2, 2]")  # the new settings now resume
    assert written == []
    assert "model.init_args.steps: [2, 2] -> [3, 2]" in error_of(capsys, config)  # and refuse the old ones


def test_1_results_with_no_record_of_their_settings_are_refused(
    artefacts, finished, tmp_path, isolated, plain_argv, written, capsys
):
    """A folder of an older pfo: finished targets, no fingerprint. Nothing shows they match this run."""
    folder = copy_of(finished, tmp_path)
    (folder / FINGERPRINT_FILE).unlink()
    message = error_of(capsys, write_config(tmp_path, small_config(artefacts, tmp_path)))
    assert "no record of the settings" in message and "--model.init_args.fresh true" in message
    assert written == []


def test_1_the_fingerprint_holds_every_option_but_bookkeeping(artefacts, tmp_path):
    """Built generically: every hyperparameter, the defense's options, the data's options, the networks by their
    weights and files by their content; moving a file or changing bookkeeping changes nothing."""
    data = SyntheticImages(resolution=16)
    attack = PFO(artefacts["victim"], artefacts["generator"], steps=[3, 2], n_init=2, progress=False)
    base = run_fingerprint(attack, Targets(data=data, count=2, batch_size=1))
    assert base["model.init_args.split_point"] == "layer1"  # the file's, though the option was left unset
    assert base["data.data.init_args.resolution"] == 16 and base["data.batch_size"] == 1
    assert {"model.init_args.victim", "model.init_args.generator", "data.items"} <= base.keys()
    assert not set(BOOKKEEPING) & base.keys()

    def differs(attack=attack, **targets) -> list[str]:
        settings = {"data": data, "count": 2, "batch_size": 1, **targets}
        return [d.name for d in compare_fingerprints(base, run_fingerprint(attack, Targets(**settings)))]

    assert differs(count=5, shard=1, num_shards=2) == []  # which targets, not how
    assert differs(batch_size=2) == ["data.batch_size"]
    assert differs(data=SyntheticImages(resolution=16, num_classes=5)) == [
        "data.data.init_args.num_classes",
        "data.items",  # each index names another image
    ]
    moved = tmp_path / "elsewhere" / "victim.pt"
    moved.parent.mkdir()
    shutil.copy(artefacts["victim"], moved)
    same = PFO(str(moved), artefacts["generator"], steps=[3, 2], n_init=2, progress=True, fresh=True)
    assert differs(same) == []
    assert fingerprint_digest(run_fingerprint(same, Targets(data=data, count=9, batch_size=1))) == fingerprint_digest(
        base
    )
    other = load_victim(artefacts["victim"])
    with torch.no_grad():
        next(other.parameters()).add_(1e-3)
    noisy = PFO(other, artefacts["generator"], steps=[3, 2], n_init=2, defense=GaussianNoise(0.1), lr=0.01)
    assert differs(noisy) == [
        "model.init_args.defense.class_path",
        "model.init_args.defense.init_args.scale",
        "model.init_args.lr",
        "model.init_args.victim",
    ]


def test_1_merged_shards_must_share_their_settings_and_the_merge_records_them(finished, tmp_path):
    shards = [copy_of(finished, tmp_path, f"shard{i}") for i in range(2)]
    for shard in shards:
        (shard / "config.yaml").unlink()  # the recorded settings alone tell whether shards belong together
    AttackOutputs(shards[0]).path(8).unlink()  # disjoint shares: target 0 in one, 8 in the other
    AttackOutputs(shards[1]).path(0).unlink()
    merge_runs(tmp_path / "merged", shards, partial=True)
    assert read_fingerprint(tmp_path / "merged") == read_fingerprint(finished)  # a later resume is checked

    path = shards[1] / FINGERPRINT_FILE
    record = json.loads(path.read_text())
    record["settings"]["model.init_args.lr"] = 0.5
    path.write_text(json.dumps(record))
    with pytest.raises(ValueError, match="ran different attacks or targets:\n  model.init_args.lr: 0.05 -> 0.5"):
        merge_runs(tmp_path / "again", shards, partial=True)


# ----- 2. a damaged target file is redone -----------------------------------------------------------------------


def test_2_a_truncated_target_file_is_redone_with_a_warning_naming_it(
    artefacts, finished, tmp_path, isolated, plain_argv, written, capsys
):
    folder = copy_of(finished, tmp_path)
    damaged = AttackOutputs(folder).path(8)
    damaged.write_bytes(damaged.read_bytes()[:300])  # a copy cut short
    for name in ("metrics.csv", "summary.json"):
        (folder / name).unlink()
    config = write_config(tmp_path, small_config(artefacts, tmp_path))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run_cli(config)
    naming = [str(w.message) for w in caught if str(damaged) in str(w.message)]
    assert len(naming) == 1 and "attacked again" in naming[0], [str(w.message) for w in caught]
    assert "PytorchStreamReader" not in capsys.readouterr().err
    assert written == [8]
    assert_same_targets(folder, finished)
    assert [int(r["index"]) for r in read_rows(folder)[1]] == TARGETS
    assert damaged.with_name(damaged.name + ".damaged").exists()  # kept for inspection, never counted


def test_2_merging_leaves_out_a_damaged_file_with_a_warning(finished, tmp_path):
    folder = copy_of(finished, tmp_path, "shard")
    AttackOutputs(folder).path(0).write_bytes(b"not a result")
    with pytest.warns(UserWarning, match="0000000.pt cannot be read.*left out"):
        summary = AttackOutputs(folder).merge()
    assert summary["targets"] == 1 and [int(r["index"]) for r in read_rows(folder)[1]] == [8]
    with pytest.warns(UserWarning, match="0000000.pt cannot be read"):
        merged = merge_runs(tmp_path / "merged", [folder], partial=True)
    assert merged["targets"] == 1


# ----- 3. one run at a time -------------------------------------------------------------------------------------

HOLD_LOCK = """
import fcntl, sys, time
f = open(sys.argv[1], "a+")
fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
f.write("pid of the holder\\n"); f.flush()
print("locked", flush=True)
time.sleep(600)
"""


def test_3_a_second_run_on_a_folder_in_use_is_refused_and_a_killed_runs_lock_does_not_block(
    artefacts, finished, tmp_path, isolated, plain_argv, written, capsys
):
    folder = copy_of(finished, tmp_path)
    (folder / "metrics.csv").unlink()  # the rerun has something to do: merge
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(folder / LOCK_FILE)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        before = contents(folder)
        config = write_config(tmp_path, small_config(artefacts, tmp_path))
        message = error_of(capsys, config)
        assert f"{folder} is in use by another attack run" in message and "--trainer.logger.init_args.name" in message
        assert written == [] and contents(folder) == before
    finally:
        holder.kill()  # SIGKILL: the holder gets no chance to unlock
        holder.wait()
    run_quietly(config)
    assert written == [] and (folder / "metrics.csv").exists()
    assert_lock_free(folder)  # the run that ended gave it back


def assert_lock_free(folder: Path) -> None:
    lock = RunLock(folder)
    lock.acquire()
    with pytest.raises(RunFolderInUse, match="in use"):
        RunLock(folder).acquire()
    lock.release()


def test_3_a_run_that_fails_gives_the_lock_back(artefacts, finished, tmp_path, isolated, plain_argv, capsys):
    folder = copy_of(finished, tmp_path)
    config = write_config(tmp_path, small_config(artefacts, tmp_path))
    # refused in setup (plain DDP), after the lock was taken: a rerun in the same process must get it
    try:
        assert "IndependentProcesses" in error_of(capsys, config, "--trainer.strategy", "ddp", "--trainer.devices", "1")
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    assert_lock_free(folder)


# ----- 8. a run that fails at setup leaves no half-made folder --------------------------------------------------


def test_8_a_run_that_fails_at_setup_leaves_no_half_made_folder(
    artefacts, finished, tmp_path, isolated, plain_argv, capsys
):
    config = write_config(tmp_path, small_config(artefacts, tmp_path))
    # fails in setup, after Lightning made the folder (events file, config.yaml, run_info.json)
    assert "resolution" in error_of(capsys, config, "--data.data.init_args.resolution", "8")
    assert not (tmp_path / "logs" / "run").exists()
    # fails before anything is made: the target data is missing
    missing = ["--data.data", "pfo.data.CIFAR10", "--data.data.init_args.root", str(tmp_path / "nowhere")]
    assert "nowhere" in error_of(capsys, config, *missing, "--data.data.init_args.resolution", "16")
    assert not (tmp_path / "logs" / "run").exists()
    # an existing run folder is left exactly as it was (its config.yaml and run_info.json too)
    folder = copy_of(finished, tmp_path)
    before = contents(folder)
    try:
        message = error_of(capsys, config, "--trainer.strategy", "ddp", "--trainer.devices", "1")
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    assert "IndependentProcesses" in message
    assert contents(folder) == before


# ----- 9. top-1 only in the victim's label space ----------------------------------------------------------------


@pytest.fixture(scope="module")
def labelled_victim(artefacts, tmp_path_factory) -> str:
    """The test victim exported as a trained one is: naming its classes and its data set."""
    path = tmp_path_factory.mktemp("labelled") / "victim.pt"
    classes = SyntheticImages(resolution=16, num_classes=4).classes
    return str(save_victim(load_victim(artefacts["victim"]), path, classes=classes, dataset="SyntheticImages"))


@pytest.mark.parametrize("num_classes", [6, 4], ids=["another-label-space", "the-victims"])
def test_9_top1_is_reported_only_in_the_victims_label_space_and_why_not_is_said_once(
    artefacts, labelled_victim, tmp_path, isolated, plain_argv, capsys, num_classes
):
    """Targets labelled in another label space (Tiny-ImageNet images against a CIFAR-10 victim, here six
    synthetic classes against the victim's four) leave the columns empty, with the reason said once per run."""
    config = small_config({**artefacts, "victim": labelled_victim}, tmp_path)
    config["data"]["data"]["init_args"]["num_classes"] = num_classes
    folder = run_quietly(write_config(tmp_path, config))
    out = capsys.readouterr().out
    columns, rows = read_rows(folder)
    assert {"top1", "utility_top1"} <= set(columns) and len(rows) == len(TARGETS)
    summary = json.loads((folder / "summary.json").read_text())
    if num_classes == 4:
        assert LEFT_EMPTY not in out
        assert all(r["top1"] in ("0.0", "1.0") and r["utility_top1"] in ("0.0", "1.0") for r in rows)
        assert "top1" in summary["metrics"] and "unreported" not in summary
    else:
        assert out.count(LEFT_EMPTY) == 1, out  # two batches, one line
        line = next(line for line in out.splitlines() if LEFT_EMPTY in line)
        assert "6 classes" in line and "4 classes" in line and "SyntheticImages" in line
        assert all(r["top1"] == "" and r["utility_top1"] == "" for r in rows)
        assert "top1" not in summary["metrics"] and "utility_top1" not in summary["metrics"]
        assert summary["unreported"]["top1"] == summary["unreported"]["utility_top1"] == line.split(": ", 1)[1]


def test_9_a_victim_without_a_tail_leaves_top1_empty_through_the_same_path(artefacts, tmp_path, capsys):
    victim = load_victim(artefacts["victim"])
    victim.__dict__["tail"] = torch.nn.Sequential()  # the server's part unknown (a user's plain head)
    attack = PFO(victim, artefacts["generator"], steps=[2], n_init=2, init_chunk=2, progress=False)
    quiet_trainer(tmp_path, use_distributed_sampler=True).fit(
        attack, datamodule=Targets(data=SyntheticImages(resolution=16), count=2, batch_size=1)
    )
    out = capsys.readouterr().out
    assert out.count(LEFT_EMPTY) == 1 and NO_TAIL in out
    columns, rows = read_rows(tmp_path)
    assert {"top1", "utility_top1"} <= set(columns) and all(r["top1"] == "" for r in rows)
    assert json.loads((tmp_path / "summary.json").read_text())["unreported"]["top1"] == NO_TAIL


def test_9_the_label_space_rule_for_older_victim_files_and_unknown_labels(artefacts):
    """An older victim file names no classes: the numbers of classes must agree. Targets without labels (-1) are
    said once too."""
    victim = load_victim(artefacts["victim"])  # saved without `classes`
    assert "classes" not in victim.meta
    assert label_space_problem(victim, Targets(data=SyntheticImages(resolution=16), count=2)) is None
    problem = label_space_problem(victim, Targets(data=SyntheticImages(resolution=16, num_classes=6), count=2))
    assert "6 classes" in problem and "predicts 4 classes" in problem and "older export" in problem
    victim.meta["classes"] = ["cat", "dog", "ship", "car"]
    assert "not the victim's 4 classes (cat" in label_space_problem(
        victim, Targets(data=SyntheticImages(resolution=16), count=2)
    )
    assert label_space_problem(torch.nn.Linear(2, 2), None) == NO_TAIL  # no `tail` at all

    attack = PFO(artefacts["victim"], artefacts["generator"], steps=[2], n_init=2, progress=False)
    assert attack.unreported(torch.tensor([1, 2])) is None
    assert attack.unreported(torch.tensor([-1, -1])) == attack.unreported(torch.tensor([-1])) == NO_LABELS
