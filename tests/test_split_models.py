"""Split victims: at every split point the two halves reproduce the whole network bitwise; the victim file
round-trips; wrong files, wrong inputs and wrong pretrained weights fail with messages that say what is wrong."""

from __future__ import annotations

import pytest
import timm
import torch
import torchvision

from pfo.artifacts import ArtifactError, save_artifact
from pfo.models import ResNet, SplitModel, ViT, load_victim, save_victim

RESNET_IMAGENET_SPLITS = ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"]
RESNET_CIFAR_SPLITS = ["conv1", "bn1", "relu", "layer1", "layer2", "layer3", "layer4"]
SIZE = {"cifar": 16, "imagenet": 32}  # layer4 at 2x2 and 1x1: the smallest that keeps every stage


def tiny_vit(**kwargs) -> ViT:
    """timm's ``test_vit`` (64 wide) with three blocks, 32 px images, 8 px patches."""
    args = dict(variant="test_vit", num_classes=5, img_size=32, patch_size=8, split_point="blocks.1")
    args["model_kwargs"] = {"depth": 3}
    return ViT(**{**args, **kwargs})


def randomize_batch_norm(model: torch.nn.Module) -> None:
    """Non-trivial running statistics, so eval-mode BatchNorm is not the identity."""
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 1.5)


def assert_halves_reproduce_the_network(model: SplitModel, x: torch.Tensor) -> None:
    full = model.net(model.normalize(x))  # the original timm/torchvision forward
    for point in model.split_points:
        model.with_split(point)
        features = model.forward_head(x)
        sent = features.clone()
        assert torch.equal(model.tail(features), full), f"split at {point}"
        assert torch.equal(features, sent), f"the tail overwrote the features it received (split at {point})"
    assert torch.equal(model(x), full)


@pytest.mark.parametrize("stem", ["cifar", "imagenet"])
@pytest.mark.parametrize("depth", [18, 34, 50])
@torch.no_grad()
def test_resnet_halves_reproduce_the_network_at_every_split_point(depth, stem):
    model = ResNet(depth=depth, num_classes=7, stem=stem, input_size=SIZE[stem]).eval()
    randomize_batch_norm(model)
    assert model.split_points == (RESNET_CIFAR_SPLITS if stem == "cifar" else RESNET_IMAGENET_SPLITS)
    x = torch.rand(2, 3, SIZE[stem], SIZE[stem])
    assert_halves_reproduce_the_network(model, x)
    assert model(x).shape == (2, 7)


@torch.no_grad()
def test_resnet_features_have_the_expected_resolution():
    model = ResNet(depth=18, num_classes=10, stem="cifar", input_size=32).eval()
    x = torch.rand(1, 3, 32, 32)
    shapes = {p: tuple(model.with_split(p).forward_head(x).shape[1:]) for p in ("conv1", "layer1", "layer4")}
    assert shapes == {"conv1": (64, 32, 32), "layer1": (64, 32, 32), "layer4": (512, 4, 4)}
    model = ResNet(depth=18, stem="imagenet", input_size=64, split_point="maxpool").eval()
    assert model.forward_head(torch.rand(1, 3, 64, 64)).shape == (1, 64, 16, 16)


@torch.no_grad()
def test_vit_halves_reproduce_the_network_at_every_split_point():
    model = tiny_vit().eval()
    assert model.split_points == ["patch_embed", "blocks.0", "blocks.1", "blocks.2"]
    x = torch.rand(2, 3, 32, 32)
    assert_halves_reproduce_the_network(model, x)
    assert model.with_split("patch_embed").forward_head(x).shape == (2, 17, 64)  # class token + 16 patches
    assert model(x).shape == (2, 5)


def test_unknown_split_point_lists_the_valid_ones():
    with pytest.raises(ValueError, match="valid split points: conv1, bn1, relu, layer1, layer2, layer3, layer4"):
        ResNet(stem="cifar", input_size=32, split_point="maxpool")
    with pytest.raises(ValueError, match="patch_embed, blocks.0, blocks.1, blocks.2"):
        tiny_vit().with_split("blocks.3")


def test_wrong_input_size_names_the_fix():
    model = ResNet(depth=18, stem="cifar", num_classes=10, input_size=32)
    with pytest.raises(ValueError, match=r"\(N, 3, 32, 32\).*`resolution` to 32"):
        model(torch.rand(1, 3, 16, 16))
    with pytest.raises(ValueError, match="input_size=16"):
        model.forward_head(torch.rand(1, 3, 16, 16))
    with pytest.raises(ValueError, match="expects images"):
        model(torch.rand(1, 1, 32, 32))


def test_bad_architecture_arguments():
    with pytest.raises(ValueError, match="depth"):
        ResNet(depth=101)
    with pytest.raises(ValueError, match="stem"):
        ResNet(stem="tiny")


@torch.no_grad()
def test_with_split_keeps_the_weights_and_their_names():
    model = ResNet(depth=18, stem="cifar", num_classes=10, input_size=32, split_point="layer2").eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.rand(2, 3, 32, 32)
    output = model(x)
    assert model.with_split("layer3") is model
    assert model.split_point == "layer3" and model.config["init_args"]["split_point"] == "layer3"
    after = model.state_dict()
    assert list(after) == list(before) and all(torch.equal(after[k], before[k]) for k in before)
    assert not any(k.startswith(("head.", "tail.")) for k in after)  # the halves are views, not owners
    assert list(model.head)[-1] is model.net.layer3 and list(model.tail)[0] is model.net.layer4
    assert torch.equal(model(x), output)
    vit = tiny_vit()
    assert list(vit.with_split("blocks.2").state_dict()) == list(tiny_vit(split_point="patch_embed").state_dict())


# --- the victim file ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "build", [lambda: ResNet(depth=18, num_classes=3, stem="cifar", input_size=16), tiny_vit], ids=["resnet", "vit"]
)
@torch.no_grad()
def test_victim_file_round_trip(tmp_path, build):
    model = build().eval()
    randomize_batch_norm(model)
    path = save_victim(model, tmp_path / "sub" / "victim.pt", classes=["a", "b", "c"], val_accuracy=0.5)
    assert path.is_file() and not (tmp_path / "sub" / "victim.pt.tmp").exists()
    loaded = load_victim(path)
    assert type(loaded) is type(model) and not loaded.training
    assert loaded.split_point == model.split_point and loaded.split_points == model.split_points
    assert loaded.input_size == model.input_size and loaded.num_classes == model.num_classes
    assert loaded.meta["classes"] == ["a", "b", "c"] and loaded.meta["val_accuracy"] == 0.5
    assert loaded.meta["input_size"] == model.input_size
    assert torch.equal(loaded.normalize.mean, model.normalize.mean)
    x = torch.rand(2, 3, model.input_size, model.input_size)
    assert torch.equal(loaded(x), model(x))
    assert torch.equal(loaded.forward_head(x), model.forward_head(x))

    other = loaded.split_points[0]
    resplit = load_victim(path, split_point=other)
    assert resplit.split_point == other and torch.equal(resplit.forward_head(x), model.with_split(other).head(x))
    with pytest.raises(ValueError, match="valid split points"):
        load_victim(path, split_point="nowhere")


@pytest.fixture
def victim_file(tmp_path):
    return save_victim(tiny_vit(), tmp_path / "victim.pt")


def test_a_corrupt_victim_file(tmp_path, victim_file):
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a torch file at all")
    with pytest.raises(ArtifactError, match="not a pfo victim file: it is not a file torch.save wrote") as info:
        load_victim(garbage)
    assert "weights_only=False" not in str(info.value)  # never the advice to unpickle an untrusted file
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(victim_file.read_bytes()[: victim_file.stat().st_size // 2])
    with pytest.raises(ArtifactError, match="damaged or incomplete"):
        load_victim(truncated)
    with pytest.raises(FileNotFoundError, match="no victim file"):
        load_victim(tmp_path / "absent.pt")


def test_a_foreign_torch_file(tmp_path):
    path = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18(num_classes=3).state_dict(), path)
    with pytest.raises(ArtifactError, match="resnet18.pth is not a pfo victim file; `python train.py fit"):
        load_victim(path)


def test_a_lightning_checkpoint(tmp_path):
    path = tmp_path / "last.ckpt"
    net = ResNet(depth=18, num_classes=3, stem="cifar", input_size=16)
    checkpoint = {
        "epoch": 1,
        "global_step": 10,
        "pytorch-lightning_version": "2.6.6",
        "state_dict": {f"net.{k}": v for k, v in net.state_dict().items()},
        "hyper_parameters": {"warmup_epochs": 0.5},
    }
    torch.save(checkpoint, path)
    with pytest.raises(ArtifactError, match="a Lightning checkpoint, not a pfo victim file: give .*victim.pt"):
        load_victim(path)


def test_a_generator_file(tmp_path):
    path = save_artifact(tmp_path / "generator.pt", "generator", {"class_path": "x.G", "init_args": {}}, {})
    with pytest.raises(ArtifactError, match="is a pfo generator file, not a victim file"):
        load_victim(path)


def test_damaged_or_foreign_contents_of_a_victim_file(tmp_path, victim_file):
    payload = torch.load(victim_file, weights_only=True)

    def resave(**changes):
        torch.save({**payload, **changes}, tmp_path / "edited.pt")
        return tmp_path / "edited.pt"

    with pytest.raises(ArtifactError, match="newer pfo"):
        load_victim(resave(version=99))
    with pytest.raises(ArtifactError, match="is not a SplitModel"):
        load_victim(resave(config={"class_path": "torch.nn.Linear", "init_args": {}}))
    with pytest.raises(ArtifactError, match="cannot import"):
        load_victim(resave(config={"class_path": "nowhere.Model", "init_args": {}}))
    state = dict(payload["state_dict"])
    del state["net.head.bias"]
    with pytest.raises(ArtifactError, match="do not fit the architecture"):
        load_victim(resave(state_dict=state))
    state = dict(payload["state_dict"], **{"net.head.weight": torch.zeros(7, 64)})
    with pytest.raises(ArtifactError, match="do not fit the architecture"):
        load_victim(resave(state_dict=state))


# --- pretrained weights from a local file ----------------------------------------------------------------------


@pytest.mark.parametrize("stem", ["imagenet", "cifar"])
def test_pretrained_resnet_from_a_local_file(tmp_path, stem):
    source = torchvision.models.resnet18()  # stands in for torchvision's ImageNet weights
    path = tmp_path / "resnet18.pth"
    torch.save({"state_dict": source.state_dict()} if stem == "cifar" else source.state_dict(), path)
    model = ResNet(depth=18, num_classes=10, stem=stem, input_size=32, pretrained=str(path))
    own, theirs = model.net.state_dict(), source.state_dict()
    kept_fresh = {"fc.weight", "fc.bias"} | ({"conv1.weight"} if stem == "cifar" else set())
    for key, value in own.items():
        if key in kept_fresh:
            assert value.shape != theirs[key].shape, f"{key} should stay fresh"
        else:
            assert torch.equal(value, theirs[key]), key
    assert model.config["init_args"]["pretrained"] is False  # a victim file never asks for the weights again
    path.unlink()
    loaded = load_victim(save_victim(model, tmp_path / "victim.pt"))
    assert torch.equal(loaded.net.layer1[0].conv1.weight, theirs["layer1.0.conv1.weight"])


@pytest.mark.parametrize("other", ["resnet34", "resnet50", "vit"])
def test_pretrained_file_for_another_architecture_is_refused(tmp_path, other):
    path = tmp_path / f"{other}.pth"
    with torch.device("meta"):  # shapes only: no time spent initialising weights
        net = timm.create_model("test_vit") if other == "vit" else getattr(torchvision.models, other)()
    torch.save({k: torch.zeros(v.shape, dtype=v.dtype) for k, v in net.state_dict().items()}, path)
    with pytest.raises(ValueError, match="another architecture"):
        ResNet(depth=18, num_classes=10, pretrained=str(path))


def test_pretrained_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        ResNet(depth=18, pretrained=str(tmp_path / "absent.pth"))
    (tmp_path / "bad.pth").write_bytes(b"junk")
    with pytest.raises(ValueError, match="not a readable PyTorch weights file"):
        ResNet(depth=18, pretrained=str(tmp_path / "bad.pth"))


def test_pretrained_vit_from_a_local_file(tmp_path):
    source = timm.create_model("test_vit", num_classes=1000, depth=3)  # 160 px, 16 px patches, 1000 classes
    path = tmp_path / "test_vit.pth"
    torch.save(source.state_dict(), path)
    model = tiny_vit(patch_size=16, pretrained=str(path))
    own, theirs = model.net.state_dict(), source.state_dict()
    assert own["pos_embed"].shape == (1, 5, 64) != theirs["pos_embed"].shape  # resampled to 32 px
    assert own["head.weight"].shape == (5, 64)  # a fresh classifier for 5 classes
    same = [k for k in own if k not in ("pos_embed", "head.weight", "head.bias")]
    assert same and all(torch.equal(own[k], theirs[k]) for k in same)
