"""PFO and GLASS with a class-conditional StyleGAN2 prior: the class rule chooses each target's class before the
initialisation, the attack lowers the feature loss, each target records its class, and a target's result does
not depend on its batch neighbours (tiny models, CPU, a few seconds)."""

from __future__ import annotations

import pytest
import torch

from pfo.attacks import GLASS, PFO
from pfo.attacks.class_rule import one_hot
from pfo.attacks.loss import to_victim_input
from pfo.models import ResNet
from pfo.models.stylegan2 import Generator

RES, C_DIM = 16, 4


@pytest.fixture(scope="module")
def victim() -> ResNet:
    torch.manual_seed(1)
    return ResNet(depth=18, num_classes=C_DIM, stem="cifar", input_size=RES, split_point="layer1").eval()


@pytest.fixture(scope="module")
def generator() -> Generator:
    torch.manual_seed(4)
    G = Generator(z_dim=8, w_dim=16, resolution=RES, n_mlp=2, channel_base=128, channel_max=16, c_dim=C_DIM)
    return G.eval().requires_grad_(False)


def targets(victim, G, classes=(2, 0, 3)) -> tuple[torch.Tensor, torch.Tensor]:
    z = torch.randn(len(classes), G.z_dim, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        images = to_victim_input(G(z, one_hot(torch.tensor(classes), C_DIM), noise_mode="const"), victim, (-1, 1))
        return images.clamp(0, 1), victim.forward_head(images.clamp(0, 1))


def build(kind, victim, G, **options):
    if kind == "pfo":
        return PFO(victim, G, steps=[6, 3], n_init=4, init_chunk=4, progress=False, **options)
    return GLASS(victim, G, short_steps=3, steps=6, n_init=4, init_chunk=4, candidates=2, progress=False, **options)


@pytest.mark.parametrize("kind", ["pfo", "glass"])
def test_a_conditional_prior_is_attacked_in_the_victims_predicted_class(kind, victim, generator):
    images, h = targets(victim, generator)
    attack = build(kind, victim, generator)
    result = attack.reconstruct(h, torch.arange(len(h)))
    predicted = victim.tail(h).argmax(1)  # the default rule: what the server computes from the features anyway
    assert torch.equal(result.classes, predicted)
    index = torch.arange(len(h))
    first = attack.top_latents(h, index, 4, 4, classes=attack.choose_classes(h, index))[:, 0]
    start = attack.evaluate(attack.prior.render(attack.prior.expand(first)), h)[1]  # the chosen start's loss
    assert bool((result.feature_loss < start).all()), (result.feature_loss, start)


def test_a_fixed_class_and_the_search_are_recorded_per_target(victim, generator):
    images, h = targets(victim, generator)
    fixed = build("pfo", victim, generator, class_rule=3).reconstruct(h, torch.arange(len(h)))
    assert fixed.classes.tolist() == [3, 3, 3]
    searched = build("pfo", victim, generator, class_rule="search").reconstruct(h, torch.arange(len(h)))
    assert searched.classes.shape == (3,) and bool(((searched.classes >= 0) & (searched.classes < C_DIM)).all())


def test_a_conditional_targets_result_ignores_its_batch_neighbours(victim, generator):
    _, h = targets(victim, generator, classes=(1, 2, 3, 0))
    attack = build("pfo", victim, generator)
    together = attack.reconstruct(h, torch.arange(4))
    alone = attack.reconstruct(h[2:3], torch.tensor([2]))
    assert int(alone.classes[0]) == int(together.classes[2])
    torch.testing.assert_close(alone.images[0], together.images[2], rtol=1e-4, atol=1e-5)


def test_an_unconditional_prior_records_no_class_and_a_bad_rule_is_refused(victim):
    torch.manual_seed(4)
    G = Generator(z_dim=8, w_dim=16, resolution=RES, n_mlp=2, channel_base=128, channel_max=16).eval()
    _, h = targets(
        victim,
        Generator(z_dim=8, w_dim=16, resolution=RES, n_mlp=2, channel_base=128, channel_max=16, c_dim=C_DIM).eval(),
    )
    assert build("pfo", victim, G).reconstruct(h, torch.arange(len(h))).classes is None
    with pytest.raises(ValueError, match="class"):
        build("pfo", victim, G, class_rule="most_likely")
