"""Per-sample Euclidean projection onto the l1 ball.

Why this exists: PFO (following IF-GMI, ECCV 2024) optimises the generator's intermediate state block by
block. At the start of each stage it remembers the values of the variables it optimises (the *anchors*) and,
after **every** optimiser step, replaces each variable ``v`` by ``anchor + P_r(v - anchor)``, where ``P_r``
is the Euclidean projection onto the l1 ball of radius ``r``.  The constraint keeps each stage near where it
started, which stabilises the optimisation and keeps the images on the generator's manifold.

The projection is the sort-based algorithm of Duchi, Shalev-Shwartz, Singer and Chandra (ICML 2008), applied
to each sample separately over its flattened non-batch dimensions (dim 0 is the batch).  Every operation
works along dim 1 of an ``[N, D]`` view, never across rows, so that the projection of sample ``i`` does not
depend on the other samples in the batch: an attack's result for a target is then the same whatever its
neighbours (see GUIDE §3).

The projection is applied to parameters' data after each optimiser step, so it runs under ``torch.no_grad``
by design: it is not part of the computation graph and must not be differentiated through.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["l1_radius", "project_deviation_", "project_l1_ball"]


def l1_radius(rho: float, numel: int) -> float:
    """Return the l1 radius ``rho * numel`` for a per-sample tensor of ``numel`` elements.

    The l1 norm of a deviation grows with the number of elements, so a fixed radius binds very differently at
    32 px and at 256 px.  Expressing it per element (``rho``: the mean absolute deviation allowed per element)
    lets one config serve every resolution.
    """
    if rho < 0:
        raise ValueError(f"rho must be non-negative, got {rho}")
    if numel <= 0:
        raise ValueError(f"numel must be positive, got {numel}")
    return float(rho) * int(numel)


def _radius_column(radius: float | Tensor, n: int, like: Tensor) -> Tensor:
    """Radius as an ``[N, 1]`` tensor of ``like``'s dtype and device (negative tensor radii clamp to 0)."""
    if isinstance(radius, Tensor):
        r = radius.detach().to(device=like.device, dtype=like.dtype)
        if r.ndim == 0:
            r = r.expand(n)
        if r.shape != (n,):
            raise ValueError(f"a radius tensor must be a scalar or have shape [{n}], got {tuple(radius.shape)}")
        return r.clamp_min(0).unsqueeze(1)
    radius = float(radius)
    if radius < 0:
        raise ValueError(f"radius must be non-negative, got {radius}")
    return torch.full((n, 1), radius, dtype=like.dtype, device=like.device)


def _project_rows(v: Tensor, radius: float | Tensor) -> tuple[Tensor, Tensor]:
    """Project each sample of ``v``; also return the ``[N]`` mask of samples already inside the ball."""
    if v.ndim == 0:
        raise ValueError("v must have a batch dimension (shape [N, ...])")
    if not v.is_floating_point():
        raise TypeError(f"v must be a floating-point tensor, got {v.dtype}")
    n = v.shape[0]
    if n == 0 or v[0].numel() == 0:
        _radius_column(radius, n, v)  # still validate the radius
        return v.clone(), torch.ones(n, dtype=torch.bool, device=v.device)
    work_dtype = v.dtype if v.dtype in (torch.float32, torch.float64) else torch.float32
    flat = v.reshape(n, -1).to(work_dtype)
    r = _radius_column(radius, n, flat)  # [N, 1]

    a = flat.abs()
    inside = a.sum(dim=1, keepdim=True) <= r  # [N, 1]

    # Duchi et al. (2008), Fig. 1: sort |v| in decreasing order, find the largest k with
    # mu_k > (sum_{j<=k} mu_j - r) / k, and soft-threshold at theta = (sum_{j<=rho} mu_j - r) / rho.
    mu, _ = torch.sort(a, dim=1, descending=True)
    cumsum = torch.cumsum(mu, dim=1)
    k = torch.arange(1, mu.shape[1] + 1, device=mu.device, dtype=mu.dtype)
    cond = mu * k > cumsum - r  # the same test, multiplied through by k > 0
    # The last index where the test holds (a prefix in exact arithmetic; taking the last one is robust to
    # rounding).  For r > 0 the test holds at k = 1, so rho >= 1.
    rho = (cond * k).amax(dim=1, keepdim=True).clamp_min(1)  # [N, 1], float
    theta = ((cumsum.gather(1, rho.long() - 1) - r) / rho).clamp_min(0)
    w = torch.sign(flat) * (a - theta).clamp_min(0)
    w = torch.where(r > 0, w, torch.zeros_like(w))

    inside_b = inside.reshape((n,) + (1,) * (v.ndim - 1))
    # Inside rows keep the caller's exact values (the round trip through work_dtype is exact only for
    # float32/float64 inputs, so select from ``v`` itself).
    out = torch.where(inside_b, v, w.to(v.dtype).reshape(v.shape))
    return out, inside.reshape(n)


@torch.no_grad()
def project_l1_ball(v: Tensor, radius: float | Tensor) -> Tensor:
    """Project each sample of ``v`` ([N, ...]) onto the l1 ball ``{w : ||w||_1 <= radius}``.

    ``radius`` is a float or an ``[N]`` tensor of per-sample radii (negative entries of a tensor count as 0;
    a negative float is an error).  Samples already inside the ball are returned bitwise unchanged; samples
    outside land on the sphere (up to rounding).  A radius of 0 gives zeros.  Half-precision inputs are
    projected in float32 and cast back.  Returns a new tensor; ``v`` is not modified.
    """
    return _project_rows(v, radius)[0]


@torch.no_grad()
def project_deviation_(var: Tensor, anchor: Tensor, radius: float | Tensor) -> Tensor:
    """In place, set ``var`` to ``anchor + P_r(var - anchor)``, per sample; return ``var``.

    Call it on a parameter after each optimiser step: it writes into ``var``'s storage, so the parameter
    object (and the optimiser's state for it) is kept.  Samples whose deviation is already inside the ball
    are left bitwise untouched (``anchor + (var - anchor)`` is not always exactly ``var`` in floating point).
    """
    if var.shape != anchor.shape:
        raise ValueError(f"var and anchor shapes differ: {tuple(var.shape)} vs {tuple(anchor.shape)}")
    projected, inside = _project_rows(var - anchor, radius)
    inside = inside.reshape((var.shape[0],) + (1,) * (var.ndim - 1))
    var.copy_(torch.where(inside, var, anchor + projected))
    return var
