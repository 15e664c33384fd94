"""The victim's training system: a split classifier trained with cross-entropy, exported as a victim file."""

from __future__ import annotations

import math
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.cli import OptimizerCallable
from torchmetrics.classification import MulticlassAccuracy

from pfo.models.split import SplitModel
from pfo.models.victim_file import save_victim
from pfo.threat_model import allowed_exceptions, require_victim_data
from pfo.victim.nopeek import distance_correlation


def sgd_nesterov(params) -> torch.optim.Optimizer:
    """The default: SGD with Nesterov momentum, lr 0.1 at batch 128, weight decay 5e-4 (a standard ResNet recipe)."""
    return torch.optim.SGD(params, lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)


def warmup_cosine(step: int, total: int, warmup: int) -> float:
    """Learning-rate factor: linear warm-up, then cosine decay to zero at ``total`` steps."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.5 * (1.0 + math.cos(math.pi * progress))


class VictimClassifier(L.LightningModule):
    """Trains ``net`` on the private split; at the end of ``fit`` writes ``<run folder>/<export>``."""

    def __init__(
        self,
        net: SplitModel,
        optimizer: OptimizerCallable = sgd_nesterov,
        warmup_epochs: float = 0.5,
        label_smoothing: float = 0.1,
        progressive_resizing: list[tuple[int, int]] = [],  # noqa: B006 (jsonargparse needs a literal default)
        channels_last: bool = True,
        nopeek_weight: float = 0.0,
        export: str | None = "victim.pt",
        allow_nonprivate_training: bool = False,
    ) -> None:
        """
        Args:
            net: the split classifier (its split point is only the default of the exported file).
            optimizer: builds the optimiser from the parameters.
            warmup_epochs: linear warm-up before the per-step cosine decay.
            label_smoothing: cross-entropy label smoothing.
            progressive_resizing: stages ``[epochs, side]`` trained, in order, on images down-sampled to ``side``
                before the remaining epochs run at the net's input size (as FFCV does). An epoch at side s costs
                about (s / input_size)^2 of a full one; the model is fully convolutional up to its global pooling,
                so what it learns carries over. Validation always runs at full resolution. Example: ``[[4, 16],
                [4, 24]]`` trains 4 epochs at 16 px, 4 at 24 px, then the rest at 32 px.
            channels_last: keep weights and activations in channels-last memory order, which oneDNN convolutions
                train faster in (measured 1.22x for the CIFAR ResNet-18 on this project's 2-core CPU; on GPUs it
                helps under mixed precision). It changes no result beyond floating-point rounding.
            nopeek_weight: weight of the NoPeek defense: the distance correlation between each batch's inputs and
                its split-point features is added to the loss (0: off).
            export: file name of the victim file written in the run folder after ``fit`` (null: none).
            allow_nonprivate_training: train on a data module split other than ``private`` (or on data that names
                no split), breaking the threat model on purpose (an ablation: a victim trained on the attacker's
                public data). By default training stops before its first step unless ``train_split`` is
                ``private``; validating on ``test`` is always fine.
        """
        super().__init__()
        for stage in progressive_resizing:
            if len(stage) != 2 or stage[0] < 1 or not 0 < stage[1] <= net.input_size:
                raise ValueError(
                    f"progressive_resizing stage {list(stage)} must be [epochs >= 1, side in 1..{net.input_size}]"
                )
        self.save_hyperparameters(ignore=["net", "optimizer"])
        self.net = net
        self.optimizer = optimizer
        self.train_accuracy = MulticlassAccuracy(net.num_classes, average="micro")
        self.val_accuracy = MulticlassAccuracy(net.num_classes, average="micro")
        self.test_accuracy = MulticlassAccuracy(net.num_classes, average="micro")
        self._splits_seen: dict[str, str | None] | None = None  # set when fit starts, recorded in the victim file

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self._memory_format(x))

    def _memory_format(self, images: torch.Tensor) -> torch.Tensor:
        return images.contiguous(memory_format=torch.channels_last) if self.hparams.channels_last else images

    def training_resolution(self, epoch: int) -> int:
        """Side of the training images in ``epoch`` (0-based) under the progressive-resizing stages."""
        start = 0
        for epochs, side in self.hparams.progressive_resizing:
            if epoch < start + epochs:
                return side
            start += epochs
        return self.net.input_size

    def on_fit_start(self) -> None:
        if self.hparams.channels_last:
            self.net.to(memory_format=torch.channels_last)

    def setup(self, stage: str) -> None:
        data = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if stage == "fit":  # the threat model: the victim learns from the private split
            self._splits_seen = require_victim_data(data, self.hparams.allow_nonprivate_training)
        if data is not None and hasattr(data, "num_classes") and data.num_classes != self.net.num_classes:
            raise ValueError(
                f"the data set has {data.num_classes} classes but the model was built with num_classes="
                f"{self.net.num_classes}; set `model.init_args.net.init_args.num_classes: {data.num_classes}`"
            )
        if data is not None and getattr(data, "resolution", self.net.input_size) != self.net.input_size:
            raise ValueError(
                f"the data module serves {data.resolution}px images but the model expects {self.net.input_size}px;"
                f" set `data.init_args.resolution: {self.net.input_size}`"
            )

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        images = batch["image"]
        side = self.training_resolution(self.current_epoch)
        if side != self.net.input_size:
            images = F.interpolate(images, size=side, mode="bilinear", antialias=True)
        else:
            self.net.check_input(images)
        images = self._memory_format(images)
        features = self.net.head(images)
        logits = self.net.tail(features)
        loss = F.cross_entropy(logits, batch["label"], label_smoothing=self.hparams.label_smoothing)
        if self.hparams.nopeek_weight:
            dcor = distance_correlation(images, features)
            self.log("train/distance_correlation", dcor)
            loss = loss + self.hparams.nopeek_weight * dcor
        self.train_accuracy(logits, batch["label"])
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/accuracy", self.train_accuracy, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        logits = self(batch["image"])
        self.val_accuracy(logits, batch["label"])
        self.log("val/loss", F.cross_entropy(logits, batch["label"]), sync_dist=True)
        self.log("val/accuracy", self.val_accuracy, prog_bar=True)

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self.test_accuracy(self(batch["image"]), batch["label"])
        self.log("test/accuracy", self.test_accuracy)

    def predict_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        return self(batch["image"]).argmax(1)

    def configure_optimizers(self):
        optimizer = self.optimizer(self.parameters())
        total = int(self.trainer.estimated_stepping_batches)
        steps_per_epoch = max(1, total // max(1, self.trainer.max_epochs or 1))
        warmup = max(1, int(self.hparams.warmup_epochs * steps_per_epoch))
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: warmup_cosine(s, total, warmup))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def on_train_end(self) -> None:
        self.net.to(memory_format=torch.contiguous_format)  # hand back the standard layout, as exported
        folder = self.trainer.log_dir or self.trainer.default_root_dir  # a collective call: every rank makes it
        if self.hparams.export and self.trainer.is_global_zero:
            self.export(Path(folder) / self.hparams.export)

    def export(self, path: str | Path) -> Path:
        """Write the victim file (architecture, weights, normalisation, resolution, classes, accuracy)."""
        data = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        meta = {"classes": list(getattr(data, "classes", []) or [])}  # the label space attacks score top-1 in
        if data is not None:
            meta["dataset"] = type(data).__name__
        accuracy = self.trainer.callback_metrics.get("val/accuracy") if self._trainer is not None else None
        if accuracy is not None:
            meta["val_accuracy"] = float(accuracy)
        if self._splits_seen is not None:
            meta["splits_seen"] = self._splits_seen  # which splits the victim trained and validated on
        meta["threat_model_exceptions"] = allowed_exceptions(self)
        path = save_victim(self.net, path, **meta)
        print(f"victim file written to {path}")
        return path
