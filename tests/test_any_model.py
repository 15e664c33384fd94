"""Attacking the model a user brings: a plain ``nn.Module`` as the head (``pfo.models.Head``), any torchvision or
timm classifier cut at any node of its traced graph (``TorchvisionModel``, ``TimmModel``), pretrained weights
from a local file, and victim files of each kind.

The library networks are the smallest of their families at 32 px with random weights (``convnext_atto``, a
four-block ``vit_tiny_patch16_224``, ``mobilenet_v3_small``; ResNet-50 because it is the usual ImageNet victim),
each built once per module.
"""

from __future__ import annotations

import copy
import csv
import json
from pathlib import Path

import lightning as L
import pytest
import timm
import torch
import torchvision
from test_attack import images_of, tiny_generator  # tests/ is on sys.path under pytest
from test_attack_cli import run_cli, write_config
from test_split_models import randomize_batch_norm
from torch import nn

from pfo.attacks import GLASS, LM, PFO, RMLE, InverseNetwork, Targets
from pfo.attacks.inverse_network import InverseNetworkTrainer
from pfo.data import SyntheticImages
from pfo.metrics import psnr
from pfo.models import Head, TimmModel, TorchvisionModel, load_victim, save_victim
from pfo.models.generator_file import save_generator
from pfo.models.graph_split import TracedNetwork, tracer_arguments

pytestmark = [
    pytest.mark.filterwarnings("ignore:LPIPS will be reported as missing"),
    pytest.mark.filterwarnings("ignore:.*module\\(s\\) in eval mode"),
    pytest.mark.filterwarnings("ignore:.*returned `None`, this fit will run with no optimizer"),
    pytest.mark.filterwarnings("ignore:.*isinstance\\(treespec, LeafSpec\\)"),
    pytest.mark.filterwarnings("ignore:.*`srun` command is available"),
    pytest.mark.filterwarnings("ignore:The number of training batches"),
]

REPO = Path(__file__).resolve().parents[1]
RES = 16  # the Head's (and the tiny generator's) resolution
TARGETS = [0, 5, 10]


class PhoneHead(nn.Module):
    """A user's own head: two convolutions, 16x16 RGB -> 8 x 8 x 8 features. Importable as
    ``test_any_model.PhoneHead``, so a victim file can rebuild it."""

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1), nn.ReLU(), nn.Conv2d(width, width, 3, stride=2, padding=1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class PhoneTail(nn.Module):
    """The server's part of the same network: pooling and a 4-class classifier."""

    def __init__(self, width: int = 8, classes: int = 4) -> None:
        super().__init__()
        self.fc = nn.Linear(width, classes)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.fc(h.mean((2, 3)))


HEAD_SPEC = {"class_path": "test_any_model.PhoneHead", "init_args": {"width": 8}}


def phone_head(**kwargs) -> Head:
    torch.manual_seed(0)
    return Head(PhoneHead(), input_size=RES, **kwargs)


# ----- library networks cut at nodes --------------------------------------------------------------------------

BUILDERS = {
    "resnet50": lambda: TorchvisionModel("resnet50", split_point="layer1", num_classes=7, input_size=32),
    "mobilenet_v3_small": lambda: TorchvisionModel(
        "mobilenet_v3_small", split_point="features.4", num_classes=7, input_size=32
    ),
    "convnext_atto": lambda: TimmModel("convnext_atto", split_point="stages.1", num_classes=7, input_size=32),
    "vit_tiny": lambda: TimmModel(
        "vit_tiny_patch16_224", split_point="blocks.1", num_classes=7, input_size=32, model_kwargs={"depth": 4}
    ),
}
NODES = {  # module names (a module's last node), node names, and nodes inside blocks
    "resnet50": ["conv1", "maxpool", "layer1.0", "layer2.3.add", "layer3.1", "layer3", "layer4.2.relu_2", "flatten"],
    "mobilenet_v3_small": ["features.0", "features.1.block.0", "features.4", "features.7", "features", "classifier.0"],
    "convnext_atto": ["stem", "stages.0.blocks.0", "stages.1.downsample", "stages.2.blocks.1", "stages.3", "head.norm"],
    "vit_tiny": ["patch_embed", "cat", "norm_pre", "blocks.0", "blocks.2.add", "blocks.3", "norm", "fc_norm"],
}


@pytest.fixture(scope="module")
def library():
    """``library(name)``: the network, built once per module, in eval mode with non-trivial BatchNorm statistics."""
    built: dict[str, TorchvisionModel | TimmModel] = {}

    def get(name: str):
        if name not in built:
            torch.manual_seed(0)
            model = BUILDERS[name]().eval()
            randomize_batch_norm(model)
            built[name] = model
        return built[name]

    return get


def library_features(model, node: str, x: torch.Tensor) -> torch.Tensor:
    """The node's output as the libraries' own feature extractor computes it (an independent reference)."""
    if isinstance(model, TimmModel):
        extractor = timm.layers.create_feature_extractor(model.net, [node])
    else:
        extractor = torchvision.models.feature_extraction.create_feature_extractor(
            model.net, [node], tracer_kwargs=tracer_arguments()
        )
    return extractor.eval()(model.normalize(x))[node]


@pytest.mark.parametrize("name", list(BUILDERS))
@torch.no_grad()
def test_the_halves_reproduce_the_network_bitwise_at_each_node(library, name):
    model = library(name)
    x = torch.rand(2, 3, 32, 32)
    full = model.net(model.normalize(x))  # the library's own forward
    for node in NODES[name]:
        model.with_split(node)
        assert model.split_point == node
        features = model.forward_head(x)
        sent = features.clone()
        if node in NODES[name][1::3]:  # a few nodes against the library's extractor (two traces per call)
            assert torch.equal(features, library_features(model, node, x)), f"{name} head at {node}"
        assert torch.equal(model.tail(features), full), f"{name} split at {node}"
        assert torch.equal(features, sent), f"{name}: the tail overwrote the features it received at {node}"
    assert torch.equal(model(x), full) and full.shape == (2, 7)


@torch.no_grad()
def test_a_module_name_is_its_last_node_and_split_points_lists_each_cut_once(library):
    model = library("resnet50")
    x = torch.rand(1, 3, 32, 32)
    heads = [model.with_split(name).forward_head(x) for name in ("layer3", "layer3.5", "layer3.5.relu_2")]
    assert torch.equal(heads[0], heads[1]) and torch.equal(heads[1], heads[2])
    assert heads[0].shape == (1, 1024, 2, 2) and model.split_point == "layer3.5.relu_2"
    points = model.split_points
    assert len(points) == len(set(points))
    assert points[:6] == ["conv1", "bn1", "relu", "maxpool", "layer1.0.add", "layer1.0"]
    assert "layer3.5" in points and "layer3" not in points and points[-2:] == ["avgpool", "flatten"]
    assert "fc" not in points  # the output: nothing would be left for the server
    assert not any(".conv" in p or ".bn" in p for p in points)  # inside a residual block: crossed by its input


def test_an_unknown_node_lists_the_valid_ones(library):
    model = library("mobilenet_v3_small")
    listed = ", ".join(model.split_points)
    with pytest.raises(ValueError, match=r"unknown split point 'features\.70'.*did you mean features\.7") as error:
        model.with_split("features.70")
    assert f"valid split points: {listed}" in str(error.value)
    assert model.split_points[0] == "features.0" and model.split_points[-1] == "classifier.2"
    before = model.split_point
    with pytest.raises(ValueError, match="network's output: nothing would be left for the server"):
        model.with_split("classifier")
    assert model.split_point == before  # a refused cut changes nothing
    with pytest.raises(ValueError, match=r"not a torchvision classification model \(did you mean"):
        TorchvisionModel("resnet5")
    with pytest.raises(ValueError, match=r"not a timm model \(did you mean"):
        TimmModel("convnext_atoo")


def test_a_node_crossed_by_a_skip_connection_is_refused_with_the_nearest_clean_ones(library):
    with pytest.raises(ValueError, match=r"skip connection crosses it.* also need maxpool") as error:
        library("resnet50").with_split("layer1.0.conv1")
    assert "nearest clean split points are 'maxpool' (before) and 'layer1.0.add' (after)" in str(error.value)
    with pytest.raises(ValueError, match=r"also need blocks\.0 .*'blocks\.0' \(before\) and 'blocks\.1\.add'"):
        library("vit_tiny").with_split("blocks.1.attn")
    with pytest.raises(ValueError, match=r"'stages\.1\.blocks\.0' \(before\) and 'stages\.1' \(after\)"):
        library("convnext_atto").with_split("stages.1.blocks.1.mlp")


@torch.no_grad()
def test_moved_and_copied_models_keep_reproducing_the_network():
    """The halves hold the buffers they read: after a dtype move, a copy or a pickle they are cut again."""
    torch.manual_seed(0)
    model = TorchvisionModel("resnet18", split_point="layer2.0", num_classes=3, input_size=32).eval()
    randomize_batch_norm(model)
    x = torch.rand(2, 3, 32, 32)
    reference = model(x)
    copied = copy.deepcopy(model)
    assert copied.split_point == "layer2.0" and torch.equal(copied(x), reference)
    assert copied.net.conv1.weight is not model.net.conv1.weight
    model.double()  # the BatchNorm buffers are new tensors now
    assert torch.allclose(model(x.double()), reference.double(), atol=1e-5)
    assert torch.equal(model(x.double()), model.net(model.normalize(x.double())))


def test_a_network_whose_training_code_differs_runs_in_eval_mode_only():
    model = TimmModel("convnext_atto", split_point="stages.1", num_classes=3, input_size=32, model_kwargs={})
    x = torch.rand(2, 3, 32, 32)
    model.train()(x)  # same program in both modes: trainable
    dropping = TimmModel(
        "convnext_atto", split_point="stages.1", num_classes=3, input_size=32, model_kwargs={"drop_path_rate": 0.1}
    )
    with torch.no_grad():
        assert torch.equal(dropping.eval()(x), dropping.net(dropping.normalize(x)))
    with pytest.raises(RuntimeError, match="drop_path_rate: 0"):
        dropping.train()(x)


def test_a_network_torch_fx_cannot_trace_is_refused_naming_the_way_in():
    class Branchy(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x if x.sum() > 0 else -x  # control flow on a value: no static graph

    with pytest.raises(ValueError, match=r"torch.fx cannot trace Branchy.*pfo.models.Head instead"):
        TracedNetwork(Branchy(), input_size=8)


# ----- victim files -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["head", "torchvision", "timm"])
@torch.no_grad()
def test_a_victim_file_round_trips_each_kind(kind, tmp_path):
    torch.manual_seed(0)
    if kind == "head":
        model = Head(HEAD_SPEC, input_size=RES, mean=(0.5, 0.4, 0.3), std=(0.2, 0.2, 0.2))
        other, size = None, RES
    elif kind == "torchvision":
        model = TorchvisionModel("mobilenet_v3_small", split_point="features.7", num_classes=5, input_size=32)
        other, size = "features.2", 32
    else:
        model = TimmModel("convnext_atto", split_point="stages.2.blocks.1", num_classes=5, input_size=32)
        other, size = "stages.1", 32
    randomize_batch_norm(model)
    model.eval()
    loaded = load_victim(save_victim(model, tmp_path / "victim.pt"))
    assert type(loaded) is type(model) and loaded.split_point == model.split_point and not loaded.training
    assert loaded.config == model.config and loaded.split_points == model.split_points
    x = torch.rand(2, 3, size, size)
    assert torch.equal(loaded.forward_head(x), model.forward_head(x)) and torch.equal(loaded(x), model(x))
    if other is not None:
        elsewhere = load_victim(tmp_path / "victim.pt", split_point=other)
        assert torch.equal(elsewhere.forward_head(x), model.with_split(other).forward_head(x))
    else:
        assert len(loaded.tail) == 0 and loaded.config["init_args"]["module"] == HEAD_SPEC


def test_a_head_given_as_an_object_cannot_be_written_to_a_victim_file(tmp_path):
    with pytest.raises(ValueError, match=r"Head's module was given as a module object.*'class_path'"):
        save_victim(phone_head(), tmp_path / "victim.pt")
    with pytest.raises(ValueError, match=r"Head's tail was given as a module object"):
        save_victim(Head(HEAD_SPEC, input_size=RES, tail=PhoneTail()), tmp_path / "victim.pt")
    assert not (tmp_path / "victim.pt").exists()
    with pytest.raises(ValueError, match="cannot import the head's class 'no_such_package.Head'"):
        Head({"class_path": "no_such_package.Head"}, input_size=RES)


@torch.no_grad()
def test_a_heads_weights_come_from_a_local_file_and_its_tail_counts_the_classes(tmp_path):
    torch.manual_seed(3)
    trained = PhoneHead()
    torch.save(trained.state_dict(), tmp_path / "phone_head.pth")
    head = Head(HEAD_SPEC, input_size=RES, weights=str(tmp_path / "phone_head.pth"))
    x = torch.rand(2, 3, RES, RES)
    assert torch.equal(head.forward_head(x), trained(x))
    tail_spec = {"class_path": "test_any_model.PhoneTail", "init_args": {"classes": 6}}
    whole = Head(HEAD_SPEC, input_size=RES, tail=tail_spec)
    assert whole.num_classes == 6 and whole(x).shape == (2, 6) and len(whole.tail) == 1


# ----- pretrained weights from local files ---------------------------------------------------------------------


@torch.no_grad()
def test_torchvision_weights_load_from_a_local_file_with_a_fresh_classifier(tmp_path):
    torch.manual_seed(5)
    pretrained = torchvision.models.mobilenet_v3_small(num_classes=1000)
    state = pretrained.state_dict()
    torch.save(state, tmp_path / "mobilenet.pth")
    model = TorchvisionModel(
        "mobilenet_v3_small", num_classes=10, input_size=32, weights=str(tmp_path / "mobilenet.pth")
    )
    own = model.net.state_dict()
    kept = [k for k in state if not k.startswith("classifier.3.")]
    assert all(torch.equal(own[k], state[k]) for k in kept) and own["classifier.3.weight"].shape == (10, 1024)
    same = TorchvisionModel(
        "mobilenet_v3_small", num_classes=1000, input_size=32, weights=str(tmp_path / "mobilenet.pth")
    )
    x = torch.rand(2, 3, 32, 32)
    assert torch.equal(same.eval()(x), pretrained.eval()(same.normalize(x)))  # ImageNet normalisation by default

    torch.save(torchvision.models.resnet18().state_dict(), tmp_path / "resnet18.pth")
    with pytest.raises(ValueError, match="do not fit this torchvision mobilenet_v3_small"):
        TorchvisionModel("mobilenet_v3_small", weights=str(tmp_path / "resnet18.pth"))
    with pytest.raises(FileNotFoundError, match=r"neither a local weights file nor .*DEFAULT, IMAGENET1K_V1"):
        TorchvisionModel("mobilenet_v3_small", weights=str(tmp_path / "missing.pth"))


def test_a_failed_download_says_to_give_a_local_file(monkeypatch):
    def offline(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr(torchvision.models.WeightsEnum, "get_state_dict", offline)
    with pytest.raises(RuntimeError, match=r"no network\?.*`weights: /path/to/weights.pth`"):
        TorchvisionModel("mobilenet_v3_small", weights="DEFAULT", input_size=32)
    monkeypatch.setattr(timm.models._builder, "load_pretrained", offline)
    with pytest.raises(RuntimeError, match=r"no network\?.*`pretrained: /path/to/weights`"):
        TimmModel("convnext_atto", pretrained=True, input_size=32)


@torch.no_grad()
def test_timm_weights_load_from_a_local_file(tmp_path):
    torch.manual_seed(6)
    state = timm.create_model("convnext_atto", num_classes=1000).state_dict()
    torch.save(state, tmp_path / "convnext.pth")
    model = TimmModel("convnext_atto", num_classes=5, input_size=32, pretrained=str(tmp_path / "convnext.pth"))
    own = model.net.state_dict()
    kept = [k for k in state if not k.startswith("head.fc.")]
    assert all(torch.equal(own[k], state[k]) for k in kept) and own["head.fc.weight"].shape == (5, 320)
    assert model.config["init_args"]["pretrained"] is False  # a victim file carries the weights themselves
    with pytest.raises(FileNotFoundError, match="`pretrained`: no weights file at"):
        TimmModel("convnext_atto", pretrained=str(tmp_path / "missing.pth"))


# ----- a user's head under every attack -------------------------------------------------------------------------


def attack_targets(attack) -> tuple:
    images, index, _ = images_of(TARGETS)
    h = attack.client_features(images, index)
    with torch.enable_grad():
        return attack.reconstruct(h, index), images


ATTACKS = {
    "pfo": lambda head, steps: PFO(
        head, tiny_generator(), steps=[steps, steps // 2, steps // 2], n_init=4, init_chunk=4, progress=False
    ),
    "glass": lambda head, steps: GLASS(
        head, tiny_generator(), n_init=4, init_chunk=4, candidates=2, short_steps=steps, steps=steps, progress=False
    ),
    "rmle": lambda head, steps: RMLE(head, steps=3 * steps, progress=False),
    "lm": lambda head, steps: LM(head, steps=3 * steps, width=16, noise_channels=8, progress=False),
}


@pytest.mark.parametrize("name", list(ATTACKS))
def test_every_optimisation_attack_lowers_the_feature_loss_of_a_plain_head(name):
    start, images = attack_targets(ATTACKS[name](phone_head(), 0))
    end, _ = attack_targets(ATTACKS[name](phone_head(), 10))
    assert not end.failed.any() and end.images.shape == (3, 3, RES, RES)
    assert (end.feature_loss < 0.7 * start.feature_loss).all(), (start.feature_loss, end.feature_loss)
    if name in ("rmle", "lm"):  # pixels (or a per-target network) fitted to a shallow head: the image comes back
        assert (psnr(end.images, images) > psnr(start.images, images) + 3).all()


def quiet_trainer(folder: Path, **settings) -> L.Trainer:
    return L.Trainer(
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=folder,
        **settings,
    )


@pytest.mark.filterwarnings("ignore:Total length of `list` across ranks is zero")
def test_the_inverse_network_decodes_a_plain_heads_features(tmp_path):
    """The decoder learns from the 64 public images (``fit`` writes its file); one trained for a single step is
    the yardstick."""

    def decoder_file(epochs: int, folder: Path) -> str:
        public = SyntheticImages(resolution=RES, train_split="public", val_split=None, batch_size=64)
        trainer = InverseNetworkTrainer(phone_head(), width=16, optimizer=lambda p: torch.optim.Adam(p, lr=0.01))
        quiet_trainer(folder, max_epochs=epochs).fit(trainer, public)
        return str(folder / "decoder.pt")

    trained = InverseNetwork(phone_head(), decoder=decoder_file(60, tmp_path / "trained"))
    untrained = InverseNetwork(phone_head(), decoder=decoder_file(1, tmp_path / "untrained"))
    result, images = attack_targets(trained)
    baseline, _ = attack_targets(untrained)
    assert result.images.shape == (3, 3, RES, RES)
    assert psnr(result.images, images).mean() > psnr(baseline.images, images).mean() + 5  # measured: 12 -> 18 dB


def read_metrics(folder: Path) -> tuple[list[str], list[dict]]:
    with open(folder / "metrics.csv", newline="") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames), list(reader)


def assert_tail_less_metrics(folder: Path, printed: str) -> None:
    """Every target scored, except what needs the server's part: ``top1`` and ``utility_top1`` left empty, and
    why said once."""
    _, rows = read_metrics(folder)
    assert [int(r["index"]) for r in rows] == TARGETS
    assert all(float(r["psnr"]) > 0 and float(r["feature_distance"]) >= 0 for r in rows)
    assert all(r.get(name, "") == "" for r in rows for name in ("top1", "utility_top1"))
    summary = json.loads((folder / "summary.json").read_text())
    assert "psnr" in summary["metrics"] and "top1" not in summary["metrics"]
    assert "no tail" in summary["unreported"]["top1"] and "no tail" in summary["unreported"]["utility_top1"]
    assert printed.count("top1 and utility_top1 are left empty") == 1 and "no tail" in printed


@pytest.mark.parametrize("name", ["pfo", "rmle"])
def test_a_plain_head_is_attacked_through_the_python_api(name, tmp_path, capsys):
    trainer = quiet_trainer(tmp_path, max_epochs=1, use_distributed_sampler=False)
    data = Targets(data=SyntheticImages(resolution=RES), split="test", count=None, indices=TARGETS, batch_size=2)
    trainer.fit(ATTACKS[name](phone_head(), 4), datamodule=data)
    assert_tail_less_metrics(tmp_path, capsys.readouterr().out)


@pytest.fixture(scope="module")
def head_files(tmp_path_factory) -> dict[str, str]:
    """A victim file holding ``PhoneHead`` by class path, and a tiny generator file."""
    folder = tmp_path_factory.mktemp("head_files")
    torch.manual_seed(0)
    head = Head(HEAD_SPEC, input_size=RES)
    return {
        "victim": str(save_victim(head, folder / "victim.pt")),
        "generator": str(save_generator(tiny_generator(), folder / "generator.pt")),
    }


@pytest.mark.parametrize("name", ["pfo", "rmle"])
def test_a_head_in_a_victim_file_is_attacked_through_attack_py(name, head_files, tmp_path, capsys):
    settings = {"victim": head_files["victim"], "progress": False}
    if name == "pfo":
        settings.update(generator=head_files["generator"], n_init=4, init_chunk=4, steps=[4, 2, 2])
    else:
        settings.update(steps=8)
    config = {
        "model": {"class_path": f"pfo.attacks.{name.upper()}", "init_args": settings},
        "data": {
            "data": {"class_path": "pfo.data.SyntheticImages", "init_args": {"resolution": RES}},
            "split": "test",
            "count": None,
            "indices": TARGETS,
            "batch_size": 2,
        },
        "trainer": {
            "accelerator": "cpu",
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "logger": {
                "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                "init_args": {"save_dir": str(tmp_path / "logs"), "name": name, "version": ""},
            },
        },
    }
    folder = run_cli(write_config(tmp_path, config))
    assert folder == tmp_path / "logs" / name
    assert_tail_less_metrics(folder, capsys.readouterr().out)


# ----- a library network as a trained victim -------------------------------------------------------------------


@pytest.mark.slow
def test_a_torchvision_network_trains_with_train_py_and_exports_a_victim_file(isolated, plain_argv):
    """configs/victim_cifar10_torchvision.yaml as shipped, on 16 synthetic 16-px images for two steps."""
    import train

    config = REPO / "configs" / "victim_cifar10_torchvision.yaml"
    shrink = {
        "--data": "pfo.data.SyntheticImages",
        "--data.init_args.resolution": "16",
        "--data.init_args.num_classes": "10",
        "--data.init_args.sizes": "{private: 16, public: 0, test: 8}",
        "--data.init_args.batch_size": "8",
        "--model.init_args.net.init_args.input_size": "16",
        "--trainer.max_epochs": "1",
        "--trainer.check_val_every_n_epoch": "1",
        "--trainer.enable_progress_bar": "false",
        "--trainer.enable_model_summary": "false",
    }
    cli = train.cli_main(["fit", "--config", str(config), *[a for pair in shrink.items() for a in pair]])
    assert cli.trainer.global_step == 2
    victim = load_victim(isolated / "logs" / "victim_cifar10_torchvision" / "victim.pt")
    assert isinstance(victim, TorchvisionModel) and victim.split_point == "layer1" and victim.num_classes == 10
    x = torch.rand(3, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(victim(x), cli.model.net.eval()(x))
        assert torch.equal(victim.with_split("layer2.0.add")(x), victim.net(victim.normalize(x)))


def test_a_library_network_given_inline_is_one_attack_config(tmp_path):
    """``victim: {class_path: pfo.models.TorchvisionModel, init_args: {...}}``: no victim file; the network has its
    tail, so ``top1`` is scored."""
    victim = {
        "class_path": "pfo.models.TorchvisionModel",
        "init_args": {"name": "mobilenet_v3_small", "split_point": "features.3", "num_classes": 4, "input_size": RES},
    }
    config = {
        "model": {"class_path": "pfo.attacks.RMLE", "init_args": {"victim": victim, "steps": 3, "progress": False}},
        "data": {
            "data": {"class_path": "pfo.data.SyntheticImages", "init_args": {"resolution": RES}},
            "split": "test",
            "count": None,
            "indices": TARGETS,
            "batch_size": 3,
        },
        "trainer": {
            "accelerator": "cpu",
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "logger": {
                "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                "init_args": {"save_dir": str(tmp_path / "logs"), "name": "inline", "version": ""},
            },
        },
    }
    folder = run_cli(write_config(tmp_path, config))
    _, rows = read_metrics(folder)
    assert [int(r["index"]) for r in rows] == TARGETS
    assert all(r["top1"] in ("0.0", "1.0") and float(r["psnr"]) > 0 for r in rows)


def test_a_head_given_inline_in_yaml_keeps_its_class_path(tmp_path, plain_argv):
    """jsonargparse hands ``module`` over as the dict it reads (it would otherwise build the module and lose its
    constructor arguments), so an inline head can still be written to a victim file."""
    from pfo.attacks.cli import AttackCLI

    victim = {"class_path": "pfo.models.Head", "init_args": {"module": HEAD_SPEC, "input_size": RES}}
    config = {
        "model": {"class_path": "pfo.attacks.RMLE", "init_args": {"victim": victim, "steps": 1}},
        "data": {"data": {"class_path": "pfo.data.SyntheticImages", "init_args": {"resolution": RES}}},
        "trainer": {"accelerator": "cpu", "default_root_dir": str(tmp_path)},
    }
    head = AttackCLI(args=["--config", str(write_config(tmp_path, config))], run=False).model.victim
    assert isinstance(head, Head) and isinstance(head.net["head"], PhoneHead)
    assert load_victim(save_victim(head, tmp_path / "victim.pt")).config["init_args"]["module"] == HEAD_SPEC


def test_accuracy_under_a_defense_needs_the_servers_part():
    """A head alone has no tail to score: the accuracy is refused with the fix, not a TypeError from deep inside;
    with the user's tail it is the plain accuracy of the whole network."""
    from pfo.attacks import GaussianNoise, accuracy_under_defense

    images = torch.rand(6, 3, RES, RES, generator=torch.Generator().manual_seed(0))
    batches = [{"image": images, "label": torch.tensor([0, 1, 2, 3, 0, 1]), "index": torch.arange(6)}]
    with pytest.raises(ValueError, match="needs the server's part of the victim"):
        accuracy_under_defense(phone_head(), GaussianNoise(0.1), batches)
    whole = phone_head(tail=PhoneTail())
    expected = (whole.tail(whole.forward_head(images)).argmax(1) == batches[0]["label"]).float().mean().item()
    assert accuracy_under_defense(whole, None, batches) == pytest.approx(expected)
