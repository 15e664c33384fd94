"""PFOExtended (issue 16): the paper's PFO with a final pixel stage, radii by split point (calibrated on public
images only) and a learned start (an encoder trained on public data). Each extension's invariant, the paper-default
PFO bitwise unchanged, and the step budget.

Tiny models on CPU, as in test_attack: the 16-px CIFAR-stem ResNet-18 split at ``layer1`` and the 16-px StyleGAN2
(blocks b4, b8, b16: at most two feature stages), a few Adam steps per stage.
"""

from __future__ import annotations

from pathlib import Path
from tempfile import TemporaryDirectory

import lightning as L
import pytest
import torch
import yaml
from test_attack import ProjectionProbe, attack_images, images_of, tiny_generator, tiny_victim
from test_reconstruction import _one_thread, prior  # noqa: F401 (_one_thread: an autouse fixture)

from pfo.artifacts import ArtifactError
from pfo.attacks import PFO, GaussianNoise, LatentEncoderTrainer, PFOExtended, calibrate_radius, rule_yaml
from pfo.attacks.encoder_trainer import load_encoder
from pfo.attacks.radius_calibration import RadiusCalibration
from pfo.data import SyntheticImages
from pfo.metrics import psnr
from pfo.threat_model import ThreatModelError

pytestmark = [
    pytest.mark.filterwarnings("ignore:LPIPS will be reported as missing"),
    pytest.mark.filterwarnings("ignore:.*module\\(s\\) in eval mode"),
    pytest.mark.filterwarnings("ignore:.*isinstance\\(treespec, LeafSpec\\)"),
    pytest.mark.filterwarnings("ignore:.*does not have many workers"),
    pytest.mark.filterwarnings("ignore:You defined a `validation_step` but have no `val_dataloader`"),
    pytest.mark.filterwarnings("ignore:Total length of `list` across ranks is zero"),
]

RES = 16
STEPS = [6, 3, 3]
SETTINGS = {"n_init": 4, "init_chunk": 4, "progress": False}


def extended(cls=PFOExtended, victim=None, generator=None, **options) -> PFOExtended:
    options = {"steps": STEPS, **SETTINGS, **options}
    return cls(victim or tiny_victim(), generator or tiny_generator(), **options)


def assert_same(a, b) -> None:
    """Two reconstructions of the same targets bitwise equal, stage by stage."""
    assert torch.equal(a.images, b.images) and torch.equal(a.feature_loss, b.feature_loss)
    assert torch.equal(a.best_stage, b.best_stage) and torch.equal(a.failed, b.failed)
    assert len(a.stage_images) == len(b.stage_images)
    for x, y in zip(a.stage_images + a.stage_losses, b.stage_images + b.stage_losses):
        assert torch.equal(x, y)


# ----- the defaults are the paper's PFO ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "options",
    [
        {},
        # a rule for other split points, and PFO's own options, pass through untouched
        {"radius_rule": {"layer3": 0.01, "layer4": {"pixel_radius": 0.1}}, "restarts": 1, "lr": [0.05, 0.1, 0.02]},
    ],
    ids=["defaults", "rule_elsewhere"],
)
def test_with_its_defaults_pfo_extended_is_the_papers_pfo_bitwise(options):
    paper = {k: v for k, v in options.items() if k != "radius_rule"}
    ours, _ = attack_images(extended(**options), [3, 7])
    theirs, _ = attack_images(PFO(tiny_victim(), tiny_generator(), steps=STEPS, **SETTINGS, **paper), [3, 7])
    assert_same(ours, theirs)
    assert len(ours.stage_images) == len(STEPS)


# ----- 1. the pixel stage ------------------------------------------------------------------------------------------


class Probe(ProjectionProbe, PFOExtended):
    """test_attack's ProjectionProbe (every constrained step's l1 deviation from the stage start, per sample) on
    PFOExtended; also records the radius every projection used and the steps every stage ran."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.radii: list[list[tuple[int, float | None]]] = []  # per projection: (elements per sample, radius)
        self.stage_steps: dict[str, int] = {}  # steps run, counted by the renders inside each stage

    def constrain_all(self, anchors) -> None:
        self.radii.append([(var[0].numel(), radius) for var, _, radius in anchors])
        super().constrain_all(anchors)

    def optimize(self, variables, render, h_star, steps, lr, failed, constrain=None, adjust=None, name="stage"):
        def counted():
            self.stage_steps[name] = self.stage_steps.get(name, 0) + 1
            return render()

        return super().optimize(variables, counted, h_star, steps, lr, failed, constrain, adjust, name)


def test_the_pixel_stage_stays_in_its_ball_and_never_worsens_the_kept_loss():
    radius = 0.004  # per element: binds within a few steps at lr 0.05
    attack = extended(Probe, steps=[*STEPS, 8], lr=0.05, pixel_stage=True, pixel_radius=radius)
    result, h = attack_images(attack, [3, 7, 12])
    paper, _ = attack_images(PFO(tiny_victim(), tiny_generator(), steps=STEPS, **SETTINGS), [3, 7, 12])

    # The block stages are the paper's, bitwise; the pixel stage is one more stage.
    assert len(result.stage_images) == len(STEPS) + 1
    for k in range(len(STEPS)):
        assert torch.equal(result.stage_images[k], paper.stage_images[k])
        assert torch.equal(result.stage_losses[k], paper.stage_losses[k])
    # Inside the l1 ball around each target's best generator image, after every step, per sample; in [0, 1].
    pixel_norms = [norms[0] for name, norms in attack.records if name == "pixels"]
    assert len(pixel_norms) == 8
    bound = radius * 3 * RES * RES
    for norm in pixel_norms:
        assert (norm <= bound * (1 + 1e-5) + 1e-6).all(), (norm, bound)
    assert (pixel_norms[-1] > bound * (1 - 1e-3)).any(), "the ball never bound: this test could not see it missing"
    final = result.stage_images[-1]
    assert final.min() >= 0 and final.max() <= 1
    deviation = (final - paper.images).flatten(1).abs().sum(1)
    assert (deviation <= bound * (1 + 1e-5) + 1e-6).all()
    # The kept answer is the lowest-loss stage, so never worse than the paper's; here the pixels helped.
    assert (result.feature_loss <= paper.feature_loss).all()
    assert (result.best_stage == len(STEPS)).any() and (result.feature_loss < paper.feature_loss).any()
    losses = torch.stack(result.stage_losses)
    assert torch.equal(result.best_stage, losses.argmin(0))
    # The recorded pixel-stage loss is the loss of the recorded image.
    with torch.no_grad():
        assert torch.allclose(attack.evaluate(final * 2 - 1, h)[1], result.stage_losses[-1], rtol=1e-5)


def test_a_pixel_stage_that_diverges_is_not_the_answer():
    attack = extended(steps=[*STEPS, 6], lr=[0.05, 0.05, 0.05, 50.0], pixel_stage=True, pixel_radius=None)
    result, _ = attack_images(attack, [3, 7])
    paper, _ = attack_images(PFO(tiny_victim(), tiny_generator(), steps=STEPS, **SETTINGS), [3, 7])
    assert (result.stage_losses[-1] > paper.feature_loss).all()
    assert torch.equal(result.images, paper.images) and torch.equal(result.feature_loss, paper.feature_loss)


# ----- 2. radii by split point -------------------------------------------------------------------------------------

RULE = {
    "layer1": {"feature_radius": [0.002, 0.004], "image_radius": [0.003, 0.005], "pixel_radius": 0.01},
    "layer2": 0.001,
}


@pytest.mark.parametrize("split_point", ["layer1", "layer2", "layer3"])
def test_a_radius_rule_sets_each_stages_radii_at_its_split_point(split_point):
    attack = extended(
        Probe, victim=tiny_victim(split_point=split_point), steps=[2, 2, 2, 2], pixel_stage=True, radius_rule=RULE
    )
    attack_images(attack, [3])
    per_stage = {  # (feature x, skip image img) per feature stage, then the pixel stage
        "layer1": [(0.002, 0.003), (0.004, 0.005), 0.01],
        "layer2": [(0.001, 0.001), (0.001, 0.001), 0.05],  # a bare value is the feature radius; img follows it
        "layer3": [(0.1, 0.1), (0.1, 0.1), 0.05],  # no rule here: the options (feature 0.1, pixel 0.05)
    }[split_point]
    assert len(attack.radii) == 2 + 2 + 2  # one projection per step of each constrained stage
    for step, used in enumerate(attack.radii):
        stage = step // 2
        if stage < 2:
            (nx, rx), (nimg, rimg), (_, rstyles) = used
            assert rstyles is None  # a rule sets no style radius: the remaining styles stay free
            assert rx == pytest.approx(per_stage[stage][0] * nx) and rimg == pytest.approx(per_stage[stage][1] * nimg)
        else:
            ((n, r),) = used
            assert n == 3 * RES * RES and r == pytest.approx(per_stage[2] * n)


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        ({"layer_1": 0.1}, "names split point 'layer_1', which this victim does not have; its split points are"),
        ({"layer1": [0.1]}, "`radius_rule.layer1.feature_radius` lists 1 values but there are 2 feature stages"),
        ({"layer1": {"style_radius": 0.1}}, "`radius_rule.layer1` names style_radius; a rule sets only"),
        ({"layer1": {"pixel_radius": -1}}, "`radius_rule.layer1.pixel_radius` -1 must be a finite number >= 0"),
        ([0.1, 0.2], "`radius_rule` [0.1, 0.2] must map split points to radii"),
    ],
)
def test_a_bad_radius_rule_is_refused_naming_the_entry(rule, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        extended(radius_rule=rule)


# ----- calibration on public images only ---------------------------------------------------------------------------


class PublicOnly(SyntheticImages):
    """Synthetic images whose every split but ``public`` raises when read."""

    def dataset(self, split: str):
        if split != "public":
            raise AssertionError(f"the {split!r} split was read")
        return super().dataset(split)


def calibration_attack(value):
    return extended(steps=[3, 2, 2], feature_radius=value, n_init=2, init_chunk=2)


@pytest.mark.parametrize("split", ["test", "private"])
def test_calibration_refuses_any_split_but_public_before_reading_anything(split):
    built = []
    with pytest.raises(ThreatModelError, match="public data only.*allow_nonpublic_training"):
        calibrate_radius(lambda v: built.append(v), PublicOnly(resolution=RES), [0.1], split_point="layer1",
                         split=split)  # fmt: skip
    assert built == []


def test_calibration_keeps_the_grid_value_with_the_best_public_psnr():
    data = PublicOnly(resolution=RES, sizes={"public": 12})
    grid = [0.0, 0.03, None]
    result = calibrate_radius(calibration_attack, data, grid, split_point="layer1", count=3, batch_size=2)

    assert result.indices == [0, 4, 8]  # spread over the public split
    assert [row["value"] for row in result.rows] == grid
    # Each row's PSNR is the mean PSNR of that attack on those public images, computed here independently.
    public = data.dataset("public")
    images = torch.stack([public[i]["image"] for i in result.indices])
    means = []
    for value in grid:
        attack = calibration_attack(value)
        parts = []
        for first in (0, 2):
            index = torch.tensor(result.indices[first : first + 2])
            h = attack.client_features(images[first : first + 2], index)
            with torch.enable_grad():
                parts.append(psnr(attack.reconstruct(h, index).images, images[first : first + 2]))
        means.append(float(torch.cat(parts).double().mean()))
    assert [row["psnr_mean"] for row in result.rows] == pytest.approx(means, abs=1e-4)
    assert max(means) - min(means) > 0.1, f"the grid values hardly differ, so the choice shows nothing: {means}"
    assert result.best == grid[max(range(len(grid)), key=means.__getitem__)]
    assert "| chosen |" in result.table()
    # The snippet is the rule PFOExtended reads.
    snippet = yaml.safe_load(rule_yaml([result]))
    assert snippet == {"radius_rule": {"layer1": {"feature_radius": result.best}}}
    assert extended(**snippet).split_rule == {"feature_radius": result.best}


def calibration_of(option: str, psnrs: dict) -> RadiusCalibration:
    """A calibration's rows and choice as ``calibrate_radius`` makes them, from given mean PSNRs."""
    result = RadiusCalibration(split_point="layer4", option=option, indices=[0, 1])
    for value, mean in psnrs.items():
        value = None if value == "null" else yaml.safe_load(value) if isinstance(value, str) else value
        result.rows.append(
            dict(value=value, psnr_mean=mean, psnr_median=mean, psnr_std=0.0, feature_loss=0.0, seconds=1.0)
        )
    result.best = max(result.rows, key=lambda r: r["psnr_mean"])["value"]
    return result


def test_a_radius_chosen_at_the_grids_edge_says_where_to_look_next():
    # layer4's calibration of 2026-11-30: the smallest value won, and the optimum below it was unknown
    low = calibration_of("feature_radius", {0.01: 13.23, 0.03: 12.81, 0.1: 10.88, 0.3: 9.93})
    assert "below 0.01" in low.edge_hint and low.table().endswith(low.edge_hint)
    high = calibration_of("feature_radius", {0.01: 31.7, 0.1: 39.6, 0.3: 40.0})
    assert "above 0.3" in high.edge_hint
    for inside in (
        calibration_of("feature_radius", {0.01: 18.0, 0.03: 18.8, 0.1: 18.4}),  # a peak inside the grid
        calibration_of("pixel_radius", {0.02: 30.0, "null": 31.0}),  # no ball won: nothing beyond it
        calibration_of("pixel_radius", {0.02: 30.0}),  # one value: no grid to extend
        calibration_of("steps", {"[200,100,100,50,50]": 13.0, "[200,100,100,100,0]": 13.2}),  # schedules
    ):
        assert inside.edge_hint is None and "chosen at the grid" not in inside.table()


def test_the_schedule_is_calibrated_like_a_radius_within_one_budget():
    """``option="steps"``: where the budget goes is chosen on public images, every schedule spending the same
    steps; the choice is a rule entry that PFOExtended applies at that split point."""
    data = PublicOnly(resolution=RES, sizes={"public": 12})
    grid = [[6, 3, 3], [6, 6, 0], [12, 0, 0]]  # free two blocks, one, none: 12 steps each

    def attack_with(steps):
        return extended(steps=steps, n_init=2, init_chunk=2)

    result = calibrate_radius(attack_with, data, grid, split_point="layer1", option="steps", count=2, batch_size=2)

    assert [row["value"] for row in result.rows] == grid
    public = data.dataset("public")
    images = torch.stack([public[i]["image"] for i in result.indices])
    index = torch.tensor(result.indices)
    means = []
    for steps in grid:
        attack = attack_with(steps)
        with torch.enable_grad():
            means.append(float(psnr(attack.reconstruct(attack.client_features(images, index), index).images,
                                    images).double().mean()))  # fmt: skip
    assert [row["psnr_mean"] for row in result.rows] == pytest.approx(means, abs=1e-4)
    assert max(means) - min(means) > 0.1, f"the schedules hardly differ, so the choice shows nothing: {means}"
    assert result.best == grid[max(range(len(grid)), key=means.__getitem__)]
    snippet = yaml.safe_load(rule_yaml([result], earlier={"layer1": {"feature_radius": 0.05}, "layer2": 0.2}))
    assert snippet == {"radius_rule": {"layer1": {"feature_radius": 0.05, "steps": result.best},
                                          "layer2": {"feature_radius": 0.2}}}  # fmt: skip

    with pytest.raises(ValueError, match=r"spend \[12, 13\] steps.*one budget"):
        calibrate_radius(attack_with, data, [[6, 6], [6, 3, 4]], split_point="layer1", option="steps")
    with pytest.raises(ValueError, match="must be one of"):
        calibrate_radius(attack_with, data, [0.1], split_point="layer1", option="n_init")


@pytest.mark.parametrize("pixel_stage", [False, True])
def test_a_rules_schedule_moves_the_steps_at_its_split_point_only(pixel_stage):
    """At the rule's split point the attack runs bitwise as if configured with the rule's ``steps``; at another
    split point the configured ``steps`` hold."""
    configured, moved = ([6, 3, 3, 2], [2, 0, 4, 8]) if pixel_stage else ([6, 3, 3], [2, 0, 10])
    options = {"pixel_stage": pixel_stage, "pixel_radius": 0.05, "lr": 0.05}
    targets = [0, 1]
    ruled = extended(steps=configured, radius_rule={"layer1": {"steps": moved}}, **options)
    assert list(ruled.hparams.steps) == configured  # the config as written is what the run folder records
    elsewhere = extended(steps=configured, radius_rule={"layer2": {"steps": moved}}, **options)
    answers = {}
    for name, attack, same_as in (("ruled", ruled, moved), ("elsewhere", elsewhere, configured)):
        answers[name] = attack_images(attack, targets)[0]
        assert_same(answers[name], attack_images(extended(steps=same_as, **options), targets)[0])
    assert not torch.equal(answers["ruled"].images, answers["elsewhere"].images)


@pytest.mark.parametrize(
    ("schedule", "message"),
    [
        ([6, 3], "move steps between the 3 configured stages.*keep their 12 steps"),
        ([6, 3, 4], "keep their 12 steps.*13 steps"),
        ([6, -1, 7], "non-negative step counts"),
        ("6,3,3", "non-negative step counts"),
    ],
)
def test_a_rules_schedule_never_changes_the_stages_or_the_budget(schedule, message):
    with pytest.raises(ValueError, match=message):
        extended(steps=[6, 3, 3], radius_rule={"layer1": {"steps": schedule}})


# ----- 3. the learned start ----------------------------------------------------------------------------------------


def train_encoder(root, data, generator=None, steps: int = 3, **options) -> LatentEncoderTrainer:
    system = LatentEncoderTrainer(
        tiny_victim(), generator or tiny_generator(), width=16,
        optimizer=lambda p: torch.optim.Adam(p, lr=3e-3), **options,
    )  # fmt: skip
    L.Trainer(
        max_steps=steps, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=root, num_sanity_val_steps=0,
    ).fit(system, datamodule=data)  # fmt: skip
    return system


@pytest.fixture(scope="module")
def encoder_file(tmp_path_factory) -> str:
    """An encoder for the tiny victim at layer1 and the tiny generator, trained 3 steps on public data only."""
    root = tmp_path_factory.mktemp("encoder")
    data = PublicOnly(resolution=RES, train_split="public", val_split=None, batch_size=4, sizes={"public": 8})
    train_encoder(root, data)
    return str(root / "encoder.pt")


def test_the_encoder_learns_from_public_data_only_and_records_what_it_fits(encoder_file):
    encoder, meta = load_encoder(encoder_file)  # read with weights_only=True
    assert meta["splits_seen"] == {"train": "public", "val": None}
    assert meta["split_point"] == "layer1" and meta["defense"] == "none"
    assert meta["latent_name"] == "wplus" and meta["latent_shape"] == [tiny_generator().num_ws, 16]
    assert not meta["threat_model_exceptions"]
    # The file is what the attack accepts for this victim, split point, defense and prior.
    attack = extended(init="encoder", encoder=encoder_file)
    assert torch.equal(attack.encoder.out.weight, encoder.out.weight)


@pytest.mark.parametrize(
    ("train_split", "val_split", "named"),
    [("private", None, "train_split is 'private'"), ("public", "test", "val_split is 'test'")],
)
def test_the_encoder_refuses_to_train_or_validate_off_the_public_split(tmp_path, train_split, val_split, named):
    data = SyntheticImages(resolution=RES, train_split=train_split, val_split=val_split, batch_size=4)
    with pytest.raises(ThreatModelError, match=f"latent encoder may learn from public data only.*{named}"):
        train_encoder(tmp_path, data)
    assert not (tmp_path / "encoder.pt").exists()


def other_generator():
    torch.manual_seed(3)
    return type(tiny_generator())(**tiny_generator().config)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"victim": lambda: tiny_victim(split_point="layer2")}, "features at 'layer1'"),
        ({"defense": lambda: GaussianNoise(scale=0.1)}, "features under defense none"),
        ({"victim": lambda: tiny_victim().apply(_reseed)}, "the features of another victim"),
        ({"generator": other_generator}, "another prior"),
    ],
    ids=["split_point", "defense", "victim", "prior"],
)
def test_an_encoder_made_for_another_attack_is_refused(encoder_file, change, message):
    made = {name: build() for name, build in change.items()}
    with pytest.raises(ArtifactError, match=message):
        extended(init="both", encoder=encoder_file, **made)


def _reseed(module: torch.nn.Module) -> None:
    if isinstance(module, torch.nn.Conv2d):
        torch.nn.init.normal_(module.weight, std=0.05)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"init": "encoder"}, "`init: encoder` needs `encoder`"),
        ({"init": "learned"}, "`init` 'learned' must be one of random, encoder, both"),
        ({"encoder": "encoder.pt"}, "`encoder` is given but `init` is random"),
        ({"init": "encoder", "encoder": "x.pt", "restarts": 1}, "`init: encoder` has one"),
        ({"pixel_stage": True, "steps": [5]}, "at least two entries"),
        ({"pixel_stage": True, "lr": [0.1, 0.1, 0.1]}, "`lr` lists 3 values but there are 4 stages"),
        ({"pixel_stage": True, "pixel_radius": -0.1}, "`pixel_radius` -0.1 must be a finite number >= 0"),
        ({"pixel_stage": True, "steps": [5, 2, -1]}, "non-negative step counts per stage, got \\[5, 2, -1\\]"),
        ({"chains": 0}, "`chains` 0 must be an integer >= 1"),
        ({"chains": 5}, "`chains` 5 needs as many initial candidates; raise `n_init` \\(4\\)"),
        ({"chains": 2, "restarts": 1}, "`chains` and `restarts` both start from the next-best candidates"),
        ({"chains": 2, "init": "encoder", "encoder": "x.pt"}, "`init: encoder` has one; use `init: both`"),
    ],
)
def test_bad_extension_options_are_refused_before_anything_is_loaded(options, message):
    options = {"steps": [*STEPS, 2] if options.get("pixel_stage") else STEPS, **SETTINGS, **options}
    with pytest.raises(ValueError, match=message):
        PFOExtended("no/such/victim.pt", "no/such/generator.pt", **options)


@pytest.mark.parametrize("init", ["encoder", "both"])
def test_the_encoder_start_keeps_each_target_independent_of_its_neighbours(encoder_file, init):
    attack = extended(init=init, encoder=encoder_file, pixel_stage=True, steps=[*STEPS, 3])
    first, _ = attack_images(attack, [3, 7])
    second, _ = attack_images(attack, [14, 3])
    assert torch.equal(first.images[0], second.images[1])
    for s1, s2 in zip(first.stage_images + first.stage_losses, second.stage_images + second.stage_losses):
        assert torch.equal(s1[0], s2[1])
    assert not torch.equal(first.images[0], first.images[1])


def test_init_both_starts_from_the_better_of_the_encoders_latent_and_the_random_ones(encoder_file):
    attack = extended(init="both", encoder=encoder_file)
    images, index, _ = images_of([3, 7])
    h = attack.client_features(images, index)
    P = attack.prior
    with torch.no_grad():
        chosen = attack.best_latents(h, index, 4, 4)
        learned = attack.encoder(h)
        drawn = P.expand(PFO.top_latents(attack, h, index, 4, 4)[:, 0])  # the random candidates alone
        scores = [attack.evaluate(P.render(w), h)[0] for w in (chosen, learned, drawn)]
    assert torch.equal(scores[0], torch.minimum(scores[1], scores[2]))


def test_the_step_budget_per_target_is_the_configured_steps(encoder_file):
    steps = [5, 3, 2, 4]
    for init in ("random", "encoder", "both"):
        options = {"init": init, "encoder": None if init == "random" else encoder_file}
        attack = extended(Probe, steps=steps, pixel_stage=True, **options)
        attack_images(attack, [3, 7])
        assert attack.stage_steps == {"stage0_wplus": 5, "stage1_b8": 3, "stage2_b16": 2, "pixels": 4}
        assert sum(attack.stage_steps.values()) == sum(attack.hparams.steps) == sum(steps)


@pytest.mark.slow
def test_a_trained_encoder_starts_closer_than_random_candidates_on_targets_the_prior_renders(tmp_path):
    """The tiny prior of test_reconstruction (renders inside [-1, 1]) and 4 targets it renders from latents no attack
    draws. The encoder trains 150 steps on the latent regression alone (prior samples, no data: the public images
    only drive the steps). Measured when written: the feature loss of the encoder's start is 2.4-19x lower than the
    best of 8 random candidates' (0.016 / 0.017 / 0.056 / 0.006 vs 0.075 / 0.108 / 0.135 / 0.121), its PSNR 4.4-12.7
    dB higher (mean 29.0 vs 20.5 dB); after PFO's 40 + 20 + 20 steps from each start, 44.9 vs 39.9 dB (every target
    higher, by 0.9-6.2 dB). An encoder trained one step (about the prior's mean latent) starts worse than random
    (0.56-0.99x the loss ratio, -2.2 dB), so the thresholds below (1.5x lower loss on every target, +3 dB mean PSNR)
    need the training."""
    G = prior()
    z = torch.randn(4, G.z_dim, generator=torch.Generator().manual_seed(23))
    with torch.no_grad():
        targets = (G.synthesis(G.mapping(z, truncation_psi=0.9), noise_mode="const") + 1) / 2
    data = SyntheticImages(resolution=RES, train_split="public", val_split=None, batch_size=16)
    train_encoder(tmp_path, data, generator=prior(), steps=150, image_weight=0.0)
    index = torch.arange(4)

    def start(init: str):
        attack = PFOExtended(tiny_victim(), prior(), steps=[1], n_init=8, init_chunk=8, progress=False, init=init,
                             encoder=None if init == "random" else str(tmp_path / "encoder.pt"))  # fmt: skip
        h = attack.client_features(targets, index)
        with torch.no_grad():
            image = attack.prior.render(attack.best_latents(h, index, 8, 8))
            return attack.evaluate(image, h)[1], psnr(attack.to_output(image), targets)

    (random_loss, random_psnr), (learned_loss, learned_psnr) = start("random"), start("encoder")
    print(f"random start: loss {random_loss}, PSNR {random_psnr}; encoder start: loss {learned_loss}, PSNR "
          f"{learned_psnr}")  # fmt: skip
    assert (learned_loss * 1.5 < random_loss).all()
    assert learned_psnr.mean() > random_psnr.mean() + 3


# ----- 4. the mean of chains --------------------------------------------------------------------------------------


class ChainProbe(PFOExtended):
    """Keeps what the chains returned, before the mean."""

    def reconstruct_chain(self, h_star, index):
        self.chains = super().reconstruct_chain(h_star, index)
        return self.chains


@pytest.mark.parametrize("pixel_stage", [False, True])
def test_the_mean_of_chains_averages_whole_attacks_from_the_best_candidates(pixel_stage):
    steps = [*STEPS, 3] if pixel_stage else STEPS
    attack = extended(ChainProbe, chains=3, steps=steps, pixel_stage=pixel_stage)
    result, h = attack_images(attack, [3, 7])
    chains = attack.chains.images.unflatten(0, (2, 3))  # target-major: each target's 3 chains in a row
    assert torch.allclose(result.images, chains.mean(1), atol=1e-6)
    stages = len(attack.chains.stage_images)  # each chain's stages; the mean answer is one more, always chosen
    assert len(result.stage_images) == stages + 1 and (result.best_stage == stages).all()
    # The first chain starts where PFO starts (the best candidate): it is PFO's own answer.
    single, _ = attack_images(extended(steps=steps, pixel_stage=pixel_stage), [3, 7])
    # (up to rounding: a batch of 6 rows and one of 2 take other CPU kernels, and the pixel stage's Adam steps carry
    # that rounding on: 1.7e-5 apart at most on an AVX-512 AMD EPYC, where another start is 0.58 apart)
    assert torch.allclose(chains[:, 0], single.images, atol=1e-4)
    assert not torch.allclose(chains[:, 0], chains[:, 1])  # another start, another image
    # The mean's squared error is at most the chains' mean squared error (convexity), so its PSNR is no lower.
    originals = images_of([3, 7])[0]
    per_chain = torch.stack([psnr(chains[:, j], originals) for j in range(3)], 1)
    assert (psnr(result.images, originals) >= per_chain.mean(1) - 1e-4).all()
    low, high = attack.value_range
    assert torch.allclose(result.feature_loss, attack.evaluate(low + result.images * (high - low), h)[1])


def test_a_failed_chain_counts_for_nothing_in_the_mean():
    from pfo.attacks.pfo_extended import mean_of_chains

    images = torch.tensor([[1.0, 3.0], [float("nan"), float("nan")], [5.0, 7.0], [0.0, 2.0], [4.0, 4.0], [8.0, 8.0]])
    ok = torch.tensor([[True, False, True], [False, False, False]])  # target 1: every chain failed
    means = mean_of_chains(images, ok)
    assert torch.equal(means, torch.tensor([[3.0, 5.0], [0.0, 0.0]]))


def test_the_mean_of_chains_keeps_each_target_independent_of_its_neighbours():
    attack = extended(chains=2)
    first, _ = attack_images(attack, [3, 7])
    second, _ = attack_images(attack, [14, 3])
    assert torch.equal(first.images[0], second.images[1])
    assert not torch.equal(first.images[0], first.images[1])


# ----- 5. the guide ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def guide_file(tmp_path_factory) -> str:
    from test_attack import random_decoder

    return random_decoder(tmp_path_factory.mktemp("guide"), tiny_victim())


def test_a_guide_of_weight_zero_here_is_the_papers_pfo_bitwise(guide_file):
    """Weight 0, given directly or by the rule at this split point, leaves the paper's loss untouched."""
    theirs, _ = attack_images(PFO(tiny_victim(), tiny_generator(), steps=STEPS, **SETTINGS), [3, 7])
    for options in ({"guide_weight": 0.0}, {"guide_weight": 5.0, "radius_rule": {"layer1": {"guide_weight": 0}}}):
        ours, _ = attack_images(extended(guide=guide_file, **options), [3, 7])
        assert_same(ours, theirs)


def test_the_guided_loss_adds_the_weighted_pixel_distance_to_the_decoders_image(guide_file):
    attack = extended(guide=guide_file, guide_weight=0.7, radius_rule={"layer2": {"guide_weight": 9.0}})
    images, index, _ = images_of([3, 7])
    h = attack.client_features(images, index)
    candidate = torch.rand_like(images) * 2 - 1  # the generator's range
    with torch.no_grad():
        loss, distance = attack.evaluate(candidate, h)
        plain, plain_distance = PFO.evaluate(attack, candidate, h)
        decoded = attack.guide(h).clamp(0, 1)
    gap = ((candidate + 1) / 2 - decoded).square().flatten(1).mean(1)
    assert torch.equal(distance, plain_distance)  # the stage choice still reads the feature loss alone
    assert torch.allclose(loss, plain + 0.7 * gap)  # the rule names another split point: the option's weight
    assert (gap > 0).all()


def test_a_heavier_guide_pulls_the_answer_towards_the_decoders_image(guide_file):
    images, index, _ = images_of([3, 7])
    gaps = []
    for weight in (0.0, 1.0, 100.0):
        attack = extended(guide=guide_file, guide_weight=weight, pixel_stage=True, steps=[*STEPS, 4])
        result, h = attack_images(attack, [3, 7])
        gaps.append((result.images - attack.guide_image(h)).square().flatten(1).mean(1))
    assert (gaps[1] < gaps[0]).all() and (gaps[2] < gaps[1]).all()


class OracleGuide(PFOExtended):
    """A guide that knows its one target (a perfect decoder), to show what pulling towards a good estimate gives."""

    truth: torch.Tensor  # [1, 3, H, W]

    def guide_image(self, h_star):  # every row is the target's: its features, or its initial candidates'
        return self.truth.expand(len(h_star), -1, -1, -1)


def test_a_good_guide_recovers_the_target_better_than_no_guide():
    """With a perfect decoder, the guided attack's image is closer to the target. Measured when written (weight 10,
    pixel stage of radius 0.05): 19.51 -> 21.54 dB on target 3 (19.64 -> 23.02 and 19.15 -> 21.28 on targets 7, 14)."""
    from test_attack import random_decoder

    images, _, _ = images_of([3])
    options = {"steps": [12, 6, 6, 6], "pixel_stage": True, "pixel_radius": 0.05}
    plain, _ = attack_images(extended(**options), [3])
    with TemporaryDirectory() as folder:
        attack = extended(OracleGuide, guide=random_decoder(Path(folder), tiny_victim()), guide_weight=10.0, **options)
    attack.truth = images
    guided, _ = attack_images(attack, [3])
    assert float(psnr(guided.images, images)) > float(psnr(plain.images, images)) + 1.5


def test_the_guided_attack_keeps_each_target_independent_of_its_neighbours(guide_file):
    attack = extended(guide=guide_file, guide_weight=1.0, pixel_stage=True, steps=[*STEPS, 3])
    first, _ = attack_images(attack, [3, 7])
    second, _ = attack_images(attack, [14, 3])
    assert torch.equal(first.images[0], second.images[1])
    for s1, s2 in zip(first.stage_images + first.stage_losses, second.stage_images + second.stage_losses):
        assert torch.equal(s1[0], s2[1])


def test_a_guide_made_for_another_split_point_or_defense_is_refused(guide_file):
    with pytest.raises(ArtifactError, match="features at 'layer1'.*splits the victim at 'layer2'"):
        extended(guide=guide_file, split_point="layer2")
    with pytest.raises(ArtifactError, match="defense none.*same defense"):
        extended(guide=guide_file, defense=GaussianNoise(0.1))
    with pytest.raises(ValueError, match="`guide_weight` -1 must be a finite number >= 0"):
        PFOExtended("no/such/victim.pt", "no/such/generator.pt", guide_weight=-1)
    with pytest.raises(ValueError, match="`radius_rule.layer1.guide_weight`"):
        extended(guide=guide_file, radius_rule={"layer1": {"guide_weight": -2}})


def test_a_run_records_what_the_encoder_and_the_guides_decoder_were_trained_on(encoder_file, guide_file):
    from pfo.attacks import Targets
    from pfo.run_info import splits_record

    attack = extended(init="both", encoder=encoder_file, guide=guide_file)
    record = splits_record(Targets(data=SyntheticImages(resolution=RES), count=2), attack, "fit")
    assert record["networks_trained_on"]["encoder"]["train"] == "public"
    assert record["networks_trained_on"]["decoder"] == "not recorded"  # random_decoder's file records no training


# ----- 6. the blend with the guide ---------------------------------------------------------------------------------


def test_a_blend_of_zero_is_the_guided_attack_bitwise_and_a_blend_moves_the_answer_linearly(guide_file):
    """0 (given, or by the rule here) leaves the guided attack's answer; b gives (1 - b) x it + b x the decoder's
    image as one more stage, always the answer, its feature loss measured on the blended image."""
    base, _ = attack_images(extended(guide=guide_file, guide_weight=0.5), [3, 7])
    for options in ({"guide_blend": 0.0}, {"guide_blend": 0.9, "radius_rule": {"layer1": {"guide_blend": 0}}}):
        same, _ = attack_images(extended(guide=guide_file, guide_weight=0.5, **options), [3, 7])
        assert_same(same, base)
    attack = extended(guide=guide_file, guide_weight=0.5, guide_blend=0.9, radius_rule={"layer1": {"guide_blend": 0.3}})
    blended, h = attack_images(attack, [3, 7])
    decoded = attack.guide_image(h)
    assert torch.allclose(blended.images, 0.7 * base.images + 0.3 * decoded, atol=1e-6)  # the rule's 0.3 here
    assert len(blended.stage_images) == len(base.stage_images) + 1
    assert (blended.best_stage == len(base.stage_images)).all()
    for earlier, ours in zip(base.stage_images, blended.stage_images):
        assert torch.equal(earlier, ours)
    with torch.no_grad():
        measured = attack.evaluate(blended.images * 2 - 1, h)[1]  # the generator's range is [-1, 1]
    assert torch.allclose(blended.feature_loss, measured)
    assert (blended.images >= 0).all() and (blended.images <= 1).all()
    only_decoder, _ = attack_images(extended(guide=guide_file, guide_weight=0.5, guide_blend=1.0), [3, 7])
    assert torch.allclose(only_decoder.images, decoded)


def test_a_blend_towards_a_good_estimate_recovers_the_target_better():
    """Two estimates that err differently: the attack's sharp image and a noisy copy of the target (a guide as
    good as a decoder can be at a deep split). Their blend beats both on PSNR against the original, which is why
    the blend is calibrated per split point. Measured when written: attack 16.1 dB, guide 17.0, blend 0.5 19.2."""
    from test_attack import random_decoder

    images, _, _ = images_of([3])
    torch.manual_seed(0)
    noisy = (images + 0.15 * torch.randn_like(images)).clamp(0, 1)
    with TemporaryDirectory() as folder:
        attack = extended(OracleGuide, guide=random_decoder(Path(folder), tiny_victim()), guide_weight=0.0,
                          guide_blend=0.5, steps=[12, 6, 6])  # fmt: skip
    attack.truth = noisy
    plain, _ = attack_images(extended(steps=[12, 6, 6]), [3])
    blended, _ = attack_images(attack, [3])
    attack_psnr, guide_psnr = float(psnr(plain.images, images)), float(psnr(noisy, images))
    assert float(psnr(blended.images, images)) > max(attack_psnr, guide_psnr) + 1.0


def test_the_blended_attack_keeps_each_target_independent_of_its_neighbours(guide_file):
    attack = extended(guide=guide_file, guide_weight=1.0, guide_blend=0.4)
    first, _ = attack_images(attack, [3, 7])
    second, _ = attack_images(attack, [14, 3])
    for s1, s2 in zip(first.stage_images + first.stage_losses, second.stage_images + second.stage_losses):
        assert torch.equal(s1[0], s2[1])


def test_a_blend_without_a_guide_or_outside_zero_to_one_is_refused(guide_file):
    with pytest.raises(ValueError, match="`guide_blend` moves the answer towards the guide's image, but `guide` is"):
        extended(guide_blend=0.5)
    with pytest.raises(ValueError, match="`guide_blend` moves the answer"):
        extended(radius_rule={"layer1": {"guide_blend": 0.5}})
    with pytest.raises(ValueError, match=r"`guide_blend` 1.5 must be in \[0, 1\]"):
        PFOExtended("no/such/victim.pt", "no/such/generator.pt", guide_blend=1.5)
    with pytest.raises(ValueError, match=r"`radius_rule.layer1.guide_blend` -0.1 must be a finite number >= 0"):
        extended(guide=guide_file, radius_rule={"layer1": {"guide_blend": -0.1}})


def test_the_blend_is_calibrated_from_one_run_with_what_a_run_per_value_gives(guide_file):
    """The calibration of ``guide_blend`` attacks the public images once (at 0) and blends that answer with every
    value: each row's PSNR and feature loss are those of an attack configured with the value."""
    data = PublicOnly(resolution=RES, sizes={"public": 8})
    built = []

    def attack_with(value):
        built.append(value)
        return extended(guide=guide_file, guide_weight=0.5, guide_blend=value)

    grid = [0.0, 0.3, 1.0]
    result = calibrate_radius(attack_with, data, grid, split_point="layer1", option="guide_blend", count=2)
    assert built == [0.0]  # one run served the grid
    assert [row["value"] for row in result.rows] == grid
    public = data.dataset("public")
    images = torch.stack([public[i]["image"] for i in result.indices])
    index = torch.tensor(result.indices)
    for row, value in zip(result.rows, grid):
        attack = extended(guide=guide_file, guide_weight=0.5, guide_blend=value)
        with torch.enable_grad():
            answer = attack.reconstruct(attack.client_features(images, index), index)
        assert row["psnr_mean"] == pytest.approx(float(psnr(answer.images, images).double().mean()), abs=1e-4)
        assert row["feature_loss"] == pytest.approx(float(answer.feature_loss.double().mean()), rel=1e-4)
