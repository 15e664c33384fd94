"""The baselines (rMLE, LM, GLASS, the inverse network) through the Python API, at the tiny size of test_attack:
each one lowers the feature loss it is given and keeps its targets independent. (That the inverse network learns
only from public data: tests/test_threat_model.py.)"""

from __future__ import annotations

import pytest
import torch
from test_attack import attack_images, tiny_generator, tiny_victim  # tests/ is on sys.path under pytest

from pfo.attacks import GLASS, LM, RMLE

pytestmark = [
    pytest.mark.filterwarnings("ignore:LPIPS will be reported as missing"),
    pytest.mark.filterwarnings("ignore:.*module\\(s\\) in eval mode"),
    pytest.mark.filterwarnings("ignore:.*isinstance\\(treespec, LeafSpec\\)"),
]

TARGETS = [0, 5, 10]


def build(name: str, steps: int):
    """A baseline at the tiny size with ``steps`` optimisation steps (0: its starting point)."""
    common = {"progress": False}
    if name == "rmle":
        return RMLE(tiny_victim(), steps=steps, **common)
    if name == "lm":
        return LM(tiny_victim(), steps=steps, width=16, noise_channels=8, **common)
    if name == "lm_no_norm":
        return LM(tiny_victim(), steps=steps, width=16, noise_channels=8, norm=False, **common)
    return GLASS(
        tiny_victim(), tiny_generator(), n_init=4, init_chunk=4, candidates=2, short_steps=steps // 3,
        steps=steps - steps // 3, **common,
    )  # fmt: skip


@pytest.mark.parametrize("name", ["rmle", "lm", "glass"])
def test_each_baseline_lowers_the_feature_loss_of_every_target(name):
    start, _ = attack_images(build(name, 0), TARGETS)
    end, _ = attack_images(build(name, 30), TARGETS)
    assert torch.isfinite(end.feature_loss).all() and not end.failed.any()
    assert (end.feature_loss < 0.8 * start.feature_loss).all(), (start.feature_loss, end.feature_loss)
    assert end.images.shape == (3, 3, 16, 16)
    assert end.images.min() >= 0 and end.images.max() <= 1


@pytest.mark.parametrize("name", ["lm", "lm_no_norm", "rmle"])
def test_a_baselines_target_is_bitwise_the_same_whatever_its_neighbours(name):
    """LM runs one network per target as grouped convolutions, with per-channel normalisation: nothing may mix
    targets (a shared weight or a statistic over the batch would)."""
    first, _ = attack_images(build(name, 8), [3, 7])
    second, _ = attack_images(build(name, 8), [14, 3])
    assert torch.equal(first.images[0], second.images[1])
    assert torch.equal(first.feature_loss[0], second.feature_loss[1])
    assert not torch.equal(first.images[0], first.images[1])


def test_lm_networks_start_from_per_target_seeds_and_normalise_each_channel():
    from pfo.attacks.lm import PerTargetConvNets
    from pfo.attacks.targets import target_generators

    def nets(index):
        return PerTargetConvNets(
            len(index), 16, 8, 4, 2, target_generators(0, torch.tensor(index)), torch.device("cpu")
        )

    a, b = nets([3, 7]), nets([3, 9])
    assert torch.equal(a.weights[0][0], b.weights[0][0]) and not torch.equal(a.weights[0][1], b.weights[0][1])
    assert len(a.parameters) == 2 * 4 + 2 * 3  # weights and biases of 4 convs, scale and shift of 3 hidden layers
    # A hidden layer's channels come out normalised over their own pixels (before the learnt scale and shift).
    x = a._conv(a.noise.flatten(0, 1).unsqueeze(0), 0)
    normed = torch.nn.functional.batch_norm(x, None, None, training=True)
    assert torch.allclose(normed.mean((0, 2, 3)), torch.zeros(2 * 8), atol=1e-5)
    assert torch.allclose(normed.var((0, 2, 3), unbiased=False), torch.ones(2 * 8), atol=1e-3)
