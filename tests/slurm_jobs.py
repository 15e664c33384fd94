"""Test-only pieces that the jobs of ``tests/test_slurm.py`` load by ``class_path`` (the jobs run with ``tests/`` on
``PYTHONPATH``): an attack that keeps a journal of every result it writes, and a callback that keeps a journal of
every training step. Each journal line carries ``SLURM_RESTART_COUNT``, so a test can tell what ran before and
after a requeue. Both may slow their run down (``delay`` seconds per step) so that a test can interrupt it midway
on a loaded machine; the results do not depend on it."""

from __future__ import annotations

import os
import time

import lightning as L

from pfo.attacks import PFO


def _restart() -> int:
    return int(os.environ.get("SLURM_RESTART_COUNT", "0"))


def _append(path: str | os.PathLike, line: str) -> None:
    with open(path, "a") as f:  # one short write in append mode: lines from several processes never interleave
        f.write(line + "\n")


class JournalledPFO(PFO):
    """PFO that appends ``<target index> <global rank> <restart count>`` to ``journal.txt`` in its run folder each
    time it writes a target's result, and sleeps ``delay`` seconds before each batch with a real target."""

    def __init__(self, *args, delay: float = 0.0, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.delay = delay

    def setup(self, stage: str) -> None:
        super().setup(stage)
        outputs, journal, rank = self.outputs, self.outputs.folder / "journal.txt", self.global_rank
        write = outputs.write_target

        def write_target(index, result):
            path = write(index, result)
            _append(journal, f"{int(index)} {rank} {_restart()}")
            return path

        outputs.write_target = write_target

    def training_step(self, batch, batch_idx):
        if self.delay and bool(batch["valid"].any()):
            time.sleep(self.delay)
        return super().training_step(batch, batch_idx)


class StepJournal(L.Callback):
    """Appends ``<global step> <restart count>`` to ``path`` at the start of every training batch (rank 0), and
    sleeps ``delay`` seconds there."""

    def __init__(self, path: str, delay: float = 0.0) -> None:
        self.path, self.delay = path, delay

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.is_global_zero:
            _append(self.path, f"{trainer.global_step} {_restart()}")
        time.sleep(self.delay)
