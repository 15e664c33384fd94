"""Tests for the per-sample l1-ball projection used by PFO's stage constraint."""

import math

import pytest
import torch

from pfo.attacks.projection import l1_radius, project_deviation_, project_l1_ball

DTYPES = [torch.float32, torch.float64]
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _reference_projection(v: list[float], radius: float) -> list[float]:
    """Independent reference: bisection on the soft-threshold level theta, in Python floats (float64).

    The KKT conditions of min ||w - v||^2 s.t. ||w||_1 <= r give w = sign(v) max(|v| - theta, 0), with
    theta >= 0 the root of sum(max(|v| - theta, 0)) = r when v is outside the ball.  No sorting, unlike the
    code under test.
    """
    a = [abs(x) for x in v]
    if sum(a) <= radius:
        return list(v)
    lo, hi = 0.0, max(a)
    for _ in range(200):
        mid = (lo + hi) / 2
        if sum(max(x - mid, 0.0) for x in a) > radius:
            lo = mid
        else:
            hi = mid
    theta = (lo + hi) / 2
    return [math.copysign(max(abs(x) - theta, 0.0), x) for x in v]


def _l1(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(x.shape[0], -1).abs().sum(dim=1)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("device", DEVICES)
def test_inside_points_unchanged(dtype, device):
    gen = torch.Generator().manual_seed(0)
    v = torch.randn(5, 3, 4, generator=gen, dtype=dtype).to(device)
    radius = float(_l1(v).max()) + 1.0
    out = project_l1_ball(v, radius)
    assert torch.equal(out, v)
    assert out.data_ptr() != v.data_ptr()  # a new tensor, not an alias


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("device", DEVICES)
def test_outside_points_land_on_sphere(dtype, device):
    gen = torch.Generator().manual_seed(1)
    v = torch.randn(8, 2, 5, 5, generator=gen, dtype=dtype).to(device)
    radius = 3.0
    assert bool((_l1(v) > radius).all())
    out = project_l1_ball(v, radius)
    tol = 1e-4 if dtype == torch.float32 else 1e-10
    norms = _l1(out)
    assert bool((norms <= radius + tol).all())
    torch.testing.assert_close(norms, torch.full_like(norms, radius), rtol=0, atol=tol)
    # Projection onto the l1 ball shrinks magnitudes and never flips signs.
    assert bool((out.abs() <= v.abs()).all())
    assert bool((out * v >= 0).all())


@pytest.mark.parametrize("seed", range(6))
def test_matches_bisection_reference(seed):
    gen = torch.Generator().manual_seed(seed)
    d = [1, 2, 3, 7, 20, 50][seed]
    v = torch.randn(4, d, generator=gen, dtype=torch.float64) * 3
    # Ties in |v| exercise the sort-based threshold search.
    v[1] = torch.tensor([1.0, -1.0] * (d // 2) + [1.0] * (d % 2), dtype=torch.float64)
    radii = [0.1, 0.5 * float(_l1(v[2:3])), 2.0, float(_l1(v[3:4])) + 1.0]
    for i, r in enumerate(radii):
        row = v[i : i + 1]
        got = project_l1_ball(row, r)[0].tolist()
        want = _reference_projection(row[0].tolist(), r)
        assert got == pytest.approx(want, abs=1e-9), (seed, i)


def test_matches_reference_float32():
    gen = torch.Generator().manual_seed(7)
    v = torch.randn(3, 30, generator=gen)
    out = project_l1_ball(v, 4.0)
    for i in range(3):
        want = _reference_projection(v[i].double().tolist(), 4.0)
        assert out[i].tolist() == pytest.approx(want, abs=1e-5)


@pytest.mark.parametrize("device", DEVICES)
def test_rows_are_independent(device):
    """Row i's projection is bitwise the same alone, in any batch, in any position."""
    gen = torch.Generator().manual_seed(2)
    v = (torch.randn(16, 3, 8, 8, generator=gen) * torch.rand(16, 1, 1, 1, generator=gen) * 2).to(device)
    radius = torch.linspace(0.0, 150.0, 16, device=device)
    batch = project_l1_ball(v, radius)
    for i in range(16):
        alone = project_l1_ball(v[i : i + 1], radius[i : i + 1])
        assert torch.equal(alone[0], batch[i]), i
    perm = torch.randperm(16, generator=gen).to(device)
    permuted = project_l1_ball(v[perm], radius[perm])
    assert torch.equal(permuted, batch[perm])
    # Float radius: same result as the equal per-sample tensor, and a sub-batch reproduces its rows.
    torch.testing.assert_close(project_l1_ball(v, 40.0), project_l1_ball(v, torch.full((16,), 40.0)), rtol=0, atol=0)
    assert torch.equal(project_l1_ball(v[3:7], 40.0), project_l1_ball(v, 40.0)[3:7])


def test_per_sample_radius_tensor():
    gen = torch.Generator().manual_seed(3)
    v = torch.randn(4, 10, generator=gen, dtype=torch.float64)
    norms = _l1(v)
    radius = torch.stack([norms[0] + 1, norms[1] / 2, norms[2] / 10, torch.tensor(0.0, dtype=torch.float64)])
    out = project_l1_ball(v, radius)
    assert torch.equal(out[0], v[0])  # inside its own ball
    torch.testing.assert_close(_l1(out)[1:3], radius[1:3])
    assert torch.equal(out[3], torch.zeros_like(v[3]))
    for i in range(4):
        assert out[i].tolist() == pytest.approx(_reference_projection(v[i].tolist(), float(radius[i])), abs=1e-9)
    # A 0-dim tensor radius broadcasts to every sample.
    assert torch.equal(project_l1_ball(v, torch.tensor(1.5)), project_l1_ball(v, 1.5))


@pytest.mark.parametrize("shape", [(3, 7), (2, 4, 4, 4), (2, 1, 3, 2, 5), (5, 1)])
def test_multi_dim_shapes_match_flattened(shape):
    gen = torch.Generator().manual_seed(4)
    v = torch.randn(*shape, generator=gen)
    out = project_l1_ball(v, 1.0)
    assert out.shape == v.shape and out.dtype == v.dtype
    assert torch.equal(out.reshape(shape[0], -1), project_l1_ball(v.reshape(shape[0], -1), 1.0))


def test_non_contiguous_input():
    gen = torch.Generator().manual_seed(5)
    v = torch.randn(6, 4, 5, generator=gen).transpose(1, 2)
    assert not v.is_contiguous()
    torch.testing.assert_close(project_l1_ball(v, 2.0), project_l1_ball(v.contiguous(), 2.0), rtol=0, atol=0)


def test_radius_zero_gives_zeros():
    v = torch.randn(3, 2, 5)
    out = project_l1_ball(v, 0.0)
    assert torch.equal(out, torch.zeros_like(v))
    assert torch.equal(project_l1_ball(torch.zeros(2, 4), 0.0), torch.zeros(2, 4))


def test_half_precision_is_supported():
    v = torch.randn(3, 50).to(torch.bfloat16)
    out = project_l1_ball(v, 2.0)
    assert out.dtype == torch.bfloat16
    assert bool((_l1(out.float()) <= 2.0 + 0.05).all())


def test_invalid_arguments():
    with pytest.raises(ValueError, match="non-negative"):
        project_l1_ball(torch.randn(2, 3), -1.0)
    with pytest.raises(ValueError, match="shape"):
        project_l1_ball(torch.randn(2, 3), torch.ones(3))
    with pytest.raises(ValueError, match="batch"):
        project_l1_ball(torch.tensor(1.0), 1.0)
    with pytest.raises(TypeError):
        project_l1_ball(torch.ones(2, 3, dtype=torch.long), 1.0)


def test_empty_batch():
    v = torch.randn(0, 3)
    assert project_l1_ball(v, 1.0).shape == (0, 3)


def test_no_graph_is_recorded():
    v = torch.randn(2, 6, requires_grad=True)
    out = project_l1_ball(v, 0.5)
    assert not out.requires_grad and out.grad_fn is None


def test_l1_radius():
    assert l1_radius(0.05, 3 * 32 * 32) == pytest.approx(153.6)
    assert l1_radius(0.0, 10) == 0.0
    with pytest.raises(ValueError):
        l1_radius(-0.1, 10)
    with pytest.raises(ValueError):
        l1_radius(0.1, 0)


def test_project_deviation_in_place_keeps_parameter():
    gen = torch.Generator().manual_seed(6)
    anchor = torch.randn(4, 3, 4, 4, generator=gen)
    param = torch.nn.Parameter(anchor.clone())
    opt = torch.optim.Adam([param], lr=0.5)
    radius = torch.tensor([0.5, 1.0, 2.0, 1000.0])
    for _ in range(5):
        opt.zero_grad()
        loss = (param - 3.0).pow(2).sum()
        loss.backward()
        opt.step()
        before = param.detach().clone()
        ptr = param.data_ptr()
        out = project_deviation_(param, anchor, radius)
        assert out is param and param.data_ptr() == ptr
        assert param.requires_grad and param.grad_fn is None
        dev = _l1(param.detach() - anchor)
        assert bool((dev <= radius * (1 + 1e-5) + 1e-5).all())
        # The last sample's radius is never reached: bitwise untouched.
        assert torch.equal(param[3].detach(), before[3])
    # The bound samples sit on their spheres after the optimiser pushed them out.
    torch.testing.assert_close(dev[:3], radius[:3], rtol=1e-5, atol=1e-5)


def test_project_deviation_shape_mismatch():
    with pytest.raises(ValueError, match="shapes differ"):
        project_deviation_(torch.zeros(2, 3), torch.zeros(2, 4), 1.0)
