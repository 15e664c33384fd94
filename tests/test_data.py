"""Data modules: fixed, disjoint, deterministic splits; what a batch holds; clear errors.

The victim trains on ``private`` and the attacker's prior on ``public``: the two must never share an image (or, for
faces, a person), and an image's split must not depend on how the files were listed or on which other files exist.
Fake data sets are built in ``tmp_path`` with 8-32 px images; the real-data checks read only listings or a
handful of linked files.
"""

from __future__ import annotations

import hashlib
import pickle
import random
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

import pfo.data.datasets as datasets_module
from pfo.data import (
    CIFAR10,
    LFW,
    CelebA,
    DataNotFoundError,
    FractionSplits,
    ImageFolder,
    ImageFolders,
    SyntheticImages,
    TinyImageNetVal,
)
from pfo.data.augment import random_crop_flip
from pfo.data.datasets import CIFAR10_CLASSES

# --- helpers ---------------------------------------------------------------------------------------------------


def keys(module, split: str) -> list[str]:
    return [r.key for r in module.records(split)]


def split_of(module) -> dict[str, str]:
    """Every record's key -> the split holding it (asserting no key sits in two splits)."""
    where: dict[str, str] = {}
    for split in module.split_names:
        for record in module.records(split):
            assert record.key not in where, f"{record.key} is in both {where.get(record.key)} and {split}"
            where[record.key] = split
    return where


def shuffled_listing(monkeypatch, seed: int = 1) -> None:
    """Make every folder listing come back in a random order (as an unsorted file system might)."""
    original = datasets_module.list_images

    def listing(folder):
        paths = list(original(folder))
        random.Random(seed).shuffle(paths)
        return paths

    monkeypatch.setattr(datasets_module, "list_images", listing)


def write_png(path: Path, pixels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


# --- the split definitions themselves ---------------------------------------------------------------------------


def test_fraction_splits_are_stable_and_close_to_their_fractions():
    splits = FractionSplits("test-v1", {"a": 0.25, "b": 0.75})
    names = [splits.assign(f"item{i}") for i in range(4000)]
    assert names == [splits.assign(f"item{i}") for i in range(4000)]
    assert abs(names.count("a") / 4000 - 0.25) < 0.03
    with pytest.raises(ValueError, match="sum to 1"):
        FractionSplits("bad", {"a": 0.5, "b": 0.6})


# A split definition must never change once victims and priors have been trained on it: these digests pin the
# assignment of 1,000 keys per data set. If one fails, a split moved (namespace, fractions or hashing changed).
PINNED = {
    "cifar": (CIFAR10.SPLITS, "c52f227a426a410f"),
    "lfw": (LFW.SPLITS, "eb1f5d0e28a07104"),
    "celeba_identities": (CelebA.IDENTITIES, "8a92615f337bf598"),
    "celeba": (CelebA.SPLITS, "e7078230388383d4"),
    "imagefolders": (ImageFolders.SPLITS, "8f08ca718596b3f4"),
    "imagefolder": (ImageFolder.SPLITS, "b931a9a28fd13eee"),
}


@pytest.mark.parametrize("name", sorted(PINNED))
def test_split_definitions_never_change(name):
    splits, expected = PINNED[name]
    assignment = "".join(splits.assign(f"k{i}") for i in range(1000))
    assert hashlib.sha256(assignment.encode()).hexdigest()[:16] == expected


# --- CIFAR-10: torchvision format and class folders --------------------------------------------------------------

TRAIN_PER_CLASS, TEST_PER_CLASS = 3, 1


def cifar_images(seed: int, n: int) -> tuple[np.ndarray, list[int]]:
    """``n`` random 32x32 HWC images, labels cycling through the classes (so ranks interleave across batches)."""
    pixels = np.random.default_rng(seed).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    return pixels, [i % 10 for i in range(n)]


def write_cifar_torchvision(root: Path) -> None:
    """A tiny ``cifar-10-batches-py`` with torchvision's pickle layout: five train batches, one test batch."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    train, train_labels = cifar_images(0, 10 * TRAIN_PER_CLASS)
    test, test_labels = cifar_images(1, 10 * TEST_PER_CLASS)

    def dump(name, pixels, labels):
        rows = pixels.transpose(0, 3, 1, 2).reshape(len(pixels), -1)  # CHW planes, as in the original files
        with open(folder / name, "wb") as f:
            pickle.dump({"data": rows, "labels": list(labels), "batch_label": name}, f)

    for b, chunk in enumerate(np.array_split(np.arange(len(train)), 5)):
        dump(f"data_batch_{b + 1}", train[chunk], [train_labels[i] for i in chunk])
    dump("test_batch", test, test_labels)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": CIFAR10_CLASSES}, f)


def write_cifar_folders(root: Path, extra: int = 0) -> None:
    """The same images as ``write_cifar_torchvision`` as ``train/<class>/NNNN.png`` (lossless), NNNN the rank."""
    for part, seed, per_class in (("train", 0, TRAIN_PER_CLASS), ("test", 1, TEST_PER_CLASS)):
        pixels, labels = cifar_images(seed, 10 * per_class)
        rank = [0] * 10
        for image, label in zip(pixels, labels):
            write_png(root / part / CIFAR10_CLASSES[label] / f"{rank[label]:04d}.png", image)
            rank[label] += 1
    for i in range(extra):  # later additions: new ranks in some classes
        write_png(root / "train" / CIFAR10_CLASSES[i % 10] / f"{100 + i:04d}.png", cifar_images(2 + i, 1)[0][0])


@pytest.fixture
def no_cifar_checksums(monkeypatch):
    """torchvision checks the real files' MD5 sums; the fake files cannot match them."""
    import torchvision.datasets.cifar

    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda *args, **kwargs: True)


@pytest.fixture(scope="module")
def cifar_folders(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cifar_folders")
    write_cifar_folders(root)
    return root


def test_cifar10_splits_are_disjoint_and_cover_the_training_set(cifar_folders):
    data = CIFAR10(root=str(cifar_folders), resolution=8)
    where = split_of(data)
    train = {k for k, s in where.items() if k.startswith("train/")}
    assert {where[k] for k in train} == {"private", "public"}
    assert len(train) == 10 * TRAIN_PER_CLASS
    assert set(keys(data, "test")) == {k for k in where if k.startswith("test/")}
    assert all(where[k] == CIFAR10.SPLITS.assign(k) for k in train)


def test_cifar10_torchvision_and_folder_formats_agree(tmp_path, cifar_folders, no_cifar_checksums):
    write_cifar_torchvision(tmp_path)
    pickled = CIFAR10(root=str(tmp_path), resolution=8)
    folders = CIFAR10(root=str(cifar_folders), resolution=8)
    for split in ("private", "public", "test"):
        assert keys(pickled, split) == keys(folders, split), split
        assert [r.label for r in pickled.records(split)] == [r.label for r in folders.records(split)]
        # the same image under the same key: lossless files, same decoding path
        assert torch.equal(pickled.dataset(split)._pixels, folders.dataset(split)._pixels), split
    assert keys(pickled, "private")[0].startswith("train/") and keys(pickled, "test")[0].startswith("test/")


def test_cifar10_splits_do_not_depend_on_listing_order_or_extra_files(tmp_path, cifar_folders, monkeypatch):
    before = CIFAR10(root=str(cifar_folders), resolution=8)
    again = CIFAR10(root=str(cifar_folders), resolution=8)
    assert before.index == again.index

    write_cifar_folders(tmp_path, extra=12)
    shuffled_listing(monkeypatch)
    after = CIFAR10(root=str(tmp_path), resolution=8)
    old, new = split_of(before), split_of(after)
    assert len(new) == len(old) + 12
    assert all(new[k] == s for k, s in old.items())
    # with no extra file, a shuffled listing gives the very same records in the same positions
    assert [r.key for r in CIFAR10(root=str(cifar_folders)).records("private")] == keys(before, "private")


def test_cifar10_reads_the_real_class_folders(shared_data, tmp_path, link_real_files):
    names = [f"{part}/{cls}/{i:04d}.jpg" for part in ("train", "test") for cls in CIFAR10_CLASSES[:2] for i in (0, 1)]
    link_real_files(shared_data / "cifar10", names, tmp_path)
    data = CIFAR10(root=str(tmp_path), resolution=32, batch_size=4)
    assert keys(data, "test") == [
        "test/airplane/0000",
        "test/airplane/0001",
        "test/automobile/0000",
        "test/automobile/0001",
    ]
    assert sorted(keys(data, "private") + keys(data, "public")) == sorted(
        f"train/{c}/{i:04d}" for c in CIFAR10_CLASSES[:2] for i in (0, 1)
    )
    batch = next(iter(data.loader("test")))
    assert batch["image"].shape == (4, 3, 32, 32) and batch["label"].tolist() == [0, 0, 1, 1]
    assert batch["image"].min() >= 0 and batch["image"].max() <= 1 and batch["image"].std() > 0.05


# --- LFW: split by identity --------------------------------------------------------------------------------------

LFW_PEOPLE = {"Alice_Smith": 22, "Bob_Jones": 20, "Carol_Ng": 19, "Dan_O_Brien": 2, "Eve": 1}


def write_lfw(root: Path, people: dict[str, int], per_person_folders: bool = False) -> None:
    for p, (person, count) in enumerate(people.items()):
        for n in range(1, count + 1):
            name = f"{person}_{n:04d}.png"
            path = root / person / name if per_person_folders else root / name
            write_png(path, np.full((8, 8, 3), (p * 40 + n) % 256, dtype=np.uint8))


@pytest.fixture(scope="module")
def fake_lfw(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("lfw")
    write_lfw(root, LFW_PEOPLE)
    return root


def person(record) -> str:
    return record.key.rsplit("_", 1)[0]


def test_lfw_victims_are_the_people_with_enough_images_and_no_person_is_on_both_sides(fake_lfw):
    data = LFW(root=str(fake_lfw), resolution=8)
    assert LFW.MIN_IMAGES == 20
    assert data.classes == ["Alice_Smith", "Bob_Jones"]
    assert data.num_classes == 2
    public = {person(r) for r in data.records("public")}
    victim = {person(r) for split in ("private", "test") for r in data.records(split)}
    assert public == {"Carol_Ng", "Dan_O_Brien", "Eve"}
    assert victim == {"Alice_Smith", "Bob_Jones"} and not public & victim
    assert len(data.records("private")) + len(data.records("test")) == 42
    assert data.records("test"), "with 42 victim images the 20 % test split cannot be empty"
    for split in ("private", "test"):
        assert all(data.classes[r.label] == person(r) for r in data.records(split))
    split_of(data)  # no image in two splits


def test_lfw_splits_are_deterministic_across_listings_and_extra_people(tmp_path, fake_lfw, monkeypatch):
    before = split_of(LFW(root=str(fake_lfw)))
    assert before == split_of(LFW(root=str(fake_lfw)))
    shutil.copytree(fake_lfw, tmp_path / "lfw")
    write_lfw(tmp_path / "lfw", {"Zed_New": 3})
    shuffled_listing(monkeypatch)
    after = LFW(root=str(tmp_path / "lfw"))
    assert after.classes == ["Alice_Smith", "Bob_Jones"]
    new = split_of(after)
    assert all(new[k] == s for k, s in before.items())
    assert {new[f"Zed_New_{n:04d}"] for n in (1, 2, 3)} == {"public"}


def test_lfw_reads_per_person_folders_and_rejects_foreign_names(tmp_path, fake_lfw):
    write_lfw(tmp_path / "nested", LFW_PEOPLE, per_person_folders=True)
    assert split_of(LFW(root=str(tmp_path / "nested"))) == split_of(LFW(root=str(fake_lfw)))
    write_png(tmp_path / "odd" / "holiday.png", np.zeros((8, 8, 3), dtype=np.uint8))
    with pytest.raises(DataNotFoundError, match="Person_Name"):
        LFW(root=str(tmp_path / "odd")).records("public")


def test_real_lfw_has_62_victim_people_disjoint_from_the_public_ones(shared_data):
    data = LFW(root=str(shared_data / "lfw64"), resolution=64)  # indexing only: no image is decoded
    assert len(data.classes) == 62
    public = {person(r) for r in data.records("public")}
    victim = {person(r) for split in ("private", "test") for r in data.records(split)}
    assert victim == set(data.classes) and not public & victim


# --- CelebA: split by identity; identity or attribute target -------------------------------------------------------


def write_celeba(root: Path) -> list[tuple[str, str]]:
    """24 images of 12 people (10x12 px, CelebA's portrait shape), one unlisted image, identity and attribute files."""
    rows = [(f"{i + 1:06d}.jpg", str(i // 2 + 1)) for i in range(24)]
    for n, (name, _) in enumerate(rows + [("999999.jpg", "")]):
        pixels = np.random.default_rng(n).integers(0, 256, (12, 10, 3), dtype=np.uint8)
        (root / "img_align_celeba").mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(root / "img_align_celeba" / name)
    (root / "identity_CelebA.txt").write_text("".join(f"{name} {identity}\n" for name, identity in rows))
    lines = [str(len(rows)), "Eyeglasses Male Smiling"]
    lines += [f"{name} -1 {1 if i % 3 else -1} 1" for i, (name, _) in enumerate(rows)]
    (root / "list_attr_celeba.txt").write_text("\n".join(lines) + "\n")
    return rows


def test_celeba_keeps_every_person_on_one_side(tmp_path):
    rows = write_celeba(tmp_path / "celeba")
    identity = dict(rows)
    data = CelebA(root=str(tmp_path), resolution=8)  # finds the `celeba/` sub-folder by itself
    public = {identity[r.key] for r in data.records("public")}
    victim = {identity[r.key] for split in ("private", "test") for r in data.records(split)}
    assert public and victim and not public & victim
    assert victim == set(data.classes) == {str(i) for i in range(1, 13) if CelebA.IDENTITIES.assign(str(i)) == "victim"}
    assert sum(len(v) for v in data.index.values()) == 24  # the image without an identity is left out
    assert all(data.classes[r.label] == identity[r.key] for r in data.records("private"))
    image = data.dataset("private")[0]["image"]
    assert image.shape == (3, 8, 8) and image.dtype == torch.float32


def test_celeba_attribute_target(tmp_path):
    rows = write_celeba(tmp_path)
    data = CelebA(root=str(tmp_path), target="Male", resolution=8)
    assert data.classes == ["not Male", "Male"] and data.num_classes == 2
    expected = {name: int(i % 3 != 0) for i, (name, _) in enumerate(rows)}
    for split in ("private", "test"):
        assert all(r.label == expected[r.key] for r in data.records(split))
    with pytest.raises(ValueError, match="Smiling"):
        CelebA(root=str(tmp_path), target="Bald").records("public")


def test_real_celeba_identities_are_disjoint(shared_data):
    data = CelebA(root=str(shared_data / "celeba"))
    identity = dict(line.split() for line in (data.root / "identity_CelebA.txt").read_text().splitlines())
    public = {identity[r.key] for r in data.records("public")}
    victim = {identity[r.key] for split in ("private", "test") for r in data.records(split)}
    assert public and victim and not public & victim


# --- Tiny-ImageNet validation, class folders, any folder -----------------------------------------------------------


def test_tiny_imagenet_val_is_all_public(shared_data, tmp_path, link_real_files):
    source = shared_data / "tiny_imagenet_val"
    lines = (source / "val_annotations.txt").read_text().splitlines()[:6]
    names = [line.split("\t")[0] for line in lines]
    link_real_files(source, [f"images/{name}" for name in names], tmp_path)
    (tmp_path / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    shutil.copy(source / "wnids.txt", tmp_path / "wnids.txt")
    data = TinyImageNetVal(root=str(tmp_path), resolution=16, batch_size=6)
    assert data.split_names == ("public",) and data.classes == sorted((source / "wnids.txt").read_text().split())
    assert [r.key for r in data.records("public")] == sorted(names)
    wnid = dict(line.split("\t")[:2] for line in lines)
    assert all(data.classes[r.label] == wnid[r.key] for r in data.records("public"))
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    assert batch["image"].shape == (6, 3, 16, 16)
    with pytest.raises(ValueError, match="its splits are public"):
        TinyImageNetVal(root=str(tmp_path), train_split="private")


def test_image_folders(tmp_path, make_image, monkeypatch):
    for cls in ("dog", "cat"):
        for i in range(8):
            make_image(tmp_path / "train" / cls / f"{i}.png", seed=i)
        make_image(tmp_path / "val" / cls / "v.png")
    data = ImageFolders(root=str(tmp_path), resolution=8)
    assert data.classes == ["cat", "dog"]
    where = split_of(data)
    assert {where[f"{c}/{i}.png"] for c in ("cat", "dog") for i in range(8)} == {"private", "public"}
    assert keys(data, "test") == ["cat/v.png", "dog/v.png"] and [r.label for r in data.records("test")] == [0, 1]
    shuffled_listing(monkeypatch)
    assert split_of(ImageFolders(root=str(tmp_path))) == where

    make_image(tmp_path / "val" / "v_flat.png")  # ImageNet's val/ as downloaded: not sorted into classes
    with pytest.raises(DataNotFoundError, match="class folder"):
        ImageFolders(root=str(tmp_path)).records("public")


def test_image_folder_with_label_pattern(shared_data, tmp_path, link_real_files, monkeypatch):
    names = sorted(p.name for p in (shared_data / "imagenet_1k_samples_256").iterdir())[:10]
    link_real_files(shared_data / "imagenet_1k_samples_256", names, tmp_path / "flat")
    data = ImageFolder(root=str(tmp_path / "flat"), label_pattern=r"^(n\d+)_", resolution=16)
    assert data.classes == sorted(name.split("_")[0] for name in names)
    where = split_of(data)
    assert set(where) == set(names) and all(s == ImageFolder.SPLITS.assign(k) for k, s in where.items())
    for split in data.split_names:
        assert all(data.classes[r.label] == r.key.split("_")[0] for r in data.records(split))
    shuffled_listing(monkeypatch)
    assert split_of(ImageFolder(root=str(tmp_path / "flat"), label_pattern=r"^(n\d+)_")) == where
    split = max(data.split_names, key=lambda s: len(data.records(s)))
    images = torch.stack([item["image"] for item in data.dataset(split)])
    assert images.shape[1:] == (3, 16, 16) and images.min() >= 0 and images.max() <= 1


def test_image_folder_without_pattern_and_with_a_non_matching_file(tmp_path, make_image):
    for i in range(6):
        make_image(tmp_path / "sub" / f"{i}.png", seed=i)
    data = ImageFolder(root=str(tmp_path), resolution=8)
    assert data.classes == ["image"] and set(split_of(data)) == {f"sub/{i}.png" for i in range(6)}
    with pytest.raises(ValueError, match="label_pattern"):
        ImageFolder(root=str(tmp_path), label_pattern=r"^(n\d+)_").records("public")


# --- what a batch holds ------------------------------------------------------------------------------------------


def test_index_in_a_batch_is_the_position_in_the_split(fake_lfw):
    data = LFW(root=str(fake_lfw), resolution=16, batch_size=5, cache=False)  # 8 px files served at 16 px
    data.setup("fit")
    ordered = [b for b in data.loader("private")]
    index = torch.cat([b["index"] for b in ordered])
    assert index.tolist() == list(range(len(data.records("private"))))
    dataset = data.dataset("private")
    for batch in data.train_dataloader():  # shuffled: the index still names the item
        assert batch["image"].shape == (5, 3, 16, 16) and batch["image"].dtype == torch.float32
        assert batch["image"].min() >= 0 and batch["image"].max() <= 1
        for i, label, image in zip(batch["index"].tolist(), batch["label"], batch["image"]):
            assert dataset.records[i].label == label and torch.equal(dataset[i]["image"], image)


def test_non_square_images_are_centre_cropped_to_the_resolution(tmp_path):
    write_celeba(tmp_path)
    data = CelebA(root=str(tmp_path), resolution=8, cache=False)
    record = data.records("public")[0]
    image = data.dataset("public")[0]["image"]
    with Image.open(record.source) as source:
        assert source.size == (10, 12)
        expected = source.convert("RGB").crop((0, 1, 10, 11)).resize((8, 8), Image.LANCZOS)
    assert torch.equal(image, torch.from_numpy(np.array(expected)).permute(2, 0, 1).float() / 255)


# --- errors that say what to do --------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", [CIFAR10, LFW, CelebA, TinyImageNetVal, ImageFolders, ImageFolder])
def test_a_missing_root_names_the_path_and_the_fix(tmp_path, cls):
    missing = tmp_path / "nowhere"
    with pytest.raises(DataNotFoundError) as error:
        cls(root=str(missing)).setup("fit")
    message = str(error.value)
    assert str(missing.resolve()) in message
    # `root` was given, so PFO_DATA_ROOT would not be read: the one fix is the option
    assert "data.init_args.root" in message and "PFO_DATA_ROOT" not in message


def test_cifar10_without_data_suggests_download(tmp_path):
    with pytest.raises(DataNotFoundError, match="download: true"):
        CIFAR10(root=str(tmp_path)).setup("fit")


def test_default_root_follows_pfo_data_root(isolated):
    assert CIFAR10().root == isolated / "data" / "cifar10"
    assert LFW().root == isolated / "data" / "lfw64"


def test_default_root_without_pfo_data_root_is_data_folder():
    assert CIFAR10().root == Path("data") / "cifar10"


def test_unknown_split_names_the_valid_ones(fake_lfw):
    with pytest.raises(ValueError, match="private, public, test"):
        CIFAR10(train_split="train")
    with pytest.raises(ValueError, match="no split 'val'"):
        LFW(root=str(fake_lfw)).records("val")


@pytest.mark.parametrize("resolution", [0, 4, 7, 32.0])
def test_bad_resolution(resolution):
    with pytest.raises(ValueError, match="resolution"):
        CIFAR10(resolution=resolution)


def test_victim_resolutions_need_not_be_powers_of_two(tmp_path, make_image):
    make_image(tmp_path / "a.png", size=(40, 30))
    data = ImageFolder(root=str(tmp_path), resolution=24, val_split=None)
    split = ImageFolder.SPLITS.assign("a.png")
    assert data.dataset(split)[0]["image"].shape == (3, 24, 24)
    assert ImageFolders(resolution=224).resolution == 224  # ViT-B/16's input


def test_empty_split_is_an_error(tmp_path):
    write_lfw(tmp_path, {"Few_Images": 2})
    with pytest.raises(DataNotFoundError, match="'private' is empty"):
        LFW(root=str(tmp_path)).setup("fit")


# --- augmentation and synthetic data -----------------------------------------------------------------------------


def test_augmentation_translates_and_flips_but_keeps_shape_and_range():
    images = torch.rand(6, 3, 16, 16)
    torch.manual_seed(1)
    moved = random_crop_flip(images, padding=2)
    assert moved.shape == images.shape
    assert images.min() <= moved.min() and moved.max() <= images.max()
    assert not torch.equal(moved, images)

    torch.manual_seed(2)
    shifted = random_crop_flip(images, padding=2, flip=False)
    padded = torch.nn.functional.pad(images, (2,) * 4, mode="reflect")
    for n in range(6):  # each image is a crop of its reflect-padded self
        crops = [padded[n, :, dy : dy + 16, dx : dx + 16] for dy in range(5) for dx in range(5)]
        assert any(torch.equal(shifted[n], crop) for crop in crops)


def test_data_module_augments_only_while_training():
    data = SyntheticImages(resolution=16, augment=True)
    batch = {"image": torch.rand(4, 3, 16, 16), "label": torch.zeros(4), "index": torch.arange(4)}
    assert data.on_after_batch_transfer(batch, 0) is batch  # no trainer: untouched
    data.trainer = SimpleNamespace(training=False)
    assert torch.equal(data.on_after_batch_transfer(batch, 0)["image"], batch["image"])
    data.trainer = SimpleNamespace(training=True)
    out = data.on_after_batch_transfer(batch, 0)
    assert out["image"].shape == batch["image"].shape and not torch.equal(out["image"], batch["image"])
    assert torch.equal(out["index"], batch["index"])


def test_synthetic_images_are_deterministic():
    a = SyntheticImages(resolution=12, num_classes=3, sizes={"private": 9, "test": 4})
    b = SyntheticImages(resolution=12, num_classes=3, sizes={"private": 9, "test": 4})
    assert a.num_classes == 3 and len(a.records("private")) == 9 and len(a.records("public")) == 64
    for split in ("private", "test"):
        assert torch.equal(a.dataset(split)._pixels, b.dataset(split)._pixels)
    assert [r.label for r in a.records("private")] == [i % 3 for i in range(9)]
    assert not torch.equal(a.dataset("private")._pixels[:4], a.dataset("test")._pixels)
    item = a.dataset("test")[3]
    assert item["image"].shape == (3, 12, 12) and item["index"] == 3 and 0 <= item["image"].min() <= 1
    assert not set(keys(a, "private")) & set(keys(a, "public"))
