"""Every shipped config (``configs/*.yaml``, globbed when the tests are collected) runs end to end at tiny size:
training configs through ``train.cli_main(["fit", ...])``, attack configs through ``attack.cli_main``.

Only sizes, data and budgets change, and what changes is decided by what a config contains (its model's class,
its networks' classes, its data class, the files it names), so a new config is covered the day it is added and an
option renamed in the code breaks this test, not the README:

- networks: ResNets, torchvision models and ViTs at 16 px (ViTs: timm's ``test_vit``, ``pretrained: false``, deep
  enough for their split point); StyleGAN2 generators and discriminators with 16 channels at 32 px at most;
- data: the config's own data class, pointed at a tiny folder in that data set's layout (made once per session);
  the victim's ``num_classes`` becomes the tiny data set's number of classes;
- budgets: two training batches of 4 (GANs: two steps), two targets, one step per stage, two initial latents;
- the files an attack names (victim, prior, decoder) are those the configs that make them write, each config run
  once per session at tiny size; a prior the user supplies (no config makes it) is a tiny StyleGAN2 with as many
  blocks as the attack's stages need; a named prior is a tiny stand-in of its family (``NAMED_PRIOR_STANDINS``);
- a config written for a GPU runs on the CPU (``trainer.accelerator: cpu``, ``precision: 32-true``).

A config these rules cannot shrink FAILS, naming the table to extend: ``NETWORKS`` (a network class),
``TINY_DATA`` (a data class), ``NAMED_PRIOR_STANDINS`` (a named prior), ``CONFIG_OVERRIDES`` (anything else).
"""

from __future__ import annotations

import contextlib
import copy
import csv
import importlib
import importlib.util
import json
import os
import re
import signal
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

import attack
import train
from pfo.attacks.base import ReconstructionAttack
from pfo.attacks.cli import AttackCLI
from pfo.attacks.optimization import OptimizationAttack
from pfo.models import load_victim
from pfo.models.generator_file import load_prior, save_generator
from pfo.models.stylegan2 import Generator

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / "configs").glob("*.yaml"))
TABLES = "the tables at the top of tests/test_configs.py"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore::UserWarning"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
]

VICTIM_SIZE = 16  # side of every victim's input (and of the target images)
PRIOR_SIZE = 32  # largest side of a trained prior (PFO needs a block per stage: 32 px gives 3 feature stages)
BATCH = 4


# ----- the tables: one line per network class, data class or named prior ----------------------------------------


def _resnet(args: dict) -> dict:
    return {**args, "input_size": VICTIM_SIZE}


def _torchvision(args: dict) -> dict:
    return {**args, "input_size": VICTIM_SIZE, "weights": None}


def _vit(args: dict) -> dict:
    """timm's tiny ``test_vit``, deep enough that the config's split point ``blocks.K`` has a block after it."""
    match = re.fullmatch(r"blocks\.(\d+)", str(args.get("split_point", "blocks.0")))
    depth = int(match.group(1)) + 2 if match else 2
    return {
        **args,
        "variant": "test_vit",
        "pretrained": False,
        "img_size": VICTIM_SIZE,
        "patch_size": 8,
        "model_kwargs": {"depth": depth},
    }


def _stylegan2(args: dict) -> dict:
    size = min(int(args.get("resolution", PRIOR_SIZE)), PRIOR_SIZE)
    small = {"resolution": size, "channel_base": 16 * size, "channel_max": 16}
    if "z_dim" in args:  # a generator (the discriminator has no latent)
        small.update(z_dim=16, w_dim=16)
    return {**args, **small}


# How to make each network class tiny: a function of the config's init_args. The sides set here are sizes only.
NETWORKS: dict[str, Callable[[dict], dict]] = {
    "pfo.models.ResNet": _resnet,
    "pfo.models.TorchvisionModel": _torchvision,
    "pfo.models.ViT": _vit,
    "pfo.models.Generator": _stylegan2,
    "pfo.models.Discriminator": _stylegan2,
}


def _pixels(seed: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (8, 8, 3), dtype=np.uint8))


def _save(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    _pixels(seed).save(path, format="PNG")


def _cifar10(root: Path) -> None:
    from pfo.data.datasets import CIFAR10_CLASSES

    for c, name in enumerate(CIFAR10_CLASSES):
        for rank in range(4):
            _save(root / "train" / name / f"{rank:04d}.png", 100 * c + rank)
        _save(root / "test" / name / "0000.png", 1000 + c)


def _lfw(root: Path) -> None:
    people = {"Ann_Lee": 20, "Bo_Chen": 20, "Cy_Diaz": 2, "Di_Eng": 2, "Ed_Fox": 2, "Flo_Gu": 2}  # 2 victim classes
    for p, (person, count) in enumerate(people.items()):
        for n in range(1, count + 1):
            _save(root / f"{person}_{n:04d}.png", 100 * p + n)


def _tiny_imagenet_val(root: Path) -> None:
    wnids = ["n01", "n02"]
    (root / "images").mkdir(parents=True)
    (root / "wnids.txt").write_text("\n".join(wnids) + "\n")
    lines = []
    for i in range(12):
        _save(root / "images" / f"val_{i}.JPEG", i)
        lines.append(f"val_{i}.JPEG\t{wnids[i % 2]}\t0\t0\t8\t8")
    (root / "val_annotations.txt").write_text("\n".join(lines) + "\n")


def _image_folders(root: Path) -> None:
    for c, name in enumerate(["n01", "n02"]):
        for i in range(8):
            _save(root / "train" / name / f"{name}_{i}.png", 100 * c + i)
        for i in range(2):
            _save(root / "val" / name / f"{name}_val_{i}.png", 1000 + 100 * c + i)


def _image_folder(root: Path) -> None:
    for i in range(24):
        _save(root / f"{i:05d}.png", i)


def _celeba(root: Path) -> None:
    rows = []
    for i in range(32):
        name = f"{i:06d}.jpg"
        _save(root / "img_align_celeba" / name, i)
        rows.append(f"{name} {i % 8}")
    (root / "identity_CelebA.txt").write_text("\n".join(rows) + "\n")


# How to make a tiny folder in each data class's layout (the config's `root` is pointed at it).
TINY_DATA: dict[str, Callable[[Path], None]] = {
    "pfo.data.CIFAR10": _cifar10,
    "pfo.data.LFW": _lfw,
    "pfo.data.TinyImageNetVal": _tiny_imagenet_val,
    "pfo.data.ImageFolders": _image_folders,
    "pfo.data.ImageFolder": _image_folder,
    "pfo.data.CelebA": _celeba,
}


def _tiny_dcgan(path: Path, resolution: int) -> None:
    from pfo.models.dcgan import DCGANGenerator

    torch.manual_seed(0)
    G = DCGANGenerator(nz=8, ngf=4, resolution=resolution)
    torch.save({"netG_state_dict": G.state_dict()}, path)  # the tutorial's file layout, as the named prior's


# A stand-in for each named prior (``generator: <name>``): writes a tiny prior of the same family to ``path``.
NAMED_PRIOR_STANDINS: dict[str, Callable[[Path, int], None]] = {
    "digiface-dcgan64": _tiny_dcgan,
}

# Anything else a config needs changed to run at tiny size: ``{config stem: {dotted key: value}}``, applied last.
CONFIG_OVERRIDES: dict[str, dict[str, Any]] = {}


# ----- shrinking a config ---------------------------------------------------------------------------------------


class CannotShrink(Exception):
    """The rules above do not cover something this config contains."""


def class_of(path: str) -> type:
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def stage_of(config: dict) -> str:
    """``victim``, ``prior``, ``decoder`` (the files training configs write) or ``attack``."""
    model = class_of(config["model"]["class_path"])
    if issubclass(model, ReconstructionAttack):
        return "attack"
    known = {"VictimClassifier": "victim", "GANSystem": "prior", "InverseNetworkTrainer": "decoder"}
    known["LatentEncoderTrainer"] = "encoder"  # PFOExtended's learned start (encoder.pt)
    if model.__name__ not in known:
        raise CannotShrink(f"model class {config['model']['class_path']} (add its case to CONFIG_OVERRIDES)")
    return known[model.__name__]


def shrink_network(spec: dict, where: str) -> dict:
    if spec.get("class_path") not in NETWORKS:
        raise CannotShrink(f"network class {spec.get('class_path')} at `{where}` (add it to NETWORKS)")
    return {**spec, "init_args": NETWORKS[spec["class_path"]](dict(spec.get("init_args") or {}))}


def shrink_budgets(args: dict) -> None:
    """Attack budgets: one step per stage, two initial latents, small per-target networks."""
    for key, value in list(args.items()):
        if re.fullmatch(r"(.*_)?steps", key) and value is not None:
            args[key] = [1] * len(value) if isinstance(value, list) else 1
    for key, value in (("n_init", 2), ("init_chunk", 2), ("candidates", 1), ("width", 8), ("noise_channels", 4)):
        if key in args:
            args[key] = value
    if args.get("restarts"):
        args["restarts"] = 1
    for entry in (args.get("radius_rule") or {}).values():  # a rule's schedule keeps the shrunk stages and budget
        if isinstance(entry, dict) and isinstance(entry.get("steps"), list):
            entry["steps"] = [1] * len(entry["steps"])


def set_dotted(config: dict, key: str, value: Any) -> None:
    *parents, last = key.split(".")
    for part in parents:
        config = config.setdefault(part, {})
    config[last] = value


class Session:
    """The tiny data folders and the files training configs write, each made once per session."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.folders: dict[str, Path] = {}
        self.runs: dict[str, Path] = {}
        self.stand_ins: dict[tuple, Path] = {}

    # --- data ---
    def data_folder(self, class_path: str) -> Path:
        if class_path not in TINY_DATA:
            raise CannotShrink(f"data class {class_path} (add a tiny-folder maker to TINY_DATA)")
        if class_path not in self.folders:
            folder = self.root / "data" / class_path.rpartition(".")[2]
            TINY_DATA[class_path](folder)
            self.folders[class_path] = folder
        return self.folders[class_path]

    def num_classes(self, data: dict) -> int:
        init = {k: v for k, v in (data.get("init_args") or {}).items() if k in ("target",)}
        return class_of(data["class_path"])(root=str(self.data_folder(data["class_path"])), **init).num_classes

    def shrink_data(self, data: dict, resolution: int) -> dict:
        args = dict(data.get("init_args") or {})
        args.update(root=str(self.data_folder(data["class_path"])), resolution=resolution)
        for key, value in (("batch_size", BATCH), ("num_workers", 0)):
            if key in args:
                args[key] = value
        return {**data, "init_args": args}

    # --- the files attacks name ---
    def config_writing(self, path: str, stage: str) -> Path | None:
        """The shipped config whose run writes ``path`` (``logs/<run name>/<file>``), if any."""
        run = Path(path).parent.name
        for candidate in CONFIGS:
            config = yaml.safe_load(candidate.read_text())
            logger = (config.get("trainer") or {}).get("logger") or {}
            name = (logger.get("init_args") or {}).get("name")
            if name == run and stage_of_or_none(config) == stage:
                return candidate
        return None

    def made_by_config(self, config_path: Path) -> Path:
        """Run a training config at tiny size once; its run folder."""
        key = config_path.stem
        if key not in self.runs:
            self.runs[key] = run_config(config_path, self)
        return self.runs[key]

    def file(self, path: str, stage: str, what: str, export: str) -> str:
        source = self.config_writing(path, stage)
        if source is None:
            raise CannotShrink(f"{what} {path!r}: no shipped config writes it (add a stand-in to CONFIG_OVERRIDES)")
        config = yaml.safe_load(source.read_text())
        name = (config["model"].get("init_args") or {}).get("export", export) or export
        return str(self.made_by_config(source) / name)

    def generator(self, value: str, resolution: int) -> str:
        """The prior an attack names: a config's product, a named prior's stand-in, or (a file the user supplies)
        a tiny StyleGAN2 of ``resolution``."""
        named = named_priors()
        if value in named or (not Path(value).suffix and "/" not in value):
            if value not in NAMED_PRIOR_STANDINS:
                raise CannotShrink(f"named prior {value!r} (add a stand-in to NAMED_PRIOR_STANDINS)")
            return self.stand_in(("named", value, resolution), lambda p: NAMED_PRIOR_STANDINS[value](p, resolution))
        if self.config_writing(value, "prior") is not None:
            return self.file(value, "prior", "generator", "generator.pt")

        def tiny_stylegan2(path: Path) -> None:
            torch.manual_seed(0)
            G = Generator(z_dim=16, w_dim=16, resolution=resolution, n_mlp=2, channel_base=16 * resolution)
            save_generator(G, path)

        return self.stand_in(("stylegan2", resolution), tiny_stylegan2)

    def stand_in(self, key: tuple, make: Callable[[Path], None]) -> str:
        if key not in self.stand_ins:
            path = self.root / "stand_ins" / ("_".join(map(str, key)) + ".pt")
            path.parent.mkdir(parents=True, exist_ok=True)
            make(path)
            self.stand_ins[key] = path
        return str(self.stand_ins[key])


def stage_of_or_none(config: dict) -> str | None:
    try:
        return stage_of(config)
    except (CannotShrink, KeyError, ImportError, AttributeError):
        return None


def named_priors() -> set[str]:
    try:
        from pfo.models.named_priors import NAMED_PRIORS
    except ImportError:
        return set()
    return set(NAMED_PRIORS)


def common_trainer(trainer: dict) -> dict:
    trainer = dict(trainer)
    if str(trainer.get("accelerator", "")).lower() in ("gpu", "cuda"):
        trainer["accelerator"] = "cpu"  # a GPU config run where there may be none (the options its error names)
        trainer["precision"] = "32-true"
    trainer.update(enable_progress_bar=False, enable_model_summary=False)
    return trainer


def shrink_training(config: dict, stage: str, session: Session) -> dict:
    config = copy.deepcopy(config)
    args = config["model"].setdefault("init_args", {})
    data = config["data"]
    if stage == "victim":
        args["net"] = shrink_network(args["net"], "model.init_args.net")
        net = args["net"]["init_args"]
        net["num_classes"] = session.num_classes(data)
        if args.get("progressive_resizing"):
            args["progressive_resizing"] = [[1, VICTIM_SIZE // 2]]
        resolution = VICTIM_SIZE
    elif stage == "prior":
        args["generator"] = shrink_network(args["generator"], "model.init_args.generator")
        args["discriminator"] = shrink_network(args["discriminator"], "model.init_args.discriminator")
        resolution = args["generator"]["init_args"]["resolution"]
        for key in ("sample_grid",):
            if key in args:
                args[key] = 2
    else:  # decoder, encoder
        args["victim"] = session.file(args["victim"], "victim", "victim file", "victim.pt")
        if "generator" in args:  # the encoder speaks to the attack's prior
            args["generator"] = session.generator(str(args["generator"]), PRIOR_SIZE)
        if "width" in args:
            args["width"] = 8
        resolution = VICTIM_SIZE
    config["data"] = session.shrink_data(data, resolution)
    trainer = common_trainer(config.get("trainer") or {})
    epochs = 1 + len(args.get("progressive_resizing") or [])
    trainer.update(max_epochs=epochs, limit_train_batches=2, limit_val_batches=2)
    if "check_val_every_n_epoch" in trainer:
        trainer["check_val_every_n_epoch"] = 1
    if "max_steps" in trainer:
        trainer["max_steps"] = 2
    config["trainer"] = trainer
    return config


def shrink_attack(config: dict, session: Session) -> dict:
    config = copy.deepcopy(config)
    args = config["model"]["init_args"]
    args["victim"] = session.file(args["victim"], "victim", "victim file", "victim.pt")
    if "generator" in args:
        steps = args.get("steps")
        stages = len(steps) if isinstance(steps, list) else 1
        args["generator"] = session.generator(str(args["generator"]), max(VICTIM_SIZE, 2 ** (stages + 1)))
    if "decoder" in args:
        args["decoder"] = session.file(args["decoder"], "decoder", "decoder file", "decoder.pt")
    if args.get("encoder"):
        args["encoder"] = session.file(args["encoder"], "encoder", "encoder file", "encoder.pt")
    shrink_budgets(args)
    if issubclass(class_of(config["model"]["class_path"]), OptimizationAttack):
        args["progress"] = False  # no per-step progress bar in the test log
    targets = config["data"]
    if targets.get("data") is not None:
        targets["data"] = session.shrink_data(targets["data"], VICTIM_SIZE)
    targets.update(count=2, batch_size=2)
    config["trainer"] = common_trainer(config.get("trainer") or {})
    return config


def shrink(config_path: Path, session: Session) -> dict:
    config = yaml.safe_load(config_path.read_text())
    stage = stage_of(config)
    config = shrink_attack(config, session) if stage == "attack" else shrink_training(config, stage, session)
    for key, value in CONFIG_OVERRIDES.get(config_path.stem, {}).items():
        set_dotted(config, key, value)
    return config


# ----- running ----------------------------------------------------------------------------------------------------


def run_config(config_path: Path, session: Session) -> Path:
    """Run ``config_path`` shrunk, in the session folder; its run folder. Restores what Lightning changes in the
    process (environment variables, signal handlers)."""
    config = shrink(config_path, session)
    folder = session.root / "configs"
    folder.mkdir(exist_ok=True)
    path = folder / config_path.name
    path.write_text(yaml.safe_dump(config))
    with process_state_restored(session.root, [config_path.name]):
        try:
            if stage_of(config) == "attack":
                cli = attack.cli_main(["--config", str(path)])
            else:
                cli = train.cli_main(["fit", "--config", str(path)])
            return Path(cli.trainer.log_dir).resolve()
        except SystemExit as exit_:
            raise AssertionError(
                f"{config_path.name} at tiny size exited with {exit_.code} (its error is above)"
            ) from None


@contextlib.contextmanager
def process_state_restored(cwd: Path, argv: list[str]) -> Iterator[None]:
    """Run in ``cwd`` with ``sys.argv`` ``argv``, then restore what Lightning changes in the process (environment
    variables, signal handlers) and the working directory."""
    environ = dict(os.environ)
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    saved_argv, saved_cwd = sys.argv, os.getcwd()
    sys.argv = argv
    os.chdir(cwd)
    try:
        yield
    finally:
        sys.argv = saved_argv
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(environ)
        for s, handler in handlers.items():
            signal.signal(s, handler)


@pytest.fixture(scope="session")
def session(tmp_path_factory) -> Session:
    return Session(tmp_path_factory.mktemp("configs_at_tiny_size"))


@pytest.fixture(autouse=True)
def _no_data_root(monkeypatch):
    monkeypatch.delenv("PFO_DATA_ROOT", raising=False)


@pytest.mark.parametrize("config_path", CONFIGS, ids=lambda p: p.stem)
def test_config_runs_at_tiny_size(config_path, session):
    try:
        config = yaml.safe_load(config_path.read_text())
        stage = stage_of(config)
        folder = run_config(config_path, session) if stage == "attack" else session.made_by_config(config_path)
    except CannotShrink as error:
        pytest.fail(f"{config_path.name}: cannot run it at tiny size: {error}; see {TABLES}", pytrace=False)

    if stage == "attack":
        with open(folder / "metrics.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        assert [r["status"] for r in rows] == ["ok", "ok"], rows
        assert json.loads((folder / "summary.json").read_text())["targets"] == 2
        assert (folder / "comparison.png").is_file()
        return
    export = (config["model"].get("init_args") or {}).get("export")
    if stage == "victim":
        victim = load_victim(folder / (export or "victim.pt"))
        assert victim.input_size == VICTIM_SIZE and victim.split_point
    elif stage == "prior":
        assert load_prior(folder / (export or "generator.pt")).config["resolution"] <= PRIOR_SIZE
    elif stage == "encoder":
        from pfo.attacks.encoder_trainer import load_encoder

        _, meta = load_encoder(folder / (export or "encoder.pt"))
        assert meta["splits_seen"]["train"] == "public"
    else:
        from pfo.attacks.inverse_network import load_decoder

        _, meta = load_decoder(folder / (export or "decoder.pt"))
        assert meta["split_point"] == config["model"]["init_args"].get("split_point", meta["split_point"])


def test_the_calibration_command_runs_on_the_shipped_extended_config(session, tmp_path):
    """``bench/calibrate_radius.py`` (the README's calibration) on ``configs/pfo_extended_resnet.yaml`` at tiny
    size: a radius, then a schedule of the same budget added to that rule, which the attack then reads."""
    spec = importlib.util.spec_from_file_location("calibrate_radius", REPO / "bench" / "calibrate_radius.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    config = shrink(REPO / "configs" / "pfo_extended_resnet.yaml", session)
    path = tmp_path / "pfo_extended_resnet.yaml"
    path.write_text(yaml.safe_dump(config))
    split_point = config["model"]["init_args"]["split_point"]
    steps = config["model"]["init_args"]["steps"]
    common = ["--config", str(path), "--split_points", split_point, "--count", "2", "--batch_size", "2"]

    def calibrate(*options: str) -> None:
        with process_state_restored(session.root, ["calibrate_radius.py"]):
            script.main(common + list(options))

    calibrate("--grid", "0.03", "null", "--out", str(tmp_path / "radius"))
    rule = yaml.safe_load((tmp_path / "radius" / "radius_rule.yaml").read_text())["radius_rule"]
    assert list(rule) == [split_point] and rule[split_point]["feature_radius"] in (0.03, None)
    assert "feature_radius at" in (tmp_path / "radius" / "calibration.md").read_text()

    # Then the schedule, the radius chosen above held: the same budget spent elsewhere (the config gives each
    # stage its learning rate, so a rule's schedule keeps the stages).
    other = [steps[0] + steps[2], steps[1], 0, *steps[3:]]
    grid = [json.dumps(steps), json.dumps(other)]
    calibrate("--option", "steps", "--grid", *grid, "--rule", str(tmp_path / "radius" / "radius_rule.yaml"),
              "--out", str(tmp_path / "schedule"))  # fmt: skip
    chosen = json.loads((tmp_path / "schedule" / "calibration.json").read_text())["results"][0]
    assert chosen["option"] == "steps" and chosen["best"] in (steps, other)
    assert [row["value"] for row in chosen["rows"]] == [steps, other]
    merged = yaml.safe_load((tmp_path / "schedule" / "radius_rule.yaml").read_text())["radius_rule"]
    assert merged == {split_point: {**rule[split_point], "steps": chosen["best"]}}
    # The rule written is one the config's attack reads: at its split point the schedule is the chosen one.
    with process_state_restored(session.root, ["attack.py"]):
        attack = AttackCLI(["--config", str(path), "--model.init_args.radius_rule", json.dumps(merged)], run=False)
    assert attack.model.split_rule == merged[split_point]
    assert attack.model.steps + [attack.model.pixel_steps] == chosen["best"]

    # The guide's weight, added to that rule the same way, with IN's decoder (configs/in_cifar10.yaml's) as the guide.
    decoder = session.file("logs/in_cifar10/decoder.pt", "decoder", "decoder file", "decoder.pt")
    calibrate("--option", "guide_weight", "--grid", "0", "2", "--rule", str(tmp_path / "schedule" / "radius_rule.yaml"),
              "--out", str(tmp_path / "guide"), "--", "--model.init_args.guide", decoder)  # fmt: skip
    weight = json.loads((tmp_path / "guide" / "calibration.json").read_text())["results"][0]["best"]
    guided = yaml.safe_load((tmp_path / "guide" / "radius_rule.yaml").read_text())["radius_rule"]
    assert weight in (0, 2) and guided == {split_point: {**merged[split_point], "guide_weight": weight}}
    with process_state_restored(session.root, ["attack.py"]):
        attack = AttackCLI(["--config", str(path), "--model.init_args.radius_rule", json.dumps(guided),
                            "--model.init_args.guide", decoder], run=False).model  # fmt: skip
    assert attack.radius_setting("guide_weight") == weight and attack.guide is not None

    # Then the blend with the guide's image, the guide's weight held.
    calibrate("--option", "guide_blend", "--grid", "0", "0.5", "--rule", str(tmp_path / "guide" / "radius_rule.yaml"),
              "--out", str(tmp_path / "blend"), "--", "--model.init_args.guide", decoder)  # fmt: skip
    blend = json.loads((tmp_path / "blend" / "calibration.json").read_text())["results"][0]
    assert [row["value"] for row in blend["rows"]] == [0, 0.5] and blend["best"] in (0, 0.5)
    blended = yaml.safe_load((tmp_path / "blend" / "radius_rule.yaml").read_text())["radius_rule"]
    assert blended == {split_point: {**guided[split_point], "guide_blend": blend["best"]}}

    with pytest.raises(SystemExit):  # schedules of two budgets: refused before any attack runs
        calibrate("--option", "steps", "--grid", json.dumps(steps), json.dumps(steps + [1]))


def test_the_shipped_configs_are_all_collected():
    stems = {p.stem for p in CONFIGS}
    assert {"victim_cifar10_resnet18", "gan_cifar10", "pfo_resnet", "pfo_vit", "gan_ffhq"} <= stems


def test_a_config_the_rules_cannot_shrink_fails_naming_the_table(tmp_path):
    session = Session(tmp_path)
    unknown_net = {"class_path": "pfo.victim.VictimClassifier", "init_args": {"net": {"class_path": "my.Net"}}}
    with pytest.raises(CannotShrink, match="add it to NETWORKS"):
        shrink_training({"model": unknown_net, "data": {}}, "victim", session)
    with pytest.raises(CannotShrink, match="add a tiny-folder maker to TINY_DATA"):
        session.shrink_data({"class_path": "my.Data"}, 16)
    with pytest.raises(CannotShrink, match="add a stand-in to NAMED_PRIOR_STANDINS"):
        session.generator("some-named-prior", 32)
    with pytest.raises(CannotShrink, match="no shipped config writes it"):
        session.file("logs/nobody_makes_this/victim.pt", "victim", "victim file", "victim.pt")
