"""The per-sample optimisation loop that every optimisation attack (PFO, GLASS, rMLE, LM) runs.

Variables are per-target tensors whose first dimension is the batch. The loss is the SUM of per-sample losses,
so each sample's gradient is its own; a constraint (PFO's l1-ball projection) runs after every step, per
sample. A sample whose loss turns NaN/inf is stopped (its gradients zeroed from then on) and reported as
failed; the others carry on.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

import torch
from tqdm.auto import tqdm

from pfo.attacks.base import ReconstructionAttack
from pfo.attacks.loss import DISTANCES, AttackLoss, to_victim_input
from pfo.attacks.options import check_choice, check_number


def per_stage(value: float | Sequence[float] | None, stage: int, name: str) -> float | None:
    """A setting given once for all stages, or as a list with one entry per stage."""
    if value is None or isinstance(value, (int, float)):
        return value
    if stage >= len(value):
        raise ValueError(f"`{name}` lists {len(value)} values but stage {stage} needs one (one entry per stage)")
    return value[stage]


def check_optimization_options(distance: str, tv_weight: float, l2_weight: float, betas: Sequence[float]) -> None:
    """The options every optimisation attack shares, checked before its victim and prior are loaded."""
    check_choice("distance", distance, DISTANCES)
    check_number("tv_weight", tv_weight)
    check_number("l2_weight", l2_weight)
    if isinstance(betas, str) or not isinstance(betas, Sequence) or len(betas) != 2:
        raise ValueError(f"`betas` {betas!r} must be two numbers in [0, 1) (Adam's beta1 and beta2)")
    for beta in betas:
        check_number("betas", beta, below=1)


class OptimizationAttack(ReconstructionAttack):
    """Base of attacks that optimise per-target variables against the feature loss.

    Subclasses call ``optimize`` (one or more times: stages) from ``reconstruct``. Images passed to the loss
    are in ``value_range`` ([-1, 1] for a generator, [0, 1] for pixels) and are mapped to the victim's input.
    """

    value_range: tuple[float, float] = (0.0, 1.0)

    def __init__(
        self,
        victim: str | Path | dict,
        *,
        distance: Literal["mse", "cosine", "l1"] = "mse",
        tv_weight: float = 0.0,
        l2_weight: float = 0.0,
        betas: tuple[float, float] = (0.9, 0.999),
        progress: bool = True,
        **kwargs,
    ) -> None:
        """
        Args:
            victim: the victim file (``train.py fit`` of a victim config writes one), or a network given inline
                (``{class_path: pfo.models.TorchvisionModel, init_args: {...}}``); from Python, a SplitModel too.
            distance: feature distance D (mse, cosine or l1).
            tv_weight: weight of the total-variation prior on the image.
            l2_weight: weight of the image's mean square.
            betas: Adam's betas (a fresh Adam per stage).
            progress: show a progress bar of the optimisation steps.
        """
        check_optimization_options(distance, tv_weight, l2_weight, betas)
        super().__init__(victim, **kwargs)
        self.loss_fn = AttackLoss(distance, tv_weight, l2_weight)
        self._curve_step = 0

    def evaluate(self, images: torch.Tensor, h_star: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss, feature distance) per sample for images in ``value_range``."""
        return self.loss_fn(to_victim_input(images, self.victim, self.value_range), self.victim, h_star)

    def to_output(self, images: torch.Tensor) -> torch.Tensor:
        """Images in ``value_range`` -> [0, 1] at the victim's input size (what is scored and saved)."""
        return to_victim_input(images.detach(), self.victim, self.value_range).clamp(0, 1)

    def optimize(
        self,
        variables: list[torch.Tensor],
        render: Callable[[], torch.Tensor],
        h_star: torch.Tensor,
        steps: int,
        lr: float,
        failed: torch.Tensor,
        constrain: Callable[[], None] | None = None,
        adjust: Callable[[int, torch.optim.Optimizer], None] | None = None,
        name: str = "stage",
    ) -> None:
        """Run ``steps`` Adam steps on ``variables`` (leaf tensors [N, ...]) minimising the summed loss of
        ``render()``. ``failed`` ([N] bool) is updated in place. ``adjust(step, optimizer)`` may change the
        learning rate or perturb variables (GLASS's latent noise) before each step."""
        if steps <= 0:
            return
        optimizer = torch.optim.Adam(variables, lr=lr, betas=self.hparams.betas)
        bar = tqdm(range(steps), desc=name, leave=False, disable=not self.hparams.progress or self.global_rank != 0)
        for step in bar:
            if adjust is not None:
                adjust(step, optimizer)
            optimizer.zero_grad(set_to_none=True)
            loss, distance = self.evaluate(render(), h_star)
            failed |= ~torch.isfinite(loss).detach()
            loss.masked_fill(failed, 0.0).sum().backward()
            for v in variables:
                if v.grad is not None:
                    mask = failed.view(-1, *([1] * (v.grad.ndim - 1)))
                    v.grad.masked_fill_(mask, 0.0)
            optimizer.step()
            if constrain is not None:
                constrain()
            ok = distance.detach()[~failed]
            if ok.numel() and (step % 10 == 0 or step == steps - 1):
                mean = float(ok.mean())
                bar.set_postfix(feature_loss=f"{mean:.4g}")
                self.log_curve(f"loss/{name}", mean, self._curve_step)
            self._curve_step += 1
