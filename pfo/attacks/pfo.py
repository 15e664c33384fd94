"""PFO: Progressive Feature Optimisation over a StyleGAN2 prior (GUIDE section 3).

1. Initialisation: per target, ``n_init`` latents from its own seeded generator, mapped (with truncation) and
   rendered; the one whose image best explains the observed features is kept.
2. Stage 0 optimises W+ (one style per layer).
3. Stage k = 1..K optimises the state ``(x, img)`` entering synthesis block k, carried forward from the previous
   stage's optimum, together with the styles of the remaining layers. After every step each variable is pulled
   back into an l1 ball around its value at the stage start (per sample), which keeps the image close to the
   generator's manifold while letting the intermediate features express what the latent alone cannot.
4. Per target, the stage whose image has the lowest feature loss is the answer; every stage's image is kept.

Carrying the RGB skip image ``img`` between blocks (not restarting it) keeps the coarse colour that earlier
blocks contributed; the feature loss alone barely notices its loss, the images do (GUIDE section 9).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch

from pfo.attacks.base import Reconstruction, freeze
from pfo.attacks.optimization import OptimizationAttack, per_stage
from pfo.attacks.projection import project_deviation_
from pfo.attacks.targets import target_generators
from pfo.metrics import is_collapsed
from pfo.models.stylegan2 import BlockState, Generator


def load_generator_any(generator: str | Generator) -> Generator:
    """A pfo generator file, a rosinality ``.pt`` or an NVlabs ``.pkl``, or a Generator already built."""
    if isinstance(generator, Generator):
        return generator
    from pfo.models.generator_file import load_prior

    return load_prior(generator)


def inf_if_not_finite(loss: torch.Tensor) -> torch.Tensor:
    """Losses with NaN and -inf replaced by +inf, so that a failed candidate or stage ranks last."""
    return torch.nan_to_num(loss, nan=float("inf"), neginf=float("inf"))


class GANInversionAttack(OptimizationAttack):
    """Shared by the attacks that search a generator's latent space (PFO, GLASS): the frozen prior, its output
    range, and the scoring of candidate latents."""

    value_range = (-1.0, 1.0)

    def __init__(
        self,
        victim,
        generator: str | Generator,
        *,
        truncation: float = 0.7,
        noise_mode: Literal["const", "none"] = "const",
        allow_upsampling: bool = False,
        **kwargs,
    ) -> None:
        """
        Args:
            generator: the prior: a pfo generator file (``train.py fit`` of a GAN config exports one), a
                rosinality ``.pt`` or an NVlabs ``.pkl``.
            truncation: truncation psi of the initial latents (1 = none).
            noise_mode: per-layer noise: ``const`` (the generator's fixed noise buffers) or ``none``.
            allow_upsampling: accept a generator whose resolution is below the victim's input size.
        """
        super().__init__(victim, **kwargs)
        self.generator = freeze(load_generator_any(generator))
        self.noise_mode = noise_mode
        self.truncation = truncation
        channels = self.generator.config.get("img_channels", 3)
        if channels != 3:
            raise ValueError(
                f"the generator makes {channels}-channel images but the victim takes RGB; use an RGB prior"
            )
        resolution = self.generator.config["resolution"]
        if resolution < self.victim.input_size and not allow_upsampling:
            raise ValueError(
                f"the generator renders {resolution}px images but the victim takes {self.victim.input_size}px; "
                f"use a prior of at least {self.victim.input_size}px, or set `allow_upsampling: true`"
            )

    def frozen_modules(self) -> list[torch.nn.Module]:
        return [self.generator]

    @torch.no_grad()
    def top_latents(
        self, h_star: torch.Tensor, index: torch.Tensor, count: int, chunk: int, keep: int = 1
    ) -> torch.Tensor:
        """Per target, the ``keep`` best of ``count`` mapped latents drawn from its own generator, best first:
        [N, keep, w_dim]."""
        G = self.generator
        best = []
        for g, h in zip(target_generators(self.seed, index), h_star):
            z = torch.randn(count, G.config["z_dim"], generator=g).to(self.device)
            scores, ws = [], []
            for start in range(0, count, chunk):
                w = G.mapping(z[start : start + chunk], truncation_psi=self.truncation)
                images = G.synthesis(w, noise_mode=self.noise_mode)
                loss, _ = self.evaluate(images, h.expand(len(w), *h.shape))
                scores.append(loss)
                ws.append(w)
            scores, ws = torch.cat(scores), torch.cat(ws)
            scores = inf_if_not_finite(scores)
            best.append(ws[scores.argsort()[:keep]])
        return torch.stack(best)

    def best_latents(self, h_star: torch.Tensor, index: torch.Tensor, count: int, chunk: int) -> torch.Tensor:
        """Per target, the best of ``count`` mapped latents drawn from its own generator: [N, w_dim]."""
        return self.top_latents(h_star, index, count, chunk, keep=1)[:, 0]


class PFO(GANInversionAttack):
    """Progressive Feature Optimisation: the latent stage, then block states under l1-ball constraints."""

    def __init__(
        self,
        victim,
        generator,
        *,
        steps: list[int] = (200, 100, 100, 100),
        lr: float | list[float] = 0.05,
        n_init: int = 64,
        init_chunk: int = 64,
        radius_mode: Literal["per_element", "absolute"] = "per_element",
        feature_radius: float | list[float] = 0.1,
        image_radius: float | list[float] | None = None,
        style_radius: float | list[float] | None = None,
        restarts: int = 0,
        **kwargs,
    ) -> None:
        """
        Args:
            steps: optimisation steps per stage: stage 0 (W+), then stage k = 1..K on the state entering block
                k (K = len(steps) - 1, at most the generator's number of blocks - 1).
            lr: Adam learning rate, one for all stages or one per stage.
            n_init: candidate latents scored per target for the initialisation.
            init_chunk: candidates rendered at once during the initialisation.
            radius_mode: ``per_element``: radius = value x number of elements of the variable (one config works
                at 32 px and 256 px); ``absolute``: the l1 radius itself.
            feature_radius: l1 radius for the block feature ``x`` (stages 1..K: one value or one per stage).
            image_radius: l1 radius for the RGB skip image ``img`` (default: ``feature_radius``).
            style_radius: l1 radius for the remaining styles; null leaves them unconstrained (the paper does not
                say; IF-GMI projects them too).
            restarts: guard against latent collapse (GUIDE section 9): a target whose stage-0 image is flat or
                saturated reruns stage 0 from its next-best initial latent, up to this many times, and keeps the
                first attempt that does not collapse (else the one with the lowest loss). Each restart costs up
                to ``steps[0]`` more steps for the targets that need it, so benchmarks comparing budgets keep 0.
        """
        super().__init__(victim, generator, **kwargs)
        steps = [int(s) for s in steps]
        if not steps or any(s < 0 for s in steps):
            raise ValueError(f"`steps` must list non-negative step counts per stage, got {steps}")
        max_stages = self.generator.num_blocks - 1
        if len(steps) - 1 > max_stages:
            raise ValueError(
                f"`steps` asks for {len(steps) - 1} feature stages but this {self.generator.config['resolution']}px "
                f"generator has {self.generator.num_blocks} blocks, so at most {max_stages}; shorten `steps`"
            )
        if n_init < 1:
            raise ValueError(f"`n_init` must be at least 1, got {n_init}")
        if not 0 <= restarts < n_init:
            raise ValueError(
                f"`restarts` must lie in [0, n_init) (each restart starts from the next-best of the n_init "
                f"candidates), got restarts={restarts} with n_init={n_init}"
            )
        self.steps = steps

    def radius(self, setting: float | Sequence[float] | None, stage: int, var: torch.Tensor, name: str) -> float | None:
        value = per_stage(setting, stage - 1, name)
        if value is None:
            return None
        return value * var[0].numel() if self.hparams.radius_mode == "per_element" else value

    def latent_stage(self, candidates: torch.Tensor, h_star: torch.Tensor, failed: torch.Tensor) -> torch.Tensor:
        """Stage 0 on W+ from each target's best candidate ([N, R + 1, w_dim], best first), restarted from the
        next candidate for the targets whose image collapsed. Returns the chosen W+ [N, num_ws, w_dim].

        A restart optimises the whole batch with the settled targets held still (a stopped target gets no
        gradient, and a fresh Adam moves nothing without one), so each target's result stays independent of its
        neighbours. A restart replaces the earlier result only if it is finite and better: not collapsed where
        the earlier one was, or equally collapsed with a lower feature loss."""
        G, lr = self.generator, per_stage(self.hparams.lr, 0, "lr")
        best_ws = best_key = None
        for attempt in range(candidates.shape[1]):
            todo = torch.ones_like(failed) if best_key is None else (best_key[:, 0] > 0) & ~failed
            if not todo.any():
                break
            ws = candidates[:, attempt].unsqueeze(1).repeat(1, G.num_ws, 1).requires_grad_(True)
            stopped = failed | ~todo

            def render_ws(ws=ws) -> torch.Tensor:
                return G.synthesis(ws, noise_mode=self.noise_mode)

            name = "stage0_wplus" if attempt == 0 else f"stage0_wplus_restart{attempt}"
            self.optimize([ws], render_ws, h_star, self.steps[0], lr, stopped, name=name)
            ws = ws.detach()
            with torch.no_grad():
                image = G.synthesis(ws, noise_mode=self.noise_mode)
                loss = self.evaluate(image, h_star)[1]
                loss = inf_if_not_finite(loss)
                key = torch.stack([is_collapsed(self.to_output(image)).to(loss.dtype), loss], 1)
            if best_key is None:
                failed |= stopped
                best_ws, best_key = ws, key
                continue
            lower = (key[:, 0] < best_key[:, 0]) | ((key[:, 0] == best_key[:, 0]) & (key[:, 1] < best_key[:, 1]))
            better = ~stopped & lower  # stopped covers the settled targets and those that failed now
            best_ws = torch.where(better.view(-1, 1, 1), ws, best_ws)
            best_key = torch.where(better.view(-1, 1), key, best_key)
        return best_ws

    def reconstruct(self, h_star: torch.Tensor, index: torch.Tensor) -> Reconstruction:
        G, hp = self.generator, self.hparams
        n = h_star.shape[0]
        failed = torch.zeros(n, dtype=torch.bool, device=self.device)
        candidates = self.top_latents(h_star, index, hp.n_init, hp.init_chunk, keep=hp.restarts + 1)
        ws = self.latent_stage(candidates, h_star, failed)
        stage_images, stage_losses = [], []
        with torch.no_grad():
            image = G.synthesis(ws, noise_mode=self.noise_mode)
            stage_images.append(self.to_output(image))
            stage_losses.append(self.evaluate(image, h_star)[1])
            state = G.state_at(1, ws, noise_mode=self.noise_mode) if len(self.steps) > 1 else None

        for k in range(1, len(self.steps)):
            x = state.x.detach().clone().requires_grad_(True)
            img = state.img.detach().clone().requires_grad_(True)
            start = G.ws_slice(k).start
            prefix = ws[:, :start]
            rest = ws[:, start:].clone().requires_grad_(True)
            anchors = [
                (x, x.detach().clone(), self.radius(hp.feature_radius, k, x, "feature_radius")),
                (
                    img,
                    img.detach().clone(),
                    self.radius(
                        hp.image_radius if hp.image_radius is not None else hp.feature_radius, k, img, "image_radius"
                    ),
                ),
                (rest, rest.detach().clone(), self.radius(hp.style_radius, k, rest, "style_radius")),
            ]

            def render_state(k=k, x=x, img=img, prefix=prefix, rest=rest) -> torch.Tensor:
                return G.synthesize_from(k, BlockState(x, img), torch.cat([prefix, rest], 1), self.noise_mode)

            def constrain(anchors=anchors) -> None:
                for var, anchor, radius in anchors:
                    if radius is not None:
                        project_deviation_(var, anchor, radius)

            self.optimize(
                [x, img, rest],
                render_state,
                h_star,
                self.steps[k],
                per_stage(hp.lr, k, "lr"),
                failed,
                constrain=constrain,
                name=f"stage{k}_b{G.block_resolutions[k]}",
            )
            ws = torch.cat([prefix, rest.detach()], 1)
            with torch.no_grad():
                current = BlockState(x.detach(), img.detach())
                image = G.synthesize_from(k, current, ws, self.noise_mode)
                stage_images.append(self.to_output(image))
                stage_losses.append(self.evaluate(image, h_star)[1])
                if k + 1 < len(self.steps):
                    state = G.run_blocks(k, k + 1, current, ws, self.noise_mode)

        losses = torch.stack(stage_losses)  # [S, N]
        losses = inf_if_not_finite(losses)
        best = losses.argmin(0)
        images = torch.stack(stage_images)[best, torch.arange(n, device=best.device)]
        return Reconstruction(
            images=images,
            feature_loss=losses[best, torch.arange(n, device=best.device)],
            failed=failed,
            best_stage=best,
            stage_images=stage_images,
            stage_losses=stage_losses,
        )
