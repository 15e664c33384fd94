"""LM, likelihood maximisation with a deep image prior (as in GLASS's and DRAG's code; DISCO, CVPR 2021):
optimise the weights of a randomly initialised convolutional generator fed fixed noise.

Every target has its own network. The N networks of a batch run as one grouped convolution (group i holds
target i's weights), so the batch costs one call per layer while no weight is shared between targets.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F

from pfo.attacks.base import Reconstruction
from pfo.attacks.optimization import OptimizationAttack
from pfo.attacks.options import check_count, check_number
from pfo.attacks.targets import target_generators


class PerTargetConvNets:
    """N independent small decoders ``noise -> image`` as stacked weights [N, ...] (leaf tensors to optimise).

    Layout: conv(noise -> width), then ``upsamples`` times (nearest x2, conv), each hidden conv followed by channel
    normalisation and leaky ReLU, then conv -> 3, sigmoid. The normalisation is the deep image prior's batch norm at
    batch size 1: each channel is normalised over its own pixels, and every channel belongs to one target (grouped
    layout), so no statistic couples two targets. Without it the unnormalised activations drift under Adam until
    the sigmoid saturates and the image collapses to flat black or white.
    """

    def __init__(
        self,
        n: int,
        size: int,
        width: int,
        noise_channels: int,
        upsamples: int,
        generators: list[torch.Generator],
        device: torch.device,
        norm: bool = True,
    ) -> None:
        self.n, self.size, self.upsamples, self.norm = n, size, upsamples, norm
        shapes = [(width, noise_channels)] + [(width, width)] * upsamples + [(3, width)]
        self.weights, self.biases = [], []
        for out_ch, in_ch in shapes:
            bound = 1 / math.sqrt(in_ch * 9)  # PyTorch's default conv initialisation range
            w = torch.stack([(torch.rand(out_ch, in_ch, 3, 3, generator=g) * 2 - 1) * bound for g in generators])
            b = torch.stack([(torch.rand(out_ch, generator=g) * 2 - 1) * bound for g in generators])
            self.weights.append(w.to(device).requires_grad_(True))
            self.biases.append(b.to(device).requires_grad_(True))
        # Per-target scale and shift of each normalised hidden channel: [N, width] per hidden layer.
        self.scales = [torch.ones(n, width, device=device).requires_grad_(True) for _ in range(upsamples + 1)]
        self.shifts = [torch.zeros(n, width, device=device).requires_grad_(True) for _ in range(upsamples + 1)]
        base = size // 2**upsamples
        self.noise = torch.stack([torch.randn(noise_channels, base, base, generator=g) for g in generators]).to(device)

    @property
    def parameters(self) -> list[torch.Tensor]:
        extra = self.scales + self.shifts if self.norm else []
        return self.weights + self.biases + extra

    def _conv(self, x: torch.Tensor, layer: int) -> torch.Tensor:
        w, b = self.weights[layer], self.biases[layer]
        return F.conv2d(x, w.flatten(0, 1), b.flatten(), padding=1, groups=self.n)

    def _hidden(self, x: torch.Tensor, layer: int) -> torch.Tensor:
        x = self._conv(x, layer)
        if self.norm:  # x is [1, N * width, h, w]: batch norm at batch 1 normalises each channel over its pixels
            x = F.batch_norm(
                x, None, None, self.scales[layer].flatten(), self.shifts[layer].flatten(), training=True, eps=1e-5
            )
        return F.leaky_relu(x, 0.2)

    def __call__(self) -> torch.Tensor:
        x = self.noise.flatten(0, 1).unsqueeze(0)  # [1, N * C, h, w]: target i's channels form group i
        x = self._hidden(x, 0)
        for layer in range(1, self.upsamples + 1):
            x = self._hidden(F.interpolate(x, scale_factor=2, mode="nearest"), layer)
        x = torch.sigmoid(self._conv(x, self.upsamples + 1))
        return x.view(self.n, 3, self.size, self.size)


class LM(OptimizationAttack):
    """Deep-image-prior inversion: per-target generator weights are the variables."""

    value_range = (0.0, 1.0)

    def __init__(
        self,
        victim: str | Path | dict,
        *,
        steps: int = 500,
        lr: float = 0.01,
        width: int = 64,
        noise_channels: int = 32,
        upsamples: int = 2,
        norm: bool = True,
        **kwargs,
    ) -> None:
        """
        Args:
            victim: the victim file (``train.py fit`` of a victim config writes one), or a network given inline
                (``{class_path: pfo.models.TorchvisionModel, init_args: {...}}``); from Python, a SplitModel too.
            steps: optimisation steps per target.
            lr: Adam learning rate on the network weights.
            width: channels of each per-target network.
            noise_channels: channels of the fixed input noise.
            upsamples: x2 up-sampling stages (the noise is input_size / 2**upsamples pixels wide).
            norm: normalise each hidden channel over its pixels, with a learnt per-target scale and shift (the
                deep image prior's batch norm at batch size 1); without it most images collapse at `layer2`.
        """
        check_count("steps", steps, 0)
        check_number("lr", lr, positive=True)
        check_count("width", width, 1)
        check_count("noise_channels", noise_channels, 1)
        check_count("upsamples", upsamples, 0)
        super().__init__(victim, **kwargs)
        size = self.victim.input_size
        if size % 2**upsamples:
            raise ValueError(
                f"`upsamples` {upsamples} needs the victim's input size ({size} px) to be divisible by "
                f"2**upsamples = {2**upsamples}; lower `upsamples`"
            )

    def reconstruct(self, h_star: torch.Tensor, index: torch.Tensor) -> Reconstruction:
        hp = self.hparams
        nets = PerTargetConvNets(
            h_star.shape[0],
            self.victim.input_size,
            hp.width,
            hp.noise_channels,
            hp.upsamples,
            target_generators(self.seed, index),
            self.device,
            norm=hp.norm,
        )
        failed = torch.zeros(h_star.shape[0], dtype=torch.bool, device=self.device)
        self.optimize(nets.parameters, nets, h_star, hp.steps, hp.lr, failed, name="dip_weights")
        with torch.no_grad():
            images = nets()
            distance = self.evaluate(images, h_star)[1]
        return Reconstruction(images=images, feature_loss=distance, failed=failed)
