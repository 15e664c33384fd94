"""The command-line interface shared by ``train.py`` (stages 1 and 2)."""

from __future__ import annotations

import lightning as L
from lightning.pytorch.cli import LightningCLI

from pfo.run_info import RunInfo


class TrainCLI(LightningCLI):
    """LightningCLI where YAML picks the system (victim or GAN) and the data module by ``class_path``.

    Every run folder gets the resolved ``config.yaml`` (overwritten on resume) and ``run_info.json``.
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
