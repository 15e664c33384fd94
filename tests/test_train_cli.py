"""The victim-training entry point, end to end on generated data: ``train.cli_main(args=[...])`` with a tiny ViT,
one or two epochs of two batches, every output under ``tmp_path``."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

import train
from pfo.artifacts import ArtifactError
from pfo.data import SyntheticImages
from pfo.models import load_victim
from pfo.victim import VictimClassifier

REPO = Path(__file__).resolve().parents[1]
VICTIM_CONFIGS = sorted((REPO / "configs").glob("victim_*.yaml"))
QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]


def tiny_config(root: Path, num_classes: int = 4) -> dict:
    """A victim run shaped like configs/victim_*.yaml: a two-block ViT at 16 px on 16 synthetic images."""
    return {
        "seed_everything": 3,
        "model": {
            "class_path": "pfo.victim.VictimClassifier",
            "init_args": {
                "net": {
                    "class_path": "pfo.models.ViT",
                    "init_args": {
                        "variant": "test_vit",
                        "num_classes": num_classes,
                        "img_size": 16,
                        "patch_size": 8,
                        "split_point": "blocks.0",
                        "model_kwargs": {"depth": 2},
                    },
                },
                "optimizer": {"class_path": "torch.optim.AdamW", "init_args": {"lr": 0.001}},
                "warmup_epochs": 0.5,
            },
        },
        "data": {
            "class_path": "pfo.data.SyntheticImages",
            "init_args": {
                "resolution": 16,
                "num_classes": 4,
                "sizes": {"private": 16, "public": 0, "test": 8},
                "batch_size": 8,
                "augment": True,
            },
        },
        "trainer": {
            "max_epochs": 1,
            "accelerator": "cpu",
            "default_root_dir": str(root),
            "logger": {
                "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                "init_args": {"save_dir": str(root / "logs"), "name": "tiny", "version": ""},
            },
            "callbacks": [
                {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", "init_args": {"save_last": True}}
            ],
        },
    }


@pytest.fixture(autouse=True)
def _plain_argv(plain_argv):
    return plain_argv


def write_config(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture
def config_file(isolated) -> Path:
    return write_config(isolated / "tiny.yaml", tiny_config(isolated))


@pytest.fixture
def count_steps(monkeypatch) -> list[int]:
    """The epoch of every training step run (wraps ``VictimClassifier.training_step``)."""
    epochs: list[int] = []
    original = VictimClassifier.training_step

    def training_step(self, batch, batch_idx):
        epochs.append(self.current_epoch)
        return original(self, batch, batch_idx)

    monkeypatch.setattr(VictimClassifier, "training_step", training_step)
    return epochs


@pytest.mark.slow
def test_fit_writes_a_complete_run_folder_and_resumes(isolated, config_file, count_steps):
    cli = train.cli_main(["fit", "--config", str(config_file), *QUIET])
    run = isolated / "logs" / "tiny"
    assert Path(cli.trainer.log_dir) == run and cli.trainer.global_step == 2 and count_steps == [0, 0]

    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["model"]["init_args"]["net"]["init_args"]["variant"] == "test_vit"
    info = json.loads((run / "run_info.json").read_text())
    assert info["seed"] == 3
    assert all(info["packages"][name] for name in ("pfo", "torch", "lightning", "timm"))
    checkpoint = run / "checkpoints" / "last.ckpt"
    assert checkpoint.is_file()
    with pytest.raises(ArtifactError, match="Lightning checkpoint"):
        load_victim(checkpoint)

    victim = load_victim(run / "victim.pt")
    assert victim.split_point == "blocks.0" and not victim.training
    assert victim.meta["classes"] == ["class0", "class1", "class2", "class3"] and "val_accuracy" in victim.meta
    x = torch.rand(3, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(victim(x), cli.model.net.eval()(x))

    # the same command with `ckpt_path: last` and one more epoch continues where the first run stopped
    count_steps.clear()
    resumed = train.cli_main(
        ["fit", "--config", str(config_file), "--ckpt_path", "last"] + QUIET + ["--trainer.max_epochs", "2"]
    )
    assert count_steps == [1, 1], "the rerun restarted instead of resuming"
    assert resumed.trainer.global_step == 4 and resumed.trainer.current_epoch == 2
    assert yaml.safe_load((run / "config.yaml").read_text())["trainer"]["max_epochs"] == 2

    # validate and test subcommands, from the checkpoint: the accuracy of the checkpoint's weights on the test split,
    # recomputed here from the weights in the file and the data set's own images and labels
    net = copy.deepcopy(cli.model.net).eval()
    weights = torch.load(checkpoint, map_location="cpu", weights_only=False)["state_dict"]
    net.load_state_dict({k[len("net.") :]: v for k, v in weights.items() if k.startswith("net.")})
    test = SyntheticImages(resolution=16, num_classes=4, sizes={"private": 16, "public": 0, "test": 8}).dataset("test")
    with torch.no_grad():
        predicted = net(torch.stack([test[i]["image"] for i in range(len(test))])).argmax(1)
    expected = float((predicted == torch.tensor([test[i]["label"] for i in range(len(test))])).float().mean())
    validated = train.cli_main(["validate", "--config", str(config_file), "--ckpt_path", str(checkpoint), *QUIET])
    assert float(validated.trainer.callback_metrics["val/accuracy"]) == pytest.approx(expected)
    tested = train.cli_main(["test", "--config", str(config_file), "--ckpt_path", str(checkpoint), *QUIET])
    assert float(tested.trainer.callback_metrics["test/accuracy"]) == pytest.approx(expected)


def test_num_classes_mismatch_names_the_fix(isolated, monkeypatch):
    monkeypatch.setenv("PFO_TRACEBACK", "1")  # the exception itself, not the command line's one-line message
    config = write_config(isolated / "bad.yaml", tiny_config(isolated, num_classes=3))
    with pytest.raises(ValueError, match="4 classes.*num_classes: 4"):
        train.cli_main(["fit", "--config", str(config), *QUIET])


def test_resolution_mismatch_names_the_fix(isolated, monkeypatch):
    monkeypatch.setenv("PFO_TRACEBACK", "1")  # the exception itself, not the command line's one-line message
    config = write_config(isolated / "bad.yaml", tiny_config(isolated))
    with pytest.raises(ValueError, match="resolution: 16"):
        train.cli_main(["fit", "--config", str(config), "--data.init_args.resolution", "32", *QUIET])


def test_progressive_resizing_walks_its_stages_then_trains_at_full_size():
    from pfo.models import ResNet

    net = ResNet(depth=18, num_classes=2, stem="cifar", input_size=16)
    system = VictimClassifier(net, progressive_resizing=[[2, 8], [1, 12]])
    assert [system.training_resolution(epoch) for epoch in range(5)] == [8, 8, 12, 16, 16]
    assert VictimClassifier(net).training_resolution(0) == 16
    for stage in ([0, 8], [2, 32], [2]):
        with pytest.raises(ValueError, match=r"\[epochs >= 1, side in 1..16\]"):
            VictimClassifier(net, progressive_resizing=[stage])


@pytest.mark.parametrize("config", VICTIM_CONFIGS, ids=lambda p: p.stem)
def test_victim_configs_parse(config, capsys, isolated):
    with pytest.raises(SystemExit) as exit_:
        train.cli_main(["fit", "--config", str(config), "--print_config"])
    assert exit_.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["class_path"] == "pfo.victim.VictimClassifier"
    net = printed["model"]["init_args"]["net"]["init_args"]
    size = net.get("input_size", net.get("img_size"))
    assert size == printed["data"]["init_args"]["resolution"], "model and data must agree on the resolution"
    assert printed["ckpt_path"] == "last"


def test_the_known_victim_configs_are_there():
    assert {p.stem for p in VICTIM_CONFIGS} >= {
        "victim_cifar10_resnet18",
        "victim_lfw_resnet18",
        "victim_imagenet_vit",
    }


@pytest.mark.slow
def test_lfw_config_trains_on_a_small_fake_lfw(isolated, count_steps):
    """configs/victim_lfw_resnet18.yaml as shipped, with only the size, the data and the schedule shrunk."""
    lfw = isolated / "lfw"
    lfw.mkdir()
    people = {"Ann_Lee": 20, "Bo_Chen": 21, "Cy_Diaz": 2}
    for p, (person, count) in enumerate(people.items()):
        for n in range(1, count + 1):
            pixels = np.full((8, 8, 3), 60 * p + n, dtype=np.uint8)
            Image.fromarray(pixels).save(lfw / f"{person}_{n:04d}.png")
    cli = train.cli_main(
        [
            "fit",
            "--config",
            str(REPO / "configs" / "victim_lfw_resnet18.yaml"),
            "--data.init_args.root",
            str(lfw),
            "--data.init_args.resolution",
            "16",
            "--data.init_args.batch_size",
            "8",
            "--model.init_args.net.init_args.input_size",
            "16",
            "--model.init_args.net.init_args.num_classes",
            "2",
            "--model.init_args.progressive_resizing",
            "[[1, 8]]",
            "--trainer.max_epochs",
            "1",
            "--trainer.limit_train_batches",
            "2",
            "--trainer.check_val_every_n_epoch",
            "1",
            "--trainer.limit_val_batches",
            "1",
            *QUIET,
        ]
    )
    assert count_steps == [0, 0]
    run = isolated / "logs" / "victim_lfw_resnet18"  # the config's relative save_dir, inside tmp_path
    victim = load_victim(run / "victim.pt")
    assert victim.meta["classes"] == ["Ann_Lee", "Bo_Chen"] and victim.input_size == 16
    # the literature's face victim: ImageNet stem (its max-pool is a split point; the CIFAR stem has none)
    assert victim.split_points[:4] == ["conv1", "bn1", "relu", "maxpool"]
    assert cli.trainer.global_step == 2
