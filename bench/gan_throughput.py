"""Images per second of a full StyleGAN2 training step, through Lightning and through a bare-PyTorch loop.

A step is one discriminator update (lazy R1 every ``r1_interval`` steps, amortised over the timed steps) and one
generator update, then the EMA update, with DiffAugment on both sides: what ``configs/gan_cifar10.yaml`` trains.
Both runs use the networks of that config, the same loss functions (``pfo.prior.losses``), the same in-memory data
and the same seed, so the ratio is Lightning's overhead (logging, hooks, the loop). Run it manually, not in tests:

    python bench/gan_throughput.py [--steps 64] [--warmup 3] [--threads 2] [--device cpu] [--precision 32-true]

Use at least ``r1_interval`` (16) timed steps so the R1 steps weigh in as in a long run.
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import lightning as L
import torch
import yaml
from torch.utils.data import DataLoader, Dataset

from pfo.models.stylegan2 import Discriminator, Generator
from pfo.prior import DiffAugment, GANSystem
from pfo.prior.losses import discriminator_loss, ema_beta, generator_loss, mixed_styles, r1_penalty, update_ema

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "gan_cifar10.yaml"


class RandomImages(Dataset):
    """Fixed random images in [0, 1], batches shaped like the data modules' (dicts with ``image``)."""

    def __init__(self, n: int, resolution: int) -> None:
        self.images = torch.rand(n, 3, resolution, resolution, generator=torch.Generator().manual_seed(0))

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.images[i], "label": 0, "index": i}


def networks() -> tuple[Generator, Discriminator, dict]:
    """The generator, discriminator and GANSystem arguments of ``configs/gan_cifar10.yaml``."""
    model = yaml.safe_load(CONFIG.read_text())["model"]["init_args"]
    torch.manual_seed(0)
    G = Generator(**model["generator"]["init_args"])
    D = Discriminator(**model["discriminator"]["init_args"])
    keys = ("r1_gamma", "r1_interval", "style_mixing_prob", "pl_weight", "ema_kimg", "ema_rampup", "augment", "mirror")
    return G, D, {k: model[k] for k in keys if k in model}


class StepTimer(L.Callback):
    """Wall time from the start of batch ``warmup`` to the end of the last batch."""

    def __init__(self, warmup: int, device: torch.device) -> None:
        self.warmup, self.device = warmup, device
        self.start = self.end = 0.0

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx == self.warmup:
            self._sync()
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._sync()
        self.end = time.perf_counter()


def run_lightning(loader: DataLoader, steps: int, warmup: int, device: torch.device, precision: str) -> float:
    G, D, kwargs = networks()
    # a plain loader of synthetic batches names no split: timing only, no prior is exported
    system = GANSystem(G, D, sample_every_n_steps=None, export=None, allow_nonpublic_training=True, **kwargs)
    timer = StepTimer(warmup, device)
    trainer = L.Trainer(
        accelerator=device.type,
        devices=1,
        precision=precision,
        max_epochs=1,
        limit_train_batches=warmup + steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[timer],
    )
    trainer.fit(system, train_dataloaders=loader)
    return steps * loader.batch_size / (timer.end - timer.start)


def run_bare(loader: DataLoader, steps: int, warmup: int, device: torch.device, precision: str) -> float:
    """The same step as ``GANSystem.training_step`` in plain PyTorch (no Lightning, no logging)."""
    G, D, kw = networks()
    G, D = G.to(device).train(), D.to(device).train()
    G_ema = copy.deepcopy(G).eval().requires_grad_(False)
    augment = DiffAugment(kw.get("augment"))
    g_opt = torch.optim.Adam(G.parameters(), lr=0.0025, betas=(0.0, 0.99), eps=1e-8)
    d_opt = torch.optim.Adam(D.parameters(), lr=0.0025, betas=(0.0, 0.99), eps=1e-8)
    gamma, interval, mixing = kw.get("r1_gamma", 0.01), kw.get("r1_interval", 16), kw.get("style_mixing_prob", 0.0)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16-mixed")
    fp32 = torch.autocast(device.type, enabled=False)
    images_seen, start = 0, 0.0
    for step, batch in enumerate(loader):
        if step == warmup + steps:
            break
        if step == warmup:
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
        real = batch["image"].to(device) * 2 - 1
        if kw.get("mirror"):
            flip = torch.rand(real.shape[0], device=device) < 0.5
            real = torch.where(flip[:, None, None, None], real.flip(-1), real)
        n = real.shape[0]
        with autocast:
            G.requires_grad_(False)
            D.requires_grad_(True)
            with torch.no_grad():
                with fp32:
                    ws = mixed_styles(G, n, mixing, device)
                fake = G.synthesis(ws, noise_mode="random")
            fake_logits = D(augment(fake))
            if gamma > 0 and step % interval == 0:
                with fp32:
                    real_logits, penalty = r1_penalty(D, real, augment)
                loss = discriminator_loss(real_logits, fake_logits) + penalty.mean() * (gamma / 2 * interval)
            else:
                loss = discriminator_loss(D(augment(real)), fake_logits)
        d_opt.zero_grad(set_to_none=True)
        loss.backward()
        d_opt.step()
        with autocast:
            G.requires_grad_(True)
            D.requires_grad_(False)
            with fp32:
                ws = mixed_styles(G, n, mixing, device)
            loss = generator_loss(D(augment(G.synthesis(ws, noise_mode="random"))))
        g_opt.zero_grad(set_to_none=True)
        loss.backward()
        g_opt.step()
        update_ema(G_ema, G, ema_beta(n, images_seen, kw.get("ema_kimg", 10.0), kw.get("ema_rampup", 0.05)))
        images_seen += n
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps * loader.batch_size / (time.perf_counter() - start)


def main(args: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=64, help="timed training steps per run")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", default="32-true", choices=["32-true", "bf16-mixed"])
    a = p.parse_args(args)
    if a.threads:
        torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    G, _, kw = networks()
    data = RandomImages(a.batch * (a.warmup + a.steps), G.resolution)
    loader = DataLoader(data, batch_size=a.batch, shuffle=True, drop_last=True)
    print(
        f"torch {torch.__version__}, device {device}, threads {torch.get_num_threads()}, precision {a.precision}, "
        f"{G.resolution} px, batch {a.batch}, {a.steps} timed steps after {a.warmup}; {CONFIG.name}: {kw}"
    )
    bare = run_bare(loader, a.steps, a.warmup, device, a.precision)
    print(f"bare PyTorch : {bare:8.1f} images/s", flush=True)
    lightning = run_lightning(loader, a.steps, a.warmup, device, a.precision)
    print(f"Lightning    : {lightning:8.1f} images/s", flush=True)
    print(f"Lightning / bare: {lightning / bare:.3f}")


if __name__ == "__main__":
    main()
