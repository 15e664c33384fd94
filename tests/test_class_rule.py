"""The class rule of conditional priors: the victim's own prediction, the search over the prior's classes, a fixed
class, per-target independence and the errors for settings that cannot work (tiny models, CPU, a few seconds)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pfo.attacks.class_rule import ClassRule, class_search_seed, one_hot, search_classes, victim_classes
from pfo.attacks.loss import AttackLoss, to_victim_input
from pfo.models import ResNet
from pfo.models.stylegan2 import Generator

RES = 16
C_DIM = 4


class GeneratorPrior:
    """The three calls the search makes, on a StyleGAN2 generator (``pfo.models.prior.Prior`` offers the same)."""

    def __init__(self, G: Generator) -> None:
        self.G, self.c_dim = G, G.c_dim

    def sample_z(self, count: int, generator: torch.Generator) -> torch.Tensor:
        return torch.randn(count, self.G.z_dim, generator=generator)

    def map(self, z, c=None, truncation=1.0):
        return self.G.mapping(z, c, truncation_psi=truncation)

    def render(self, latent):
        return self.G.synthesis(latent, noise_mode="const")


class HeadOnlyVictim(nn.Module):
    """A split whose server side has no tail (e.g. a feature extractor): no prediction to use."""

    input_size, num_classes = RES, 0

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.head = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1))
        self.tail = nn.Sequential()


@pytest.fixture(scope="module")
def tail_victim() -> ResNet:
    torch.manual_seed(1)
    return ResNet(depth=18, num_classes=C_DIM, stem="cifar", input_size=RES, split_point="layer2").eval()


def class_dominated_generator(c_dim: int = C_DIM) -> Generator:
    """A conditional generator whose images depend mostly on the class (z's weight in fc0 shrunk), as a trained
    class-conditional prior's coarse content does."""
    torch.manual_seed(4)
    G = Generator(z_dim=8, w_dim=16, resolution=RES, n_mlp=2, channel_base=128, channel_max=16, c_dim=c_dim).eval()
    with torch.no_grad():
        G.mapping.fc0.weight.mul_(100)[:, :8].mul_(0.1)  # stored as N(0, 1) / lr_mlp; z's columns shrunk
        G.mapping.fc1.weight.mul_(100)
    return G.requires_grad_(False)


def attack_score(victim):
    """The attack loss per sample for generator images in [-1, 1] (what PFO and GLASS score candidates with)."""
    loss = AttackLoss()
    return lambda images, h: loss(to_victim_input(images, victim, (-1.0, 1.0)), victim, h)[0]


def observed(victim, G: Generator, classes: list[int], seed: int = 7) -> torch.Tensor:
    """Features of targets rendered by ``G`` with known classes from latents the search never draws."""
    z = torch.randn(len(classes), G.z_dim, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        images = G(z, one_hot(torch.tensor(classes), G.c_dim), noise_mode="const")
        return victim.head(to_victim_input(images, victim, (-1.0, 1.0)))


def choose(rule: ClassRule, victim, G: Generator, h: torch.Tensor, index: torch.Tensor | None = None, seed: int = 0):
    index = torch.arange(len(h)) if index is None else index
    return rule.choose(h, index, victim=victim, prior=GeneratorPrior(G), seed=seed, score=attack_score(victim))


def test_victim_rule_is_the_tails_own_prediction(tail_victim):
    victim, G = tail_victim, class_dominated_generator()
    x = torch.rand(8, 3, RES, RES, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        h = victim.head(x)
        predicted = victim(x).argmax(1)
    assert len(set(predicted.tolist())) > 1  # the check below could not pass by chance with one class
    for rule in ("victim", "auto"):
        choice = choose(ClassRule(rule), victim, G, h)
        assert choice.rule == "victim"
        assert torch.equal(choice.classes, predicted) and torch.equal(choice.classes, victim.tail(h).argmax(1))
        assert torch.equal(choice.c, torch.eye(C_DIM)[predicted]) and choice.c.dtype == h.dtype
    mapped = choose(ClassRule("victim", class_map=[3, 3, 0, 1]), victim, G, h)  # victim class v -> prior class
    assert torch.equal(mapped.classes, torch.tensor([3, 3, 0, 1])[predicted])
    wide = class_dominated_generator(c_dim=6)  # a different label space needs the map
    wide_choice = choose(ClassRule("victim", class_map=[5, 4, 0, 2]), victim, wide, h)
    assert torch.equal(wide_choice.classes, torch.tensor([5, 4, 0, 2])[predicted]) and wide_choice.c.shape == (8, 6)


def test_search_finds_the_class_a_target_was_rendered_with():
    victim, G = HeadOnlyVictim(), class_dominated_generator()
    truth = [2, 0, 3, 1, 1, 3]
    h = observed(victim, G, truth)
    for rule in ("auto", "search"):  # no tail: the default searches
        choice = choose(ClassRule(rule, search_latents=2), victim, G, h)
        assert choice.rule == "search" and choice.classes.tolist() == truth
        assert torch.equal(choice.c, torch.eye(C_DIM)[truth])


def test_search_among_the_victims_top_classes(tail_victim):
    victim, G = tail_victim, class_dominated_generator()
    truth = [2, 0, 3, 1]
    h = observed(victim, G, truth)
    with torch.no_grad():
        ranked = victim.tail(h).argsort(1, descending=True)
    top1 = choose(ClassRule("search", search_top=1), victim, G, h)
    assert top1.rule == "search" and torch.equal(top1.classes, ranked[:, 0])  # one candidate: the prediction
    top2 = choose(ClassRule("search", search_top=2, search_latents=3), victim, G, h)
    assert all(int(c) in row[:2].tolist() for c, row in zip(top2.classes, ranked))
    full = choose(ClassRule("search", search_latents=3), victim, G, h)  # the searches score alike
    assert all(full.classes[i] == top2.classes[i] for i in range(4) if full.classes[i] in ranked[i, :2])


def test_fixed_class():
    victim, G = HeadOnlyVictim(), class_dominated_generator()
    choice = choose(ClassRule(3), victim, G, observed(victim, G, [0, 1, 2]))
    assert choice.rule == "fixed" and choice.classes.tolist() == [3, 3, 3]
    assert torch.equal(choice.c, torch.eye(C_DIM)[[3, 3, 3]])


def test_a_targets_class_ignores_its_batch_neighbours():
    """The search seeds from the target's index alone and scores each target's candidates apart."""
    victim, G = HeadOnlyVictim(), class_dominated_generator()
    h = observed(victim, G, [2, 0, 3, 1, 1], seed=8)
    index = torch.tensor([40, 3, 17, 9, 25])
    rule = ClassRule("search", search_latents=2)
    batch = choose(rule, victim, G, h, index)
    order = [4, 2, 0, 3, 1]
    assert torch.equal(choose(rule, victim, G, h[order], index[order]).classes, batch.classes[order])
    for i in range(5):
        assert torch.equal(choose(rule, victim, G, h[i : i + 1], index[i : i + 1]).classes, batch.classes[i : i + 1])
    # A class's candidates are the same draws whichever classes are searched: with the winner alone as the only
    # candidate, or with all, its candidates score the same (up to the rendering batch's rounding).
    scores = {}
    for candidates in ([[int(batch.classes[0])]], None):

        def record(images, hh, candidates=candidates):
            s = attack_score(victim)(images, hh)
            scores.setdefault(str(candidates), []).append(s)
            return s

        search_classes(GeneratorPrior(G), h[:1], index[:1], 0, record, candidates=candidates, latents_per_class=2)
    winner = int(batch.classes[0])
    alone = torch.cat(scores[str([[winner]])])
    every = torch.cat(scores["None"]).view(C_DIM, 2)[winner]
    torch.testing.assert_close(alone, every, rtol=1e-5, atol=0)
    assert class_search_seed(0, 40) != class_search_seed(0, 3) and class_search_seed(0, 40) != class_search_seed(1, 40)


def test_settings_that_cannot_work_are_refused(tail_victim):
    victim, headless = tail_victim, HeadOnlyVictim()
    for rule in ("best", True, -1, 1.5):
        with pytest.raises(ValueError, match="class_rule"):
            ClassRule(rule)
    with pytest.raises(ValueError, match="class_search_latents"):
        ClassRule("search", search_latents=0)
    with pytest.raises(ValueError, match="class_search_top"):
        ClassRule("search", search_top=0)
    cases = [
        (ClassRule(4), victim, C_DIM, r"`class_rule` 4 is not a class of this prior; use 0 .. 3"),
        (ClassRule("victim"), headless, C_DIM, r"'victim' rule needs .* no tail .*class_rule: search.*fixed"),
        (ClassRule("search", search_top=2), headless, C_DIM, r"class_search_top.*no tail"),
        (ClassRule("victim"), victim, 10, r"predicts 4 classes but the prior has 10.*class_map.*search.*fixed"),
        (ClassRule("auto"), victim, 10, r"predicts 4 classes but the prior has 10"),
        (ClassRule("victim", class_map=[0, 1, 2]), victim, 10, r"class_map.* 4 classes, got 3 entries"),
        (ClassRule("victim", class_map=[0, 1, 2, 10]), victim, 10, r"prior class in 0 \.\. 9"),
        (ClassRule("search", class_map=[0, 1, 2, 3]), victim, C_DIM, r"class_map.*does not use; unset it"),
        (ClassRule("search", search_top=5), victim, C_DIM, r"class_search_top` 5 exceeds the prior's 4 classes"),
        (ClassRule(2), victim, 0, r"unconditional \(c_dim = 0\).*class_rule"),
    ]
    for rule, v, c_dim, message in cases:
        with pytest.raises(ValueError, match=message):
            rule.check(v, c_dim)
    ClassRule().check(victim, 0)  # the default says nothing about an unconditional prior
    G = class_dominated_generator()
    with pytest.raises(ValueError, match="predicts 4 classes but the prior has 6"):  # choose checks too
        choose(ClassRule("victim"), victim, class_dominated_generator(c_dim=6), torch.zeros(1, 128, 8, 8))
    assert victim_classes(victim, torch.zeros(2, 128, 8, 8)).shape == (2,)
    with pytest.raises(ValueError, match="class-conditional"):
        G.mapping(torch.zeros(1, 8), None)  # the generator itself insists on a class
