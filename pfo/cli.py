"""The command-line interface shared by ``train.py`` (stages 1 and 2), and the run-folder conventions that make a
run resumable where it is preempted and requeued (SLURM)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI

from pfo.run_info import RunInfo

HPC_CHECKPOINT = re.compile(r"^hpc_ckpt_(\d+)\.ckpt$")


def logger_folder(logger) -> str | None:
    """The folder a logger given as ``class_path``/``init_args`` writes to (``save_dir/name/version``, the
    TensorBoard and CSV layout), or None where that is not known before the run (no logger, an automatic
    ``version_N``, another kind of logger)."""
    init = logger.get("init_args") if isinstance(logger, dict) else getattr(logger, "init_args", None)
    if init is None:
        return None
    save_dir, name, version = init.get("save_dir"), init.get("name"), init.get("version")
    if save_dir is None or name is None or version is None:
        return None
    version = version if isinstance(version, str) else f"version_{version}"
    return os.path.join(str(save_dir), str(name), version)


def use_run_folder_as_root(trainer_config) -> None:
    """Make the run folder the Trainer's ``default_root_dir`` unless the config sets one: Lightning writes the
    checkpoint it saves on a SLURM preemption signal there (``hpc_ckpt_N.ckpt``) and looks there after the requeue,
    so it must be the same folder on every restart and belong to this run alone (the default, the working
    directory, is shared by every run started from it)."""
    if trainer_config.get("default_root_dir") is not None:
        return
    folder = logger_folder(trainer_config.get("logger"))
    if folder is not None:
        trainer_config["default_root_dir"] = folder


def hpc_checkpoint(folder: str | os.PathLike) -> Path | None:
    """The newest checkpoint Lightning saved on a SLURM preemption signal in ``folder``, if any."""
    if not Path(folder).is_dir():
        return None
    numbered = [(int(m.group(1)), p) for p in Path(folder).iterdir() if (m := HPC_CHECKPOINT.match(p.name))]
    return max(numbered)[1] if numbered else None


def resume_checkpoint(trainer: L.Trainer) -> str | None:
    """What ``ckpt_path: last`` resumes from: the newer of the last checkpoint (``ModelCheckpoint(save_last)``) and
    the preemption checkpoint. Lightning alone takes the preemption checkpoint only when ``ckpt_path`` is unset,
    and ``last`` ignores it: a requeued run would go back to its last periodic checkpoint."""
    candidates = set()
    for callback in trainer.checkpoint_callbacks:
        if isinstance(callback, ModelCheckpoint):
            candidates |= callback._find_last_checkpoints(trainer)  # private, pinned by constraints.txt
    hpc = hpc_checkpoint(trainer.default_root_dir)
    if hpc is not None:
        candidates.add(str(hpc))
    existing = [path for path in candidates if os.path.isfile(path)]
    return max(existing, key=os.path.getmtime) if existing else None


class TrainCLI(LightningCLI):
    """LightningCLI where YAML picks the system (victim or GAN) and the data module by ``class_path``.

    Every run folder gets the resolved ``config.yaml`` (overwritten on resume) and ``run_info.json``. The run
    folder is also the Trainer's ``default_root_dir`` (unless set), and ``ckpt_path: last`` resumes from the newest
    of the last checkpoint and the one Lightning saves when SLURM preempts the job: a requeued job continues from
    the step it was stopped at.
    """

    def __init__(self, args=None, **kwargs) -> None:
        super().__init__(
            model_class=L.LightningModule,
            datamodule_class=L.LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            seed_everything_default=0,
            save_config_kwargs={"overwrite": True},
            trainer_defaults={"callbacks": [RunInfo()]},
            args=args,
            **kwargs,
        )

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        use_run_folder_as_root(config["trainer"])

    def fit(self, model: L.LightningModule, **kwargs) -> None:
        if kwargs.get("ckpt_path") == "last":
            kwargs["ckpt_path"] = resume_checkpoint(self.trainer) or "last"
        self.trainer.fit(model, **kwargs)
