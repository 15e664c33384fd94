"""PFO beyond the paper (issue 16): six extensions of :class:`~pfo.attacks.pfo.PFO`, each an option that is off by
default, so that ``PFOExtended`` with its defaults computes bitwise what the paper's PFO computes.

1. ``pixel_stage``: after the last block stage, optimise the output image itself (the victim's input, [0, 1] at its
   resolution) inside an l1 ball of ``pixel_radius`` around the best image the generator gave, per sample. Where
   the features are nearly invertible (shallow splits) this lets PFO do what pixel optimisation (rMLE) does, from
   the prior's image instead of noise. Its steps are the last entry of ``steps``, so the per-target budget stays
   ``sum(steps)``; its image is one more stage, and the answer is still the stage with the lowest feature loss.
2. ``radius_rule``: radii (and a schedule) that fit the split point. ``{split point: radius}`` or ``{split point:
   {option: value}}`` over ``feature_radius``, ``image_radius``, ``pixel_radius`` and ``steps``: at a split point
   the rule names, its values replace those options (a feature radius may list one value per feature stage, as the
   option does). A rule's ``steps`` only moves steps between the configured stages (as many entries, the same
   sum): at a shallow split the pixel stage may take most of the budget, at a deep one the latent, and a stage may
   get 0 steps, but the budget never changes. ``bench/calibrate_radius.py`` chooses them on the public split
   (``pfo.attacks.radius_calibration``).
3. ``init``: where stage 0 starts. ``random`` (the paper): the best of ``n_init`` latents drawn per target;
   ``encoder``: the latent a trained :class:`~pfo.models.latent_encoder.LatentEncoder` reads from the target's
   features (one forward pass); ``both``: the encoder's latent joins the random candidates and the best explains
   the features. ``encoder`` names the file ``train.py fit --config configs/encoder_*.yaml`` writes; an encoder
   made for another victim, split point, defense or prior is refused.

4. ``chains``: run the attack from each target's ``chains`` best initial candidates and answer with the pixel mean
   of their images. PSNR rewards the mean of the images the features allow, not any one of them: where the features
   leave much of the image open (deep splits), one sharp reconstruction has about twice the squared error of that
   mean, which an MSE-trained decoder (the inverse network) approximates. Averaging chains moves PFO's answer
   towards it, at some cost in sharpness (LPIPS). ``steps`` are each chain's, so a target's budget is
   ``chains * sum(steps)``. Within PFO's own budget (the steps divided among 4 chains) it gained 0.2-0.5 dB at a
   ResNet's ``layer4`` and lost 2.8 dB at ``layer3``, where each chain needs its steps (bench/RESULTS.md): an
   option for an attacker who can spend more steps per target.

5. ``guide``: the inverse network's image of the target (one pass of a decoder trained on the public split for this
   victim, split point and defense, as IN's) joins every stage's loss, ``guide_weight`` times its mean squared
   pixel distance, the initial candidates' scoring too. It is the other half of the trade-off ``chains`` meets: the
   decoder estimates the mean of the images the features allow (the estimate PSNR rewards), PFO finds one sharp
   image that explains them; the guided attack looks for a sharp image near that mean. The stage choice still
   reads the feature loss alone. A per-split ``guide_weight`` is part of ``radius_rule`` (chosen on public
   images); a guide for another victim, split point or defense is refused, as IN refuses it. The decoder's
   training is counted apart from the per-target budget, as IN's and the encoder's are. Against the 85 % CIFAR-10
   ResNet-18 at ``layer3`` (weight 0.1, chosen on public images) it raised PFO+radius from 20.0 to 21.4 dB with the
   in-distribution prior and from 18.8 to 21.4 dB with Tiny-ImageNet's, above IN's 20.6 dB, and its LPIPS from
   0.048-0.065 to 0.035-0.039 (IN's: 0.127); at ``layer4`` from 12.7 to 14.9 dB, 0.1 dB short of IN with a third
   of its LPIPS (bench/RESULTS.md).

6. ``guide_blend``: the answer moves this fraction of the way to the guide's image, a pixel blend after the last
   stage (0: none, 1: the decoder's image). It is the estimator's last step towards the mean PSNR rewards, and it
   trades sharpness (LPIPS) for it: at a deep split the guided attack's sharp image and the decoder's blurry one
   err in different places, so a blend can beat both on PSNR (at a ResNet's ``layer3`` the plain mean of IN's and
   PFO+radius's images was 1.2 dB above IN, bench/RESULTS.md) while moving towards the decoder's LPIPS. A per-split
   ``guide_blend`` is part of ``radius_rule``, chosen on public images as the guide's weight is. The blended image
   is one more stage, always the answer; its feature loss is reported as measured.

Every extension keeps PFO's per-sample independence: the encoder and the guide's decoder read one target's
features at a time (eval mode), the pixel ball and the stage choice are per sample, a target's chains are rows of
their own.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal

import torch

from pfo.attacks.base import Reconstruction, freeze
from pfo.attacks.class_rule import ClassChoice
from pfo.attacks.encoder_trainer import check_encoder, load_encoder
from pfo.attacks.inverse_network import describe_defense, load_checked_decoder
from pfo.attacks.loss import to_victim_input
from pfo.attacks.optimization import per_stage
from pfo.attacks.options import check_choice, check_count, check_number
from pfo.attacks.pfo import PFO, check_per_stage, check_step_counts, inf_if_not_finite

INIT_MODES = ("random", "encoder", "both")
RULE_OPTIONS = ("feature_radius", "image_radius", "pixel_radius", "guide_weight", "guide_blend", "steps")

RadiusValue = float | list[float] | None
RadiusRule = dict[str, float | list[float] | dict[str, RadiusValue | list[int]]]


def rule_entries(rule: Mapping) -> dict[str, dict]:
    """A ``radius_rule`` as ``{split point: {option: value}}``: a bare value is a feature radius (unchecked)."""
    return {str(split): dict(entry) if isinstance(entry, Mapping) else {"feature_radius": entry}
            for split, entry in rule.items()}  # fmt: skip


def check_rule_schedule(name: str, schedule, steps: Sequence[int]) -> None:
    """A rule's ``steps``: the configured stages, the configured budget, the steps moved between them."""
    check_step_counts(name, schedule)
    if len(schedule) != len(steps) or sum(schedule) != sum(steps):
        raise ValueError(
            f"`{name}` {list(schedule)} must move steps between the {len(steps)} configured stages of `steps` "
            f"{list(steps)} and keep their {sum(steps)} steps (it has {len(schedule)} entries, {sum(schedule)} "
            "steps); change `steps` itself to add stages or budget"
        )


def normalise_rule(
    rule: Mapping | None, feature_stages: int, steps: Sequence[int] = ()
) -> dict[str, dict[str, RadiusValue | list[int]]]:
    """``radius_rule`` as ``{split point: {option: value}}`` (a bare value is a ``feature_radius``), every value
    checked as its option is (a schedule against the configured ``steps``). Raises ``ValueError`` quoting the
    entry as typed."""
    if rule is None:
        return {}
    if not isinstance(rule, Mapping) or not rule:
        raise ValueError(
            f"`radius_rule` {rule!r} must map split points to radii (`{{layer2: 0.05}}` or "
            "`{layer2: {feature_radius: 0.05, pixel_radius: 0.02}}`), or be null"
        )
    what = f"feature stages after stage 0 ({feature_stages} block stages follow it)"
    rules: dict[str, dict[str, RadiusValue]] = {}
    for split, entry in rule_entries(rule).items():
        unknown = sorted(set(entry) - set(RULE_OPTIONS))
        if unknown:
            raise ValueError(
                f"`radius_rule.{split}` names {', '.join(unknown)}; a rule sets only {', '.join(RULE_OPTIONS)}"
            )
        for option, value in entry.items():
            name = f"radius_rule.{split}.{option}"
            if option == "steps":
                check_rule_schedule(name, value, steps)
                entry[option] = [int(v) for v in value]
                continue
            if value is None:
                continue
            if option in ("pixel_radius", "guide_weight"):
                check_number(name, value)
            elif option == "guide_blend":
                check_fraction(name, value)
            else:
                check_per_stage(name, value, feature_stages, what)
        rules[str(split)] = entry
    return rules


def check_fraction(name: str, value) -> None:
    """A blend weight: a number in [0, 1]."""
    check_number(name, value)
    if value > 1:
        raise ValueError(f"`{name}` {value!r} must be in [0, 1] (1: the decoder's image alone)")


def mean_of_chains(images: torch.Tensor, ok: torch.Tensor) -> torch.Tensor:
    """``images`` [N * K, ...] of K chains per target (target-major) -> [N, ...]: each target's mean over the chains
    that did not fail (``ok`` [N, K]); a failed chain's image (NaN, say) counts for nothing, and a target whose
    chains all failed gets zeros."""
    n, k = ok.shape
    per_chain = images.unflatten(0, (n, k))
    held = ok.view(n, k, *[1] * (images.ndim - 1))
    total = torch.where(held, per_chain, torch.zeros_like(per_chain)).sum(1)
    return total / ok.sum(1).clamp(min=1).view(n, *[1] * (images.ndim - 1)).to(images.dtype)


class PFOExtended(PFO):
    """PFO with a final pixel stage, radii by split point, a learned start, a mean of chains, the inverse network's
    image as a guide and a blend with it (see the module docstring); with every option at its default, the
    paper's PFO."""

    def __init__(
        self,
        victim: str | Path | dict,
        generator: str | Path,
        *,
        steps: list[int] = (200, 100, 100, 100),
        lr: float | list[float] = 0.05,
        pixel_stage: bool = False,
        pixel_radius: float | None = 0.05,
        radius_rule: RadiusRule | None = None,
        init: Literal["random", "encoder", "both"] = "random",
        encoder: str | None = None,
        chains: int = 1,
        guide: str | None = None,
        guide_weight: float = 0.1,
        guide_blend: float = 0.0,
        **kwargs,
    ) -> None:
        """
        Args:
            victim: the victim file (``train.py fit`` of a victim config writes one), or a network given inline
                (``{class_path: pfo.models.TorchvisionModel, init_args: {...}}``); from Python, a SplitModel too.
            generator: the prior: a named prior (``digiface-dcgan64``), a generator file (``train.py fit`` of a GAN
                config exports one; rosinality, NVlabs and DCGAN files load too); from Python, a generator or Prior.
            steps: optimisation steps per stage, as PFO's; with ``pixel_stage`` the LAST entry is the pixel
                stage's, so the per-target budget is always ``sum(steps)``.
            lr: Adam learning rate, one for all stages or one per entry of ``steps`` (the pixel stage's last).
            pixel_stage: after the block stages, optimise the output image (the victim's input in [0, 1]) inside
                an l1 ball around the best generator image so far, per sample.
            pixel_radius: l1 radius of the pixel stage (``radius_mode``: per element of the image, or absolute);
                null leaves it unconstrained (rMLE started from PFO's image).
            radius_rule: radii by split point: ``{split point: radius}`` (the feature radius) or ``{split point:
                {feature_radius: .., image_radius: .., pixel_radius: .., steps: [..]}}``. At the attack's split
                point the values given replace those options (``steps`` only redistributes the configured steps);
                at another split point the options apply. Choose it on the public split with
                ``bench/calibrate_radius.py``.
            init: stage 0's start: ``random`` (the paper's: the best of ``n_init`` random latents), ``encoder``
                (the encoder's latent for the target's features) or ``both`` (the encoder's latent joins the
                ``n_init`` random candidates; the best is kept).
            encoder: the encoder file (``python train.py fit --config configs/encoder_*.yaml`` writes
                ``encoder.pt``) for this victim, split point, defense and prior; needed by ``init: encoder | both``.
            chains: run the whole attack (every stage, the pixel stage too) from each target's ``chains`` best
                initial candidates, with ``steps`` each, and answer with the pixel mean of their images (the
                estimate PSNR rewards at deep splits). 1: one chain, PFO's answer.
            guide: a decoder file (``python train.py fit --config configs/in_*.yaml`` writes ``decoder.pt``) for
                this victim, split point and defense: its image of the target pulls every stage towards the mean
                of the images the features allow. null: no guide (the paper's loss).
            guide_weight: the guide's weight: the loss adds ``guide_weight`` x the mean squared distance (pixels
                in [0, 1]) to the decoder's image; ``radius_rule`` may set it per split point.
            guide_blend: after the last stage, move the answer this fraction of the way to the decoder's image
                (0: the attack's image, 1: the decoder's); needs ``guide``; ``radius_rule`` may set it per split
                point. Raises PSNR where the two images err differently, at some cost in LPIPS.
        """
        check_number("guide_weight", guide_weight)
        check_fraction("guide_blend", guide_blend)
        self._check_chains(chains, init, kwargs)
        stage_steps = self._check_extensions(steps, lr, pixel_stage, pixel_radius, init, encoder, kwargs)
        rules = normalise_rule(radius_rule, len(stage_steps) - 1, steps)
        block_lr = list(lr)[: len(stage_steps)] if isinstance(lr, Sequence) and pixel_stage else lr
        super().__init__(victim, generator, steps=stage_steps, lr=block_lr, **kwargs)
        known = getattr(self.victim, "split_points", None)
        for split in rules:
            if known is not None and split not in known:
                raise ValueError(
                    f"`radius_rule` names split point {split!r}, which this victim does not have; its split points "
                    f"are {', '.join(known)}"
                )
        self.split_rule = rules.get(self.victim.split_point, {})
        schedule = [int(s) for s in self.split_rule.get("steps", steps)]
        self.steps = schedule[: len(stage_steps)]  # the block stages'
        self.pixel_steps = schedule[-1] if pixel_stage else 0
        self.encoder = None
        self._chain_starts: torch.Tensor | None = None  # set while the chains run: each row's own candidate
        if init != "random":
            self.encoder, self.encoder_meta = load_encoder(encoder)
            check_encoder(encoder, self.encoder_meta, self.victim, self.generator, describe_defense(self.defense))
            freeze(self.encoder)
        self.guide = None
        self._guide_for: tuple[torch.Tensor, torch.Tensor] | None = None  # (features, the decoder's image of them)
        if guide is not None:
            self.guide, self.decoder_meta = load_checked_decoder(guide, self.victim, self.defense)
        elif self.radius_setting("guide_blend"):
            raise ValueError("`guide_blend` moves the answer towards the guide's image, but `guide` is null; give the "
                             "decoder file (`train.py fit --config configs/in_*.yaml` writes decoder.pt)")  # fmt: skip

    @staticmethod
    def _check_chains(chains, init, kwargs) -> None:
        check_count("chains", chains, 1)
        n_init = kwargs.get("n_init", inspect.signature(PFO.__init__).parameters["n_init"].default)
        if chains > 1 and init == "encoder":
            raise ValueError("`chains` start from the best initial candidates, but `init: encoder` has one; use "
                             "`init: both` or `chains: 1`")  # fmt: skip
        if chains > 1 and kwargs.get("restarts", 0):
            raise ValueError("`chains` and `restarts` both start from the next-best candidates; use one of them")
        if chains > n_init:
            raise ValueError(f"`chains` {chains} needs as many initial candidates; raise `n_init` ({n_init})")

    @staticmethod
    def _check_extensions(steps, lr, pixel_stage, pixel_radius, init, encoder, kwargs) -> list[int]:
        """The extensions' options, before anything is loaded; returns the block stages' ``steps``."""
        check_choice("init", init, INIT_MODES)
        if init == "random" and encoder is not None:
            raise ValueError("`encoder` is given but `init` is random, so it would never be read; set `init: encoder`"
                             " or `init: both`, or drop `encoder`")  # fmt: skip
        if init != "random" and encoder is None:
            raise ValueError(f"`init: {init}` needs `encoder`: the file `train.py fit --config "
                             "configs/encoder_*.yaml` writes (encoder.pt)")  # fmt: skip
        if init == "encoder" and kwargs.get("restarts", 0):
            raise ValueError("`restarts` start from the next-best initial candidate, but `init: encoder` has one; "
                             "use `init: both` or `restarts: 0`")  # fmt: skip
        if not isinstance(pixel_stage, bool):
            raise ValueError(f"`pixel_stage` {pixel_stage!r} must be true or false")
        if not pixel_stage:
            return steps
        if pixel_radius is not None:
            check_number("pixel_radius", pixel_radius)
        if isinstance(steps, (str, bytes)) or not isinstance(steps, Sequence) or len(steps) < 2:
            raise ValueError(
                f"with `pixel_stage: true`, `steps` lists stage 0, any block stages, then the pixel stage (at least "
                f"two entries), got {steps!r}"
            )
        check_step_counts("steps", steps)
        check_per_stage("lr", lr, len(steps), f"stages (`steps` {list(steps)}, the pixel stage last)", positive=True)
        return list(steps)[:-1]

    def frozen_modules(self) -> list[torch.nn.Module]:
        extra = [m for m in (self.encoder, self.guide) if m is not None]
        return super().frozen_modules() + extra

    # ----- 2. radii by split point ---------------------------------------------------------------------------
    def radius_setting(self, option: str) -> RadiusValue:
        """The setting of a radius option at this split point: the rule's value where it names one."""
        return self.split_rule[option] if option in self.split_rule else self.hparams[option]

    def state_radius(self, name: str) -> tuple[float | Sequence[float] | None, str]:
        if not self.split_rule:
            return super().state_radius(name)
        feature = self.radius_setting("feature_radius")
        if name == "img":
            image = self.radius_setting("image_radius")
            return (image if image is not None else feature), "image_radius"
        return feature, "feature_radius"

    # ----- 5. the guide ---------------------------------------------------------------------------------------
    def evaluate(self, images: torch.Tensor, h_star: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """PFO's (loss, feature distance) per sample; with a guide the loss adds ``guide_weight`` x the mean squared
        distance between the image (the victim's input, [0, 1]) and the decoder's image of ``h_star``."""
        loss, distance = super().evaluate(images, h_star)
        weight = self.radius_setting("guide_weight")
        if self.guide is None or not weight:
            return loss, distance
        gap = to_victim_input(images, self.victim, self.value_range) - self.guide_image(h_star)
        return loss + weight * gap.square().flatten(1).mean(1), distance

    @torch.no_grad()
    def guide_image(self, h_star: torch.Tensor) -> torch.Tensor:
        """The decoder's image of each row of ``h_star``, [0, 1]; kept while the same features are optimised
        against (every step of a stage reads the same tensor)."""
        if self._guide_for is None or self._guide_for[0] is not h_star:
            self._guide_for = (h_star, self.guide(h_star).clamp(0, 1))
        return self._guide_for[1]

    # ----- 3. the learned start ------------------------------------------------------------------------------
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
        """The initial candidates, best first: PFO's (``init: random``), the encoder's latent alone
        (``encoder``: [N, 1, *latent]) or the best ``keep`` of the encoder's latent and the ``keep`` best random
        ones (``both``; expanded latents, ties going to the encoder's)."""
        if self._chain_starts is not None:  # inside the chains: each row starts from its own candidate
            return self._chain_starts
        mode = self.hparams.init
        if mode == "random":
            return super().top_latents(h_star, index, count, chunk, keep, classes)
        learned = self.encoder(h_star).unsqueeze(1)
        if mode == "encoder":
            return learned
        P = self.prior
        drawn = super().top_latents(h_star, index, count, chunk, keep, classes)
        drawn = P.expand(drawn.flatten(0, 1)).unflatten(0, drawn.shape[:2])
        candidates = torch.cat([learned, drawn], 1)  # [N, keep + 1, *latent]
        scores = torch.stack([self.evaluate(P.render(candidates[:, j]), h_star)[0] for j in range(keep + 1)], 1)
        order = inf_if_not_finite(scores).argsort(dim=1, stable=True)[:, :keep]
        return candidates[torch.arange(len(candidates), device=order.device)[:, None], order]

    # ----- 1. the pixel stage --------------------------------------------------------------------------------
    def reconstruct(self, h_star: torch.Tensor, index: torch.Tensor) -> Reconstruction:
        if self.hparams.chains > 1:
            result = self.reconstruct_mean(h_star, index)
        else:
            result = self.reconstruct_chain(h_star, index)
        return self.blend_with_guide(result, h_star)

    def reconstruct_chain(self, h_star: torch.Tensor, index: torch.Tensor) -> Reconstruction:
        result = super().reconstruct(h_star, index)
        return self.refine_pixels(result, h_star) if self.hparams.pixel_stage else result

    def refine_pixels(self, result: Reconstruction, h_star: torch.Tensor) -> Reconstruction:
        """The pixel stage after PFO's: from each target's best image (the victim's input, [0, 1]), Adam on the
        pixels, each step followed by the projection onto the l1 ball around that image (per sample) and a clamp
        to [0, 1] (which only shrinks each element's deviation, so the ball still holds). The refined image is one
        more stage; the answer is the stage with the lowest feature loss, so the pixel stage never makes it
        worse."""
        hp = self.hparams
        stage = len(self.steps)  # the pixel stage's entry in `steps` and `lr`
        low, high = self.value_range
        anchor = result.images.detach().clone()
        pixels = anchor.clone().requires_grad_(True)
        radius = self.scaled(self.radius_setting("pixel_radius"), pixels)

        def constrain() -> None:
            self.constrain_all([(pixels, anchor, radius)])
            with torch.no_grad():
                pixels.clamp_(0, 1)

        def render() -> torch.Tensor:  # the attack's loss reads images in the generator's value range
            return low + pixels * (high - low)

        stopped = result.failed.clone()  # a target that fails here keeps its earlier stages' answer
        steps, lr = self.pixel_steps, per_stage(hp.lr, stage, "lr")
        self.optimize([pixels], render, h_star, steps, lr, stopped, constrain=constrain, name="pixels")
        with torch.no_grad():
            image = pixels.detach().clone()
            loss = self.evaluate(low + image * (high - low), h_star)[1]
        stage_images = [*result.stage_images, image]
        stage_losses = [*result.stage_losses, loss]
        losses = inf_if_not_finite(torch.stack(stage_losses))
        best = losses.argmin(0)
        rows = torch.arange(len(best), device=best.device)
        return Reconstruction(
            images=torch.stack(stage_images)[best, rows],
            feature_loss=losses[best, rows],
            failed=result.failed,
            best_stage=best,
            stage_images=stage_images,
            stage_losses=stage_losses,
            classes=result.classes,
        )

    # ----- 6. the blend with the guide ------------------------------------------------------------------------
    @torch.no_grad()
    def blend_with_guide(
        self, result: Reconstruction, h_star: torch.Tensor, fraction: float | None = None
    ) -> Reconstruction:
        """``(1 - guide_blend)`` x the answer + ``guide_blend`` x the decoder's image, per sample, as one more
        stage that is always the answer (a failed target keeps its failure). ``fraction`` replaces the configured
        blend: the calibration blends one unblended answer with every value of its grid."""
        fraction = self.radius_setting("guide_blend") if fraction is None else fraction
        if self.guide is None or not fraction:
            return result
        blended = torch.lerp(result.images, self.guide_image(h_star).to(result.images.dtype), fraction)
        image = torch.where(result.failed.view(-1, 1, 1, 1), result.images, blended)
        low, high = self.value_range
        loss = inf_if_not_finite(self.evaluate(low + image * (high - low), h_star)[1])
        last = torch.full((len(image),), len(result.stage_images), dtype=torch.long, device=image.device)
        return Reconstruction(
            images=image,
            feature_loss=loss,
            failed=result.failed,
            best_stage=last,
            stage_images=[*result.stage_images, image],
            stage_losses=[*result.stage_losses, loss],
            classes=result.classes,
        )

    # ----- 4. the mean of chains -----------------------------------------------------------------------------
    def reconstruct_mean(self, h_star: torch.Tensor, index: torch.Tensor) -> Reconstruction:
        """Each target's ``chains`` best candidates as rows of one batch (target-major), each attacked as PFO
        attacks a target; the answer is the mean of the chains' answers that did not fail. Stage k's image is the
        mean of the chains' stage-k images, and the mean answer is one more stage, always the chosen one: its
        feature loss is higher than a chain's (it is no image the generator made), which is not what it is for."""
        hp, k, n = self.hparams, self.hparams.chains, h_star.shape[0]
        classes = self.choose_classes(h_star, index)
        starts = self.top_latents(h_star, index, hp.n_init, hp.init_chunk, keep=k, classes=classes)
        self._chain_starts = starts.flatten(0, 1).unsqueeze(1)  # [N * K, 1, *latent]
        try:
            chains = self.reconstruct_chain(h_star.repeat_interleave(k, 0), index.repeat_interleave(k))
        finally:
            self._chain_starts = None
        ok = (~chains.failed).view(n, k)
        low, high = self.value_range
        with torch.no_grad():
            stage_images = [mean_of_chains(images, ok) for images in [*chains.stage_images, chains.images]]
            stage_losses = [self.evaluate(low + image * (high - low), h_star)[1] for image in stage_images]
        last = torch.full((n,), len(stage_images) - 1, dtype=torch.long, device=h_star.device)
        return Reconstruction(
            images=stage_images[-1],
            feature_loss=inf_if_not_finite(stage_losses[-1]),
            failed=~ok.any(1),
            best_stage=last,
            stage_images=stage_images,
            stage_losses=stage_losses,
            classes=None if chains.classes is None else chains.classes[::k],
        )
