"""PFO: Progressive Feature Optimisation over a block-structured GAN prior (GUIDE section 3).

1. Initialisation: per target, ``n_init`` latents from its own seeded generator, mapped (with truncation) and
   rendered; the one whose image best explains the observed features is kept.
2. Stage 0 optimises the latent: W+ (one style per layer) for StyleGAN2, z for a DCGAN.
3. Stage k = 1..K optimises the state entering block k (StyleGAN2: ``(x, img)``; DCGAN: the activation ``x``),
   carried forward from the previous stage's optimum, together with the part of the latent the remaining blocks
   read (StyleGAN2: their styles; a DCGAN's blocks read none). After every step each variable is pulled back into
   an l1 ball around its value at the stage start (per sample), which keeps the image close to the generator's
   manifold while letting the intermediate features express what the latent alone cannot.
4. Per target, the stage whose image has the lowest feature loss is the answer; every stage's image is kept.

Carrying the RGB skip image ``img`` between blocks (not restarting it) keeps the coarse colour that earlier
blocks contributed; the feature loss alone barely notices its loss, the images do (GUIDE section 9).

The attacks reach the generator only through :class:`pfo.models.prior.Prior`, so any block-structured generator
with that interface is a prior. Every option is checked when the attack is built, before any file is read.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch

from pfo.attacks.base import Reconstruction, freeze
from pfo.attacks.class_rule import ClassChoice, ClassRule
from pfo.attacks.optimization import OptimizationAttack, per_stage
from pfo.attacks.options import check_choice, check_count, check_number, is_number
from pfo.attacks.projection import project_deviation_
from pfo.attacks.targets import target_generators
from pfo.metrics import is_collapsed
from pfo.models.dcgan import DCGANGenerator
from pfo.models.prior import Prior, as_prior
from pfo.models.stylegan2 import Generator

NOISE_MODES = ("const", "none")
RADIUS_MODES = ("per_element", "absolute")


def load_generator_any(generator: str | Generator | DCGANGenerator | Prior) -> Generator | DCGANGenerator | Prior:
    """A named prior (``digiface-dcgan64``), a pfo generator file, a rosinality ``.pt``, an NVlabs ``.pkl`` or a
    DCGAN ``netG_state_dict`` file, or a generator (or Prior) already built."""
    if isinstance(generator, (torch.nn.Module, Prior)):
        return generator
    from pfo.models.generator_file import load_prior

    return load_prior(generator)


def inf_if_not_finite(loss: torch.Tensor) -> torch.Tensor:
    """Losses with NaN and -inf replaced by +inf, so that a failed candidate or stage ranks last."""
    return torch.nan_to_num(loss, nan=float("inf"), neginf=float("inf"))


# ----- option checks: each names the option as the user typed it --------------------------------------------------


def check_per_stage(name: str, value: Any, stages: int, what: str, *, positive: bool = False) -> None:
    """``value`` is one number for every stage or a list with one per stage (``stages`` of them, ``what``)."""
    if value is None or not isinstance(value, Sequence) or isinstance(value, str):
        check_number(name, value, positive=positive)
        return
    if len(value) != stages:
        raise ValueError(
            f"`{name}` lists {len(value)} values but there are {stages} {what}; give one value, or one per stage"
        )
    for v in value:
        if not is_number(v) or (v <= 0 if positive else v < 0):
            raise ValueError(f"`{name}` {list(value)!r} must hold finite numbers {'> 0' if positive else '>= 0'}")


class GANInversionAttack(OptimizationAttack):
    """Shared by the attacks that search a generator's latent space (PFO, GLASS): the frozen prior, its output
    range, and the scoring of candidate latents. The prior is reached only through ``self.prior``."""

    value_range = (-1.0, 1.0)

    def __init__(
        self,
        victim: str | Path | dict,
        generator: str | Generator | DCGANGenerator | Prior,
        *,
        truncation: float = 0.7,
        noise_mode: Literal["const", "none"] = "const",
        allow_upsampling: bool = False,
        class_rule: Literal["auto", "victim", "search"] | int = "auto",
        class_map: list[int] | None = None,
        class_search_latents: int = 4,
        class_search_top: int | None = None,
        **kwargs,
    ) -> None:
        """
        Args:
            victim: the victim file (``train.py fit`` of a victim config writes one), or a network given inline
                (``{class_path: pfo.models.TorchvisionModel, init_args: {...}}``); from Python, a SplitModel too.
            generator: the prior: a named prior (``digiface-dcgan64``: see pfo.models.named_priors), a pfo
                generator file (``train.py fit`` of a GAN config exports one), a rosinality ``.pt``, an NVlabs
                ``.pkl`` or a DCGAN ``netG_state_dict`` file.
            truncation: truncation psi of the initial latents (1 = none; StyleGAN2: towards the average w; DCGAN:
                z scaled by psi).
            noise_mode: StyleGAN2's per-layer noise: ``const`` (the generator's fixed noise buffers) or ``none``.
            allow_upsampling: accept a generator whose resolution is below the victim's input size.
            class_rule: the class a class-conditional prior renders each target in (unconditional priors ignore
                it; see pfo.attacks.class_rule): ``auto`` (the victim's own prediction from the observed features
                where the split leaves a tail, else a search), ``victim``, ``search`` or a fixed class index.
            class_map: victim class -> prior class, where their label spaces differ (``victim`` rule).
            class_search_latents: latents per class scored by the ``search`` rule.
            class_search_top: with a tail, search only the victim's k most likely classes (null: every class).
        """
        check_number("truncation", truncation, positive=True)
        check_choice("noise_mode", noise_mode, NOISE_MODES)
        rule = ClassRule(class_rule, class_map, class_search_latents, class_search_top)  # checked before loading
        super().__init__(victim, **kwargs)
        self.class_rule = rule
        self.prior = as_prior(load_generator_any(generator), noise_mode)
        self.generator = freeze(self.prior.generator)
        self.value_range = self.prior.value_range
        self.noise_mode = noise_mode
        self.truncation = truncation
        channels = self.prior.img_channels
        if channels != 3:
            raise ValueError(
                f"the generator makes {channels}-channel images but the victim takes RGB; use an RGB prior"
            )
        resolution = self.prior.resolution
        if resolution < self.victim.input_size and not allow_upsampling:
            raise ValueError(
                f"the generator renders {resolution}px images but the victim takes {self.victim.input_size}px; "
                f"use a prior of at least {self.victim.input_size}px, or set `allow_upsampling: true`"
            )
        if self.prior.c_dim:
            self.class_rule.check(self.victim, self.prior.c_dim)

    @torch.no_grad()
    def choose_classes(self, h_star: torch.Tensor, index: torch.Tensor) -> ClassChoice | None:
        """Per target, the class a conditional prior renders it in (None for an unconditional prior)."""
        if not self.prior.c_dim:
            return None
        return self.class_rule.choose(
            h_star,
            index,
            victim=self.victim,
            prior=self.prior,
            seed=self.seed,
            score=lambda images, h: self.evaluate(images, h)[0],
            truncation=self.truncation,
        )

    def frozen_modules(self) -> list[torch.nn.Module]:
        return [self.generator]

    @torch.no_grad()
    def top_latents(
        self,
        h_star: torch.Tensor,
        index: torch.Tensor,
        count: int,
        chunk: int,
        keep: int = 1,
        classes: ClassChoice | None = None,
    ) -> torch.Tensor:
        """Per target, the ``keep`` best of ``count`` mapped latents drawn from its own generator, best first:
        [N, keep, *latent shape]. ``classes``: a conditional prior's class per target (``choose_classes``)."""
        P = self.prior
        best = []
        for i, (g, h) in enumerate(zip(target_generators(self.seed, index), h_star)):
            z = P.sample_z(count, g).to(self.device)
            scores, ws = [], []
            for start in range(0, count, chunk):
                c = None if classes is None else classes.c[i].expand(len(z[start : start + chunk]), -1)
                w = P.map(z[start : start + chunk], c, truncation=self.truncation)
                images = P.render(w)
                loss, _ = self.evaluate(images, h.expand(len(w), *h.shape))
                scores.append(loss)
                ws.append(w)
            scores, ws = torch.cat(scores), torch.cat(ws)
            scores = inf_if_not_finite(scores)
            best.append(ws[scores.argsort()[:keep]])
        return torch.stack(best)

    def best_latents(self, h_star: torch.Tensor, index: torch.Tensor, count: int, chunk: int) -> torch.Tensor:
        """Per target, the best of ``count`` mapped latents drawn from its own generator: [N, *latent shape]."""
        return self.top_latents(h_star, index, count, chunk, keep=1)[:, 0]


def check_step_counts(name: str, steps) -> None:
    """``steps`` is a non-empty list of non-negative step counts, one per stage."""
    if isinstance(steps, (str, bytes)) or not isinstance(steps, Sequence) or not steps:
        raise ValueError(f"`{name}` must list non-negative step counts per stage, got {steps!r}")
    if not all(is_number(s) and s == int(s) and s >= 0 for s in steps):
        raise ValueError(f"`{name}` must list non-negative step counts per stage, got {list(steps)!r}")


class PFO(GANInversionAttack):
    """Progressive Feature Optimisation: the latent stage, then block states under l1-ball constraints."""

    def __init__(
        self,
        victim: str | Path | dict,
        generator: str | Path,
        *,
        steps: list[int] = (200, 100, 100, 100),
        lr: float | list[float] = 0.05,
        n_init: int = 64,
        init_chunk: int = 64,
        radius_mode: Literal["per_element", "absolute"] = "per_element",
        feature_radius: float | list[float] | None = 0.1,
        image_radius: float | list[float] | None = None,
        style_radius: float | list[float] | None = None,
        latent_radius: float | None = None,
        restarts: int = 0,
        **kwargs,
    ) -> None:
        """
        Args:
            victim: the victim file (``train.py fit`` of a victim config writes one), or a network given inline
                (``{class_path: pfo.models.TorchvisionModel, init_args: {...}}``); from Python, a SplitModel too.
            generator: the prior: a named prior (``digiface-dcgan64``), a generator file (``train.py fit`` of a GAN
                config exports one; rosinality, NVlabs and DCGAN files load too); from Python, a generator or Prior.
            steps: optimisation steps per stage: stage 0 (the latent: W+ or z), then stage k = 1..K on the state
                entering block k (K = len(steps) - 1, at most the generator's number of blocks - 1).
            lr: Adam learning rate, one for all stages or one per stage (len(steps) values).
            n_init: candidate latents scored per target for the initialisation.
            init_chunk: candidates rendered at once during the initialisation.
            radius_mode: ``per_element``: radius = value x number of elements of the variable (one config works
                at 32 px and 256 px); ``absolute``: the l1 radius itself.
            feature_radius: l1 radius for the block feature ``x`` (stages 1..K: one value or one per feature
                stage); null leaves it unconstrained.
            image_radius: l1 radius for StyleGAN2's RGB skip image ``img`` (default: ``feature_radius``).
            style_radius: l1 radius for the remaining styles; null leaves them unconstrained (the paper does not
                say; IF-GMI projects them too). A DCGAN's later blocks read no latent, so there is none.
            latent_radius: l1 radius for stage 0's latent around the chosen initial latent (W+ or z, in
                ``radius_mode``); null (the paper's PFO) leaves stage 0 unconstrained.
            restarts: guard against latent collapse (GUIDE section 9): a target whose stage-0 image is flat or
                saturated reruns stage 0 from its next-best initial latent, up to this many times, and keeps the
                first attempt that does not collapse (else the one with the lowest loss). Each restart costs up
                to ``steps[0]`` more steps for the targets that need it, so benchmarks comparing budgets keep 0.
        """
        self._check_options(
            steps, lr, n_init, init_chunk, radius_mode, feature_radius, image_radius, style_radius, latent_radius,
            restarts,
        )  # fmt: skip
        super().__init__(victim, generator, **kwargs)
        self.steps = [int(s) for s in steps]
        max_stages = self.prior.num_blocks - 1
        if len(self.steps) - 1 > max_stages:
            raise ValueError(
                f"`steps` asks for {len(self.steps) - 1} feature stages but this {self.prior.resolution}px "
                f"generator has {self.prior.num_blocks} blocks, so at most {max_stages}; shorten `steps`"
            )

    @staticmethod
    def _check_options(
        steps, lr, n_init, init_chunk, radius_mode, feature_radius, image_radius, style_radius, latent_radius, restarts
    ) -> None:
        """Every option of PFO's own, before anything is loaded or run; messages quote the values as given."""
        check_step_counts("steps", steps)
        stages = len(steps)
        check_per_stage("lr", lr, stages, f"stages (`steps` {list(steps)})", positive=True)
        check_count("n_init", n_init, 1)
        check_count("init_chunk", init_chunk, 1)
        check_choice("radius_mode", radius_mode, RADIUS_MODES)
        what = f"feature stages after stage 0 (`steps` {list(steps)})"
        for name, value in (("feature_radius", feature_radius), ("image_radius", image_radius)):
            if value is not None:
                check_per_stage(name, value, stages - 1, what)
        if style_radius is not None:
            check_per_stage("style_radius", style_radius, stages - 1, what)
        if latent_radius is not None:
            check_number("latent_radius", latent_radius)
        check_count("restarts", restarts, 0)
        if not 0 <= restarts < n_init:
            raise ValueError(
                f"`restarts` must lie in [0, n_init) (each restart starts from the next-best of the n_init "
                f"candidates), got restarts={restarts} with n_init={n_init}"
            )

    def radius(self, setting: float | Sequence[float] | None, stage: int, var: torch.Tensor, name: str) -> float | None:
        """The l1 radius of ``var`` in feature stage ``stage`` (>= 1), or None for no constraint."""
        value = per_stage(setting, stage - 1, name)
        return self.scaled(value, var)

    def scaled(self, value: float | None, var: torch.Tensor) -> float | None:
        if value is None:
            return None
        return value * var[0].numel() if self.hparams.radius_mode == "per_element" else value

    def state_radius(self, name: str) -> tuple[float | Sequence[float] | None, str]:
        """(setting, option name) of the l1 radius for the state variable ``name``."""
        hp = self.hparams
        if name == "img":
            return (hp.image_radius if hp.image_radius is not None else hp.feature_radius), "image_radius"
        return hp.feature_radius, "feature_radius"

    @staticmethod
    def constrain_all(anchors: list[tuple[torch.Tensor, torch.Tensor, float | None]]) -> None:
        """Pull each variable back into the l1 ball of its radius around its anchor, per sample."""
        for var, anchor, radius in anchors:
            if radius is not None:
                project_deviation_(var, anchor, radius)

    def latent_stage(self, candidates: torch.Tensor, h_star: torch.Tensor, failed: torch.Tensor) -> torch.Tensor:
        """Stage 0 on the expanded latent (W+ or z) from each target's best candidate ([N, R + 1, ...], best
        first), restarted from the next candidate for the targets whose image collapsed. Returns the chosen
        expanded latents.

        A restart optimises the whole batch with the settled targets held still (a stopped target gets no
        gradient, and a fresh Adam moves nothing without one), so each target's result stays independent of its
        neighbours. A restart replaces the earlier result only if it is finite and better: not collapsed where
        the earlier one was, or equally collapsed with a lower feature loss."""
        P, lr = self.prior, per_stage(self.hparams.lr, 0, "lr")
        best_ws = best_key = None
        for attempt in range(candidates.shape[1]):
            todo = torch.ones_like(failed) if best_key is None else (best_key[:, 0] > 0) & ~failed
            if not todo.any():
                break
            ws = P.expand(candidates[:, attempt]).requires_grad_(True)
            stopped = failed | ~todo
            radius = self.scaled(self.hparams.latent_radius, ws)
            anchor = ws.detach().clone() if radius is not None else None

            def constrain(ws=ws, anchor=anchor, radius=radius) -> None:
                project_deviation_(ws, anchor, radius)

            def render_ws(ws=ws) -> torch.Tensor:
                return P.render(ws)

            name = f"stage0_{P.latent_name}" + ("" if attempt == 0 else f"_restart{attempt}")
            self.optimize(
                [ws], render_ws, h_star, self.steps[0], lr, stopped, name=name,
                constrain=constrain if radius is not None else None,  # optional: the paper's stage 0 has no ball
            )  # fmt: skip
            ws = ws.detach()
            with torch.no_grad():
                image = P.render(ws)
                loss = self.evaluate(image, h_star)[1]
                loss = inf_if_not_finite(loss)
                key = torch.stack([is_collapsed(self.to_output(image)).to(loss.dtype), loss], 1)
            if best_key is None:
                failed |= stopped
                best_ws, best_key = ws, key
                continue
            lower = (key[:, 0] < best_key[:, 0]) | ((key[:, 0] == best_key[:, 0]) & (key[:, 1] < best_key[:, 1]))
            better = ~stopped & lower  # stopped covers the settled targets and those that failed now
            best_ws = torch.where(better.view(-1, *[1] * (ws.ndim - 1)), ws, best_ws)
            best_key = torch.where(better.view(-1, 1), key, best_key)
        return best_ws

    def reconstruct(self, h_star: torch.Tensor, index: torch.Tensor) -> Reconstruction:
        P, hp = self.prior, self.hparams
        n = h_star.shape[0]
        failed = torch.zeros(n, dtype=torch.bool, device=self.device)
        classes = self.choose_classes(h_star, index)
        candidates = self.top_latents(h_star, index, hp.n_init, hp.init_chunk, keep=hp.restarts + 1, classes=classes)
        ws = self.latent_stage(candidates, h_star, failed)
        stage_images, stage_losses = [], []
        with torch.no_grad():
            image = P.render(ws)
            stage_images.append(self.to_output(image))
            stage_losses.append(self.evaluate(image, h_star)[1])
            state = P.state_at(1, ws) if len(self.steps) > 1 else None

        for k in range(1, len(self.steps)):
            state_vars = [s.detach().clone().requires_grad_(True) for s in state]
            anchors = []
            for name, var in zip(P.state_names, state_vars):
                setting, option = self.state_radius(name)
                anchors.append((var, var.detach().clone(), self.radius(setting, k, var, option)))
            split = P.latent_split(k)
            prefix, rest = (ws, None) if split is None else (ws[:, :split], ws[:, split:].clone().requires_grad_(True))
            if rest is not None:
                anchors.append((rest, rest.detach().clone(), self.radius(hp.style_radius, k, rest, "style_radius")))

            def latent(prefix=prefix, rest=rest) -> torch.Tensor:
                return prefix if rest is None else torch.cat([prefix, rest], 1)

            def render_state(k=k, state_vars=state_vars, latent=latent) -> torch.Tensor:
                return P.synthesize_from(k, tuple(state_vars), latent())

            self.optimize(
                state_vars + ([rest] if rest is not None else []),
                render_state,
                h_star,
                self.steps[k],
                per_stage(hp.lr, k, "lr"),
                failed,
                constrain=lambda anchors=anchors: self.constrain_all(anchors),
                name=f"stage{k}_b{P.block_resolutions[k]}",
            )
            ws = ws if rest is None else torch.cat([prefix, rest.detach()], 1)
            with torch.no_grad():
                current = tuple(v.detach() for v in state_vars)
                image = P.synthesize_from(k, current, ws)
                stage_images.append(self.to_output(image))
                stage_losses.append(self.evaluate(image, h_star)[1])
                if k + 1 < len(self.steps):
                    state = P.run_blocks(k, k + 1, current, ws)

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
            classes=None if classes is None else classes.classes,
        )
