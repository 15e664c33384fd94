"""The threat model enforced in code (``pfo.threat_model``): the attacker's networks (prior, inverse network) train
and validate on ``public`` only, a victim trains on ``private``, targets never come from ``public``; each refusal
comes before any training step and names its rule, its fix and the one option that allows breaking it; the
exported files and ``run_info.json`` record which splits each network saw; the shipped configs obey the rules.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml
from test_attack import tiny_generator, tiny_victim  # tests/ is on sys.path under pytest

from pfo.artifacts import build_from_config, load_artifact
from pfo.attacks import GLASS, RMLE, InverseNetworkTrainer, Targets, save_features
from pfo.data import SyntheticImages
from pfo.data.base import ImageDataModule
from pfo.models import Discriminator, Generator, ResNet, load_prior, load_victim, save_generator, save_victim
from pfo.prior import GANSystem
from pfo.run_info import RunInfo, splits_record
from pfo.threat_model import (
    ALLOW_NONPRIVATE_TRAINING,
    ALLOW_NONPUBLIC_TRAINING,
    ALLOW_PUBLIC_TARGETS,
    ThreatModelError,
    require_attacker_data,
    require_target_split,
    require_victim_data,
)
from pfo.victim import VictimClassifier

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / "configs").glob("*.yaml"))

pytestmark = [
    pytest.mark.filterwarnings("ignore:.*module\\(s\\) in eval mode"),
    pytest.mark.filterwarnings("ignore:.*isinstance\\(treespec, LeafSpec\\)"),
    pytest.mark.filterwarnings("ignore:Total length of .* across ranks is zero"),
    pytest.mark.filterwarnings("ignore:.*does not have many workers"),
    pytest.mark.filterwarnings("ignore:Using ModelCheckpoint with manual optimization"),
    pytest.mark.filterwarnings("ignore:You passed in a `val_dataloader` but have no `validation_step`"),
    pytest.mark.filterwarnings("ignore:You defined a `validation_step` but have no `val_dataloader`"),
    pytest.mark.filterwarnings("ignore:LPIPS will be reported as missing"),
]


class RecordingImages(SyntheticImages):
    """Synthetic data that records the splits whose images were handed out (a loader was built for them)."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**{"sizes": {"private": 8, "public": 8, "test": 4}, "batch_size": 4, **kwargs})
        self.read: set[str] = set()

    def loader(self, split: str, *args, **kwargs):
        self.read.add(split)
        return super().loader(split, *args, **kwargs)


def trainer(root: Path, **kwargs) -> L.Trainer:
    settings = dict(
        max_steps=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=1,
        default_root_dir=root,
    )
    return L.Trainer(**{**settings, **kwargs})


class StepCounter(L.Callback):
    def __init__(self) -> None:
        self.steps = 0

    def on_train_batch_start(self, *args) -> None:
        self.steps += 1


def refused_before_any_step(system: L.LightningModule, data, root: Path, match: str, run: str = "fit") -> None:
    """``run`` (fit or validate) must raise the threat-model error ``match`` before a step or a loader."""
    counter = StepCounter()
    with pytest.raises(ThreatModelError, match=match) as error:
        getattr(trainer(root, callbacks=[counter]), run)(system, datamodule=data)
    assert counter.steps == 0
    if hasattr(data, "read"):
        assert data.read == set(), "a loader was built before the refusal"
    assert "\n" not in str(error.value), "the error is one line"


# ----- the prior --------------------------------------------------------------------------------------------------


def tiny_gan(**kwargs) -> GANSystem:
    torch.manual_seed(0)
    G = Generator(z_dim=8, w_dim=8, resolution=8, n_mlp=1, channel_base=64, channel_max=8)
    D = Discriminator(resolution=8, channel_base=64, channel_max=8)
    return GANSystem(G, D, sample_every_n_steps=None, **kwargs)


@pytest.mark.parametrize(
    ("splits", "named"),
    [
        ({}, "train_split is 'private'"),  # the data modules' defaults are the victim's: private, then test
        ({"train_split": "test", "val_split": None}, "train_split is 'test'"),
        ({"train_split": "public"}, "val_split is 'test'"),
        ({"train_split": "public", "val_split": "private"}, "val_split is 'private'"),
    ],
)
def test_a_prior_refuses_to_train_or_validate_off_the_public_split(tmp_path, splits, named):
    data = RecordingImages(resolution=8, **splits)
    refused_before_any_step(
        tiny_gan(export=None), data, tmp_path, f"attacker's prior .*public.*{named}.*{ALLOW_NONPUBLIC_TRAINING}"
    )


def test_a_prior_on_data_that_names_no_split_is_refused(tmp_path):
    loader = torch.utils.data.DataLoader([{"image": torch.rand(3, 8, 8)} for _ in range(4)], batch_size=4)
    with pytest.raises(ThreatModelError, match=f"names no split.*{ALLOW_NONPUBLIC_TRAINING}"):
        trainer(tmp_path).fit(tiny_gan(export=None), loader)


def test_a_prior_records_its_splits_and_the_option_that_breaks_the_rule(tmp_path):
    trainer(tmp_path / "public").fit(
        tiny_gan(), datamodule=RecordingImages(resolution=8, train_split="public", val_split=None)
    )
    meta = load_prior(tmp_path / "public" / "generator.pt").meta
    assert meta["splits_seen"] == {"train": "public"} and meta["threat_model_exceptions"] == []

    data = RecordingImages(resolution=8)  # private, then test: the ablation of a prior that saw the victim's data
    trainer(tmp_path / "private").fit(tiny_gan(allow_nonpublic_training=True), datamodule=data)
    assert data.read == {"private"}  # the prior has no validation step
    meta = load_prior(tmp_path / "private" / "generator.pt").meta
    assert meta["splits_seen"] == {"train": "private"}
    assert meta["threat_model_exceptions"] == [ALLOW_NONPUBLIC_TRAINING]


# ----- the inverse network ----------------------------------------------------------------------------------------


def decoder_trainer(**kwargs) -> InverseNetworkTrainer:
    return InverseNetworkTrainer(tiny_victim(), width=8, **kwargs)


@pytest.mark.parametrize(
    ("splits", "named"),
    [
        ({"train_split": "private", "val_split": None}, "train_split is 'private'"),
        ({"train_split": "test", "val_split": None}, "train_split is 'test'"),
        # The data modules' default val_split is `test`: the decoder would validate on the target images.
        ({"train_split": "public"}, "val_split is 'test'"),
        ({"train_split": "public", "val_split": "private"}, "val_split is 'private'"),
    ],
)
def test_the_inverse_network_refuses_to_train_or_validate_off_the_public_split(tmp_path, splits, named):
    data = RecordingImages(resolution=16, **splits)
    match = f"inverse network .*public.*{named}.*{ALLOW_NONPUBLIC_TRAINING}"
    refused_before_any_step(decoder_trainer(export=None), data, tmp_path, match)


def test_the_inverse_network_refuses_to_validate_on_the_targets(tmp_path):
    data = RecordingImages(resolution=16, train_split="public", val_split="test")
    refused_before_any_step(decoder_trainer(export=None), data, tmp_path, "val_split is 'test'", run="validate")


def test_the_inverse_network_learns_from_public_data_and_records_it(tmp_path):
    data = RecordingImages(resolution=16, train_split="public", val_split="public")
    trainer(tmp_path / "public", callbacks=[RunInfo()], val_check_interval=1).fit(decoder_trainer(), datamodule=data)
    assert data.read == {"public"}
    meta = load_artifact(tmp_path / "public" / "decoder.pt", "decoder")["meta"]
    assert meta["splits_seen"] == {"train": "public", "val": "public"} and meta["threat_model_exceptions"] == []
    info = json.loads((tmp_path / "public" / "run_info.json").read_text())["data_splits"]
    assert info["data"]["dataset"] == "RecordingImages"
    assert info["data"]["train"] == "public" and info["data"]["val"] == "public"
    assert info["threat_model_exceptions"] == []

    data = RecordingImages(resolution=16, train_split="private", val_split=None)
    model = decoder_trainer(allow_nonpublic_training=True)
    trainer(tmp_path / "ablation", callbacks=[RunInfo()]).fit(model, datamodule=data)
    assert data.read == {"private"}
    meta = load_artifact(tmp_path / "ablation" / "decoder.pt", "decoder")["meta"]
    assert meta["splits_seen"] == {"train": "private", "val": None}
    assert meta["threat_model_exceptions"] == [ALLOW_NONPUBLIC_TRAINING]
    info = json.loads((tmp_path / "ablation" / "run_info.json").read_text())["data_splits"]
    assert info["threat_model_exceptions"] == [ALLOW_NONPUBLIC_TRAINING]


# ----- the victim -------------------------------------------------------------------------------------------------


def victim_system(**kwargs) -> VictimClassifier:
    torch.manual_seed(0)
    net = ResNet(depth=18, num_classes=4, stem="cifar", input_size=8, split_point="layer1")
    return VictimClassifier(net, channels_last=False, **kwargs)


@pytest.mark.parametrize("split", ["public", "test"])
def test_a_victim_refuses_to_train_off_the_private_split(tmp_path, split):
    data = RecordingImages(resolution=8, train_split=split)
    match = f"victim trains on the private split.*train_split is '{split}'.*{ALLOW_NONPRIVATE_TRAINING}"
    refused_before_any_step(victim_system(export=None), data, tmp_path, match)


def test_a_victim_validates_on_test_and_records_its_splits(tmp_path):
    data = RecordingImages(resolution=8)  # private, validated on test: fine
    trainer(tmp_path / "private", val_check_interval=1).fit(victim_system(), datamodule=data)
    assert data.read == {"private", "test"}
    meta = load_victim(tmp_path / "private" / "victim.pt").meta
    assert meta["splits_seen"] == {"train": "private", "val": "test"} and meta["threat_model_exceptions"] == []

    data = RecordingImages(resolution=8, train_split="public", val_split=None)
    trainer(tmp_path / "public").fit(victim_system(allow_nonprivate_training=True), datamodule=data)
    meta = load_victim(tmp_path / "public" / "victim.pt").meta
    assert meta["splits_seen"] == {"train": "public", "val": None}
    assert meta["threat_model_exceptions"] == [ALLOW_NONPRIVATE_TRAINING]


def test_a_victim_on_data_that_names_no_split_is_refused(tmp_path):
    loader = torch.utils.data.DataLoader([{"image": torch.rand(3, 8, 8), "label": 0} for _ in range(4)], batch_size=4)
    with pytest.raises(ThreatModelError, match=f"names no split.*{ALLOW_NONPRIVATE_TRAINING}"):
        trainer(tmp_path).fit(victim_system(export=None), loader)


# ----- the targets ------------------------------------------------------------------------------------------------


def test_targets_never_come_from_the_public_split(tmp_path):
    data = SyntheticImages(resolution=16)
    with pytest.raises(ThreatModelError, match=f"targets never come from the public split.*{ALLOW_PUBLIC_TARGETS}"):
        Targets(data=data, split="public", count=2)
    targets = Targets(data=data, split="test", count=2)
    targets.split = "public"  # reassigned after the check: refused when the targets are read
    with pytest.raises(ThreatModelError, match="public"):
        targets.setup()
    assert Targets(data=data, split="private", count=2).target_indices == [0, 32]
    ablation = Targets(data=data, split="public", count=2, allow_public_targets=True)
    assert ablation.target_indices == [0, 32]
    assert splits_record(ablation, None)["threat_model_exceptions"] == [ALLOW_PUBLIC_TARGETS]
    # Captured features carry no split: the name is not read.
    path = save_features(tmp_path / "f.pt", torch.zeros(2, 4), torch.tensor([3, 4]))
    assert Targets(features_file=str(path), split="public").target_indices == [3, 4]


def test_an_attack_run_records_the_target_split_and_what_its_networks_were_trained_on(tmp_path):
    victim = tiny_victim()
    victim_file = save_victim(victim, tmp_path / "victim.pt", splits_seen={"train": "private", "val": "test"})
    prior_file = save_generator(tiny_generator(), tmp_path / "g.pt", splits_seen={"train": "public", "val": None})
    targets = Targets(data=SyntheticImages(resolution=16), split="test", count=2)
    record = splits_record(targets, GLASS(str(victim_file), str(prior_file), n_init=2, candidates=1), "fit")
    assert record["targets"] == {"split": "test", "dataset": "SyntheticImages", "features_file": None}
    assert record["networks_trained_on"] == {
        "victim": {"train": "private", "val": "test"},
        "prior": {"train": "public", "val": None},
    }
    assert record["threat_model_exceptions"] == []
    # A victim file from before the record: said so, not guessed.
    old = save_victim(victim, tmp_path / "old.pt")
    assert splits_record(targets, RMLE(str(old)))["networks_trained_on"] == {"victim": "not recorded"}


# ----- the shipped configs ----------------------------------------------------------------------------------------


def effective_data(config: dict, key: str = "data") -> ImageDataModule:
    """The config's data module as it would be built (its class defaults fill what the config leaves out); no data
    is read by building it."""
    spec = config[key]
    return build_from_config(
        {"class_path": spec["class_path"], "init_args": spec.get("init_args", {})}, ImageDataModule
    )


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_the_shipped_configs_obey_the_threat_model(path):
    config = yaml.safe_load(path.read_text())
    model = config["model"]
    system = model["class_path"].rsplit(".", 1)[-1]
    init = model.get("init_args", {})
    assert not {ALLOW_NONPUBLIC_TRAINING, ALLOW_NONPRIVATE_TRAINING} & set(init), "a shipped config breaks a rule"
    if system in ("GANSystem", "InverseNetworkTrainer", "LatentEncoderTrainer"):
        require_attacker_data(system, effective_data(config), ("train", "val"), allow=False)
    elif system == "VictimClassifier":
        require_victim_data(effective_data(config), allow=False)
    else:  # an attack: its targets
        targets = config["data"]
        assert not targets.get(ALLOW_PUBLIC_TARGETS, False), "a shipped config attacks public images"
        split = targets.get("split", inspect.signature(Targets).parameters["split"].default)
        require_target_split(split, allow=False)
        assert effective_data(targets, "data").split_names  # the targets' data module builds


def test_every_config_kind_is_checked():
    kinds = {yaml.safe_load(p.read_text())["model"]["class_path"].rsplit(".", 1)[-1] for p in CONFIGS}
    assert {"GANSystem", "InverseNetworkTrainer", "VictimClassifier", "PFO", "GLASS", "RMLE", "LM"} <= kinds
