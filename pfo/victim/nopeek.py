"""NoPeek (Vepakomma et al. 2020): train the victim so that what the client sends is weakly dependent on its input,
by penalising the distance correlation between a batch's inputs and its split-point features."""

from __future__ import annotations

import torch


def _centred_distances(x: torch.Tensor) -> torch.Tensor:
    d = torch.cdist(x, x)
    return d - d.mean(0, keepdim=True) - d.mean(1, keepdim=True) + d.mean()


def distance_correlation(x: torch.Tensor, z: torch.Tensor, eps: float = 1e-9) -> torch.Tensor:
    """Sample distance correlation (Szekely et al. 2007) between the rows of ``x`` and of ``z`` (any shapes with
    the same batch size): 0 for independent samples, 1 for z a similarity transform of x."""
    if x.shape[0] != z.shape[0] or x.shape[0] < 2:
        raise ValueError("distance correlation needs two batches of the same size >= 2")
    a, b = _centred_distances(x.flatten(1).double()), _centred_distances(z.flatten(1).double())
    dcov_xz, dvar_x, dvar_z = (a * b).mean(), (a * a).mean(), (b * b).mean()
    return (dcov_xz.clamp_min(0) / (dvar_x * dvar_z).sqrt().clamp_min(eps)).sqrt().to(x.dtype)
