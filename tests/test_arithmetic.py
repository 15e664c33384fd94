"""The arithmetic pinned against hand-computed values or independent formulas: the value-range mapping into the
victim, every feature distance, total variation, the l2 term, NoPeek's distance correlation (against the textbook
definition written with double loops), R1, path length and the non-saturating GAN losses."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from test_attack import tiny_generator, tiny_victim  # tests/ is on sys.path under pytest

from pfo.attacks import GLASS, LM, PFO, RMLE, AttackLoss, feature_distance, total_variation
from pfo.attacks.loss import to_victim_input
from pfo.prior.losses import discriminator_loss, generator_loss, path_lengths, r1_penalty
from pfo.victim.nopeek import distance_correlation

pytestmark = pytest.mark.filterwarnings("ignore:LPIPS will be reported as missing")


class _Size:
    """What ``to_victim_input`` reads of a victim: its input size."""

    def __init__(self, input_size: int) -> None:
        self.input_size = input_size


class _IdentityVictim:
    """A victim whose head sends its input unchanged, so a loss reads the image's own numbers."""

    head = staticmethod(lambda x: x)


# ----- the value range ------------------------------------------------------------------------------------------


def test_the_value_range_maps_linearly_onto_the_victims_unit_range():
    images = torch.tensor([-1.0, -0.5, 0.0, 0.5, 1.0]).view(1, 1, 1, 5).expand(1, 3, 5, 5)
    gan = to_victim_input(images, _Size(5), (-1.0, 1.0))
    assert gan[0, :, 0].tolist() == [[0.0, 0.25, 0.5, 0.75, 1.0]] * 3
    pixels = to_victim_input(images, _Size(5), (0.0, 1.0))
    assert torch.equal(pixels, images)  # [0, 1] images pass unchanged (no resize at the victim's size)
    odd = to_victim_input(torch.full((1, 3, 5, 5), 2.0), _Size(5), (-2.0, 6.0))
    assert torch.equal(odd, torch.full((1, 3, 5, 5), 0.5))  # (2 - (-2)) / (6 - (-2))


def test_resizing_to_the_victim_keeps_flat_images_flat_and_averages_when_shrinking():
    flat = to_victim_input(torch.full((2, 3, 8, 8), 0.25), _Size(16), (0.0, 1.0))
    assert flat.shape == (2, 3, 16, 16)
    torch.testing.assert_close(flat, torch.full_like(flat, 0.25))
    # Stripes 0 1 1 0 (period 4) shrunk 4x: plain bilinear sampling at each output pixel's centre (input 4i + 1.5)
    # reads only ones; the anti-aliasing filter averages a whole period, 0.5 (a border pixel's filter is cut).
    stripes = ((torch.arange(32) + 1) // 2 % 2).float().view(1, 1, 1, 32).expand(1, 3, 32, 32)
    small = to_victim_input(stripes, _Size(8), (0.0, 1.0))
    inner = small[..., 1:-1]
    torch.testing.assert_close(inner, torch.full_like(inner, 0.5), atol=1e-6, rtol=0)


def test_each_attack_maps_its_own_range_into_the_victim():
    """The generator's [-1, 1] for PFO and GLASS, [0, 1] for the pixel attacks: a render's own features score a
    zero distance, and the image an attack outputs is the render mapped to [0, 1]."""
    victim, G = tiny_victim(), tiny_generator()
    with torch.no_grad():
        render = G.synthesis(G.mapping(torch.randn(2, 16)), noise_mode="const").clamp(-1, 1)
    for attack in (PFO(victim, G, steps=[1], n_init=1), GLASS(victim, G, n_init=1, candidates=1)):
        h = victim.forward_head((render + 1) / 2)
        assert attack.evaluate(render, h)[1].abs().max() < 1e-10
        torch.testing.assert_close(attack.to_output(render), (render + 1) / 2, rtol=0, atol=1e-7)
    pixels = (render + 1) / 2
    h = victim.forward_head(pixels)
    for attack in (RMLE(victim), LM(victim, width=8, noise_channels=4)):
        assert attack.evaluate(pixels, h)[1].abs().max() < 1e-10
        assert torch.equal(attack.to_output(pixels), pixels)


# ----- the feature distances, TV, the l2 term ------------------------------------------------------------------


def test_feature_distances_match_hand_computed_values_per_sample():
    h = torch.tensor([[1.0, 2.0, 3.0], [1.0, 1.0, 1.0]])
    h_star = torch.tensor([[1.0, 0.0, -1.0], [2.0, 2.0, 2.0]])
    # Row 0: differences 0, 2, 4; row 1: -1, -1, -1 (parallel vectors).
    expected = {
        "mse": [20 / 3, 1.0],
        "l1": [2.0, 1.0],
        "cosine": [1 - (1 - 3) / (math.sqrt(14) * math.sqrt(2)), 0.0],
    }
    for kind, values in expected.items():
        torch.testing.assert_close(feature_distance(h, h_star, kind), torch.tensor(values), rtol=1e-6, atol=1e-6)
    # Any feature shape is flattened per sample; a sample's distance ignores its neighbours.
    h4, s4 = h.view(2, 3, 1, 1), h_star.view(2, 3, 1, 1)
    torch.testing.assert_close(feature_distance(h4, s4, "mse"), torch.tensor(expected["mse"]))
    torch.testing.assert_close(feature_distance(h[1:], h_star[1:], "l1"), torch.tensor([1.0]))
    with pytest.raises(ValueError, match="mse, cosine or l1"):
        feature_distance(h, h_star, "l2")


def test_total_variation_is_the_mean_absolute_neighbour_difference_per_image():
    image = torch.tensor([[0.0, 1.0], [2.0, 4.0]]).view(1, 1, 2, 2)
    # horizontal |1 - 0|, |4 - 2| -> mean 1.5; vertical |2 - 0|, |4 - 1| -> mean 2.5
    assert total_variation(image).tolist() == [4.0]
    two = torch.cat([image, torch.zeros(1, 1, 2, 2)])
    assert total_variation(two).tolist() == [4.0, 0.0]
    rgb = image.expand(1, 3, 2, 2)
    assert total_variation(rgb).tolist() == [4.0]  # a mean over channels too


def test_the_attack_loss_adds_tv_and_the_l2_term_to_the_distance():
    x = torch.tensor([[0.0, 1.0], [2.0, 4.0]]).view(1, 1, 2, 2)
    zero = torch.zeros_like(x)
    # head = identity, h* = 0: mse = mean(x^2) = 21 / 4; TV = 4; l2 term = mean(x^2) = 21 / 4.
    loss, distance = AttackLoss("mse", tv_weight=0.1, l2_weight=0.01)(x, _IdentityVictim(), zero)
    assert distance.tolist() == [5.25]
    assert loss.item() == pytest.approx(5.25 + 0.1 * 4.0 + 0.01 * 5.25)
    loss, distance = AttackLoss("l1")(x, _IdentityVictim(), zero)
    assert loss.tolist() == distance.tolist() == [7 / 4]
    loss, _ = AttackLoss("mse", l2_weight=1.0)(x, _IdentityVictim(), x)  # the l2 term alone
    assert loss.tolist() == [5.25]


# ----- NoPeek's distance correlation ----------------------------------------------------------------------------


def textbook_distance_correlation(x: np.ndarray, y: np.ndarray) -> float:
    """Szekely, Rizzo and Bakirov (2007): double-centred distance matrices, dCov^2 = mean(A * B), and
    dCor = sqrt(dCov^2(x, y) / sqrt(dVar^2(x) dVar^2(y))), written out with loops."""
    n = len(x)

    def centred(z: np.ndarray) -> np.ndarray:
        d = np.zeros((n, n))
        for j in range(n):
            for k in range(n):
                d[j, k] = math.sqrt(sum((a - b) ** 2 for a, b in zip(z[j], z[k])))
        row = [sum(d[j, k] for k in range(n)) / n for j in range(n)]
        col = [sum(d[j, k] for j in range(n)) / n for k in range(n)]
        grand = sum(row) / n
        out = np.zeros((n, n))
        for j in range(n):
            for k in range(n):
                out[j, k] = d[j, k] - row[j] - col[k] + grand
        return out

    a, b = centred(x), centred(y)
    dcov = sum(a[j, k] * b[j, k] for j in range(n) for k in range(n)) / n**2
    dvar_x = sum(a[j, k] ** 2 for j in range(n) for k in range(n)) / n**2
    dvar_y = sum(b[j, k] ** 2 for j in range(n) for k in range(n)) / n**2
    return math.sqrt(dcov / math.sqrt(dvar_x * dvar_y))


def test_distance_correlation_matches_the_textbook_formula():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(7, 2, 3, generator=g, dtype=torch.float64)
    y = torch.randn(7, 4, generator=g, dtype=torch.float64)
    dependent = torch.cat([x.flatten(1)[:, :2] ** 2, torch.randn(7, 1, generator=g, dtype=torch.float64)], 1)
    for other in (y, dependent):
        expected = textbook_distance_correlation(x.flatten(1).numpy(), other.numpy())
        assert distance_correlation(x, other).item() == pytest.approx(expected, rel=1e-9)
    # 1 for a similarity transform (rotation, scale, shift), 0 for a constant.
    q, _ = torch.linalg.qr(torch.randn(6, 6, generator=g, dtype=torch.float64))
    similar = 3.0 * x.flatten(1) @ q + 5.0
    assert distance_correlation(x, similar).item() == pytest.approx(1.0, rel=1e-9)
    assert distance_correlation(x, torch.ones(7, 3, dtype=torch.float64)).item() == 0.0
    with pytest.raises(ValueError, match="same size >= 2"):
        distance_correlation(x[:1], y[:1])


def test_distance_correlation_has_a_gradient_the_victim_can_follow():
    x = torch.randn(6, 3, 4, 4)
    z = torch.randn(6, 8, requires_grad=True)
    dcor = distance_correlation(x, z)
    assert dcor.dtype == torch.float32
    dcor.backward()
    assert torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0


# ----- R1, path length, the GAN losses --------------------------------------------------------------------------


class _LinearD(torch.nn.Module):
    """D(x) = <w, x> + b: its gradient with respect to any image is w."""

    def __init__(self, w: torch.Tensor) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(w.clone())
        self.b = torch.nn.Parameter(torch.tensor(0.3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x * self.w).flatten(1).sum(1, keepdim=True) + self.b


def test_r1_is_the_squared_gradient_norm_of_d_at_the_real_images():
    w = torch.randn(1, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    real = torch.rand(5, 3, 4, 4)
    D = _LinearD(w)
    logits, penalty = r1_penalty(D, real)
    torch.testing.assert_close(logits, D(real))
    torch.testing.assert_close(penalty, torch.full((5,), float(w.square().sum())))
    # The gradient is taken with respect to the un-augmented images: an augmentation x -> 2x doubles it.
    _, doubled = r1_penalty(D, real, augment=lambda x: 2 * x)
    torch.testing.assert_close(doubled, 4 * penalty)
    # Kept in the graph, so D can be trained to lower it: d ||w||^2 / dw = 2w.
    penalty.sum().backward()
    torch.testing.assert_close(D.w.grad, 2 * 5 * w)
    # A quadratic D(x) = sum(x^2): gradient 2x, penalty 4 ||x||^2 per image.
    _, quadratic = r1_penalty(lambda x: x.square().flatten(1).sum(1), real)
    torch.testing.assert_close(quadratic, 4 * real.square().flatten(1).sum(1))


class _LinearSynthesis:
    """A "generator" whose image is a fixed linear map of its styles: img = reshape(M @ ws.flatten())."""

    def __init__(self, M: torch.Tensor, shape: tuple[int, int, int]) -> None:
        self.M, self.shape = M, shape
        self.modes: list[str] = []

    def synthesis(self, ws: torch.Tensor, noise_mode: str = "const") -> torch.Tensor:
        self.modes.append(noise_mode)
        return (ws.flatten(1) @ self.M.T).view(len(ws), *self.shape)


def test_path_length_is_the_norm_of_the_jacobian_transpose_times_scaled_noise():
    num_ws, w_dim, shape = 3, 4, (2, 3, 3)
    pixels = int(np.prod(shape))
    M = torch.randn(pixels, num_ws * w_dim, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    M.requires_grad_(True)  # the generator's weights: the penalty must reach them
    G = _LinearSynthesis(M, shape)
    ws = torch.randn(5, num_ws, w_dim, dtype=torch.float64, requires_grad=True)
    torch.manual_seed(11)
    lengths = path_lengths(G, ws)
    torch.manual_seed(11)
    y = torch.randn(5, *shape, dtype=torch.float64).numpy() / math.sqrt(shape[1] * shape[2])  # the same draw
    m = M.detach().numpy()
    for n in range(5):
        # J^T y for a linear map is M^T y; its length: sqrt(mean over styles of the squared norm per style).
        grad = (m.T @ y[n].reshape(-1)).reshape(num_ws, w_dim)
        expected = math.sqrt(sum(float((grad[i] ** 2).sum()) for i in range(num_ws)) / num_ws)
        assert lengths[n].item() == pytest.approx(expected, rel=1e-6)  # returned in float32
    assert G.modes == ["random"]  # penalised with the training-time noise
    lengths.sum().backward()  # differentiable (create_graph), as the penalty needs
    assert M.grad is not None and M.grad.abs().sum() > 0


def test_the_non_saturating_gan_losses_match_hand_computed_values():
    ln3 = math.log(3.0)
    # -log sigmoid(0) = log 2; -log sigmoid(ln 3) = -log(3/4) = log(4/3)
    assert generator_loss(torch.tensor([0.0])).item() == pytest.approx(math.log(2))
    assert generator_loss(torch.tensor([0.0, ln3])).item() == pytest.approx((math.log(2) + math.log(4 / 3)) / 2)
    # D: -log sigmoid(real) - log(1 - sigmoid(fake)); real ln 3, fake -ln 3: 2 log(4/3)
    assert discriminator_loss(torch.tensor([ln3]), torch.tensor([-ln3])).item() == pytest.approx(2 * math.log(4 / 3))
    # each term averaged over its own batch
    real, fake = torch.tensor([ln3, ln3, ln3]), torch.tensor([-ln3])
    assert discriminator_loss(real, fake).item() == pytest.approx(2 * math.log(4 / 3))
    # The generator wants D(G(z)) high: its loss falls as the fake logit rises (non-saturating: steep when low).
    logits = torch.tensor([-100.0, -5.0, 0.0, 5.0, 100.0])
    per_logit = [generator_loss(v.view(1)).item() for v in logits]
    assert per_logit == sorted(per_logit, reverse=True)
    assert per_logit[0] == pytest.approx(100.0) and per_logit[-1] == pytest.approx(0.0, abs=1e-30)
    low = torch.tensor([-10.0], requires_grad=True)
    generator_loss(low).backward()
    assert low.grad.item() == pytest.approx(-1.0, abs=1e-4)  # the gradient does not vanish when D wins
    assert generator_loss(torch.tensor([1.0], dtype=torch.bfloat16)).dtype == torch.float32
