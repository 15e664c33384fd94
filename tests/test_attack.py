"""Stage 3, the attacks, through the Python API: PFO's stages and l1 balls, per-sample independence, the frozen
victim and prior, what the attacker may read, failed targets, the defenses, and the errors for bad input.

Everything runs on CPU with a 16-px CIFAR-stem ResNet-18 split at ``layer1`` and a 16-px StyleGAN2 (three blocks:
b4, b8, b16, so at most two feature stages), a few Adam steps per stage and four initial latents per target.
"""

from __future__ import annotations

import copy
import math

import lightning as L
import pytest
import torch

from pfo.attacks import (
    PFO,
    AttackOutputs,
    Dropout,
    GaussianNoise,
    LaplaceNoise,
    Quantization,
    Targets,
    TopKPruning,
    accuracy_under_defense,
)
from pfo.attacks.defenses import DEFENSE_SEED_OFFSET, defense_generators
from pfo.attacks.targets import ShardedBatches, target_generators
from pfo.data import SyntheticImages
from pfo.metrics import psnr
from pfo.models import ResNet, save_victim
from pfo.models.stylegan2 import Generator

pytestmark = [
    pytest.mark.filterwarnings("ignore:LPIPS will be reported as missing"),
    pytest.mark.filterwarnings("ignore:You are trying to `self.log"),
    pytest.mark.filterwarnings("ignore:.*module\\(s\\) in eval mode"),
    pytest.mark.filterwarnings("ignore:.*returned `None`, this fit will run with no optimizer"),
    pytest.mark.filterwarnings("ignore:.*isinstance\\(treespec, LeafSpec\\)"),
]

RES = 16
STEPS = [6, 3, 3]  # stage 0 (W+), then the states entering b8 and b16


def tiny_victim(input_size: int = RES, split_point: str = "layer1") -> ResNet:
    torch.manual_seed(1)
    return ResNet(depth=18, num_classes=4, stem="cifar", input_size=input_size, split_point=split_point).eval()


def tiny_generator(resolution: int = RES, img_channels: int = 3) -> Generator:
    torch.manual_seed(2)
    return Generator(
        z_dim=16,
        w_dim=16,
        resolution=resolution,
        img_channels=img_channels,
        n_mlp=2,
        channel_base=128,
        channel_max=16,
    )


def make_attack(cls=PFO, **settings) -> PFO:
    settings = {"steps": STEPS, "n_init": 4, "init_chunk": 4, "progress": False, **settings}
    return cls(tiny_victim(), tiny_generator(), **settings)


_DATA = SyntheticImages(resolution=RES)


def images_of(indices: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(images [N, 3, 16, 16] in [0, 1], index [N], label [N]) of test-split targets."""
    items = [_DATA.dataset("test")[i] for i in indices]
    assert [it["index"] for it in items] == indices
    return (
        torch.stack([it["image"] for it in items]),
        torch.tensor(indices),
        torch.tensor([it["label"] for it in items]),
    )


def attack_images(attack: PFO, indices: list[int]):
    """Run the client and the attack on the given targets as one batch; returns (Reconstruction, features)."""
    images, index, _ = images_of(indices)
    h = attack.client_features(images, index)
    with torch.enable_grad():
        return attack.reconstruct(h, index), h


def batch_of(indices: list[int], valid: list[bool] | None = None, **replace) -> dict:
    images, index, labels = images_of(indices)
    batch = {"image": images, "index": index, "label": labels}
    batch["valid"] = torch.tensor(valid if valid is not None else [True] * len(indices))
    batch.update(replace)
    return batch


def quiet_trainer(root, **options) -> L.Trainer:
    """A one-epoch CPU trainer that prints nothing and saves nothing but what the attack writes under ``root``."""
    settings = dict(
        accelerator="cpu", max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, use_distributed_sampler=False, default_root_dir=root,
    )  # fmt: skip
    return L.Trainer(**{**settings, **options})


def run_steps(attack: PFO, batches: list[dict], folder) -> dict[int, dict]:
    """``training_step`` outside a Trainer on the given batches; the per-target records written, by index."""
    attack.outputs = AttackOutputs(folder)
    for i, batch in enumerate(batches):
        attack.training_step(batch, i)
    return {r["index"]: r for r in attack.outputs.results()}


# ----- PFO's stages ---------------------------------------------------------------------------------------------


def test_feature_loss_falls_across_stages_and_the_best_stage_is_kept():
    attack = make_attack()
    targets = [0, 5, 10]
    result, h = attack_images(attack, targets)

    assert len(result.stage_losses) == len(STEPS) == len(result.stage_images)
    losses = torch.stack(result.stage_losses)  # [S, N]
    assert torch.isfinite(losses).all()
    # Stage 0 improves on the chosen initial latent, and every feature stage improves on stage 0 by a margin.
    with torch.no_grad():
        start = attack.best_latents(h, torch.tensor(targets), 4, 4)
        initial = attack.evaluate(attack.generator.synthesis(start, noise_mode="const"), h)[1]
    assert (losses[0] < initial).all(), (initial, losses[0])
    assert (losses[-1] < 0.9 * losses[0]).all(), losses
    # The answer is, per target, the image of the stage with the lowest feature loss.
    assert torch.equal(result.best_stage, losses.argmin(0))
    for i in range(len(targets)):
        k = int(result.best_stage[i])
        assert torch.equal(result.images[i], result.stage_images[k][i])
        assert result.feature_loss[i] == losses[k, i]
    assert not result.failed.any()
    assert result.images.shape == (3, 3, RES, RES)
    assert result.images.min() >= 0 and result.images.max() <= 1


def test_a_worse_later_stage_is_not_the_answer():
    """A last stage that diverges (absurd learning rate, no radius) must lose to an earlier one."""
    attack = make_attack(lr=[0.05, 0.05, 50.0], feature_radius=None)
    result, _ = attack_images(attack, [0, 5, 10])
    losses = torch.stack(result.stage_losses)
    assert (losses[-1] > losses[:-1].min(0).values).any(), losses
    assert (result.best_stage < len(STEPS) - 1).any()
    for i in range(3):
        assert torch.equal(result.images[i], result.stage_images[int(result.best_stage[i])][i])


class ProjectionProbe(PFO):
    """Records, after every optimiser step of every feature stage, the l1 norm per sample of each variable's
    deviation from its value at the stage start (taken here, independently of PFO's own anchors), and how far float32
    rounding alone can move that norm: the projected variable is ``anchor + deviation`` rounded element by element,
    so measuring its deviation again can exceed the radius by up to half an ulp of each element (and the sum's own
    rounding), a few 1e-6 over thousands of elements. A missing projection exceeds it by a fraction of the radius."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.records: list[tuple[str, list[torch.Tensor]]] = []  # (stage name, [N] norms per variable) per step
        self.slack: list[list[torch.Tensor]] = []  # [N] rounding bound per variable, per step
        self.sizes: list[list[int]] = []  # elements per sample of each variable, per stage

    def optimize(self, variables, render, h_star, steps, lr, failed, constrain=None, adjust=None, name="stage"):
        if constrain is None:
            return super().optimize(variables, render, h_star, steps, lr, failed, name=name)
        starts = [v.detach().clone() for v in variables]
        self.sizes.append([v[0].numel() for v in variables])

        def checked() -> None:
            constrain()
            norms = [(v.detach() - s).flatten(1).abs().sum(1) for v, s in zip(variables, starts)]
            self.records.append((name, norms))
            eps = torch.finfo(torch.float32).eps
            self.slack.append([eps * (v.detach().abs() + s.abs()).flatten(1).sum(1) for v, s in zip(variables, starts)])

        return super().optimize(variables, render, h_star, steps, lr, failed, constrain=checked, name=name)


@pytest.mark.parametrize(
    ("mode", "feature", "image", "style"),
    [("per_element", 0.002, 0.004, 0.001), ("absolute", 0.5, 0.3, 0.2)],
)
def test_deviations_stay_inside_the_l1_ball_after_every_step(mode, feature, image, style):
    attack = make_attack(
        ProjectionProbe,
        steps=[2, 6, 6],
        lr=0.1,
        radius_mode=mode,
        feature_radius=feature,
        image_radius=image,
        style_radius=style,
    )
    attack_images(attack, [0, 5, 10])
    assert len(attack.records) == 6 + 6  # one check per step of each feature stage
    assert len(attack.sizes) == 2
    bound = [0, 0, 0]  # per variable (x, img, styles): how often a sample ended on the sphere
    for step, (name, norms) in enumerate(attack.records):
        sizes = attack.sizes[0 if step < 6 else 1]
        for v, (norm, setting, numel, slack) in enumerate(
            zip(norms, (feature, image, style), sizes, attack.slack[step])
        ):
            radius = setting * numel if mode == "per_element" else setting
            assert (norm <= radius * (1 + 1e-5) + slack).all(), (name, step, v, norm, radius, slack)
            bound[v] += int((norm > radius * (1 - 1e-3)).sum())
    assert all(bound), f"a radius never bound, so this test could not see its projection missing: {bound}"


def test_a_binding_radius_changes_the_result_and_a_loose_one_does_not():
    free, _ = attack_images(make_attack(feature_radius=None), [5])
    tight, _ = attack_images(make_attack(feature_radius=0.001), [5])
    loose, _ = attack_images(make_attack(feature_radius=1e9, radius_mode="absolute"), [5])
    # Stage 0 has no ball: identical whatever the radius; the feature stages differ when it binds.
    assert torch.equal(free.stage_images[0], tight.stage_images[0])
    assert not torch.allclose(free.stage_images[-1], tight.stage_images[-1], atol=1e-3)
    # A ball that never binds leaves the variables bitwise untouched.
    for a, b in zip(free.stage_images, loose.stage_images):
        assert torch.equal(a, b)


def test_a_collapsed_target_restarts_from_its_next_best_latent_and_its_neighbour_is_untouched(monkeypatch):
    """``restarts``: a target whose stage-0 image collapsed reruns stage 0 from its second-best latent; the
    other target keeps its result bitwise, and the restarted one gets bitwise the result of an attack that
    started from that latent (so holding settled targets still leaks nothing into it)."""
    import pfo.attacks.pfo as pfo_module

    targets = [3, 7]
    plain, _ = attack_images(make_attack(), targets)
    second = make_attack()
    top = second.top_latents
    monkeypatch.setattr(second, "top_latents", lambda h, i, n, c, keep=1, classes=None: top(h, i, n, c, keep=2)[:, 1:])
    from_second, _ = attack_images(second, targets)
    assert not torch.equal(plain.images[0], from_second.images[0])  # the two starts lead to different answers

    calls = []

    def first_attempt_of_target_3_collapsed(images, **_):
        calls.append(len(images))
        flags = torch.zeros(len(images), dtype=torch.bool)
        flags[0] = len(calls) == 1
        return flags

    monkeypatch.setattr(pfo_module, "is_collapsed", first_attempt_of_target_3_collapsed)
    guarded, _ = attack_images(make_attack(restarts=2), targets)
    assert len(calls) == 2  # the first restart settled target 3: no second restart
    assert torch.equal(guarded.images[0], from_second.images[0])
    assert torch.equal(guarded.images[1], plain.images[1])
    with pytest.raises(ValueError, match="restarts"):
        make_attack(restarts=4)  # only n_init = 4 candidates


# ----- per-sample independence ----------------------------------------------------------------------------------


def test_a_target_is_bitwise_the_same_whatever_its_neighbours_and_position():
    attack = make_attack()
    first, _ = attack_images(attack, [3, 7])
    second, _ = attack_images(attack, [14, 3])  # another neighbour, target 3 second
    assert torch.equal(first.images[0], second.images[1])
    for s1, s2 in zip(first.stage_images, second.stage_images):
        assert torch.equal(s1[0], s2[1])
    for s1, s2 in zip(first.stage_losses, second.stage_losses):
        assert torch.equal(s1[0], s2[1])
    # Different targets do get different answers (the comparison above is not vacuous).
    assert not torch.equal(first.images[0], first.images[1])


def test_a_target_is_nearly_the_same_across_batch_sizes():
    """Batch of 1 vs batch of 3 (client and attack both at that batch size).

    CPU kernels block their work by batch size, so float32 sums are added in another order: the client's features
    already differ by about 1e-6. Adam then amplifies such last-bit differences along directions the victim
    barely sees (its update divides by the gradient's running magnitude, so a near-zero gradient component still
    moves by about the learning rate, in a direction set by rounding). Measured on this target after 12 steps: the
    feature loss agrees to 0.1 %, the images to 49 dB PSNR (mean absolute difference 0.002, largest 0.016; 45 dB
    after 16 steps), while two different targets are 12-18 dB apart. Stated tolerance: the two
    reconstructions of one target at least 35 dB PSNR against each other and their feature losses within 1 %; a
    batch-dependent bug (a loss averaged over the batch, a projection or selection across samples, a seed by
    position) breaks either by far."""
    attack = make_attack()
    alone, _ = attack_images(attack, [6])
    batched, _ = attack_images(attack, [2, 6, 13])
    assert psnr(alone.images, batched.images[1:2]) > 35
    assert (alone.images[0] - batched.images[1]).abs().mean() < 0.01
    torch.testing.assert_close(alone.feature_loss[0], batched.feature_loss[1], rtol=0.01, atol=0)
    assert psnr(batched.images[0:1], batched.images[1:2]) < 25  # two targets: far apart


def test_sharded_batches_pad_with_ghosts_and_never_repeat_a_target():
    shards = [list(ShardedBatches(5, 2, rank, 2)) for rank in range(2)]
    assert shards[0] == [[(0, False), (2, False)], [(4, False), (4, True)]]
    assert shards[1] == [[(1, False), (3, False)]]
    real = [p for shard in shards for batch in shard for p, ghost in batch if not ghost]
    assert sorted(real) == list(range(5))
    assert all(len(b) == 2 for shard in shards for b in shard)
    assert list(ShardedBatches(5, 2, 0, 2, pad=False))[-1] == [(4, False)]
    assert len(ShardedBatches(5, 2, 0, 1)) == 3


def test_ghost_padding_gives_a_partial_batch_the_result_of_a_full_one(tmp_path):
    targets = Targets(data=_DATA, split="test", count=3, batch_size=2)
    assert targets.target_indices == [0, 5, 10]
    batches = list(targets.train_dataloader())
    assert [len(b["index"]) for b in batches] == [2, 2]
    assert batches[1]["valid"].tolist() == [True, False]
    assert batches[1]["index"].tolist() == [10, 10]

    records = run_steps(make_attack(), batches, tmp_path / "padded")
    assert sorted(records) == [0, 5, 10]  # ghosts are never written
    full = run_steps(make_attack(), [batch_of([3, 10])], tmp_path / "full")
    assert torch.equal(records[10]["reconstruction"], full[10]["reconstruction"])
    assert torch.equal(records[10]["stage_losses"], full[10]["stage_losses"])


# ----- the frozen victim and prior ------------------------------------------------------------------------------


class FrozenProbe(PFO):
    """Records, at every loss evaluation inside training_step, whether any victim or generator module is in
    training mode or has a trainable parameter."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.checks: list[tuple[bool, bool, bool, bool]] = []
        self.in_step = False

    def training_step(self, batch, batch_idx):
        assert self.training  # Lightning did put the system in training mode
        self.in_step = True
        try:
            return super().training_step(batch, batch_idx)
        finally:
            self.in_step = False

    def evaluate(self, images, h_star):
        if self.in_step:
            self.checks.append(
                (
                    any(m.training for m in self.victim.modules()),
                    any(m.training for m in self.generator.modules()),
                    any(p.requires_grad for p in self.victim.parameters()),
                    any(p.requires_grad for p in self.generator.parameters()),
                )
            )
        return super().evaluate(images, h_star)


def test_victim_and_generator_stay_frozen_during_an_attack_run(tmp_path):
    attack = make_attack(FrozenProbe)
    attack.train()  # what Lightning does at the start of fit
    assert attack.training
    assert not any(m.training for m in attack.victim.modules())
    assert not any(m.training for m in attack.generator.modules())
    before = copy.deepcopy({"victim": attack.victim.state_dict(), "generator": attack.generator.state_dict()})

    quiet_trainer(tmp_path).fit(attack, datamodule=Targets(data=_DATA, split="test", count=3, batch_size=2))

    assert len(attack.checks) > sum(STEPS)  # two batches of every step, plus the initialisation
    assert not any(any(check) for check in attack.checks), "a frozen network was trainable during training_step"
    after = {"victim": attack.victim.state_dict(), "generator": attack.generator.state_dict()}
    for net in before:
        assert before[net].keys() == after[net].keys()
        for name, value in before[net].items():
            assert torch.equal(value, after[net][name]), f"{net}.{name} changed during the attack"
    assert len(AttackOutputs(tmp_path).finished()) == 3


# ----- what the attacker reads ----------------------------------------------------------------------------------


def random_decoder(folder, victim) -> str:
    """A decoder file for the inverse network at ``victim``'s split point (random weights: enough to run it)."""
    from pfo.attacks.fingerprint import module_digest
    from pfo.attacks.inverse_network import save_decoder
    from pfo.models.decoder import FeatureDecoder

    torch.manual_seed(3)
    with torch.no_grad():
        probe = victim.forward_head(torch.zeros(1, 3, RES, RES))
    decoder = FeatureDecoder.for_features(probe, RES, width=8).eval()
    path = save_decoder(
        decoder,
        folder / "decoder.pt",
        split_point=victim.split_point,
        defense="none",
        victim_sha256=module_digest(victim),
    )
    return str(path)


def any_attack(name: str, folder):
    """Each attack at the tiny size, with a few steps."""
    from pfo.attacks import GLASS, LM, RMLE, InverseNetwork

    if name == "pfo":
        return make_attack()
    if name == "glass":
        return GLASS(
            tiny_victim(),
            tiny_generator(),
            n_init=4,
            init_chunk=4,
            candidates=2,
            short_steps=2,
            steps=4,
            progress=False,
        )
    if name == "rmle":
        return RMLE(tiny_victim(), steps=4, progress=False)
    if name == "lm":
        return LM(tiny_victim(), steps=4, width=8, noise_channels=4, progress=False)
    return InverseNetwork(tiny_victim(), decoder=random_decoder(folder, tiny_victim()))


@pytest.mark.parametrize("name", ["pfo", "glass", "rmle", "lm", "in"])
def test_the_attack_reads_a_targets_image_only_to_score_it(tmp_path, name):
    """Two attacks built alike: one gets the real images, the other the same features with every image replaced by
    NaN (a fresh object, so nothing of the first run, such as the originals kept for the figure, is shared). If an
    image reached the reconstruction, NaN would spread into it."""
    targets = [1, 6]
    attack = any_attack(name, tmp_path)
    received = []
    reconstruct = attack.reconstruct

    def spy(h_star, index):
        received.append((h_star.clone(), index.clone()))
        return reconstruct(h_star, index)

    attack.reconstruct = spy
    real = batch_of(targets)
    with_images = run_steps(attack, [real], tmp_path / "images")
    h = attack.victim.forward_head(real["image"])
    assert torch.equal(received[0][0], h) and received[0][1].tolist() == targets

    poisoned = batch_of(targets, image=torch.full_like(real["image"], math.nan), features=h)
    without = run_steps(any_attack(name, tmp_path), [poisoned], tmp_path / "poisoned")
    for i in targets:
        assert torch.equal(with_images[i]["reconstruction"], without[i]["reconstruction"])
        assert without[i]["status"] == "ok" and torch.isfinite(without[i]["reconstruction"]).all()
        assert math.isfinite(with_images[i]["metrics"]["psnr"])
        assert math.isnan(without[i]["metrics"]["psnr"])  # the score alone read the (poisoned) image
        assert with_images[i]["metrics"]["feature_distance"] == without[i]["metrics"]["feature_distance"]


def test_a_target_with_nan_features_fails_alone(tmp_path):
    targets = [2, 7, 12]
    attack = make_attack()
    h = attack.victim.forward_head(images_of(targets)[0])
    broken = h.clone()
    broken[1] = math.nan
    records = run_steps(attack, [batch_of(targets, features=broken)], tmp_path / "nan")
    clean = run_steps(attack, [batch_of(targets, features=h)], tmp_path / "clean")
    assert records[7]["status"].startswith("failed")
    assert records[2]["status"] == records[12]["status"] == "ok"
    for i in (2, 12):
        assert torch.equal(records[i]["reconstruction"], clean[i]["reconstruction"])
        assert torch.isfinite(records[i]["stage_losses"]).all()
    assert clean[7]["status"] == "ok"


# ----- defenses -------------------------------------------------------------------------------------------------


def noise_of(defense, indices: list[int], shape=(4000,), seed: int = 0) -> torch.Tensor:
    """What ``defense`` adds to zero features of targets ``indices``, drawn from the stream an attack run with
    ``seed`` draws the client's defense from."""
    h = torch.zeros(len(indices), *shape)
    return defense(h, defense_generators(seed, torch.tensor(indices)))


def test_gaussian_and_laplace_noise_have_the_specified_statistics():
    n = 10 * 4000
    gauss = noise_of(GaussianNoise(scale=0.5), list(range(10)))
    assert abs(float(gauss.mean())) < 5 * 0.5 / math.sqrt(n)
    assert float(gauss.std()) == pytest.approx(0.5, rel=0.02)
    laplace = noise_of(LaplaceNoise(scale=0.5), list(range(10)))
    assert abs(float(laplace.mean())) < 5 * 0.5 * math.sqrt(2) / math.sqrt(n)
    assert float(laplace.std()) == pytest.approx(0.5 * math.sqrt(2), rel=0.03)
    assert float(laplace.abs().mean()) == pytest.approx(0.5, rel=0.02)  # E|X| = b: Laplace, not Gaussian
    # Noise adds to the features.
    h = torch.randn(2, 100)
    g = defense_generators(0, torch.tensor([3, 4]))
    torch.testing.assert_close(GaussianNoise(0.5)(h, g) - h, noise_of(GaussianNoise(0.5), [3, 4], shape=(100,)))


def test_dropout_zeroes_the_given_fraction_without_rescaling():
    h = torch.ones(10, 4000)
    out = Dropout(rate=0.3)(h, defense_generators(0, torch.arange(10)))
    assert float((out == 0).float().mean()) == pytest.approx(0.3, abs=0.01)
    assert set(out.unique().tolist()) == {0.0, 1.0}


@pytest.mark.parametrize("bits", [1, 3])
def test_quantization_leaves_at_most_two_to_the_bits_levels_per_sample(bits):
    torch.manual_seed(0)
    h = torch.randn(4, 8, 5, 5) * torch.tensor([1.0, 3.0, 0.1, 10.0]).view(4, 1, 1, 1)
    q = Quantization(bits=bits)(h)
    assert q.shape == h.shape
    for row, orig in zip(q.flatten(1), h.flatten(1)):
        levels = row.unique().numel()
        assert 2 <= levels <= 2**bits
        step = (orig.max() - orig.min()) / (2**bits - 1)
        assert (row - orig).abs().max() <= step / 2 * (1 + 1e-5)


def test_topk_pruning_keeps_the_largest_fraction():
    torch.manual_seed(0)
    h = torch.randn(3, 10, 10, 10)
    out = TopKPruning(keep=0.25)(h).flatten(1)
    flat = h.flatten(1)
    for row, orig in zip(out, flat):
        kept = row != 0
        assert int(kept.sum()) == 250
        assert torch.equal(row[kept], orig[kept])
        assert orig[kept].abs().min() >= orig[~kept].abs().max()


@pytest.mark.parametrize(
    "defense",
    [GaussianNoise(0.2), LaplaceNoise(0.2), Dropout(0.5)],
    ids=["gaussian", "laplace", "dropout"],
)
def test_random_defenses_are_seeded_per_target(defense):
    h = torch.randn(1, 300).expand(3, 300)
    first = defense(h, defense_generators(0, torch.tensor([5, 8, 9])))
    second = defense(h[:2], defense_generators(0, torch.tensor([9, 5])))
    assert torch.equal(first[0], second[1]) and torch.equal(first[2], second[0])
    assert not torch.equal(first[0], first[1])  # another target, other noise
    assert not torch.equal(first[0], defense(h[:1], defense_generators(1, torch.tensor([5])))[0])  # another run seed
    # The defense's stream is the target's stream offset by a constant, never the attack's own draws (initial
    # latents, pixels, networks) for the same target.
    offset = defense(h[:1], target_generators(DEFENSE_SEED_OFFSET, torch.tensor([5])))
    assert torch.equal(first[0], offset[0])
    assert not torch.equal(first[0], defense(h[:1], target_generators(0, torch.tensor([5])))[0])


def test_the_attacker_sees_only_defended_features(tmp_path):
    targets = [0, 9]
    defended = make_attack(defense=GaussianNoise(scale=0.3))
    received = []
    reconstruct = defended.reconstruct

    def spy(h_star, index):
        received.append(h_star.clone())
        return reconstruct(h_star, index)

    defended.reconstruct = spy
    batch = batch_of(targets)
    records = run_steps(defended, [batch], tmp_path / "defended")
    clean = defended.victim.forward_head(batch["image"])
    assert not torch.allclose(received[0], clean, atol=0.05)
    assert float((received[0] - clean).std()) == pytest.approx(0.3, rel=0.1)
    # The noise is drawn from the defense's per-target stream of the run seed: exactly this draw, nothing else.
    expected = GaussianNoise(scale=0.3)(clean, defense_generators(defended.seed, batch["index"]))
    assert torch.equal(received[0], expected)
    # Seeded per target: the same target at another position in another batch of the same size gets the same noise.
    again = defended.client_features(*images_of([9, 4])[:2])
    assert torch.equal(again[0], received[0][1])

    plain = run_steps(make_attack(), [batch], tmp_path / "plain")
    for i in targets:
        assert not torch.equal(records[i]["reconstruction"], plain[i]["reconstruction"])
    # The defended run is scored against what the client really sent (the defended features), not the clean ones.
    for row, i in enumerate(targets):
        recon = records[i]["reconstruction"][None]
        h_recon = defended.victim.forward_head(recon)
        sent = (h_recon - received[0][row : row + 1]).pow(2).mean().item()
        clean_distance = (h_recon - clean[row : row + 1]).pow(2).mean().item()
        assert records[i]["metrics"]["feature_distance"] == pytest.approx(sent, rel=1e-5)
        assert abs(sent - clean_distance) > 0.1 * sent  # the two differ enough for the check above to tell


def test_accuracy_under_defense_scores_the_features_the_attacker_sees():
    victim = tiny_victim()
    batches = [batch_of([0, 3, 5]), batch_of([7, 9])]
    labels = torch.cat([b["label"] for b in batches])
    clean = torch.cat([victim(b["image"]).argmax(1) for b in batches])
    assert accuracy_under_defense(victim, None, batches) == pytest.approx(float((clean == labels).float().mean()))
    # Under noise: the predictions from exactly what an attack run with the same seed receives.
    attack = make_attack(defense=GaussianNoise(5.0), seed=7)
    sent = torch.cat([attack.victim.tail(attack.client_features(b["image"], b["index"])).argmax(1) for b in batches])
    assert not torch.equal(sent, clean)  # the noise changes the server's predictions, so the next check can fail
    expected = float((sent == labels).float().mean())
    assert accuracy_under_defense(victim, GaussianNoise(5.0), batches, seed=7) == pytest.approx(expected)
    with pytest.raises(ValueError, match="no images"):
        accuracy_under_defense(victim, None, [])


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: GaussianNoise(-1), "scale"),
        (lambda: LaplaceNoise(-0.1), "scale"),
        (lambda: Dropout(1.0), "rate"),
        (lambda: Quantization(0), "bits"),
        (lambda: TopKPruning(0), "keep"),
    ],
)
def test_defenses_check_their_settings(build, message):
    with pytest.raises(ValueError, match=message):
        build()


# ----- bad input ------------------------------------------------------------------------------------------------


def test_a_generator_below_the_victims_resolution_needs_allow_upsampling():
    with pytest.raises(ValueError, match="allow_upsampling"):
        PFO(tiny_victim(), tiny_generator(resolution=8), steps=[2], n_init=2)
    attack = PFO(tiny_victim(), tiny_generator(resolution=8), steps=[2, 2], n_init=2, allow_upsampling=True)
    result, _ = attack_images(attack, [0])
    assert result.images.shape == (1, 3, RES, RES)


def test_a_non_rgb_generator_is_refused():
    with pytest.raises(ValueError, match="RGB"):
        PFO(tiny_victim(), tiny_generator(img_channels=1), steps=[2], n_init=2)


def test_a_split_point_the_victim_file_lacks_is_refused(tmp_path):
    path = save_victim(tiny_victim(), tmp_path / "victim.pt")
    with pytest.raises(ValueError, match="valid split points: .*layer1"):
        PFO(str(path), tiny_generator(), split_point="layer9", steps=[2], n_init=2)
    assert PFO(str(path), tiny_generator(), split_point="layer2", steps=[2], n_init=2).victim.split_point == "layer2"


def test_more_stages_than_the_generator_has_blocks_is_refused():
    with pytest.raises(ValueError, match="at most 2.*shorten `steps`"):
        make_attack(steps=[2, 2, 2, 2])
    with pytest.raises(ValueError, match="steps"):
        make_attack(steps=[])
    with pytest.raises(ValueError, match="n_init"):
        make_attack(n_init=0)


def test_an_empty_target_list_is_refused():
    with pytest.raises(ValueError, match="`indices` is empty"):
        Targets(data=_DATA, indices=[])
    with pytest.raises(ValueError, match="not in split"):
        Targets(data=_DATA, indices=[0, 999]).setup()


def test_lpips_below_alexnets_minimum_is_reported_missing(tmp_path):
    from conftest import SHARED

    weights = SHARED / "weights" / "alexnet_features.pth"
    if not weights.is_file():
        pytest.skip(f"no AlexNet weights at {weights}: the shared folder is absent")
    attack = make_attack(steps=[1], n_init=1, lpips_weights=str(weights))
    with pytest.warns(UserWarning, match="LPIPS is reported as NaN"):
        records = run_steps(attack, [batch_of([0])], tmp_path)
    assert math.isnan(records[0]["metrics"]["lpips"])
