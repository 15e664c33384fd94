"""The learned start of PFO (issue 16): train a :class:`~pfo.models.latent_encoder.LatentEncoder` that maps the
features a client sends to the latent PFO searches, on the attacker's side only.

``python train.py fit --config configs/encoder_cifar10.yaml`` trains it (a run folder, ``ckpt_path: last`` resumes)
and writes ``encoder.pt``, which ``pfo.attacks.PFOExtended`` (``init: encoder | both``) reads. Like the inverse
network's decoder (``pfo.attacks.inverse_network``), it learns from the public split only (``pfo.threat_model``),
with the victim frozen and the client's defense applied to every feature it sees; its training is counted apart
from the attack's per-target step budget.

Objective, per step (both terms cheap; either can be switched off by its weight):

- ``latent_weight`` x latent regression on the prior's own samples, which needs no data: ``z -> latent ->
  image -> defense(head(image)) -> E(h) ~ latent`` (mean square over the latent's elements; StyleGAN2: the W+ of
  one w). The encoder learns to invert head and generator where an exact answer exists.
- ``image_weight`` x image reconstruction on the public images of the batch: ``render(E(defense(head(x)))) ~ x``
  (mean square in the victim's [0, 1] input space, gradients through the frozen generator). Real images lie off
  the prior's range; this term teaches the encoder the latent whose image comes closest.

The file records what the encoder can be used against (the victim's weight digest, the split point, the defense)
and the prior it speaks to (the generator's weight digest, the latent's shape); the attack refuses a mismatch.
"""

from __future__ import annotations

import os
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.cli import OptimizerCallable

from pfo.artifacts import ArtifactError, build_from_config, load_artifact, save_artifact
from pfo.attacks.base import freeze, frozen_victim
from pfo.attacks.defenses import Defense
from pfo.attacks.fingerprint import module_digest
from pfo.attacks.inverse_network import adam, describe_defense
from pfo.attacks.loss import to_victim_input
from pfo.attacks.options import check_count, check_number
from pfo.attacks.pfo import load_generator_any
from pfo.models.dcgan import DCGANGenerator
from pfo.models.latent_encoder import LatentEncoder
from pfo.models.prior import Prior, as_prior
from pfo.models.split import SplitModel
from pfo.models.stylegan2 import Generator
from pfo.threat_model import allowed_exceptions, require_attacker_data

ENCODER_FILE = "encoder.pt"


def latent_shape(prior: Prior) -> list[int]:
    """The shape of one latent that PFO's stage 0 optimises: W+ ``[num_ws, w_dim]`` where the prior has one, else
    ``[z_dim]``."""
    return list(prior.wplus_shape) if prior.wplus_shape is not None else [prior.z_dim]


@torch.no_grad()
def mean_latent(prior: Prior, truncation: float, count: int = 1024, seed: int = 0) -> torch.Tensor:
    """The average expanded latent of ``count`` samples (StyleGAN2: about ``w_avg`` in every style; DCGAN: about 0):
    where an untrained encoder starts."""
    z = prior.sample_z(count, torch.Generator().manual_seed(seed))
    return prior.expand(prior.map(z, truncation=truncation)).mean(0)


class LatentEncoderTrainer(L.LightningModule):
    """Trains the encoder on public images and on the prior's own samples. Refuses to train or validate on any
    data split but ``public`` unless ``allow_nonpublic_training``."""

    def __init__(
        self,
        victim: str | SplitModel,
        generator: str | Generator | DCGANGenerator | Prior,
        split_point: str | None = None,
        defense: Defense | None = None,
        truncation: float = 1.0,
        noise_mode: str = "const",
        width: int = 128,
        latent_weight: float = 1.0,
        image_weight: float = 1.0,
        generated: int | None = None,
        seed: int = 0,
        optimizer: OptimizerCallable = adam,
        export: str | None = ENCODER_FILE,
        allow_nonpublic_training: bool = False,
    ) -> None:
        """
        Args:
            victim: the victim file (or a SplitModel).
            generator: the prior the attack will use (a generator file, a named prior, or a generator): the
                encoder answers in its latent space and works only with it.
            split_point: where the client cuts the victim (default: the file's).
            defense: the client's defense; the encoder learns from features passed through it, as the attacker
                sees them.
            truncation: truncation psi of the prior's samples for the latent regression (1: the whole prior).
            noise_mode: StyleGAN2's per-layer noise when rendering (``const`` or ``none``; as the attack's).
            width: hidden channels of the encoder.
            latent_weight: weight of the latent regression on the prior's samples (0: off).
            image_weight: weight of the image reconstruction of the batch's public images (0: off).
            generated: prior samples per step for the latent regression (default: the batch's size).
            seed: seed of the prior's samples; step ``t`` draws from (seed, t), so a resumed run draws what the
                uninterrupted one would have.
            optimizer: builds the optimiser.
            export: encoder file written to the run folder after ``fit``.
            allow_nonpublic_training: train or validate on a data module split other than ``public`` (or data that
                names no split), breaking the threat model on purpose (an ablation). By default ``fit`` stops
                before its first step unless ``train_split`` is ``public`` and ``val_split`` null or ``public``.
        """
        check_number("truncation", truncation, positive=True)
        check_count("width", width, 1)
        check_number("latent_weight", latent_weight)
        check_number("image_weight", image_weight)
        if latent_weight == 0 and image_weight == 0:
            raise ValueError("`latent_weight` and `image_weight` are both 0, so nothing trains; make one positive")
        if generated is not None:
            check_count("generated", generated, 1)
        super().__init__()
        self.save_hyperparameters(ignore=["victim", "defense", "generator", "optimizer"])
        self.victim = frozen_victim(victim, split_point)
        self.victim_path = str(victim) if isinstance(victim, (str, Path)) else None
        self.prior = as_prior(load_generator_any(generator), noise_mode)
        self.generator = freeze(self.prior.generator)
        self.prior_path = str(generator) if isinstance(generator, (str, Path)) else None
        self.defense = defense
        self.optimizer = optimizer
        size = self.victim.input_size
        with torch.no_grad():
            probe = self.victim.forward_head(torch.zeros(1, 3, size, size))
        self.encoder = LatentEncoder.for_features(probe, latent_shape(self.prior), width)
        self.encoder.latent_mean.copy_(mean_latent(self.prior, truncation))
        self._splits_seen: dict[str, str | None] | None = None

    def train(self, mode: bool = True):
        """Victim and prior stay in eval mode (BatchNorm statistics, StyleGAN2's w_avg)."""
        super().train(mode)
        self.victim.eval()
        self.generator.eval()
        return self

    def setup(self, stage: str) -> None:
        data = getattr(self.trainer, "datamodule", None)
        loops = {"fit": ("train", "val"), "validate": ("val",)}.get(stage)
        if loops is not None:  # the threat model: the attacker's encoder learns from public data only
            self._splits_seen = require_attacker_data(
                "latent encoder", data, loops, self.hparams.allow_nonpublic_training
            )

    @torch.no_grad()
    def observed(self, images: torch.Tensor) -> torch.Tensor:
        """What the client would send for ``images`` ([0, 1], the victim's size): the head's defended features."""
        h = self.victim.forward_head(images)
        return self.defense(h) if self.defense is not None else h

    def to_victim(self, rendered: torch.Tensor) -> torch.Tensor:
        return to_victim_input(rendered, self.victim, self.prior.value_range)

    def losses(self, images: torch.Tensor, step: int) -> dict[str, torch.Tensor]:
        """The two terms (weighted terms only are computed) for a batch of public ``images``."""
        hp, P = self.hparams, self.prior
        out: dict[str, torch.Tensor] = {}
        if hp.latent_weight > 0:
            count = hp.generated or len(images)
            g = torch.Generator().manual_seed(hp.seed * 1_000_003 + step)
            with torch.no_grad():
                target = P.expand(P.map(P.sample_z(count, g).to(self.device), truncation=hp.truncation))
                h = self.observed(self.to_victim(P.render(target)).clamp(0, 1))
            out["latent"] = F.mse_loss(self.encoder(h), target)
        if hp.image_weight > 0:
            rendered = self.to_victim(P.render(self.encoder(self.observed(images))))
            out["image"] = F.mse_loss(rendered, images)
        return out

    def weighted(self, terms: dict[str, torch.Tensor]) -> torch.Tensor:
        hp = self.hparams
        return sum(getattr(hp, f"{name}_weight") * value for name, value in terms.items())

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        terms = self.losses(batch["image"], self.global_step)
        for name, value in terms.items():
            self.log(f"train/{name}", value, prog_bar=True)
        return self.weighted(terms)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        terms = self.losses(batch["image"], -1 - batch_idx)  # fixed prior samples for every validation
        for name, value in terms.items():
            self.log(f"val/{name}", value, prog_bar=True)

    def configure_optimizers(self):
        return self.optimizer(self.encoder.parameters())

    def on_train_end(self) -> None:
        folder = self.trainer.log_dir or self.trainer.default_root_dir  # collective: every rank calls it
        if self.hparams.export and self.trainer.is_global_zero:
            path = save_encoder(
                self.encoder,
                Path(folder) / self.hparams.export,
                split_point=self.victim.split_point,
                defense=describe_defense(self.defense),
                victim=self.victim_path,
                victim_sha256=module_digest(self.victim),
                prior=self.prior_path,
                prior_sha256=module_digest(self.generator),
                latent_name=self.prior.latent_name,
                latent_shape=latent_shape(self.prior),
                noise_mode=self.hparams.noise_mode,
                splits_seen=self._splits_seen,
                threat_model_exceptions=allowed_exceptions(self),
            )
            print(f"encoder file written to {path}")


def save_encoder(encoder: LatentEncoder, path: str | os.PathLike, **meta) -> Path:
    config = {"class_path": "pfo.models.latent_encoder.LatentEncoder", "init_args": encoder.config}
    return save_artifact(path, "encoder", config, {k: v.cpu() for k, v in encoder.state_dict().items()}, **meta)


def load_encoder(path: str | os.PathLike) -> tuple[LatentEncoder, dict]:
    """The encoder in ``path`` (read with ``weights_only=True``) in eval mode, and what its file records."""
    payload = load_artifact(path, "encoder")
    encoder = build_from_config(payload["config"], LatentEncoder)
    encoder.load_state_dict(payload["state_dict"])
    return encoder.eval(), payload["meta"]


def check_encoder(path: str, meta: dict, victim: SplitModel, generator: torch.nn.Module, defense: str) -> None:
    """Refuse (``ArtifactError``) an encoder trained for another victim, split point, defense or prior: its latents
    would be wrong starts that nothing flags. Each message names what differs and the fix."""
    retrain = "train an encoder for this attack (`python train.py fit --config configs/encoder_*.yaml` with the same"
    checks = [
        ("split_point", victim.split_point, f"features at {meta.get('split_point')!r}", "split point"),
        ("defense", defense, f"features under defense {meta.get('defense')}", "defense"),
        ("victim_sha256", module_digest(victim), f"the features of another victim ({meta.get('victim')!r})", "victim"),
        ("prior_sha256", module_digest(generator), f"another prior ({meta.get('prior')!r})", "generator"),
    ]
    for key, ours, what, option in checks:
        if meta.get(key) != ours:
            raise ArtifactError(f"the encoder in {path} was trained on {what}, not this attack's; {retrain} {option})")
