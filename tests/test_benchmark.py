"""The benchmark's pieces at tiny size: every attack through the shared CLI path, the table and the figures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from bench import benchmark
from pfo.attacks.targets import spread_indices
from pfo.data import SyntheticImages
from pfo.models import ResNet, load_victim, save_victim
from pfo.models.generator_file import load_generator, save_generator
from pfo.models.stylegan2 import Generator

SYNTHETIC = json.dumps({"class_path": "pfo.data.SyntheticImages", "init_args": {"resolution": 16}})
SYNTHETIC_PUBLIC = json.dumps(
    {
        "class_path": "pfo.data.SyntheticImages",
        "init_args": {"resolution": 16, "train_split": "public", "val_split": None, "batch_size": 16},
    }
)
# the inverse network's decoder and PFOExtended's encoder at tiny size, on synthetic public images
TINY_TRAINING = ["--data", SYNTHETIC_PUBLIC, "--trainer.limit_train_batches", "2", "--model.init_args.width", "8"]
TINY_TRAINING += ["--trainer.enable_progress_bar", "false"]


def test_step_budget_is_shared():
    for steps in (40, 500):
        pfo = benchmark.step_overrides("pfo", steps, 8)
        assert sum(json.loads(pfo[pfo.index("--model.init_args.steps") + 1])) == steps
        glass = benchmark.step_overrides("glass", steps, 8)
        short = int(glass[glass.index("--model.init_args.short_steps") + 1])
        long = int(glass[glass.index("--model.init_args.steps") + 1])
        assert short + long == steps
        for name in ("rmle", "lm"):
            args = benchmark.step_overrides(name, steps, 8)
            assert int(args[args.index("--model.init_args.steps") + 1]) == steps
    assert benchmark.init_forward_passes("pfo", 8) == 8 and benchmark.init_forward_passes("rmle", 8) == 0


def tiny_benchmark(tmp_path, **changes) -> tuple[str, dict[str, str], benchmark.Options]:
    """A victim, a prior and the benchmark's options at tiny size, on synthetic images."""
    torch.manual_seed(0)
    victim = save_victim(
        ResNet(depth=18, num_classes=4, stem="cifar", input_size=16, split_point="layer1").eval(),
        tmp_path / "victim.pt",
    )
    prior = save_generator(
        Generator(z_dim=16, w_dim=16, resolution=32, n_mlp=2, channel_base=128, channel_max=16),
        tmp_path / "generator.pt",
    )
    options = benchmark.Options(
        targets=3,
        steps=6,
        n_init=4,
        splits=["layer1"],
        priors=["cifar10"],
        noise=0.1,
        decoder_overrides=TINY_TRAINING,
        extra_attack_overrides=["--data.data", SYNTHETIC],
        utility_data=json.loads(SYNTHETIC),
        utility_images=8,
        cache=tmp_path / "cache",
        out=tmp_path / "out",
    )
    for key, value in changes.items():
        setattr(options, key, value)
    return str(victim), {"cifar10": str(prior)}, options


@pytest.mark.slow
def test_every_attack_runs_and_the_report_is_written(tmp_path, plain_argv, monkeypatch):
    victim, prior, options = tiny_benchmark(tmp_path)
    rows = benchmark.run(options, victim, prior)
    # 5 attacks x 1 split x 1 prior, with and without the defense
    assert len(rows) == 10
    assert {r["attack"] for r in rows} == {"PFO", "GLASS", "rMLE", "LM", "IN"}
    for r in rows:
        assert r["summary"]["targets"] == 3
        assert {"psnr", "ssim", "feature_distance", "seconds", "utility_top1"} <= set(r["summary"]["metrics"])
    # the victim's accuracy under each defense level, on 8 test images: without the defense, its plain accuracy
    test_set = SyntheticImages(resolution=16).dataset("test")
    chosen = [test_set[i] for i in spread_indices(len(test_set), 8)]
    model = load_victim(victim)
    plain = model(torch.stack([c["image"] for c in chosen])).argmax(1) == torch.tensor([c["label"] for c in chosen])
    for r in rows:
        assert r["utility"]["images"] == 8
        if r["defense"] == "none":
            assert r["utility"]["accuracy"] == pytest.approx(float(plain.float().mean()))
    assert (options.out / "utility_layer1_noise0.1.json").is_file()
    # the decoder of the defended run was trained on defended features, and is a separate file (named after the
    # victim file's contents: another victim never reuses it)
    key = benchmark.file_digest(victim)[:10]
    assert (options.cache / f"decoder_layer1_noise0.1_{key}" / "decoder.pt").exists()
    assert (options.cache / f"decoder_layer1_noise0_{key}" / "decoder.pt").exists()
    table = benchmark.markdown_table(rows)
    assert table.count("\n") == len(rows) + 1 and "| gaussian 0.1 | PFO | cifar10 | layer1 |" in table
    assert table.count("(8 images) |") == len(rows)
    assert benchmark.psnr_plot(rows, tmp_path / "plot.png").stat().st_size > 0
    figure = benchmark.reconstruction_figure(rows, "layer1", tmp_path / "figure.png")
    assert figure is not None and figure.stat().st_size > 0
    # a rerun resumes every attack run from its folder: no attack runs, no decoder trains, no file is rewritten
    written = {p: p.stat().st_mtime_ns for p in options.out.rglob("*") if p.is_file()}

    def must_not_run(*args, **kwargs):
        raise AssertionError(f"recomputed on a rerun: {args[:2]}")

    monkeypatch.setattr(benchmark, "compute_cell", must_not_run)
    monkeypatch.setattr(benchmark, "ensure_decoder", must_not_run)
    again = benchmark.run(options, victim, prior)
    assert [r["summary"] for r in again] == [r["summary"] for r in rows]
    assert {p: p.stat().st_mtime_ns for p in written} == written
    monkeypatch.undo()
    # --report_only tabulates the finished runs, skips the ones that never ran, and trains nothing
    options.report_only, options.splits = True, ["layer1", "layer2"]
    (tmp_path / "cache").rename(tmp_path / "cache_moved")
    report = benchmark.run(options)
    assert [(r["attack"], r["split"], r["defense"], r["utility"]) for r in report] == [
        (r["attack"], r["split"], r["defense"], r["utility"]) for r in rows
    ]
    assert not list((tmp_path / "cache").glob("decoder_layer2_noise0*"))


def test_the_utility_applies_the_defense_with_the_attacks_noise_stream(tmp_path):
    """The victim's accuracy under a defense level is the tail's accuracy on the features as the attack runs see
    them: the same noise, drawn per image from the attacks' defense stream (checked by hand here, with a noise
    strong enough to change predictions, so a utility that ignored the defense would fail)."""
    from pfo.attacks import GaussianNoise
    from pfo.attacks.defenses import defense_generators

    _, _, options = tiny_benchmark(tmp_path, utility_images=16)
    torch.manual_seed(0)
    net = ResNet(depth=18, num_classes=4, stem="cifar", input_size=16, split_point="layer4").eval()
    victim = str(save_victim(net, tmp_path / "decisive_victim.pt"))
    test_set = SyntheticImages(resolution=16).dataset("test")
    index = torch.tensor(spread_indices(len(test_set), 16))
    images = torch.stack([test_set[int(i)]["image"] for i in index])
    labels = torch.tensor([test_set[int(i)]["label"] for i in index])
    model = load_victim(victim, split_point="layer4").eval()
    with torch.no_grad():
        h = model.forward_head(images)
        noisy = GaussianNoise(3.0)(h, defense_generators(0, index))
        plain, defended = model.tail(h).argmax(1), model.tail(noisy).argmax(1)
    assert not torch.equal(plain, defended), "the noise must change some predictions for this check to bite"
    for noise, predictions in ((None, plain), (3.0, defended)):
        measured = benchmark.victim_utility(options, Path(victim), "layer4", noise)
        assert measured["images"] == 16
        assert measured["accuracy"] == pytest.approx(float((predictions == labels).float().mean()))


def test_run_keys_follow_every_setting_that_decides_a_result(tmp_path):
    """A run's folder name carries a key of the victim's and prior's contents, the step budget, n_init and the
    extra overrides: changing any of them names another folder, so a finished run is never reused for it; the
    target count is left out (more targets extend a finished run)."""
    victim, prior, options = tiny_benchmark(tmp_path)
    base = benchmark.run_key(options, Path(victim), Path(prior["cifar10"]))
    assert base == benchmark.run_key(options, Path(victim), Path(prior["cifar10"]))
    changed = {
        "steps": dict(steps=7),
        "n_init": dict(n_init=5),
        "batch_size": dict(batch_size=2),
        "overrides": dict(extra_attack_overrides=[*options.extra_attack_overrides, "--model.init_args.lr", "0.1"]),
        "setting": dict(setting="vit"),
    }
    for what, change in changed.items():
        other = benchmark.Options(**{**options.__dict__, **change})
        assert benchmark.run_key(other, Path(victim), Path(prior["cifar10"])) != base, what
    assert (
        benchmark.run_key(benchmark.Options(**{**options.__dict__, "targets": 9}), Path(victim), Path(prior["cifar10"]))
        == base
    )
    copy = tmp_path / "copy_of_victim.pt"
    copy.write_bytes(Path(victim).read_bytes())
    assert benchmark.run_key(options, copy, Path(prior["cifar10"])) == base  # the contents, not the path
    torch.manual_seed(1)
    other_victim = save_victim(
        ResNet(depth=18, num_classes=4, stem="cifar", input_size=16, split_point="layer1").eval(), tmp_path / "v2.pt"
    )
    assert benchmark.run_key(options, other_victim, Path(prior["cifar10"])) != base
    assert benchmark.run_key(options, Path(victim), "digiface-dcgan64") != base
    cells = benchmark.table_cells(
        options, benchmark.run_keys(options, Path(victim), {"cifar10": Path(prior["cifar10"])})
    )
    assert {c.name.rsplit("_", 1)[1] for c in cells} == {
        benchmark.run_key(options, Path(victim), None),
        base,
    }


def test_the_settings_name_their_split_points_priors_and_data(capsys):
    faces = benchmark.Options.for_setting("faces")
    assert faces.splits == ["layer2", "layer3", "layer4"] and faces.priors == ["lfw", "digiface"]
    assert faces.data["class_path"] == "pfo.data.LFW" and faces.data["init_args"]["resolution"] == 64
    vit = benchmark.Options.for_setting("vit", quick=True)
    assert vit.splits == ["blocks.0", "blocks.2"] and vit.priors == ["cifar10"] and vit.targets == 4
    assert "lm" not in vit.attacks
    cells = benchmark.table_cells(faces)
    assert {c.prior for c in cells if c.attack == "pfo"} == {"lfw", "digiface"}
    assert [c.depth for c in cells if c.attack == "rmle" and not c.noise] == [3, 4, 5]
    for setting in benchmark.SETTINGS.values():  # every config a setting names is shipped
        for config in [setting.victim_config, setting.decoder_config, setting.encoder_config, *setting.priors.values()]:
            assert config.startswith(benchmark.NAMED) or (benchmark.REPO / config).is_file(), config
    with pytest.raises(SystemExit):
        benchmark.main(["--setting", "faces", "--splits", "blocks.3"])
    assert "blocks.3: not in the faces setting; choose from conv1, maxpool" in capsys.readouterr().err


@pytest.mark.slow
def test_parallel_runs_match_the_sequential_ones(tmp_path, plain_argv):
    """``--jobs 2``: the same rows and numbers as one run after another (the IN cell trains its decoder in a worker),
    each run's output in its own log; a failing run does not stop the others and is reported with its log."""
    victim, prior, options = tiny_benchmark(tmp_path, attacks=["rmle", "pfo", "in"], noise=0.0, decoder_epochs=2)
    sequential = benchmark.run(options, victim, prior)
    options.out, options.cache = tmp_path / "out_parallel", tmp_path / "cache_parallel"
    parallel = benchmark.run(options, victim, prior, jobs=2)
    assert [(r["attack"], r["split"], r["defense"]) for r in parallel] == [
        (r["attack"], r["split"], r["defense"]) for r in sequential
    ]
    for a, b in zip(sequential, parallel):
        assert b["summary"]["targets"] == 3
        psnr = a["summary"]["metrics"]["psnr"]["mean"]
        assert b["summary"]["metrics"]["psnr"]["mean"] == pytest.approx(psnr, abs=1e-3)
    decoder = options.cache / f"decoder_layer1_noise0_{benchmark.file_digest(victim)[:10]}"
    assert (decoder / "decoder.pt").exists()
    decoder_run = yaml.safe_load((decoder / "config.yaml").read_text())
    assert decoder_run["trainer"]["max_epochs"] == 2
    for r in parallel:
        assert (options.out / "logs" / f"{Path(r['summary']['folder']).name}.log").stat().st_size > 0

    options.out, options.attacks = tmp_path / "out_failing", ["rmle"]
    options.noise, options.splits = 0.1, ["layer1", "layer2"]
    options.extra_attack_overrides = [*options.extra_attack_overrides, "--model.init_args.no_such_option", "1"]
    with pytest.raises(RuntimeError, match="4 benchmark run") as failure:  # no prior given, none trained: no
        benchmark.run(options, victim, {}, jobs=2)  # attack of this run needs one (training it would fail here)
    assert "rmle_layer2_none_noise0.1" in str(failure.value) and "log:" in str(failure.value)


def test_the_untrained_prior_has_the_architecture_and_fresh_weights(tmp_path):
    from bench import untrained_prior

    trained = Generator(z_dim=16, w_dim=16, resolution=32, n_mlp=2, channel_base=128, channel_max=16)
    with torch.no_grad():
        for p in trained.parameters():
            p.add_(1.0)  # stands in for training
    save_generator(trained, tmp_path / "trained.pt")
    untrained_prior.main([str(tmp_path / "trained.pt"), str(tmp_path / "untrained.pt")])
    fresh = load_generator(tmp_path / "untrained.pt")
    assert fresh.config == trained.config
    assert fresh.mapping.w_avg.abs().sum() > 0  # the mapping's own mean w, not zeros
    for (name, a), b in zip(trained.named_parameters(), fresh.parameters()):
        assert not torch.equal(a, b), name
    again = untrained_prior.untrained_like(trained, seed=0)
    assert all(torch.equal(x, y) for x, y in zip(again.state_dict().values(), fresh.state_dict().values()))


def test_the_ablation_rows_share_pfos_budget_and_are_paired_against_it(tmp_path, plain_argv):
    """Issue 16's ablation: PFOExtended with one extension at a time and all of them, each row with the paper's
    PFO's step budget, its encoder trained on the public split, a radius rule only from a calibration file, and
    every row paired target by target against the paper's PFO."""
    rule = tmp_path / "radius_rule.yaml"
    rule.write_text("radius_rule:\n  layer1: {feature_radius: 0.05, pixel_radius: 0.01}\n")
    victim, prior, options = tiny_benchmark(
        tmp_path,
        attacks=["pfo", "pfo_pixel", "pfo_encoder", "pfo_all", "pfo_pixel_radius", "pfo_radius_mean"],
        noise=0.0,
        encoder_overrides=TINY_TRAINING,
    )
    options.steps = 8  # a mean row's 4 chains get 2 steps each
    with pytest.raises(ValueError, match="bench/calibrate_radius.py"):
        benchmark.extension_overrides(options, "pfo_radius", None)
    options.radius_rule = benchmark.load_radius_rule(rule, benchmark.argparse.ArgumentParser())
    rows = benchmark.run(options, victim, prior)
    names = ["PFO", "PFO+pixel", "PFO+encoder", "PFO+all", "PFO+pixel+radius", "PFO+radius+mean"]
    assert [r["attack"] for r in rows] == names
    expected = {
        "PFO": (False, "random", None),
        "PFO+pixel": (True, "random", None),
        "PFO+encoder": (False, "both", None),
        "PFO+all": (True, "both", {"layer1": {"feature_radius": 0.05, "pixel_radius": 0.01}}),
        "PFO+pixel+radius": (True, "random", {"layer1": {"feature_radius": 0.05, "pixel_radius": 0.01}}),
        "PFO+radius+mean": (False, "random", {"layer1": {"feature_radius": 0.05, "pixel_radius": 0.01}}),
    }
    for r in rows:
        config = yaml.safe_load((Path(r["summary"]["folder"]) / "config.yaml").read_text())["model"]
        args = config["init_args"]
        chains = args.get("chains", 1)  # a mean row's chains share the budget
        assert sum(args["steps"]) * chains == options.steps  # the same per-target budget as the paper's row
        assert chains == (benchmark.MEAN_CHAINS if r["attack"] == "PFO+radius+mean" else 1)
        if r["attack"] == "PFO":
            assert config["class_path"] == "pfo.attacks.PFO"
            continue
        assert config["class_path"] == "pfo.attacks.PFOExtended"
        assert (args["pixel_stage"], args["init"], args["radius_rule"]) == expected[r["attack"]]
        assert (args["encoder"] is not None) == (args["init"] == "both")
        if args["pixel_stage"]:
            assert len(args["steps"]) == 5 and args["lr"][-1] == benchmark.PIXEL_LR
    encoders = list(options.cache.glob("encoder_cifar10_layer1_noise0_*/encoder.pt"))
    assert len(encoders) == 1  # one encoder per split point, defense and prior, shared by the rows that use it
    paired = benchmark.paired_rows(rows)
    assert [p["attack"] for p in paired] == names[1:]
    reference = rows[0]["summary"]["metrics"]["psnr"]["mean"]
    for p, r in zip(paired, rows[1:]):  # the same targets: the mean difference is the difference of the means
        assert p["targets"] == 3 and p["row_ahead"] + p["reference_ahead"] <= 3
        assert p["psnr_mean"] == pytest.approx(r["summary"]["metrics"]["psnr"]["mean"] - reference, abs=1e-4)
    assert "| none | layer1 | cifar10 | PFO+all |" in benchmark.paired_table(paired)
    # another radius rule renames only the rows that read it
    keys = benchmark.run_keys(options, Path(victim), {"cifar10": Path(prior["cifar10"])})
    before = {c.attack: c.name for c in benchmark.table_cells(options, keys)}
    options.radius_rule = {"layer1": 0.2}
    after = {c.attack: c.name for c in benchmark.table_cells(options, keys)}
    assert {a for a in before if before[a] != after[a]} == {"pfo_all", "pfo_pixel_radius", "pfo_radius_mean"}


def run_names(options, victim: str, prior: dict[str, str]) -> dict[str, str]:
    """Each row's run folder name under ``options`` (the key of what it depends on)."""
    keys = benchmark.run_keys(options, Path(victim), {"cifar10": Path(prior["cifar10"])})
    return {c.attack: c.name for c in benchmark.table_cells(options, keys)}


def test_the_guide_rows_read_ins_decoder_and_the_rules_guide_weight_and_leave_the_other_rows_keys(tmp_path, plain_argv):
    """The guide rows: IN's decoder (trained on the public split, cached, shared with the IN row) as the guide,
    with the guide weight the rule gives the split point; the guide alone reads only that weight. A rule that gains
    guide weights leaves every row without the guide, and its run key, as it was."""
    victim, prior, options = tiny_benchmark(
        tmp_path, attacks=["pfo_guide", "pfo_radius_guide", "pfo_pixel_radius", "pfo_pixel_radius_guide"], noise=0.0
    )
    radii = {"layer1": {"feature_radius": 0.05, "pixel_radius": 0.01}}
    options.radius_rule = radii
    with pytest.raises(ValueError, match="guide_weight for layer1.*--option guide_weight"):
        benchmark.extension_overrides(options, "pfo_guide", None, tmp_path / "decoder.pt", "layer1")
    before = run_names(options, victim, prior)
    options.radius_rule = {"layer1": {**radii["layer1"], "guide_weight": 0.3}}
    after = run_names(options, victim, prior)
    assert before["pfo_pixel_radius"] == after["pfo_pixel_radius"]
    assert before["pfo_radius_guide"] != after["pfo_radius_guide"]
    options.radius_rule["layer4"] = {"guide_weight": 1.0}  # another split point's weight: no guide row is renamed
    assert run_names(options, victim, prior) == after
    del options.radius_rule["layer4"]
    rows = benchmark.run(options, victim, prior)
    assert [r["attack"] for r in rows] == [
        "PFO+guide",
        "PFO+radius+guide",
        "PFO+pixel+radius",
        "PFO+pixel+radius+guide",
    ]
    decoders = list(options.cache.glob("decoder_layer1_noise0_*/decoder.pt"))
    assert len(decoders) == 1
    expected = {
        "PFO+guide": ({"layer1": {"guide_weight": 0.3}}, str(decoders[0])),
        "PFO+radius+guide": (options.radius_rule, str(decoders[0])),
        "PFO+pixel+radius": (radii, None),
        "PFO+pixel+radius+guide": (options.radius_rule, str(decoders[0])),
    }
    for r in rows:
        args = yaml.safe_load((Path(r["summary"]["folder"]) / "config.yaml").read_text())["model"]["init_args"]
        assert (args["radius_rule"], args.get("guide")) == expected[r["attack"]]
        assert sum(args["steps"]) == options.steps
    # Every extension with the guide: the encoder's start, the pixel stage, the whole rule and the guide.
    overrides = benchmark.extension_overrides(options, "pfo_all_guide", tmp_path / "e.pt", decoders[0], "layer1")
    given = dict(zip(overrides[::2], overrides[1::2]))
    assert given["--model.init_args.init"] == "both" and given["--model.init_args.encoder"] == str(tmp_path / "e.pt")
    assert given["--model.init_args.pixel_stage"] == "true" and given["--model.init_args.guide"] == str(decoders[0])
    assert json.loads(given["--model.init_args.radius_rule"]) == options.radius_rule


def test_the_blend_row_reads_the_rules_guide_blend_and_leaves_the_guide_rows_keys(tmp_path, plain_argv):
    """PFO+radius+guide+blend: the guided row's options plus the rule's guide_blend at the split point. A rule that
    gains blend weights renames only the blend row; a rule without one at the split point is refused, naming the
    calibration that makes it."""
    victim, prior, options = tiny_benchmark(tmp_path, attacks=["pfo_radius_guide", "pfo_radius_guide_blend"], noise=0.0)
    guided = {"layer1": {"feature_radius": 0.05, "guide_weight": 0.3}}
    options.radius_rule = guided
    with pytest.raises(ValueError, match="guide_blend for layer1.*--option guide_blend"):
        benchmark.extension_overrides(options, "pfo_radius_guide_blend", None, tmp_path / "decoder.pt", "layer1")
    before = run_names(options, victim, prior)
    options.radius_rule = {"layer1": {**guided["layer1"], "guide_blend": 0.4}}
    after = run_names(options, victim, prior)
    assert before["pfo_radius_guide"] == after["pfo_radius_guide"]
    assert before["pfo_radius_guide_blend"] != after["pfo_radius_guide_blend"]
    rows = benchmark.run(options, victim, prior)
    assert [r["attack"] for r in rows] == ["PFO+radius+guide", "PFO+radius+guide+blend"]
    given = [yaml.safe_load((Path(r["summary"]["folder"]) / "config.yaml").read_text())["model"]["init_args"]
             for r in rows]  # fmt: skip
    assert given[0]["radius_rule"] == guided and given[1]["radius_rule"] == options.radius_rule
    assert given[0]["guide"] == given[1]["guide"] is not None  # one decoder, IN's, for both rows
    assert all(sum(args["steps"]) == options.steps for args in given)


def test_a_radius_rule_file_is_checked_before_any_work(tmp_path, capsys):
    bad = tmp_path / "rule.yaml"
    bad.write_text("radius_rule:\n  layer2: {feature_radius: -1}\n")
    with pytest.raises(SystemExit):
        benchmark.main(["--attacks", "pfo_all", "--radius_rule", str(bad)])
    assert "--radius_rule" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        benchmark.main(["--attacks", "pfo_radius"])
    assert "need --radius_rule" in capsys.readouterr().err
    # A schedule in the rule fits only the rows with its stages and budget (pfo_all: the pixel stage last).
    scheduled = tmp_path / "scheduled.yaml"
    scheduled.write_text("radius_rule:\n  conv1: {pixel_radius: null, steps: [100, 50, 50, 0, 300]}\n")
    with pytest.raises(SystemExit):
        benchmark.main(["--attacks", "pfo_radius", "pfo_all", "--radius_rule", str(scheduled)])
    assert "the PFO+radius row (steps [200, 100, 100, 100]) cannot use it" in capsys.readouterr().err
    options = benchmark.Options(attacks=["pfo", "pfo_all", "pfo_pixel_radius"], steps=500)
    options.radius_rule = benchmark.load_radius_rule(scheduled, benchmark.argparse.ArgumentParser())
    benchmark.check_radius_rule(options)  # fits: 5 stages, 500 steps
    options.steps = 400
    with pytest.raises(ValueError, match="PFO\\+all row.*keep their 400 steps"):
        benchmark.check_radius_rule(options)
    # A mean row's chains read the schedule shrunk to their share of the budget (here a 4-stage one).
    options = benchmark.Options(attacks=["pfo_radius_mean"], steps=500)
    options.radius_rule = {"layer4": {"feature_radius": 0.01, "steps": [200, 100, 100, 100]}}
    benchmark.check_radius_rule(options)
    chain = benchmark.chain_rule(options.radius_rule, ("radius", "mean"))
    assert chain == {"layer4": {"feature_radius": 0.01, "steps": [50, 25, 25, 25]}}
    odd = benchmark.chain_rule({"layer4": {"steps": [201, 100, 100, 101]}}, ("radius", "mean"))
    assert sum(odd["layer4"]["steps"]) == 502 // benchmark.MEAN_CHAINS
    options.mean_chains = 8
    assert benchmark.step_overrides("pfo_radius_mean", 500, 64, benchmark.chains_of(options, "pfo_radius_mean"))[
        :4
    ] == [
        "--model.init_args.steps",
        "[25, 12, 12, 13]",
        "--model.init_args.lr",
        str(benchmark.BLOCK_LR),
    ]
    assert benchmark.chains_of(options, "pfo_radius") == 1
    with pytest.raises(SystemExit):
        benchmark.main(["--attacks", "pfo_radius_mean", "--mean_chains", "65", "--radius_rule", str(scheduled)])
    assert "--mean_chains 65: between 1 and --n_init (64)" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # only a mean row reads it: the others run with few candidates whatever it is
        benchmark.main(["--attacks", "pfo_radius", "--n_init", "2"])  # stops later, at the missing rule
    error = capsys.readouterr().err
    assert "need --radius_rule" in error and "between 1 and --n_init" not in error


def test_the_radius_rule_can_come_from_the_shipped_attack_config(tmp_path, capsys):
    parser = benchmark.argparse.ArgumentParser()
    shipped = Path(benchmark.REPO) / "configs" / "pfo_extended_resnet.yaml"
    rule = benchmark.load_radius_rule(shipped, parser)
    assert rule == yaml.safe_load(shipped.read_text())["model"]["init_args"]["radius_rule"]
    options = benchmark.Options(attacks=["pfo_pixel_radius", "pfo_all"], steps=500, radius_rule=rule)
    benchmark.check_radius_rule(options)  # its schedules fit the benchmark's 5-stage rows
    bare = tmp_path / "bare.yaml"
    bare.write_text("model:\n  class_path: pfo.attacks.PFOExtended\n  init_args: {steps: [1, 2]}\n")
    with pytest.raises(SystemExit):
        benchmark.load_radius_rule(bare, parser)
    assert "without `model.init_args.radius_rule`" in capsys.readouterr().err
