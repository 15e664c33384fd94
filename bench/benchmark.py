r"""The benchmark (GUIDE section 8): every attack x split point x prior, with and without a noise defense, in one of
three settings (one protocol, a setting argument):

- ``cifar10`` (default): the CIFAR-10 ResNet-18 (CIFAR stem) at ``conv1`` ... ``layer4``; priors trained on the
  public CIFAR-10 half (in distribution) and on Tiny-ImageNet (out of distribution).
- ``faces``: the 64-px LFW face ResNet-18 (ImageNet stem, as in the literature) at ``layer2`` ... ``layer4``; priors
  trained on the public LFW people (in distribution) and the pretrained DigiFace DCGAN (``digiface-dcgan64``,
  synthetic faces: out of distribution).
- ``vit``: the small CIFAR-10 ViT (4-px patches) at ``blocks.0``, ``blocks.2``, ``blocks.5``; the CIFAR-10 priors.

    python bench/benchmark.py                 # full protocol: 16 targets, 500 steps, 5 split points
    python bench/benchmark.py --quick         # minutes: 4 targets, 40 steps, two split points, in-distribution prior
    python bench/benchmark.py --victim logs/victim_cifar10_resnet18/victim.pt \
        --prior cifar10=logs/gan_cifar10/generator.pt --prior tinyimagenet=logs/gan_tinyimagenet/generator.pt
    python bench/benchmark.py --setting faces --victim logs/victim_lfw_resnet18/victim.pt \
        --prior lfw=logs/gan_lfw/generator.pt --prior digiface=digiface-dcgan64

It trains what it is not given (the victim, the priors, one inverse-network decoder per split point and defense)
and caches it under ``--cache``; attack runs live under ``--out`` and resume like any attack run, so a rerun only
computes what is missing. A run's folder name carries a key of every setting that decides its result (the victim
and prior files' contents, steps, n_init, the extra overrides), so a rerun with other settings never reuses it.
Every attack gets the same targets and the same number of optimisation steps per target; latent-search forward
passes (PFO, GLASS) are reported in their own column. Output: ``table.md`` (also printed), ``results.json``, one
``reconstructions_<split>.png`` per split point (rows: originals and each attack; columns: targets) and
``psnr_vs_split.png``. Data: ``$PFO_DATA_ROOT`` or ``data/``.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SPLITS = ["conv1", "layer1", "layer2", "layer3", "layer4"]  # the CIFAR-10 setting's


@dataclass(frozen=True)
class AttackSpec:
    name: str
    config: str
    uses_prior: bool = False
    learned: bool = False  # the inverse network: no per-target optimisation
    # PFOExtended's extensions on in this row: pixel, radius, encoder, mean, guide, blend
    extensions: tuple[str, ...] = ()


EXTENDED = "configs/pfo_extended_resnet.yaml"
ATTACKS = {
    "pfo": AttackSpec("PFO", "configs/pfo_resnet.yaml", uses_prior=True),
    "glass": AttackSpec("GLASS", "configs/glass_resnet.yaml", uses_prior=True),
    "rmle": AttackSpec("rMLE", "configs/rmle_resnet.yaml"),
    "lm": AttackSpec("LM", "configs/lm_resnet.yaml"),
    "in": AttackSpec("IN", "configs/in_resnet.yaml", learned=True),
    # issue 16's ablation: the paper's PFO ("pfo") with one extension of PFOExtended at a time, and all of them
    "pfo_pixel": AttackSpec("PFO+pixel", EXTENDED, uses_prior=True, extensions=("pixel",)),
    "pfo_radius": AttackSpec("PFO+radius", EXTENDED, uses_prior=True, extensions=("radius",)),
    "pfo_encoder": AttackSpec("PFO+encoder", EXTENDED, uses_prior=True, extensions=("encoder",)),
    "pfo_all": AttackSpec("PFO+all", EXTENDED, uses_prior=True, extensions=("pixel", "radius", "encoder")),
    # the calibrated PFO without the learned start (no encoder to train): the rule's radii and schedule, pixel stage
    "pfo_pixel_radius": AttackSpec("PFO+pixel+radius", EXTENDED, uses_prior=True, extensions=("pixel", "radius")),
    # the mean of --mean_chains chains (PFOExtended's `chains`), each with its share of the budget: PSNR's estimate
    "pfo_radius_mean": AttackSpec("PFO+radius+mean", EXTENDED, uses_prior=True, extensions=("radius", "mean")),
    # the inverse network's image as a guide (its decoder is IN's, trained on the public split), with the weight the
    # rule gives the split point (bench/calibrate_radius.py --option guide_weight), alone and with the radii
    "pfo_guide": AttackSpec("PFO+guide", EXTENDED, uses_prior=True, extensions=("guide",)),
    "pfo_radius_guide": AttackSpec("PFO+radius+guide", EXTENDED, uses_prior=True, extensions=("radius", "guide")),
    "pfo_pixel_radius_guide": AttackSpec(
        "PFO+pixel+radius+guide", EXTENDED, uses_prior=True, extensions=("pixel", "radius", "guide")
    ),
    # the guided PFO+radius's answer blended with the decoder's image, by the rule's guide_blend at the split point
    # (bench/calibrate_radius.py --option guide_blend): PSNR's estimate, at some cost in LPIPS
    "pfo_radius_guide_blend": AttackSpec(
        "PFO+radius+guide+blend", EXTENDED, uses_prior=True, extensions=("radius", "guide", "blend")
    ),
    # every extension that keeps one answer per target: pfo_all with the guide
    "pfo_all_guide": AttackSpec(
        "PFO+all+guide", EXTENDED, uses_prior=True, extensions=("pixel", "radius", "encoder", "guide")
    ),
}
# the radius rule's options each extension reads: a row is given only its extensions' (so that a rule gaining an option
# leaves the other rows, and their run keys, as they were); a bare value in the rule is a feature radius
RULE_OWNERS = {
    "radius": ("feature_radius", "image_radius", "pixel_radius", "steps"),
    "guide": ("guide_weight",),
    "blend": ("guide_blend",),
}
MEAN_CHAINS = 4  # the chains a "mean" row averages by default; each gets steps // chains: the target's budget holds
BLOCK_LR, PIXEL_LR = 0.05, 0.01  # PFO's learning rate, and the pixel stage's (configs/pfo_extended_resnet.yaml's)
CIFAR10_DATA = {"class_path": "pfo.data.CIFAR10", "init_args": {"resolution": 32}}
CIFAR10_PRIORS = {"cifar10": "configs/gan_cifar10.yaml", "tinyimagenet": "configs/gan_tinyimagenet.yaml"}
NAMED = "named:"  # a prior value naming a pretrained prior (pfo.models.load_prior resolves it) instead of a config


@dataclass(frozen=True)
class Setting:
    """What differs between the benchmark's settings; the protocol (budgets, attacks, table) is the same."""

    name: str
    victim_config: str  # trained when --victim is not given
    split_points: tuple[str, ...]  # every split point the setting may attack, in depth order
    default_splits: tuple[str, ...]
    priors: dict[str, str]  # prior name -> config to train, or NAMED + a pretrained prior's name
    decoder_config: str  # the inverse network's decoder, trained on the public split
    data: dict  # the targets' (and the utility measurement's) data module: its test split
    attacks: tuple[str, ...]  # the default rows (the ablation's rows are asked for with --attacks)
    encoder_config: str  # PFOExtended's learned start, trained on the public split per split point and prior


SETTINGS = {
    "cifar10": Setting(
        "cifar10",
        "configs/victim_cifar10_resnet18.yaml",
        tuple(SPLITS),
        tuple(SPLITS),
        CIFAR10_PRIORS,
        "configs/in_cifar10.yaml",
        CIFAR10_DATA,
        ("pfo", "glass", "rmle", "lm", "in"),
        "configs/encoder_cifar10.yaml",
    ),
    "faces": Setting(
        "faces",
        "configs/victim_lfw_resnet18.yaml",
        ("conv1", "maxpool", "layer1", "layer2", "layer3", "layer4"),
        ("layer2", "layer3", "layer4"),
        {"lfw": "configs/gan_lfw.yaml", "digiface": NAMED + "digiface-dcgan64"},
        "configs/in_lfw.yaml",
        {"class_path": "pfo.data.LFW", "init_args": {"resolution": 64}},
        ("pfo", "glass", "rmle", "lm", "in"),
        "configs/encoder_lfw.yaml",
    ),
    "vit": Setting(
        "vit",
        "configs/victim_cifar10_vit.yaml",
        ("patch_embed", *(f"blocks.{k}" for k in range(6))),
        ("blocks.0", "blocks.2", "blocks.5"),
        CIFAR10_PRIORS,
        "configs/in_cifar10.yaml",
        CIFAR10_DATA,
        ("pfo", "glass", "rmle", "in"),
        "configs/encoder_cifar10.yaml",
    ),
}


def pfo_stages(attack: str, steps: int) -> list[int]:
    """The steps per stage of a PFO row: 40 % for W+, the rest over three block stages; with the pixel stage, the
    last block stage gives it half of its steps."""
    first = round(steps * 0.4)
    rest = steps - first
    stages = [first, rest // 3, rest // 3, rest - 2 * (rest // 3)]
    if "pixel" in ATTACKS[attack].extensions:
        pixel = stages[-1] // 2
        stages = [*stages[:-1], stages[-1] - pixel, pixel]
    return stages


def chains_of(options: Options, attack: str) -> int:
    """How many chains a row's attack averages (1 but for a "mean" row)."""
    return options.mean_chains if "mean" in ATTACKS[attack].extensions else 1


def step_overrides(attack: str, steps: int, n_init: int, chains: int = 1) -> list[str]:
    """The same per-target step budget for every optimisation attack, spread over its phases. PFO's rows share the
    paper's stages (40 % for W+, the rest over three block stages); with the pixel stage, the last block stage gives
    it half of its steps, so the budget stays ``steps``; a mean row's ``chains`` share it (``steps // chains`` each)."""
    if attack == "pfo" or ATTACKS[attack].extensions:
        stages = pfo_stages(attack, steps // chains)
        lr = []
        if "pixel" in ATTACKS[attack].extensions:
            lr = ["--model.init_args.lr", json.dumps([BLOCK_LR] * (len(stages) - 1) + [PIXEL_LR])]
        elif attack != "pfo":
            lr = ["--model.init_args.lr", str(BLOCK_LR)]
        return [
            "--model.init_args.steps",
            json.dumps(stages),
            *lr,
            "--model.init_args.n_init",
            str(n_init),
            "--model.init_args.init_chunk",
            str(min(n_init, 64)),
            *(["--model.init_args.chains", str(chains)] if chains > 1 else []),
        ]
    if attack == "glass":
        short = steps // 5
        return [
            "--model.init_args.short_steps",
            str(short),
            "--model.init_args.steps",
            str(steps - short),
            "--model.init_args.n_init",
            str(n_init),
            "--model.init_args.init_chunk",
            str(min(n_init, 64)),
            "--model.init_args.candidates",
            str(min(4, n_init)),
        ]
    if attack in ("rmle", "lm"):
        return ["--model.init_args.steps", str(steps)]
    return []


def init_forward_passes(attack: str, n_init: int) -> int:
    return n_init if ATTACKS[attack].uses_prior else 0


def defense_arg(noise: float | None) -> list[str]:
    if not noise:
        return ["--model.init_args.defense", "null"]
    spec = {"class_path": "pfo.attacks.GaussianNoise", "init_args": {"scale": noise}}
    return ["--model.init_args.defense", json.dumps(spec)]


@dataclass
class Options:
    setting: str = "cifar10"
    targets: int = 16
    batch_size: int = 16  # fixed, not the target count: a result is bitwise only at a fixed batch size, so a run
    # extended to more targets keeps it (the run folder's fingerprint refuses another one)
    steps: int = 500
    n_init: int = 64
    splits: list[str] = field(default_factory=lambda: list(SPLITS))
    attacks: list[str] = field(default_factory=lambda: list(SETTINGS["cifar10"].attacks))  # the ablation: opt in
    priors: list[str] = field(default_factory=lambda: list(CIFAR10_PRIORS))
    noise: float = 0.1
    victim_overrides: list[str] = field(default_factory=list)
    prior_overrides: list[str] = field(default_factory=list)
    decoder_epochs: int = 1  # each inverse-network decoder's epochs over the public half (its config says 2)
    decoder_overrides: list[str] = field(default_factory=list)
    # the ablation's extensions (PFOExtended): the pixel ball, the radius rule chosen on public images
    # (bench/calibrate_radius.py's radius_rule.yaml), the encoder's epochs over the public half
    pixel_radius: float = 0.02
    radius_rule: dict | None = None
    encoder_epochs: int = 1
    mean_chains: int = MEAN_CHAINS  # the chains of a "mean" row (pfo_radius_mean)
    encoder_overrides: list[str] = field(default_factory=list)
    extra_attack_overrides: list[str] = field(default_factory=list)
    lpips_weights: str | None = None
    report_only: bool = False
    utility_images: int = 1000  # test images the victim's accuracy under each defense level is measured on
    utility_data: dict | None = None  # default: the setting's data
    cache: Path = Path("bench_cache")
    out: Path = Path("bench_results")

    @property
    def spec(self) -> Setting:
        return SETTINGS[self.setting]

    @property
    def data(self) -> dict:
        return self.utility_data or self.spec.data

    @classmethod
    def for_setting(cls, setting: str, quick: bool = False) -> Options:
        """The protocol's defaults in ``setting`` (``--quick``: minutes, the first two default split points and the
        first prior)."""
        spec = SETTINGS[setting]
        options = cls(
            setting=setting,
            splits=list(spec.default_splits),
            attacks=list(spec.attacks),
            priors=list(spec.priors),
        )
        if quick:
            for key, value in QUICK.items():
                setattr(options, key, value)
            options.splits, options.priors = list(spec.default_splits[:2]), list(spec.priors)[:1]
        return options


QUICK = dict(
    targets=4,
    steps=40,
    n_init=8,
    utility_images=200,
    victim_overrides=[
        "--trainer.max_epochs",
        "1",
        "--trainer.limit_train_batches",
        "30",
        "--trainer.limit_val_batches",
        "4",
        "--trainer.check_val_every_n_epoch",
        "1",
        "--model.init_args.progressive_resizing",
        "[]",
    ],
    prior_overrides=["--trainer.max_steps", "100", "--trainer.max_time", "null"],
    decoder_overrides=["--trainer.limit_train_batches", "30"],
    encoder_overrides=["--trainer.limit_train_batches", "30"],
)


def _train(config: str, name: str, folder: Path, overrides: list[str], product: str) -> Path:
    """Run ``train.py fit`` for ``config`` into ``folder/name`` and return the exported ``product`` file."""
    import train

    target = folder / name / product
    if target.exists():
        return target
    train.cli_main(
        [
            "fit",
            "--config",
            str(REPO / config),
            "--trainer.logger.init_args.save_dir",
            str(folder),
            "--trainer.logger.init_args.name",
            name,
            *overrides,
        ]
    )
    if not target.exists():
        raise RuntimeError(f"training {config} did not write {target}")
    return target


def ensure_victim(options: Options, given: str | None) -> Path:
    if given:
        return Path(given)
    name = "victim" if options.setting == "cifar10" else f"victim_{options.setting}"
    return _train(options.spec.victim_config, name, options.cache, options.victim_overrides, "victim.pt")


def ensure_prior(options: Options, name: str, given: dict[str, str]) -> Path | str:
    """The prior's file (trained and cached when not given), or the name of a pretrained prior."""
    if name in given:
        return given[name]
    config = options.spec.priors[name]
    if config.startswith(NAMED):
        return config
    return _train(config, f"prior_{name}", options.cache, options.prior_overrides, "generator.pt")


def prior_argument(prior: Path | str) -> str:
    """What the attack's ``generator`` option gets: a file's path or a pretrained prior's name."""
    return prior[len(NAMED) :] if isinstance(prior, str) and prior.startswith(NAMED) else str(prior)


def file_digest(path: str | Path) -> str:
    """sha256 of a file's contents: the identity of a victim or prior file, whatever its path."""
    from pfo.artifacts import file_digest as digest  # remembered per path, size and mtime

    return digest(path)


def identity(thing: Path | str | None) -> str | None:
    """A victim's or prior's identity: its file's digest, or a pretrained prior's name."""
    if thing is None:
        return None
    if not Path(prior_argument(thing)).is_file():
        return prior_argument(thing)
    return file_digest(str(thing))


def run_key(options: Options, victim: Path | None, prior: Path | str | None) -> str:
    """A short key of every setting that decides an attack run's result besides its cell (attack, split point,
    prior name, defense level): the victim's and prior's identities, the step budget, n_init and the extra
    overrides. The target count is left out on purpose: a run with more targets extends a finished one."""
    settings = {
        "setting": options.setting,
        "victim": identity(victim),
        "prior": identity(prior),
        "steps": options.steps,
        "n_init": options.n_init,
        "batch_size": options.batch_size,
        "overrides": options.extra_attack_overrides,
        "data": options.spec.data,
    }
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:10]


def ensure_decoder(options: Options, victim: Path, split: str, noise: float | None) -> Path:
    name = f"decoder_{split}_noise{noise or 0:g}"
    if options.setting != "cifar10":
        name = f"{options.setting}_{name}"
    name += f"_{file_digest(str(victim))[:10]}"
    overrides = [
        "--model.init_args.victim",
        str(victim),
        "--model.init_args.split_point",
        split,
        *defense_arg(noise),
        "--trainer.max_epochs",
        str(options.decoder_epochs),
        *options.decoder_overrides,
    ]
    return _train(options.spec.decoder_config, name, options.cache, overrides, "decoder.pt")


def ensure_encoder(options: Options, victim: Path, split: str, noise: float | None, prior: Path | str) -> Path:
    """PFOExtended's encoder for this victim, split point, defense level and prior, trained on the public split
    (cached under ``--cache``, named after the victim's and the prior's identities)."""
    name = f"encoder_{options.setting}_{split}_noise{noise or 0:g}"
    name += f"_{file_digest(str(victim))[:10]}_{hashlib.sha256(str(identity(prior)).encode()).hexdigest()[:10]}"
    overrides = [
        "--model.init_args.victim",
        str(victim),
        "--model.init_args.generator",
        prior_argument(prior),
        "--model.init_args.split_point",
        split,
        *defense_arg(noise),
        "--trainer.max_epochs",
        str(options.encoder_epochs),
        *options.encoder_overrides,
    ]
    return _train(options.spec.encoder_config, name, options.cache, overrides, "encoder.pt")


def extension_overrides(
    options: Options, attack: str, encoder: Path | None, decoder: Path | None = None, split: str | None = None
) -> list[str]:
    """PFOExtended's options for an ablation row: each extension on or off, as the row names it; the rule given is
    only the options the row's extensions own (a guide row without the radii reads only ``guide_weight``)."""
    on = ATTACKS[attack].extensions
    if ("radius" in on or "guide" in on) and not options.radius_rule:
        raise ValueError(
            f"the {ATTACKS[attack].name} row needs a radius rule chosen on public images: run "
            "bench/calibrate_radius.py and pass its radius_rule.yaml with --radius_rule"
        )
    if "encoder" in on and encoder is None:
        raise ValueError(f"the {ATTACKS[attack].name} row needs its encoder (ensure_encoder)")
    rule = attack_rule(options, attack)
    for extension, option in (("guide", "guide_weight"), ("blend", "guide_blend")):
        if extension not in on:
            continue
        entry = rule.get(split)
        if decoder is None or not isinstance(entry, dict) or option not in entry:
            raise ValueError(
                f"the {ATTACKS[attack].name} row needs IN's decoder and a {option} for {split} in --radius_rule: "
                f"run bench/calibrate_radius.py --option {option} (with --rule, to add it to the radii)"
            )
    guide = ["--model.init_args.guide", str(decoder)] if "guide" in on else []
    return [
        "--model.init_args.pixel_stage",
        str("pixel" in on).lower(),
        "--model.init_args.pixel_radius",
        str(options.pixel_radius),
        "--model.init_args.radius_rule",
        json.dumps(rule) if rule is not None else "null",
        "--model.init_args.init",
        "both" if "encoder" in on else "random",
        "--model.init_args.encoder",
        str(encoder) if "encoder" in on else "null",
        *guide,
    ]


def row_rule(options: Options, attack: str) -> dict | None:
    """The part of ``--radius_rule`` a row reads: the options its extensions own (RULE_OWNERS), at the split points
    that set any of them; None for a row without such an extension."""
    on, rule = ATTACKS[attack].extensions, options.radius_rule
    owned = {option for extension in on for option in RULE_OWNERS.get(extension, ())}
    if not rule or not owned:
        return None
    kept = {}
    for split, entry in rule.items():
        if not isinstance(entry, dict):  # a bare feature radius
            if "radius" in on:
                kept[split] = entry
            continue
        entry = {k: v for k, v in entry.items() if k in owned}
        if entry:
            kept[split] = entry
    return kept


def attack_rule(options: Options, attack: str) -> dict | None:
    """The rule a row's attack is given: the part it reads, shrunk to a chain's budget in a mean row."""
    rule = row_rule(options, attack)
    return None if rule is None else chain_rule(rule, ATTACKS[attack].extensions, options.mean_chains)


def chain_rule(rule: dict, extensions: tuple[str, ...], chains: int = MEAN_CHAINS) -> dict:
    """The radius rule as one of a "mean" row's chains uses it: each schedule shrunk to a chain's share of the
    budget (proportionally, the rounding remainder to the first stage), so the chains together spend the row's."""
    if "mean" not in extensions:
        return rule
    scaled = {}
    for split, entry in rule.items():
        if isinstance(entry, dict) and "steps" in entry:
            total = sum(entry["steps"])
            steps = [s * (total // chains) // total for s in entry["steps"]]
            steps[0] += total // chains - sum(steps)
            entry = {**entry, "steps": steps}
        scaled[split] = entry
    return scaled


def extension_key(options: Options, attack: str, split: str | None = None) -> str:
    """A short key of the extension settings an ablation row depends on ('' for every other row). A guide row's
    reads only its split point's rule entry, so that calibrating another split point later keeps its runs."""
    on = ATTACKS[attack].extensions
    if not on:
        return ""
    settings = {
        "pixel_radius": options.pixel_radius if "pixel" in on else None,
        "radius_rule": row_rule(options, attack) if "radius" in on else None,
        "encoder_epochs": options.encoder_epochs if "encoder" in on else None,
        "encoder_overrides": options.encoder_overrides if "encoder" in on else None,
    }
    if "mean" in on:  # only here: every other row keeps the key (and the finished runs) it had
        settings["chains"] = options.mean_chains
    if "guide" in on:  # the guide's weight (and radii) at this split point, and how its decoder trained
        settings["radius_rule"] = (row_rule(options, attack) or {}).get(split)
        settings["decoder"] = [options.decoder_epochs, options.decoder_overrides]
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:6]


def run_name(attack: str, split: str, prior: str | None, noise: float | None, key: str = "") -> str:
    """``<attack>_<split>_<prior>_noise<level>[_<run key>]``."""
    return f"{attack}_{split}_{prior or 'none'}_noise{noise or 0:g}" + (f"_{key}" if key else "")


def run_attack(
    options: Options,
    attack: str,
    victim: Path,
    split: str,
    prior: Path | str | None,
    decoder: Path | None,
    noise: float | None,
    name: str,
    encoder: Path | None = None,
) -> dict:
    """One attack run (resumed if its folder exists); returns its summary with the per-target rows."""
    from pfo.attacks.cli import AttackCLI

    spec = ATTACKS[attack]
    args = [
        "--config",
        str(REPO / spec.config),
        "--model.init_args.victim",
        str(victim),
        "--model.init_args.split_point",
        split,
        *defense_arg(noise),
        *step_overrides(attack, options.steps, options.n_init, chains_of(options, attack)),
        "--model.init_args.progress",
        "false",
        "--data.count",
        str(options.targets),
        "--data.batch_size",
        str(options.batch_size),
        "--trainer.logger.init_args.save_dir",
        str(options.out),
        "--trainer.logger.init_args.name",
        name,
        "--trainer.enable_progress_bar",
        "false",
        "--data.data",
        json.dumps(options.spec.data),
        *options.extra_attack_overrides,
    ]
    if attack == "in":
        args = _drop_option(args, "--model.init_args.progress")  # no optimisation loop, no such option
        args += ["--model.init_args.decoder", str(decoder)]
    if spec.uses_prior:
        args += ["--model.init_args.generator", prior_argument(prior)]
    if spec.extensions:
        args += extension_overrides(options, attack, encoder, decoder, split)
    if options.lpips_weights:
        args += ["--model.init_args.lpips_weights", options.lpips_weights]
    AttackCLI(args=args)
    summary = finished_summary(options.out / name)
    if summary is None:
        raise RuntimeError(f"the attack run {options.out / name} ended without writing summary.json")
    return summary


def _drop_option(args: list[str], option: str) -> list[str]:
    out, skip = [], False
    for a in args:
        if skip:
            skip = False
            continue
        if a == option:
            skip = True
            continue
        out.append(a)
    return out


def cell(summary: dict, metric: str, digits: int = 2) -> str:
    stats = summary["metrics"].get(metric)
    if not stats or stats["n"] == 0 or math.isnan(stats["mean"]):
        return "-"
    return f"{stats['mean']:.{digits}f} / {stats['median']:.{digits}f}"


def utility_cell(utility: dict | None) -> str:
    return f"{utility['accuracy']:.3f} ({utility['images']} images)" if utility else "-"


def markdown_table(rows: list[dict]) -> str:
    """One row per (defense, prior, attack, split): metrics as mean / median."""
    header = (
        "| defense | attack | prior | split | PSNR (dB) | SSIM | LPIPS | feature dist. | s / image | "
        "init fwd passes | collapsed | victim acc. under defense |"
    )
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for r in rows:
        s = r["summary"]
        lines.append(
            f"| {r['defense']} | {r['attack']} | {r['prior']} | {r['split']} | {cell(s, 'psnr')} | "
            f"{cell(s, 'ssim', 3)} | {cell(s, 'lpips', 4)} | {cell(s, 'feature_distance', 4)} | "
            f"{cell(s, 'seconds', 2)} | {r['init_passes']} | {s['collapsed']}/{s['targets']} | "
            f"{utility_cell(r.get('utility'))} |"
        )
    return "\n".join(lines)


def per_target(summary: dict) -> dict[int, dict[str, float]]:
    """A finished run's per-target metrics (its ``metrics.csv``), by target index."""
    import csv

    with open(Path(summary["folder"]) / "metrics.csv", newline="") as stream:
        return {
            int(r["index"]): {k: float(r[k]) for k in ("psnr", "lpips") if r.get(k)} for r in csv.DictReader(stream)
        }


def paired_rows(rows: list[dict], reference: str = "PFO") -> list[dict]:
    """Every row against the paper's PFO with the same prior, split point and defense, target by target (the same
    targets: a difference per target removes how hard each target is). For a row without a prior, one comparison
    per prior. ``difference`` is row - PFO in PSNR (dB): positive where the row is better."""
    import statistics

    targets = [per_target(r["summary"]) for r in rows]  # each run's metrics.csv read once
    references = {(r["defense"], r["split"], r["prior"]): t for r, t in zip(rows, targets) if r["attack"] == reference}
    paired = []
    for r, mine in zip(rows, targets):
        if r["attack"] == reference:
            continue
        for (defense, split, prior), theirs in references.items():
            if (defense, split) != (r["defense"], r["split"]) or r["prior"] not in ("-", prior):
                continue
            common = sorted(set(mine) & set(theirs))
            if not common:
                continue
            diff = [mine[i]["psnr"] - theirs[i]["psnr"] for i in common]
            lpips = [
                mine[i]["lpips"] - theirs[i]["lpips"] for i in common if "lpips" in mine[i] and "lpips" in theirs[i]
            ]
            paired.append(
                {
                    "defense": defense,
                    "split": split,
                    "prior": prior,
                    "attack": r["attack"],
                    "targets": len(common),
                    "psnr_mean": statistics.fmean(diff),
                    "psnr_median": statistics.median(diff),
                    "psnr_std": statistics.stdev(diff) if len(diff) > 1 else 0.0,
                    "lpips_mean": statistics.fmean(lpips) if lpips else float("nan"),
                    "row_ahead": sum(d > 0 for d in diff),
                    "reference_ahead": sum(d < 0 for d in diff),
                }
            )
    return paired


def paired_table(paired: list[dict], reference: str = "PFO") -> str:
    header = (
        f"| defense | split | prior | attack | PSNR - {reference} (dB) mean / median (std) | LPIPS - {reference} | "
        f"targets the attack is ahead on | targets {reference} is ahead on |"
    )
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for p in paired:
        lines.append(
            f"| {p['defense']} | {p['split']} | {p['prior']} | {p['attack']} | {p['psnr_mean']:+.2f} / "
            f"{p['psnr_median']:+.2f} ({p['psnr_std']:.2f}) | {p['lpips_mean']:+.4f} | {p['row_ahead']}/{p['targets']} "
            f"| {p['reference_ahead']}/{p['targets']} |"
        )
    return "\n".join(lines)


def _pyplot():
    """matplotlib's pyplot on the file-only backend, or None where matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def reconstruction_figure(
    rows: list[dict], split: str, path: Path, count: int = 8, data: dict | None = None
) -> Path | None:
    """Rows: the originals and each attack's reconstructions at ``split`` without a defense, each row labelled with
    its attack, prior and mean PSNR; columns: the first ``count`` targets (``data``: the targets' data module,
    default CIFAR-10)."""
    from torchvision.utils import make_grid, save_image

    chosen = [r for r in rows if r["split"] == split and r["defense"] == "none"]
    if not chosen:
        return None
    first = torch.load(Path(chosen[0]["summary"]["folder"]) / "reconstructions.pt", weights_only=True)
    index = first["index"][:count]
    images, labels = [], []
    originals = originals_for(index, data or CIFAR10_DATA)
    if originals is not None:
        images.append(originals)
        labels.append("original")
    for r in chosen:
        data = torch.load(Path(r["summary"]["folder"]) / "reconstructions.pt", weights_only=True)
        images.append(data["reconstructions"][:count])
        psnr = r["summary"]["metrics"].get("psnr", {}).get("mean", math.nan)
        labels.append(f"{r['attack']}" + (f" ({r['prior']})" if r["prior"] != "-" else "") + f"\n{psnr:.1f} dB")
    plt = _pyplot()
    if plt is None:  # the same grid, without the labels
        save_image(torch.cat(images), path, nrow=len(index), padding=1, pad_value=1.0)
        return path
    fig, axes = plt.subplots(len(images), 1, figsize=(1.8 + 0.9 * len(index), 0.3 + 0.9 * len(images)), squeeze=False)
    for ax, row, label in zip(axes[:, 0], images, labels):
        grid = make_grid(row.float().clamp(0, 1), nrow=len(index), padding=1, pad_value=1.0)
        ax.imshow(grid.permute(1, 2, 0).numpy(), interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
    fig.suptitle(f"reconstructions at {split}, no defense", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


@functools.cache
def _test_set(data: str):
    """Built once for every split point's figure (the targets are the same test images); ``data`` is the data
    module's spec as JSON (hashable)."""
    from pfo.artifacts import build_from_config
    from pfo.data import ImageDataModule

    spec = json.loads(data)
    spec = {**spec, "init_args": {**spec.get("init_args", {}), "cache": False}}
    return build_from_config(spec, ImageDataModule).dataset("test")


def originals_for(index: torch.Tensor, data: dict) -> torch.Tensor | None:
    try:
        dataset = _test_set(json.dumps(data, sort_keys=True))
        return torch.stack([dataset[int(i)]["image"] for i in index])
    except Exception:  # the figure then shows reconstructions only
        return None


ATTACK_COLOURS = {"PFO": "tab:blue", "GLASS": "tab:orange", "rMLE": "tab:green", "LM": "tab:red", "IN": "tab:purple"}
PRIOR_STYLES = {  # line, marker; dashed: the out-of-distribution priors
    "-": ("-", "o"),
    "cifar10": ("-", "o"),
    "lfw": ("-", "o"),
    "tinyimagenet": ("--", "^"),
    "digiface": ("--", "^"),
}


def psnr_plot(rows: list[dict], path: Path, splits: list[str] | tuple[str, ...] = SPLITS) -> Path | None:
    """Mean PSNR against the split point (``splits``: their order): one panel per defense level, a colour per
    attack, a line style per prior (dashed: the OOD prior)."""
    plt = _pyplot()
    if plt is None:
        print("matplotlib not installed: skipping the PSNR-vs-split plot (pip install matplotlib)")
        return None
    defenses = sorted({r["defense"] for r in rows}, key=lambda d: (d != "none", d))
    fig, axes = plt.subplots(
        1, len(defenses), figsize=(6 * len(defenses), 4.5), sharey=True, squeeze=False, layout="constrained"
    )
    for ax, defense in zip(axes[0], defenses):
        groups: dict[tuple, list] = {}
        for r in rows:
            if r["defense"] == defense:
                groups.setdefault((r["attack"], r["prior"]), []).append(r)
        for (attack, prior), items in sorted(groups.items()):
            items = sorted(items, key=lambda r: splits.index(r["split"]))
            xs = [splits.index(r["split"]) for r in items]
            ys = [r["summary"]["metrics"].get("psnr", {}).get("mean", math.nan) for r in items]
            line, marker = PRIOR_STYLES.get(prior, (":", "s"))
            label = attack + (f" ({prior} prior)" if prior != "-" else "")
            ax.plot(xs, ys, color=ATTACK_COLOURS.get(attack), linestyle=line, marker=marker, label=label)
        ax.set_title(f"defense: {defense}")
        ax.set_xticks(range(len(splits)), list(splits))
        ax.set_xlabel("split point")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel("PSNR (dB), mean over targets")
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def finished_summary(folder: Path) -> dict | None:
    """The summary of a finished attack run, or None when the run has not finished."""
    path = folder / "summary.json"
    if not path.is_file():
        return None
    summary = json.loads(path.read_text())
    summary["folder"] = str(folder)
    return summary


def victim_utility(options: Options, victim: Path | None, split: str, noise: float | None) -> dict | None:
    """The victim's test accuracy when the server predicts from this split point's features under the defense.

    Measured on ``options.utility_images`` test images spread over the split (the attack targets are 16 of them:
    too few for an accuracy), with the noise drawn as the attack runs draw it. Cached in ``--out`` per split point
    and defense level; with ``victim`` None (``--report_only``) only the cached value is read.
    """
    setting = "" if options.setting == "cifar10" else f"{options.setting}_"
    path = options.out / f"utility_{setting}{split}_noise{noise or 0:g}.json"
    if path.is_file():
        cached = json.loads(path.read_text())
        if victim is None or cached["victim"] == str(victim):
            return cached
    if victim is None:
        return None
    from torch.utils.data import DataLoader, Subset

    from pfo.artifacts import build_from_config
    from pfo.attacks import GaussianNoise, accuracy_under_defense
    from pfo.attacks.targets import spread_indices
    from pfo.data import ImageDataModule
    from pfo.models import load_victim

    dataset = build_from_config(options.data, ImageDataModule).dataset("test")
    subset = Subset(dataset, spread_indices(len(dataset), options.utility_images))
    accuracy = accuracy_under_defense(
        load_victim(victim, split_point=split),
        GaussianNoise(noise) if noise else None,
        DataLoader(subset, batch_size=200),
    )
    result = {"accuracy": accuracy, "images": len(subset), "victim": str(victim)}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result) + "\n")
    return result


@dataclass(frozen=True)
class Cell:
    """One attack run of the table: an attack at a split point, with a prior (PFO, GLASS) and a defense level.
    ``key``: the run key of everything else that decides its result (``run_key``); empty when unknown
    (``--report_only`` without ``--victim``), in which case the run is found by its name's prefix."""

    attack: str
    split: str
    prior: str | None
    noise: float | None
    key: str = ""
    depth: int = 0  # the split point's position in the setting, for the cost estimate

    @property
    def name(self) -> str:
        return run_name(self.attack, self.split, self.prior, self.noise, self.key)

    @property
    def cost(self) -> float:
        """A rough relative cost, only to start the longest runs first when cells run in parallel: an inverse
        network trains a decoder over the whole public half; deeper split points cost more per step."""
        weight = {"in": 100.0, "glass": 1.5, "lm": 1.2, "pfo": 1.0, "rmle": 0.6}.get(self.attack, 1.0)
        if "encoder" in ATTACKS[self.attack].extensions:
            weight += 50.0  # its encoder trains over the public half first
        if "guide" in ATTACKS[self.attack].extensions:
            weight += 50.0  # its decoder (IN's, often cached) trains over the public half first
        return weight * (1 + self.depth)


def table_cells(options: Options, keys: dict[str | None, str] | None = None) -> list[Cell]:
    """Every run of the table, in the table's order: defense level, split point, attack, prior. ``keys``: the run
    key per prior name (None: the attacks without a prior)."""
    keys = keys or {}
    order = options.spec.split_points

    def key(attack: str, prior: str | None, split: str) -> str:
        base, extension = keys.get(prior, ""), extension_key(options, attack, split)
        return f"{base}-{extension}" if base and extension else base

    return [
        Cell(attack, split, prior, noise, key(attack, prior, split), order.index(split))
        for noise in [None] + ([options.noise] if options.noise else [])
        for split in options.splits
        for attack in options.attacks
        for prior in (options.priors if ATTACKS[attack].uses_prior else [None])
    ]


def run_keys(options: Options, victim: Path | None, priors: dict[str, Path | str]) -> dict[str | None, str]:
    """The run key of each prior's runs and of the runs without a prior; none without the victim."""
    if victim is None:
        return {}
    return {None: run_key(options, victim, None), **{n: run_key(options, victim, p) for n, p in priors.items()}}


def cell_folder(options: Options, cell: Cell) -> Path:
    """The cell's run folder; without a key, the one finished run whose name starts with the cell's name."""
    if cell.key:
        return options.out / cell.name
    found = sorted(p.parent for p in options.out.glob(f"{cell.name}_*/summary.json"))
    if len(found) > 1:
        raise ValueError(
            f"{len(found)} finished runs match {cell.name} under {options.out} ({', '.join(p.name for p in found)}): "
            "they differ in victim, prior or budget; pass --victim and --prior to choose"
        )
    return found[0] if found else options.out / cell.name


def is_complete(options: Options, cell: Cell) -> bool:
    """Finished with every target asked for (a run with fewer targets is resumed and extended). The run key in
    the folder's name already guarantees that the finished targets were computed with the same settings."""
    summary = finished_summary(cell_folder(options, cell))
    return summary is not None and summary["targets"] >= options.targets


def compute_cell(options: Options, cell: Cell, victim: Path, priors: dict[str, Path | str]) -> dict:
    """Train (or find cached) the cell's decoder when it needs one (IN, a guide row) and its encoder, then run (or
    resume) its attack."""
    needs_decoder = cell.attack == "in" or "guide" in ATTACKS[cell.attack].extensions
    decoder = ensure_decoder(options, victim, cell.split, cell.noise) if needs_decoder else None
    prior = priors.get(cell.prior) if cell.prior else None
    encoder = None
    if "encoder" in ATTACKS[cell.attack].extensions:
        encoder = ensure_encoder(options, victim, cell.split, cell.noise, prior)
    return run_attack(options, cell.attack, victim, cell.split, prior, decoder, cell.noise, cell.name, encoder)


def _worker_start(threads: int) -> None:
    torch.set_num_threads(threads)


def _compute_cell_logged(options: Options, cell: Cell, victim: Path, priors: dict[str, Path], log: Path) -> float:
    """``compute_cell`` in a worker process, its output (Lightning's included) sent to ``log``; returns seconds."""
    import os
    import time

    log.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(log, "a") as stream:
        os.dup2(stream.fileno(), 1)
        os.dup2(stream.fileno(), 2)
        try:
            compute_cell(options, cell, victim, priors)
        except SystemExit as exit:  # a rejected option (jsonargparse) or an interrupt (Lightning): this run failed
            raise RuntimeError(f"it exited with code {exit.code}: a rejected option or an interrupt") from None
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
    return time.perf_counter() - start


def compute_in_parallel(options: Options, cells: list[Cell], victim: Path, priors: dict[str, Path], jobs: int) -> None:
    """Run ``cells`` in ``jobs`` worker processes, the cores shared evenly among them, longest first.

    The attacks' small convolutions use several cores poorly, so independent runs side by side finish the table
    sooner than one run after another with every core each. Each run's output goes to ``<out>/logs/<run>.log``; a
    run that fails does not stop the others, and the failures are raised together at the end.
    """
    import multiprocessing
    import time
    from concurrent.futures import ProcessPoolExecutor, as_completed

    threads = max(1, torch.get_num_threads() // jobs)
    ordered = sorted(cells, key=lambda c: -c.cost)
    print(f"running {len(ordered)} attack runs in {jobs} processes of {threads} thread(s) each")
    start, failures = time.perf_counter(), []
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(jobs, mp_context=context, initializer=_worker_start, initargs=(threads,)) as pool:
        logs = {c: options.out / "logs" / f"{c.name}.log" for c in ordered}
        futures = {pool.submit(_compute_cell_logged, options, c, victim, priors, logs[c]): c for c in ordered}
        for done, future in enumerate(as_completed(futures), 1):
            cell, log = futures[future], logs[futures[future]]
            try:
                seconds = future.result()
                print(f"[{done}/{len(ordered)}] {cell.name}: {seconds / 60:.1f} min (log: {log})", flush=True)
            except Exception as error:  # noqa: BLE001 - reported with its log below, the other runs go on
                failures.append(f"{cell.name}: {type(error).__name__}: {error} (log: {log})")
                print(f"[{done}/{len(ordered)}] {cell.name}: FAILED (log: {log})", flush=True)
    print(f"{len(ordered)} attack runs in {(time.perf_counter() - start) / 60:.1f} min")
    if failures:
        raise RuntimeError(f"{len(failures)} benchmark run(s) failed:\n" + "\n".join(failures))


def run(
    options: Options, victim_path: str | None = None, prior_paths: dict[str, str] | None = None, jobs: int = 1
) -> list[dict]:
    """Compute what the table lacks (with ``jobs`` > 1 in parallel processes) and return its rows."""
    options.cache.mkdir(parents=True, exist_ok=True)
    options.out.mkdir(parents=True, exist_ok=True)
    needed = options.priors if any(ATTACKS[a].uses_prior for a in options.attacks) else []
    if options.report_only:  # tabulate the finished runs under --out; train and attack nothing
        victim = Path(victim_path) if victim_path else None
        given = prior_paths or {}
        priors = {
            n: ensure_prior(options, n, given) for n in needed if n in given or options.spec.priors[n].startswith(NAMED)
        }
    else:
        victim = ensure_victim(options, victim_path)
        priors = {name: ensure_prior(options, name, prior_paths or {}) for name in needed}
    known = victim if set(priors) == set(needed) else None  # without every identity, find the runs by name
    cells = table_cells(options, run_keys(options, known, priors))
    levels = dict.fromkeys((c.split, c.noise) for c in cells)  # each split point and defense level once, in order
    utility = {(split, noise): victim_utility(options, victim, split, noise) for split, noise in levels}
    if not options.report_only:
        missing = [c for c in cells if not is_complete(options, c)]
        if jobs > 1 and len(missing) > 1:
            compute_in_parallel(options, missing, victim, priors, jobs)
        else:
            for c in missing:
                compute_cell(options, c, victim, priors)
    rows = []
    for c in cells:
        summary = finished_summary(cell_folder(options, c))
        if summary is None:
            continue  # --report_only: a run that never finished
        rows.append(
            {
                "attack": ATTACKS[c.attack].name,
                "prior": c.prior or "-",
                "split": c.split,
                "defense": "none" if not c.noise else f"gaussian {c.noise:g}",
                "init_passes": init_forward_passes(c.attack, options.n_init),
                "utility": utility[c.split, c.noise],
                "summary": summary,
            }
        )
    return rows


def load_radius_rule(path: Path, parser: argparse.ArgumentParser) -> dict:
    """The ``radius_rule`` of calibrate_radius.py's file (``radius_rule: {split: ...}`` or the mapping itself), or
    of an attack config that ships one (``model.init_args.radius_rule``: configs/pfo_extended_resnet.yaml)."""
    import yaml

    try:
        loaded = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as error:
        parser.error(f"--radius_rule {path}: cannot read it ({error}); bench/calibrate_radius.py writes it")
    if isinstance(loaded, dict) and "model" in loaded:
        loaded = (loaded["model"] or {}).get("init_args", {}).get("radius_rule")
        if loaded is None:
            parser.error(f"--radius_rule {path}: an attack config without `model.init_args.radius_rule`")
    return loaded.get("radius_rule", loaded) if isinstance(loaded, dict) else loaded


def check_radius_rule(options: Options) -> None:
    """Refuse a rule that the rows reading it cannot use (a bad radius, or a schedule with other stages or another
    budget than the row's), before any work; ``ValueError`` names the row."""
    from pfo.attacks.pfo_extended import normalise_rule

    for attack in options.attacks:
        on = ATTACKS[attack].extensions
        if "radius" not in on and "guide" not in on:
            continue
        stages = pfo_stages(attack, options.steps // chains_of(options, attack))  # a chain's (a mean row's share)
        try:
            normalise_rule(attack_rule(options, attack), len(stages) - 1 - ("pixel" in on), stages)
        except ValueError as error:
            raise ValueError(f"the {ATTACKS[attack].name} row (steps {stages}) cannot use it: {error}") from None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--setting",
        choices=list(SETTINGS),
        default="cifar10",
        help="cifar10 (ResNet-18, 32 px), faces (LFW ResNet-18, 64 px) or vit (CIFAR-10 ViT); default cifar10",
    )
    parser.add_argument("--quick", action="store_true", help="a few minutes: tiny budgets, two split points")
    parser.add_argument("--targets", type=int)
    parser.add_argument("--batch_size", type=int, help="targets attacked at once (default 16; part of each run's key)")
    parser.add_argument("--steps", type=int, help="optimisation steps per target (every attack)")
    parser.add_argument("--n_init", type=int, help="latent candidates scored per target (PFO, GLASS)")
    parser.add_argument("--splits", nargs="+", help="split points of the setting (default: its usual ones)")
    parser.add_argument(
        "--attacks",
        nargs="+",
        choices=list(ATTACKS),
        help="rows of the table (default: the setting's baselines and PFO; the ablation of PFOExtended: pfo_pixel, "
        "pfo_radius, pfo_encoder, pfo_all, pfo_pixel_radius, pfo_radius_mean; the guide: pfo_guide, pfo_radius_guide, "
        "pfo_pixel_radius_guide, pfo_all_guide; the blend with the guide's image: pfo_radius_guide_blend)",
    )
    parser.add_argument("--priors", nargs="+", help="prior names of the setting (default: all of them)")
    parser.add_argument(
        "--noise", type=float, help="std of the Gaussian-noise defense (default 0.1; 0: no defense rows)"
    )
    parser.add_argument(
        "--decoder_epochs",
        type=int,
        help="training epochs of each inverse-network decoder on the public half (default 1, as in bench/RESULTS.md; "
        "a decoder cached under --cache is reused whatever its epochs)",
    )
    parser.add_argument(
        "--encoder_epochs",
        type=int,
        help="training epochs of each PFOExtended encoder on the public half (the pfo_encoder and pfo_all rows; "
        "default 1; part of those rows' keys)",
    )
    parser.add_argument(
        "--mean_chains",
        type=int,
        help=f"the chains a mean row (pfo_radius_mean) averages, each with steps / chains of the budget (default "
        f"{MEAN_CHAINS}; part of that row's key)",
    )
    parser.add_argument(
        "--pixel_radius", type=float, help="the pixel stage's l1 radius per element (pfo_pixel, pfo_all; default 0.02)"
    )
    parser.add_argument(
        "--radius_rule",
        type=Path,
        help="radius_rule.yaml written by bench/calibrate_radius.py on PUBLIC images, or an attack config that ships "
        "one (configs/pfo_extended_resnet.yaml); needed by pfo_radius, pfo_all, pfo_pixel_radius, pfo_radius_mean",
    )
    parser.add_argument("--victim", help="reuse this victim file instead of training one")
    parser.add_argument(
        "--prior",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="reuse a prior: a file (cifar10=logs/gan_cifar10/generator.pt) or a pretrained prior's name "
        "(digiface=digiface-dcgan64)",
    )
    parser.add_argument(
        "--lpips_weights", help="AlexNet weights for LPIPS (e.g. ../shared/weights/alexnet_features.pth)"
    )
    parser.add_argument(
        "--utility_images",
        type=int,
        help="test images for the victim's accuracy under each defense level (default 1000)",
    )
    parser.add_argument(
        "--report_only",
        action="store_true",
        help="tabulate the finished runs under --out; train and attack nothing (with --victim, still measure the "
        "victim's accuracy under each defense level where --out has none)",
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="attack runs side by side in worker processes, the cores shared evenly among them (default 1: one "
        "after another, each with every core); bench/RESULTS.md was computed as two single-threaded runs at a time",
    )
    parser.add_argument("--cache", type=Path, default=Path("bench_cache"))
    parser.add_argument("--out", type=Path, default=Path("bench_results"))
    args = parser.parse_args(argv)
    options = Options.for_setting(args.setting, quick=args.quick)
    spec = options.spec
    for name, given, known in (("--splits", args.splits, spec.split_points), ("--priors", args.priors, spec.priors)):
        unknown = sorted(set(given or []) - set(known))
        if unknown:
            parser.error(f"{name} {' '.join(unknown)}: not in the {spec.name} setting; choose from {', '.join(known)}")
    keys = (
        "targets",
        "batch_size",
        "steps",
        "n_init",
        "splits",
        "attacks",
        "priors",
        "noise",
        "decoder_epochs",
        "encoder_epochs",
        "mean_chains",
        "pixel_radius",
        "lpips_weights",
        "utility_images",
    )
    for key in keys:
        if getattr(args, key) is not None:
            setattr(options, key, getattr(args, key))
    options.cache, options.out, options.report_only = args.cache, args.out, args.report_only
    given = dict(p.split("=", 1) for p in args.prior)
    means = [a for a in options.attacks if "mean" in ATTACKS[a].extensions]
    if means and not 1 <= options.mean_chains <= options.n_init:
        parser.error(f"--mean_chains {options.mean_chains}: between 1 and --n_init ({options.n_init}), the candidates")
    if args.radius_rule is not None:
        options.radius_rule = load_radius_rule(args.radius_rule, parser)
    needs_rule = [a for a in options.attacks if {"radius", "guide"} & set(ATTACKS[a].extensions)]
    if needs_rule and not options.radius_rule and not options.report_only:
        parser.error(
            f"--attacks {' '.join(needs_rule)} need --radius_rule: the radius_rule.yaml that bench/calibrate_radius.py "
            "writes from PUBLIC images (never the targets)"
        )
    if needs_rule and options.radius_rule:
        try:
            check_radius_rule(options)
        except ValueError as error:
            parser.error(f"--radius_rule {args.radius_rule}: {error}")
    if args.jobs < 1:
        parser.error(f"--jobs must be at least 1, got {args.jobs}")
    rows = run(options, args.victim, given, jobs=args.jobs)
    table = markdown_table(rows)
    paired = paired_table(paired_rows(rows))
    prefix = "" if options.setting == "cifar10" else f"{options.setting}_"
    (options.out / f"{prefix}table.md").write_text(table + "\n")
    (options.out / f"{prefix}paired.md").write_text(paired + "\n")
    (options.out / f"{prefix}results.json").write_text(json.dumps(rows, indent=2) + "\n")
    figures = [
        reconstruction_figure(rows, s, options.out / f"{prefix}reconstructions_{s}.png", data=options.data)
        for s in options.splits
    ]
    plot = psnr_plot(rows, options.out / f"{prefix}psnr_vs_split.png", spec.split_points)
    print("\n" + table + "\n\nPaired per target against the paper's PFO:\n\n" + paired + "\n")
    print(f"command: python bench/benchmark.py {' '.join(argv if argv is not None else sys.argv[1:])}")
    written = [
        options.out / f"{prefix}table.md",
        options.out / f"{prefix}paired.md",
        options.out / f"{prefix}results.json",
        *filter(None, figures),
        plot,
    ]
    print("written: " + ", ".join(str(w) for w in written if w))


if __name__ == "__main__":
    main()
