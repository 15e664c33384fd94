"""StyleGAN2's training objective as plain functions, shared by :class:`pfo.prior.GANSystem` and the benchmark's
bare-PyTorch loop: non-saturating logistic loss, R1 and path-length penalties, style mixing, the EMA generator.

Follows NVlabs' stylegan2-ada-pytorch (``training/loss.py``, ``training/training_loop.py``) in meaning.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pfo.models.stylegan2 import Generator


def mixed_styles(G: Generator, n: int, style_mixing_prob: float, device: torch.device) -> Tensor:
    """W+ styles [n, num_ws, w_dim] of ``n`` random latents; with probability ``style_mixing_prob`` the layers
    from a random crossover point on take the styles of a second latent (one point per batch, as NVlabs)."""
    z = torch.randn(n, G.z_dim, device=device)
    ws = G.mapping(z).unsqueeze(1).repeat(1, G.num_ws, 1)
    if style_mixing_prob > 0 and float(torch.rand(())) < style_mixing_prob:
        cutoff = int(torch.randint(1, G.num_ws, ()))  # drawn on the CPU: no device sync
        ws[:, cutoff:] = G.mapping(torch.randn_like(z)).unsqueeze(1)
    return ws


def generator_loss(fake_logits: Tensor) -> Tensor:
    """Non-saturating loss: -log sigmoid(D(G(z))), averaged."""
    return F.softplus(-fake_logits.float()).mean()


def discriminator_loss(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """Logistic loss: -log sigmoid(D(x)) - log(1 - sigmoid(D(G(z)))), each averaged."""
    return F.softplus(fake_logits.float()).mean() + F.softplus(-real_logits.float()).mean()


def r1_penalty(D: nn.Module, real: Tensor, augment: Callable[[Tensor], Tensor] = lambda x: x) -> tuple[Tensor, Tensor]:
    """Logits of ``real`` and the R1 penalty per image, ||d D(augment(x)) / dx||^2 (Mescheder et al. 2018).

    The gradient is taken with respect to the un-augmented images, as NVlabs does, so augmentation does not change
    what is penalised. The graph is kept (``create_graph``) so the penalty can be minimised.
    """
    real = real.detach().requires_grad_(True)
    logits = D(augment(real))
    (grads,) = torch.autograd.grad(logits.float().sum(), real, create_graph=True)
    return logits, grads.float().square().sum(dim=[1, 2, 3])


def path_lengths(G: Generator, ws: Tensor) -> Tensor:
    """Per-sample length of J_w^T y for a random image-space direction y (the path-length regulariser's quantity,
    Karras et al. 2020); ``ws`` must be part of the graph (come from ``G.mapping``) or require grad."""
    img = G.synthesis(ws, noise_mode="random")
    noise = torch.randn_like(img) / math.sqrt(img.shape[2] * img.shape[3])
    (grads,) = torch.autograd.grad((img * noise).sum(), ws, create_graph=True)
    return grads.float().square().sum(dim=2).mean(dim=1).sqrt()


def ema_beta(batch_size: int, images_seen: int, ema_kimg: float, ema_rampup: float | None) -> float:
    """Decay of the EMA generator per step: its weights' half-life is ``ema_kimg`` thousand images, shortened to
    ``ema_rampup`` times the images seen so far (so the EMA forgets the random initialisation early on)."""
    ema_nimg = ema_kimg * 1000
    if ema_rampup is not None:
        ema_nimg = min(ema_nimg, images_seen * ema_rampup)
    return 0.5 ** (batch_size / max(ema_nimg, 1e-8))


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, beta: float) -> None:
    """``ema = beta * ema + (1 - beta) * model`` for parameters; buffers (``w_avg``, noise) are copied."""
    ema_params, params = list(ema.parameters()), [p.detach() for p in model.parameters()]
    torch._foreach_lerp_(ema_params, params, 1.0 - beta)
    for b_ema, b in zip(ema.buffers(), model.buffers()):
        b_ema.copy_(b)
