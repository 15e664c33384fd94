"""rMLE (He et al., ACSAC 2019): optimise the pixels themselves against the feature loss plus total variation."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch

from pfo.attacks.base import Reconstruction
from pfo.attacks.optimization import OptimizationAttack
from pfo.attacks.options import check_choice, check_count, check_number
from pfo.attacks.targets import target_generators

INITS = ("uniform", "gray")


class RMLE(OptimizationAttack):
    """Regularised maximum-likelihood estimation: pixel optimisation, pixels clamped to [0, 1] after each step."""

    value_range = (0.0, 1.0)

    def __init__(
        self,
        victim: str | Path | dict,
        *,
        steps: int = 500,
        lr: float = 0.05,
        init: Literal["uniform", "gray"] = "uniform",
        tv_weight: float = 0.01,
        **kwargs,
    ) -> None:
        """
        Args:
            victim: the victim file (``train.py fit`` of a victim config writes one), or a network given inline
                (``{class_path: pfo.models.TorchvisionModel, init_args: {...}}``); from Python, a SplitModel too.
            steps: optimisation steps per target.
            lr: Adam learning rate on pixel values.
            init: ``uniform`` (per-target seeded noise in [0, 1]) or ``gray`` (all 0.5).
            tv_weight: weight of the total-variation prior.
        """
        check_count("steps", steps, 0)
        check_number("lr", lr, positive=True)
        check_choice("init", init, INITS)
        super().__init__(victim, tv_weight=tv_weight, **kwargs)

    def reconstruct(self, h_star: torch.Tensor, index: torch.Tensor) -> Reconstruction:
        n, size = h_star.shape[0], self.victim.input_size
        if self.hparams.init == "uniform":
            start = torch.stack([torch.rand(3, size, size, generator=g) for g in target_generators(self.seed, index)])
        else:
            start = torch.full((n, 3, size, size), 0.5)
        x = start.to(self.device).requires_grad_(True)
        failed = torch.zeros(n, dtype=torch.bool, device=self.device)

        def clamp() -> None:
            with torch.no_grad():
                x.clamp_(0, 1)

        self.optimize(
            [x], lambda: x, h_star, self.hparams.steps, self.hparams.lr, failed, constrain=clamp, name="pixels"
        )
        with torch.no_grad():
            distance = self.evaluate(x, h_star)[1]
        return Reconstruction(images=x.detach().clone(), feature_loss=distance, failed=failed)
