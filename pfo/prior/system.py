"""Stage 2: training or fine-tuning the StyleGAN2 prior, exported as a generator file for the attacks.

One training step is one discriminator update then one generator update on one batch (manual optimisation),
following NVlabs' StyleGAN2 recipe: non-saturating logistic loss, lazy R1 on the discriminator, optional lazy
path-length regularisation, style mixing, and an EMA copy of the generator (``G_ema``), which is what attacks load.

Precision comes from the Trainer: ``precision: 32-true`` on CPU, ``bf16-mixed`` on GPUs that support bfloat16
(Ampere and later). Under ``bf16-mixed`` convolutions run in bfloat16, while the mapping network and the gradient
penalties (R1, path length: gradients of gradients) always run in float32; the weights, optimiser states and
``G_ema`` stay float32. ``16-mixed`` is not recommended (StyleGAN2 needs ``conv_clamp`` for float16).

Multi-GPU: use ``strategy: pfo.prior.GANDDPStrategy``, which does not wrap the module in DistributedDataParallel
(its reducer does not support the gradient penalties' double backward); the system averages gradients itself.
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.distributed as dist
from lightning.pytorch.cli import OptimizerCallable
from lightning.pytorch.strategies import DDPStrategy
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor, nn
from torchvision.utils import make_grid, save_image

from pfo.models.generator_file import load_prior_networks, save_generator
from pfo.models.stylegan2 import Discriminator, Generator
from pfo.prior.augment import DiffAugment
from pfo.prior.losses import (
    discriminator_loss,
    ema_beta,
    generator_loss,
    mixed_styles,
    path_lengths,
    r1_penalty,
    update_ema,
)
from pfo.threat_model import allowed_exceptions, require_attacker_data

# Lightning 2.6 warns at every step-based checkpoint under manual optimisation that the saved weights are those
# after the step. That is what we want: the checkpoint of step N holds the state after N steps, and resumes there.
warnings.filterwarnings("ignore", message="Using ModelCheckpoint with manual optimization", category=UserWarning)


def stylegan2_adam(params) -> torch.optim.Optimizer:
    """NVlabs' StyleGAN2 optimiser (their CIFAR and ``auto`` settings): Adam, lr 0.0025, betas (0, 0.99)."""
    return torch.optim.Adam(params, lr=0.0025, betas=(0.0, 0.99), eps=1e-8)


def _no_closure() -> None:
    return None


class GANDDPStrategy(DDPStrategy):
    """DDP that leaves the LightningModule unwrapped: :class:`GANSystem` all-reduces its gradients itself, as NVlabs'
    training loop does, because DistributedDataParallel's reducer does not support R1's double backward.

    Parameters and buffers are broadcast from rank 0 when training starts, so every process starts equal.
    """

    def configure_ddp(self) -> None:
        for tensor in [*self.model.parameters(), *self.model.buffers()]:
            dist.broadcast(tensor.data, src=0)


class GANSystem(L.LightningModule):
    """Trains ``generator`` against ``discriminator``; writes sample grids and, after ``fit``, the generator file
    ``<run folder>/<export>`` holding ``G_ema`` (and D, for fine-tuning).

    ``global_step`` counts training steps (one per batch, each a D and a G update), so ``max_steps`` and
    ``ModelCheckpoint(every_n_train_steps=...)`` mean batches. A checkpoint restores G, D, ``G_ema``, both
    optimisers, the step and image counters and the path-length mean; not the random generators' states, so a
    resumed run continues statistically, not bitwise, like an uninterrupted one.
    """

    def __init__(
        self,
        generator: Generator,
        discriminator: Discriminator,
        g_optimizer: OptimizerCallable = stylegan2_adam,
        d_optimizer: OptimizerCallable = stylegan2_adam,
        r1_gamma: float | None = None,
        r1_interval: int = 16,
        style_mixing_prob: float = 0.9,
        pl_weight: float = 0.0,
        pl_interval: int = 4,
        pl_batch_shrink: int = 2,
        pl_decay: float = 0.01,
        ema_kimg: float = 10.0,
        ema_rampup: float | None = 0.05,
        augment: str | None = None,
        mirror: bool = False,
        init_from: str | None = None,
        sample_every_n_steps: int | None = 500,
        sample_grid: int = 8,
        sample_seed: int = 0,
        export: str | None = "generator.pt",
        export_every_n_steps: int | None = None,
        export_discriminator: bool = True,
        allow_nonpublic_training: bool = False,
    ) -> None:
        """
        Args:
            generator: the StyleGAN2 generator to train (its EMA copy is made here).
            discriminator: the StyleGAN2 discriminator, same resolution.
            g_optimizer: builds the generator's optimiser (default Adam lr 0.0025, betas (0, 0.99)).
            d_optimizer: builds the discriminator's optimiser (same default).
            r1_gamma: weight of the R1 penalty (gamma / 2 * ||grad D(x)||^2 on real images); null: NVlabs' heuristic
                0.0002 * resolution^2 / batch size (0.0064 at 32 px, batch 32). 0 disables R1.
            r1_interval: lazy regularisation: R1 every this many steps, scaled by the interval, added to that
                step's discriminator loss (one backward, one optimiser step: no learning-rate correction needed).
            style_mixing_prob: probability per batch of mixing the styles of two latents at a random layer.
            pl_weight: weight of the path-length penalty (NVlabs: 2 for their paper configs); 0 disables it.
            pl_interval: lazy path-length regularisation every this many steps, scaled by the interval.
            pl_batch_shrink: the path-length penalty uses batch / this many samples.
            pl_decay: decay of the running mean path length the penalty pulls towards.
            ema_kimg: half-life of the EMA generator's weights, in thousands of images.
            ema_rampup: cap the half-life at this fraction of the images seen so far; null: no ramp-up.
            augment: DiffAugment policy applied to real and fake images before D, e.g. ``color,translation,cutout``
                (for small data sets); null or empty: none.
            mirror: flip half of each real batch horizontally (doubles a data set whose flips are plausible).
            init_from: fine-tuning: a pfo generator file, a rosinality ``.pt`` or an NVlabs ``.pkl`` whose weights
                start G and G_ema (and D where the file has one). Read only when training starts from scratch, not
                on resume. The configured networks must have the file's architecture.
            sample_every_n_steps: write a grid of ``G_ema`` samples from fixed latents every this many steps (and at
                the start and end) to TensorBoard and ``<run folder>/samples/step_XXXXXX.png``; null: never.
            sample_grid: the grid is sample_grid x sample_grid images.
            sample_seed: seed of the fixed latents of the grid.
            export: file name of the generator file written in the run folder after ``fit``; null: none.
            export_every_n_steps: also (re)write it every this many steps, atomically; null: only at the end.
            export_discriminator: include D in the generator file, so fine-tuning can restart from it.
            allow_nonpublic_training: train on a data module split other than ``public`` (or on data that names no
                split), breaking the threat model on purpose (an ablation: a prior that saw the private data). By
                default training stops before its first step unless the data module's ``train_split`` is
                ``public`` and its ``val_split`` null or ``public``.
        """
        super().__init__()
        if generator.resolution != discriminator.resolution or generator.img_channels != discriminator.img_channels:
            raise ValueError(
                f"generator ({generator.resolution} px, {generator.img_channels} channels) and discriminator "
                f"({discriminator.resolution} px, {discriminator.img_channels} channels) must match; set the same "
                "`resolution` in both networks' init_args"
            )
        if getattr(generator, "c_dim", 0):
            raise ValueError(
                f"GANSystem trains unconditional generators only, this one has c_dim={generator.c_dim}; set the "
                "generator's `c_dim: 0` (attacks load a conditional prior from its NVlabs .pkl, no training needed)"
            )
        for name, value in (("r1_interval", r1_interval), ("pl_interval", pl_interval)):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if not 0 <= style_mixing_prob <= 1:
            raise ValueError(f"style_mixing_prob must be in [0, 1], got {style_mixing_prob}")
        self.save_hyperparameters(ignore=["generator", "discriminator", "g_optimizer", "d_optimizer"])
        self.automatic_optimization = False
        self.G = generator
        self.D = discriminator
        self.G_ema = copy.deepcopy(generator).eval().requires_grad_(False)
        self.g_optimizer = g_optimizer
        self.d_optimizer = d_optimizer
        self.augment = DiffAugment(augment)
        self.register_buffer("pl_mean", torch.zeros([]))
        z = torch.randn(sample_grid**2, generator.z_dim, generator=torch.Generator().manual_seed(sample_seed))
        self.register_buffer("sample_z", z, persistent=False)
        self.images_seen = 0  # saved in checkpoints by on_save_checkpoint
        self._last_sample_step = -1
        self._last_reg: dict[str, Tensor] = {}
        self._splits_seen: dict[str, str | None] | None = None

    # --- set-up ---------------------------------------------------------------------------------------------
    def train(self, mode: bool = True) -> GANSystem:
        super().train(mode)
        self.G_ema.eval()  # only ever samples: keeps w_avg fixed and the eval-mode modulated convolution
        return self

    def setup(self, stage: str) -> None:
        self._run_folder = None
        _ = self.run_folder  # resolve on every rank now (collective)
        data = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if stage == "fit":  # the threat model: the attacker's prior learns from public data only
            seen = require_attacker_data("prior", data, ("train", "val"), self.hparams.allow_nonpublic_training)
            self._splits_seen = {"train": seen["train"]}  # no validation step: the val split is never read
        if data is not None and getattr(data, "resolution", self.G.resolution) != self.G.resolution:
            raise ValueError(
                f"the data module serves {data.resolution}px images but the networks are {self.G.resolution}px; set "
                f"`data.init_args.resolution: {self.G.resolution}` (or the networks' `resolution`)"
            )

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        return [self.g_optimizer(self.G.parameters()), self.d_optimizer(self.D.parameters())]

    def on_fit_start(self) -> None:
        if isinstance(self.trainer.strategy.model, nn.parallel.DistributedDataParallel):
            raise RuntimeError(
                "GANSystem cannot run inside DistributedDataParallel (its reducer does not support R1's double "
                "backward); set `trainer.strategy: pfo.prior.GANDDPStrategy`, which averages gradients without it"
            )
        if self.hparams.init_from and self.trainer.ckpt_path is None:
            self.initialise_from(self.hparams.init_from)
        if self.world_size > 1:
            # Lightning seeds every process alike; different latents per process make the global batch's fakes
            # distinct (NVlabs seeds seed * num_gpus + rank likewise).
            torch.manual_seed(torch.initial_seed() * self.world_size + self.global_rank)

    def on_train_start(self) -> None:
        if self.global_step == 0 and self.hparams.sample_every_n_steps:
            self.write_samples()

    @torch.no_grad()
    def initialise_from(self, path: str | Path) -> None:
        """Copy the networks of a prior file into G, G_ema and D (fine-tuning); D only where the file has one."""
        nets = load_prior_networks(path)
        self._copy(nets.G if nets.G is not None else nets.G_ema, self.G, path, "generator")
        self._copy(nets.G_ema, self.G_ema, path, "generator")
        if nets.D is not None:
            self._copy(nets.D, self.D, path, "discriminator")
        else:
            rank_zero_warn(f"{path} holds no discriminator: D starts from its random initialisation")
        rank_zero_info(f"initialised G, G_ema{', D' if nets.D is not None else ''} from {path}")

    @staticmethod
    def _copy(source: nn.Module, target: nn.Module, path: str | Path, what: str) -> None:
        src, dst = source.state_dict(), target.state_dict()
        if set(src) != set(dst) or any(src[k].shape != dst[k].shape for k in dst):
            raise ValueError(
                f"the {what} in {path} is {type(source).__name__}({source.config}), which does not fit the configured "
                f"{type(target).__name__}({target.config}); set `model.init_args.{what}.init_args` to the file's "
                "architecture"
            )
        target.load_state_dict(src)

    # --- training -------------------------------------------------------------------------------------------
    @property
    def world_size(self) -> int:
        return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1

    def r1_gamma(self, batch_size: int) -> float:
        """The configured gamma, or NVlabs' heuristic for this resolution and (global) batch size."""
        if self.hparams.r1_gamma is not None:
            return float(self.hparams.r1_gamma)
        return 0.0002 * self.G.resolution**2 / batch_size

    def _fp32(self) -> torch.autocast:
        """Leave mixed precision (where the Trainer enabled it) for the mapping network and gradient penalties."""
        return torch.autocast(self.device.type, enabled=False)

    def _styles(self, n: int) -> Tensor:
        with self._fp32():
            return mixed_styles(self.G, n, self.hparams.style_mixing_prob, self.device)

    def _average_gradients(self, module: nn.Module) -> None:
        """All-reduce and average ``module``'s gradients across processes, in one flat tensor (no-op in one process).

        Parameters without a gradient count as zeros, so every process reduces the same tensor.
        """
        if self.world_size == 1:
            return
        params = [p for p in module.parameters() if p.requires_grad]
        flat = torch.cat([p.grad.flatten() if p.grad is not None else torch.zeros_like(p).flatten() for p in params])
        dist.all_reduce(flat)
        flat /= self.world_size
        torch.nan_to_num(flat, nan=0.0, posinf=1e5, neginf=-1e5, out=flat)
        for p, g in zip(params, flat.split([p.numel() for p in params])):
            if p.grad is None:
                p.grad = g.view_as(p).clone()
            else:
                p.grad.copy_(g.view_as(p))

    def training_step(self, batch: dict, batch_idx: int) -> None:
        g_opt, d_opt = self.optimizers()
        real = batch["image"] * 2 - 1  # the generator's range
        if self.hparams.mirror:
            flip = torch.rand(real.shape[0], device=real.device) < 0.5
            real = torch.where(flip[:, None, None, None], real.flip(-1), real)
        n = real.shape[0]
        global_batch = n * self.world_size
        step = self.global_step
        gamma = self.r1_gamma(global_batch)
        do_r1 = gamma > 0 and step % self.hparams.r1_interval == 0
        do_pl = self.hparams.pl_weight > 0 and step % self.hparams.pl_interval == 0

        # Discriminator: fakes scored low, reals high, plus lazy R1 on the reals.
        self.G.requires_grad_(False)
        self.D.requires_grad_(True)
        with torch.no_grad():
            fake = self.G.synthesis(self._styles(n), noise_mode="random")
        fake_logits = self.D(self.augment(fake))
        if do_r1:
            with self._fp32():
                real_logits, penalty = r1_penalty(self.D, real, self.augment)
            self._last_reg["train/r1_penalty"] = penalty.mean().detach()
        else:
            real_logits = self.D(self.augment(real))
        loss_d = discriminator_loss(real_logits, fake_logits)
        total_d = loss_d + penalty.mean() * (gamma / 2 * self.hparams.r1_interval) if do_r1 else loss_d
        d_opt.zero_grad(set_to_none=True)
        self.manual_backward(total_d)
        self._average_gradients(self.D)
        # Through the strategy, not d_opt.step(): Lightning counts every LightningOptimizer.step in global_step,
        # which should count training steps (one per batch) for max_steps and every_n_train_steps.
        self.trainer.strategy.optimizer_step(d_opt.optimizer, _no_closure)

        # Generator: fool D; lazy path-length penalty on a smaller batch.
        self.G.requires_grad_(True)
        self.D.requires_grad_(False)
        gen_logits = self.D(self.augment(self.G.synthesis(self._styles(n), noise_mode="random")))
        loss_g = generator_loss(gen_logits)
        total_g = loss_g
        if do_pl:
            with self._fp32():
                lengths = path_lengths(self.G, self._styles(max(1, n // self.hparams.pl_batch_shrink)))
                mean_length = lengths.mean().detach()
                if self.world_size > 1:  # keep pl_mean equal in every process
                    dist.all_reduce(mean_length)
                    mean_length /= self.world_size
                pl_mean = self.pl_mean.lerp(mean_length, self.hparams.pl_decay)
                self.pl_mean.copy_(pl_mean)
                pl_penalty = (lengths - pl_mean).square().mean()
            total_g = loss_g + pl_penalty * self.hparams.pl_weight * self.hparams.pl_interval
            self._last_reg["train/pl_penalty"] = pl_penalty.detach()
            self._last_reg["train/pl_mean"] = pl_mean
        g_opt.zero_grad(set_to_none=True)
        self.manual_backward(total_g)
        self._average_gradients(self.G)
        g_opt.step()
        self.D.requires_grad_(True)

        beta = ema_beta(global_batch, self.images_seen, self.hparams.ema_kimg, self.hparams.ema_rampup)
        update_ema(self.G_ema, self.G, beta)
        self.images_seen += global_batch

        logs = {
            "train/loss_D": loss_d.detach(),
            "train/loss_G": loss_g.detach(),
            "train/score_real": real_logits.detach().float().mean(),
            "train/score_fake": fake_logits.detach().float().mean(),
            "train/kimg": self.images_seen / 1000,
            **self._last_reg,  # the latest lazy-regularisation values, so every logged step shows them
        }
        self.log_dict(logs, prog_bar=False)
        self.log_dict({"loss_D": loss_d.detach(), "loss_G": loss_g.detach()}, prog_bar=True, logger=False)

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        step = self.global_step
        every = self.hparams.sample_every_n_steps
        if every and step % every == 0:
            self.write_samples()
        every = self.hparams.export_every_n_steps
        if self.hparams.export and every and step % every == 0 and self.trainer.is_global_zero:
            self.export(self.run_folder / self.hparams.export)

    def on_train_end(self) -> None:
        if self.hparams.sample_every_n_steps and self._last_sample_step != self.global_step:
            self.write_samples()
        if self.hparams.export and self.trainer.is_global_zero:
            path = self.export(self.run_folder / self.hparams.export)
            print(f"generator file written to {path}")

    # --- checkpoints, samples, export -----------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["gan"] = {"images_seen": self.images_seen}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.images_seen = int(checkpoint.get("gan", {}).get("images_seen", 0))

    @property
    def run_folder(self) -> Path:
        """The run folder, resolved once on every rank (``trainer.log_dir`` is a collective call, so it must not
        be reached from rank-0-only code)."""
        if getattr(self, "_run_folder", None) is None:
            self._run_folder = Path(self.trainer.log_dir or self.trainer.default_root_dir)
        return self._run_folder

    @torch.no_grad()
    def sample(self, z: Tensor | None = None, batch_size: int = 16) -> Tensor:
        """Images in [0, 1] of ``G_ema`` for ``z`` (default: the fixed grid latents), constant noise."""
        z = self.sample_z if z is None else z
        chunks = [self.G_ema(c, noise_mode="const") for c in z.to(self.device).split(batch_size)]
        return (torch.cat(chunks).float().clamp(-1, 1) + 1) / 2

    def write_samples(self) -> Path | None:
        """The fixed-latent grid at the current step: PNG under ``samples/`` and an image in TensorBoard."""
        self._last_sample_step = self.global_step
        if not self.trainer.is_global_zero:
            return None
        grid = make_grid(self.sample(), nrow=self.hparams.sample_grid, padding=1).cpu()
        path = self.run_folder / "samples" / f"step_{self.global_step:06d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        save_image(grid, path)
        experiment = getattr(self.logger, "experiment", None)
        if hasattr(experiment, "add_image"):
            experiment.add_image("samples", grid, self.global_step)
        return path

    def export(self, path: str | Path) -> Path:
        """Write the generator file: ``G_ema`` (+ D), with resolution, images seen and the training data named."""
        data = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        meta: dict[str, Any] = {"kimg": self.images_seen / 1000, "step": self.global_step}
        if data is not None:
            meta["dataset"] = type(data).__name__
            if hasattr(data, "train_split"):
                meta["split"] = data.train_split
        if self._splits_seen is not None:
            meta["splits_seen"] = self._splits_seen  # which splits the prior trained (and validated) on
        meta["threat_model_exceptions"] = allowed_exceptions(self)
        if self.hparams.init_from:
            meta["init_from"] = str(self.hparams.init_from)
        D = self.D if self.hparams.export_discriminator else None
        return save_generator(self.G_ema, path, discriminator=D, **meta)
