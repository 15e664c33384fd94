"""The learned start of PFO (issue 16): an encoder from the features a client sends at a split point to the latent
the attack searches (StyleGAN2: W+, one style per synthesis layer; DCGAN: z).

A plain ``nn.Module``; ``pfo.attacks.encoder_trainer.LatentEncoderTrainer`` trains it on the attacker's public side
and ``pfo.attacks.PFOExtended`` (``init: encoder | both``) uses its output as, or beside, the initial candidates.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from pfo.models.decoder import feature_grid


class LatentEncoder(nn.Module):
    """Features ``[N, C, s, s]`` (or ViT tokens ``[N, T, D]``) -> a latent ``[N, *latent_shape]``.

    A per-channel standardisation of the input (features differ in scale by orders of magnitude between split
    points), 3x3 convolutions that halve the grid down to at most 4 x 4, and one linear layer. The output is
    ``latent_mean + delta``: the last layer starts at zero, so an untrained encoder answers the prior's mean latent
    (StyleGAN2's average w in every style), a neutral start rather than noise.
    """

    def __init__(
        self,
        in_channels: int,  # Feature channels (ViT: the embedding dimension).
        in_size: int,  # Side of the feature grid.
        latent_shape: list[int],  # Shape of one latent: [num_ws, w_dim] (W+) or [z_dim].
        width: int = 128,  # Channels of the hidden convolutions.
    ) -> None:
        super().__init__()
        if in_channels < 1 or in_size < 1 or width < 1 or not latent_shape or min(latent_shape) < 1:
            raise ValueError(
                f"LatentEncoder needs positive sizes, got in_channels={in_channels}, in_size={in_size}, "
                f"latent_shape={list(latent_shape)}, width={width}"
            )
        self.config = {
            "in_channels": in_channels,
            "in_size": in_size,
            "latent_shape": [int(s) for s in latent_shape],
            "width": width,
        }
        self.latent_shape = tuple(self.config["latent_shape"])
        layers: list[nn.Module] = [
            nn.BatchNorm2d(in_channels, affine=False),
            nn.Conv2d(in_channels, width, 3, padding=1),
            nn.LeakyReLU(0.2),
        ]
        size = in_size
        while size > 4:
            layers += [nn.Conv2d(width, width, 3, stride=2, padding=1), nn.BatchNorm2d(width), nn.LeakyReLU(0.2)]
            size = (size + 1) // 2
        layers += [nn.AdaptiveAvgPool2d(4), nn.Flatten()]
        self.body = nn.Sequential(*layers)
        self.out = nn.Linear(width * 16, math.prod(self.latent_shape))
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        self.register_buffer("latent_mean", torch.zeros(self.latent_shape))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        grid = feature_grid(h)
        assert grid.shape[1:] == (self.config["in_channels"], self.config["in_size"], self.config["in_size"]), (
            f"features {tuple(grid.shape[1:])} do not match the encoder's {self.config}"
        )
        delta = self.out(self.body(grid)).view(-1, *self.latent_shape)
        return self.latent_mean + delta

    @classmethod
    def for_features(cls, h: torch.Tensor, latent_shape: list[int], width: int = 128) -> LatentEncoder:
        """An encoder for features shaped like ``h`` (one probe batch)."""
        grid = feature_grid(h)
        return cls(grid.shape[1], grid.shape[-1], list(latent_shape), width)
