"""GLASS (Li et al., NeurIPS 2023): GAN latent search. Many random latents per target, a short optimisation of
the most promising ones, keep the best, then a long optimisation of the expanded latent (W+ for StyleGAN2, z for a
DCGAN) with latent noise that decays to zero. The same prior as PFO (reached through ``self.prior``); no
intermediate features."""

from __future__ import annotations

from pathlib import Path

import torch

from pfo.attacks.base import Reconstruction
from pfo.attacks.options import check_count, check_number
from pfo.attacks.pfo import GANInversionAttack
from pfo.attacks.targets import target_generators


class GLASS(GANInversionAttack):
    """Latent search, then W+ optimisation. ``short_steps + steps`` is the per-target step budget."""

    def __init__(
        self,
        victim: str | Path | dict,
        generator: str | Path,
        *,
        n_init: int = 64,
        init_chunk: int = 64,
        candidates: int = 4,
        short_steps: int = 100,
        steps: int = 400,
        lr: float = 0.05,
        noise_scale: float = 0.05,
        noise_ramp: float = 0.75,
        **kwargs,
    ) -> None:
        """
        Args:
            victim: the victim file (``train.py fit`` of a victim config writes one), or a network given inline
                (``{class_path: pfo.models.TorchvisionModel, init_args: {...}}``); from Python, a SplitModel too.
            generator: the prior: a named prior (``digiface-dcgan64``), a generator file (``train.py fit`` of a GAN
                config exports one; rosinality, NVlabs and DCGAN files load too); from Python, a generator or Prior.
            n_init: random latents scored per target (forward passes only).
            init_chunk: candidates rendered at once while scoring.
            candidates: best-scoring latents per target that get the short optimisation (in W, or z, jointly).
            short_steps: steps of the short optimisation of every candidate.
            steps: steps of the final optimisation of the best candidate (W+, or z).
            lr: Adam learning rate.
            noise_scale: initial noise added to the latent, relative to the spread of the prior's latent (W, or
                z) (the NVlabs projector's 0.05).
            noise_ramp: fraction of ``steps`` over which the noise decays (quadratically) to zero.
        """
        check_count("n_init", n_init, 1)
        check_count("init_chunk", init_chunk, 1)
        check_count("candidates", candidates, 1)
        if candidates > n_init:
            raise ValueError(f"`candidates` must be in 1..n_init ({n_init}), got {candidates}")
        check_count("short_steps", short_steps, 0)
        check_count("steps", steps, 0)
        check_number("lr", lr, positive=True)
        check_number("noise_scale", noise_scale)
        check_number("noise_ramp", noise_ramp)
        super().__init__(victim, generator, **kwargs)

    @torch.no_grad()
    def w_spread(self, samples: int = 2000) -> float:
        """Spread of the prior's latent (a property of the prior, not of the batch), for the noise scale."""
        if not hasattr(self, "_w_spread"):
            g = torch.Generator().manual_seed(0)
            z = self.prior.sample_z(samples, g).to(self.device)
            c = None  # a conditional prior's latents: every class in turn
            if self.prior.c_dim:
                c = torch.nn.functional.one_hot(torch.arange(samples) % self.prior.c_dim, self.prior.c_dim)
                c = c.to(z.dtype).to(self.device)
            w = self.prior.map(z, c).flatten(1)
            self._w_spread = float((w - w.mean(0)).pow(2).sum(1).mean().sqrt())
        return self._w_spread

    def reconstruct(self, h_star: torch.Tensor, index: torch.Tensor) -> Reconstruction:
        P, hp = self.prior, self.hparams
        n, k = h_star.shape[0], hp.candidates
        failed = torch.zeros(n, dtype=torch.bool, device=self.device)
        classes = self.choose_classes(h_star, index)
        top = self.top_latents(h_star, index, hp.n_init, hp.init_chunk, keep=k, classes=classes)  # [N, K, *latent]

        # Short optimisation of every candidate, as one batch of N * K (target i's candidates are rows i*K..).
        w = top.flatten(0, 1).clone().requires_grad_(True)
        h_rep = h_star.repeat_interleave(k, 0)
        cand_failed = torch.zeros(n * k, dtype=torch.bool, device=self.device)
        self.optimize([w], lambda: P.render(w), h_rep, hp.short_steps, hp.lr, cand_failed, name="candidates")
        with torch.no_grad():
            loss = self.evaluate(P.render(w), h_rep)[0].view(n, k)
            loss = torch.where(
                cand_failed.view(n, k) | ~torch.isfinite(loss), torch.full_like(loss, float("inf")), loss
            )
            best = w.detach().view(n, k, *w.shape[1:])[torch.arange(n), loss.argmin(1)]

        # Long optimisation of the winner with decaying latent noise (the NVlabs projector's schedule).
        ws = P.expand(best).requires_grad_(True)
        w_std = self.w_spread()
        noise_gens = target_generators(self.seed + 2, index)
        noise = {"current": torch.zeros_like(ws)}

        def adjust(step: int, optimizer: torch.optim.Optimizer) -> None:
            strength = w_std * hp.noise_scale * max(0.0, 1.0 - step / max(1.0, hp.noise_ramp * hp.steps)) ** 2
            if strength > 0:
                draws = torch.stack([torch.randn(ws.shape[1:], generator=g) for g in noise_gens]).to(self.device)
                noise["current"] = draws * strength
            else:
                noise["current"] = torch.zeros_like(ws)

        self.optimize(
            [ws],
            lambda: P.render(ws + noise["current"]),
            h_star,
            hp.steps,
            hp.lr,
            failed,
            adjust=adjust,
            name=P.latent_name,
        )
        with torch.no_grad():
            image = P.render(ws)
            distance = self.evaluate(image, h_star)[1]
        return Reconstruction(
            images=self.to_output(image),
            feature_loss=distance,
            failed=failed,
            classes=None if classes is None else classes.classes,
        )
