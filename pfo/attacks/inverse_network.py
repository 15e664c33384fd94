"""IN, the inverse network (He et al., ACSAC 2019): a learning-based attack. A decoder ``h -> x`` is trained on the
attacker's PUBLIC images and the victim head's (defended) features of them; each target then costs one forward
pass. Training is a Lightning fit of its own (``python train.py fit --config configs/in_cifar10.yaml``), which
writes a decoder file that the attack (``configs/in_resnet.yaml``) reuses.

The decoder file records what the decoder can be used against (the victim, by a digest of its weights;
the split point; the defense) and which data splits it learnt from; the attack refuses a decoder made for another
victim, split point or defense."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.cli import OptimizerCallable

from pfo.artifacts import ArtifactError, build_from_config, load_artifact, save_artifact
from pfo.attacks.base import Reconstruction, ReconstructionAttack, freeze, frozen_victim
from pfo.attacks.defenses import Defense
from pfo.attacks.fingerprint import module_digest
from pfo.models.decoder import FeatureDecoder
from pfo.models.split import SplitModel
from pfo.threat_model import allowed_exceptions, require_attacker_data


def adam(params) -> torch.optim.Optimizer:
    return torch.optim.Adam(params, lr=1e-3)


def describe_defense(defense: Defense | None) -> str:
    """A defense and its setting as text (``GaussianNoise(scale=0.1)``), to match decoders to attacks."""
    return "none" if defense is None else repr(defense)


class InverseNetworkTrainer(L.LightningModule):
    """Trains the decoder on public images. Refuses to train or validate on any data split but ``public`` (the
    attacker never has the victim's private data nor the targets) unless ``allow_nonpublic_training``."""

    def __init__(
        self,
        victim: str | SplitModel,
        split_point: str | None = None,
        defense: Defense | None = None,
        width: int = 128,
        optimizer: OptimizerCallable = adam,
        export: str | None = "decoder.pt",
        allow_nonpublic_training: bool = False,
    ) -> None:
        """
        Args:
            victim: the victim file (or a SplitModel).
            split_point: where the client cuts the victim (default: the file's).
            defense: the client's defense; the decoder learns from features passed through it, as the attacker
                would see them.
            width: hidden channels of the decoder.
            optimizer: builds the optimiser.
            export: decoder file written to the run folder after ``fit``.
            allow_nonpublic_training: train or validate on a data module split other than ``public`` (or on data
                that names no split), breaking the threat model on purpose (an ablation). By default ``fit`` stops
                before its first step unless ``train_split`` is ``public`` and ``val_split`` null or ``public``
                (the data modules' own default ``val_split: test`` would validate on the targets).
        """
        super().__init__()
        self.save_hyperparameters(ignore=["victim", "defense", "optimizer"])
        self.victim = frozen_victim(victim, split_point)
        self.victim_path = str(victim) if isinstance(victim, (str, Path)) else None
        self.defense = defense
        self.optimizer = optimizer
        size = self.victim.input_size
        with torch.no_grad():
            probe = self.victim.forward_head(torch.zeros(1, 3, size, size))
        self.decoder = FeatureDecoder.for_features(probe, size, width)
        self._splits_seen: dict[str, str | None] | None = None

    def train(self, mode: bool = True):
        super().train(mode)
        self.victim.eval()
        return self

    def setup(self, stage: str) -> None:
        data = getattr(self.trainer, "datamodule", None)
        loops = {"fit": ("train", "val"), "validate": ("val",)}.get(stage)
        if loops is not None:  # the threat model: the attacker's decoder learns from public data only
            self._splits_seen = require_attacker_data(
                "inverse network", data, loops, self.hparams.allow_nonpublic_training
            )

    @torch.no_grad()
    def observed(self, images: torch.Tensor) -> torch.Tensor:
        h = self.victim.forward_head(images)
        return self.defense(h) if self.defense is not None else h

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        images = batch["image"]
        loss = F.mse_loss(self.decoder(self.observed(images)), images)
        self.log("train/mse", loss, prog_bar=True)
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        images = batch["image"]
        self.log("val/mse", F.mse_loss(self.decoder(self.observed(images)), images), prog_bar=True)

    def configure_optimizers(self):
        return self.optimizer(self.decoder.parameters())

    def on_train_end(self) -> None:
        folder = self.trainer.log_dir or self.trainer.default_root_dir  # collective: every rank calls it
        if self.hparams.export and self.trainer.is_global_zero:
            path = save_decoder(
                self.decoder,
                Path(folder) / self.hparams.export,
                split_point=self.victim.split_point,
                defense=describe_defense(self.defense),
                victim=self.victim_path,
                victim_sha256=module_digest(self.victim),
                splits_seen=self._splits_seen,
                threat_model_exceptions=allowed_exceptions(self),
            )
            print(f"decoder file written to {path}")


def save_decoder(decoder: FeatureDecoder, path: str | os.PathLike, **meta) -> Path:
    config = {"class_path": "pfo.models.decoder.FeatureDecoder", "init_args": decoder.config}
    return save_artifact(path, "decoder", config, {k: v.cpu() for k, v in decoder.state_dict().items()}, **meta)


def load_decoder(path: str | os.PathLike) -> tuple[FeatureDecoder, dict]:
    payload = load_artifact(path, "decoder")
    decoder = build_from_config(payload["config"], FeatureDecoder)
    decoder.load_state_dict(payload["state_dict"])
    return decoder.eval(), payload["meta"]


def load_checked_decoder(
    path: str | os.PathLike, victim: SplitModel, defense: Defense | None
) -> tuple[FeatureDecoder, dict]:
    """The decoder in ``path``, frozen, after checking that it was trained for this victim (by a digest of its
    weights), split point and defense: a decoder reads the features it learnt, and another victim's give it noise."""
    decoder, meta = load_decoder(path)
    freeze(decoder)
    if meta.get("split_point") not in (None, victim.split_point):
        raise ArtifactError(
            f"the decoder was trained on features at {meta['split_point']!r} but the attack splits the victim at "
            f"{victim.split_point!r}; train a decoder for this split point"
        )
    if meta.get("defense", "none") != describe_defense(defense):
        raise ArtifactError(
            f"the decoder was trained on features under defense {meta.get('defense')} but the attack runs with "
            f"{describe_defense(defense)}; train the decoder with the same defense"
        )
    recorded = meta.get("victim_sha256")
    if recorded is None:
        warnings.warn(
            f"{path} does not record which victim it was trained against (an older decoder file), so the "
            "attack cannot check it; retrain the decoder to have it checked",
            stacklevel=3,
        )
    elif recorded != module_digest(victim):
        raise ArtifactError(
            f"the decoder in {path} was trained on the features of another victim (victim file "
            f"{meta.get('victim')!r}); train a decoder for this victim (`model.init_args.victim` of the "
            "decoder's config)"
        )
    return decoder, meta


class InverseNetwork(ReconstructionAttack):
    """The attack: one decoder forward pass per target."""

    def __init__(self, victim: str | Path | dict, *, decoder: str, **kwargs) -> None:
        """
        Args:
            victim: the victim file (``train.py fit`` of a victim config writes one), or a network given inline
                (``{class_path: pfo.models.TorchvisionModel, init_args: {...}}``); from Python, a SplitModel too.
            decoder: the decoder file written by ``train.py fit --config configs/in_*.yaml`` for the same victim,
                split point and defense.
        """
        super().__init__(victim, **kwargs)
        self.decoder, self.decoder_meta = load_checked_decoder(decoder, self.victim, self.defense)

    def frozen_modules(self) -> list[torch.nn.Module]:
        return [self.decoder]

    @torch.no_grad()
    def reconstruct(self, h_star: torch.Tensor, index: torch.Tensor) -> Reconstruction:
        images = self.decoder(h_star).clamp(0, 1)
        distance = F.mse_loss(self.victim.forward_head(images), h_star, reduction="none").flatten(1).mean(1)
        failed = ~torch.isfinite(distance)
        return Reconstruction(images=images, feature_loss=distance, failed=failed)
