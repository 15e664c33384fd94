"""SLURM requeue for attack runs: on the requeue signal, ask SLURM to requeue the job, and do nothing else.

Lightning's own handler (auto-requeue, on whenever a run is launched by ``srun``) first saves a checkpoint, which
for an attack holds nothing worth keeping (progress is the per-target result files), and which waits at a
barrier for every process: inside a signal handler, while the processes are at different points of their loop
(Lightning's training loop itself makes a collective call at every step under DDP), that barrier can meet
another collective call and stall the job so that it never gets requeued. This handler makes no collective call:
whichever process handles the signal first requeues the job; SLURM then stops every process and restarts the
job, which skips the targets already finished.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading

import lightning as L
from lightning.fabric.plugins.environments import SLURMEnvironment


def slurm_job_id() -> str | None:
    """The id ``scontrol requeue`` takes: ``<array job>_<task>`` for an array task, else the job id."""
    array_job = os.environ.get("SLURM_ARRAY_JOB_ID")
    if array_job is not None and "SLURM_ARRAY_TASK_ID" in os.environ:
        return f"{array_job}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    return os.environ.get("SLURM_JOB_ID")


class RequeueOnSignal(L.Callback):
    """Replaces Lightning's SLURM requeue handler (for the run) with one that only requeues the job.

    Active where Lightning's is: under SLURM with auto-requeue on (``SLURMEnvironment``, the default under
    ``srun``); its signal is the environment's ``requeue_signal`` (USR1 by default, sent by
    ``#SBATCH --signal=USR1@90`` or ``scancel --signal=USR1``).
    """

    def __init__(self) -> None:
        self.requested = False

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Lightning registers its handlers just before the loop starts; this hook runs after, and Lightning puts
        # back the handlers it found (not this one) when the run ends.
        environment = getattr(trainer.strategy, "cluster_environment", None)
        if environment is None:
            environment = getattr(getattr(trainer, "_accelerator_connector", None), "cluster_environment", None)
        if not isinstance(environment, SLURMEnvironment) or not environment.auto_requeue:
            return
        if threading.current_thread() is not threading.main_thread() or environment.requeue_signal is None:
            return
        self.requested = False
        signal.signal(environment.requeue_signal, self.requeue)

    def requeue(self, signum, frame) -> None:
        if self.requested:
            return
        self.requested = True
        job = slurm_job_id()
        if job is None:
            print(f"pfo: signal {signum} but no SLURM job id: not requeued", flush=True)
            return
        try:
            result = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True, timeout=60)
            outcome = "done" if result.returncode == 0 else (result.stderr or result.stdout).strip()
        except (OSError, subprocess.SubprocessError) as error:
            outcome = str(error)
        print(f"pfo: signal {signum}: scontrol requeue {job}: {outcome}", flush=True)
