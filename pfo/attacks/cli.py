"""``python attack.py --config configs/pfo_*.yaml``: an attack run, no subcommand."""

from __future__ import annotations

from pathlib import Path

from lightning.pytorch.cli import LightningCLI

from pfo.attacks.base import ReconstructionAttack
from pfo.attacks.requeue import RequeueOnSignal
from pfo.attacks.targets import Targets
from pfo.cli import CompactErrorParser, check_trainer_config, one_line_errors, use_run_folder_as_root
from pfo.run_info import RunInfo

DEFAULT_RUN_NAME = "attack"


class AttackCLI(LightningCLI):
    """LightningCLI for attacks: the attack by ``class_path``, the targets, and a Trainer that runs one epoch
    over the targets. The run folder is ``logs/<config name>/``: rerunning the same config resumes it (finished
    targets are skipped); ``--model.init_args.fresh true`` starts over. Bad input stops the command with one line,
    ``error: <what to fix>`` (``PFO_TRACEBACK=1`` shows the traceback instead; see ``pfo.cli.one_line_errors``)."""

    def __init__(self, args=None, run: bool = True, **kwargs) -> None:
        self._run_attack = run
        with one_line_errors():
            super().__init__(
                model_class=ReconstructionAttack,
                datamodule_class=Targets,
                subclass_mode_model=True,
                seed_everything_default=0,
                save_config_kwargs={"overwrite": True},
                trainer_defaults={
                    "max_epochs": 1,
                    "enable_checkpointing": False,
                    "use_distributed_sampler": False,
                    "num_sanity_val_steps": 0,
                    "logger": {
                        "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                        "init_args": {"save_dir": "logs", "name": DEFAULT_RUN_NAME, "version": ""},
                    },
                    "callbacks": [RunInfo(), RequeueOnSignal()],
                },
                parser_class=CompactErrorParser,
                run=False,
                args=args,
                **kwargs,
            )
            if self._run_attack:
                self.trainer.fit(self.model, datamodule=self.datamodule)

    def before_instantiate_classes(self) -> None:
        """Name the run folder after the config file unless the config names it; make it the Trainer's
        ``default_root_dir`` (where Lightning's SLURM preemption checkpoint goes) unless the config sets one."""
        config = self.config
        logger = config.get("trainer", {}).get("logger")
        configs = config.get("config") or []
        if configs and isinstance(logger, dict) or hasattr(logger, "init_args"):
            init = logger["init_args"] if isinstance(logger, dict) else logger.init_args
            if init.get("name") == DEFAULT_RUN_NAME and configs:
                init["name"] = Path(str(configs[-1])).stem
        check_trainer_config(config["trainer"])
        use_run_folder_as_root(config["trainer"])

    def after_instantiate_classes(self) -> None:
        """The targets' data module sits at ``data.data`` here: its "data not found" message names that option."""
        data = getattr(self.datamodule, "data", None)
        if data is not None and hasattr(data, "root_option"):
            data.root_option = "data.data.init_args.root"
