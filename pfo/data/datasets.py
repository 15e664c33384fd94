"""The data sets pfo knows, each with its split definition fixed here (see ``pfo.data.splits``)."""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from pfo.data.base import ImageDataModule, label_map
from pfo.data.images import Record, list_images
from pfo.data.splits import FractionSplits, unit_hash

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


class CIFAR10(ImageDataModule):
    """CIFAR-10. ``private`` and ``public`` are disjoint halves of the training set, ``test`` the test set.

    Reads torchvision's own format (``cifar-10-batches-py/``, downloaded with ``download: true``) or a class-folder
    tree ``train/<class>/NNNN.jpg``, ``test/<class>/NNNN.jpg`` where NNNN is the image's rank within its class.
    Both formats key an image by ``<class>/<rank>``, so the same image lands in the same split in either.
    """

    subfolder = "cifar10"
    SPLITS: ClassVar[FractionSplits] = FractionSplits("cifar10-train-v1", {"private": 0.5, "public": 0.5})
    layout_help = (
        "torchvision's `cifar-10-batches-py/` (use `download: true` where the network allows), or class folders "
        "`train/<class>/NNNN.jpg` and `test/<class>/NNNN.jpg`"
    )

    def __init__(self, *args, download: bool = False, **kwargs) -> None:
        """
        Args:
            download: fetch torchvision's copy into ``root`` when it is absent (needs the network).
        """
        super().__init__(*args, **kwargs)
        self.download = download

    @property
    def classes(self) -> list[str]:
        return CIFAR10_CLASSES

    def prepare_data(self) -> None:
        if self.download and not (self.root / "cifar-10-batches-py").is_dir():
            from torchvision.datasets import CIFAR10 as TorchvisionCIFAR10

            TorchvisionCIFAR10(str(self.root), train=True, download=True)

    def _index(self) -> dict[str, list[Record]]:
        if (self.root / "cifar-10-batches-py").is_dir() or self.download:
            self.prepare_data()
            part = {"train": self._torchvision_records(True), "test": self._torchvision_records(False)}
        elif (self.root / "train").is_dir() and (self.root / "test").is_dir():
            part = {name: self._folder_records(self.root / name, name) for name in ("train", "test")}
        else:
            raise self.missing("neither `cifar-10-batches-py/` nor `train/` and `test/` class folders found")
        splits: dict[str, list[Record]] = {"private": [], "public": [], "test": part["test"]}
        for record in part["train"]:
            splits[self.SPLITS.assign(record.key)].append(record)
        return splits

    def _torchvision_records(self, train: bool) -> list[Record]:
        from torchvision.datasets import CIFAR10 as TorchvisionCIFAR10

        data = TorchvisionCIFAR10(str(self.root), train=train, download=False)
        rank: Counter = Counter()
        records = []
        prefix = "train" if train else "test"
        for array, label in zip(data.data, data.targets):
            records.append(Record(f"{prefix}/{CIFAR10_CLASSES[label]}/{rank[label]:04d}", np.asarray(array), label))
            rank[label] += 1
        return records

    def _folder_records(self, folder: Path, prefix: str) -> list[Record]:
        labels = {name: i for i, name in enumerate(CIFAR10_CLASSES)}
        records = []
        for path in list_images(folder):
            cls = path.parent.name
            if cls not in labels:
                raise self.missing(f"unknown class folder {path.parent}")
            records.append(Record(f"{prefix}/{cls}/{path.stem}", str(path), labels[cls]))
        if not records:
            raise self.missing(f"no images in {folder}")
        return records


class LFW(ImageDataModule):
    """Labeled Faces in the Wild, split by identity: the people with at least ``MIN_IMAGES`` images are the face
    victim's classes (their images split ``private``/``test``); everyone else is ``public``, the prior's data.

    Reads a flat folder of ``<Person_Name>_NNNN.jpg`` (or torchvision's ``<Person_Name>/`` sub-folders).
    """

    subfolder = "lfw64"
    MIN_IMAGES: ClassVar[int] = 20
    SPLITS: ClassVar[FractionSplits] = FractionSplits("lfw-victim-v1", {"private": 0.8, "test": 0.2})
    layout_help = "image files named `<Person_Name>_NNNN.jpg`, flat or in per-person folders"
    _NAME = re.compile(r"^(?P<person>.+)_(?P<number>\d+)$")

    def _people(self) -> dict[str, list[Path]]:
        people: dict[str, list[Path]] = defaultdict(list)
        for path in list_images(self.root):
            match = self._NAME.match(path.stem)
            if match is None:
                raise self.missing(f"file {path.name} does not follow `<Person_Name>_NNNN`")
            people[match["person"]].append(path)
        if not people:
            raise self.missing("no images found")
        return people

    @property
    def classes(self) -> list[str]:
        return sorted(p for p, files in self._people_cached.items() if len(files) >= self.MIN_IMAGES)

    @property
    def _people_cached(self) -> dict[str, list[Path]]:
        if not hasattr(self, "_people_memo"):
            self._people_memo = self._people()
        return self._people_memo

    def _index(self) -> dict[str, list[Record]]:
        victims = label_map(self.classes)
        others = label_map(p for p in self._people_cached if p not in victims)
        splits: dict[str, list[Record]] = {"private": [], "public": [], "test": []}
        for person, files in self._people_cached.items():
            for path in files:
                if person in victims:
                    record = Record(path.stem, str(path), victims[person])
                    splits[self.SPLITS.assign(record.key)].append(record)
                else:
                    splits["public"].append(Record(path.stem, str(path), others[person]))
        return splits


class CelebA(ImageDataModule):
    """CelebA aligned faces, split by identity: half the identities are ``public`` (prior data), the other half's
    images split ``private``/``test`` (a victim identifying those people, or predicting one attribute).

    Reads ``img_align_celeba/`` with ``identity_CelebA.txt`` beside it (torchvision's layout, also under a
    ``celeba/`` sub-folder); ``list_attr_celeba.txt`` is needed only when ``target`` names an attribute.
    """

    subfolder = "celeba"
    IDENTITIES: ClassVar[FractionSplits] = FractionSplits("celeba-identity-v1", {"victim": 0.5, "public": 0.5})
    SPLITS: ClassVar[FractionSplits] = FractionSplits("celeba-victim-v1", {"private": 0.8, "test": 0.2})
    layout_help = "`img_align_celeba/*.jpg` and `identity_CelebA.txt` (optionally `list_attr_celeba.txt`)"

    def __init__(self, *args, target: str = "identity", **kwargs) -> None:
        """
        Args:
            target: ``identity`` (label = the person among the victim identities) or an attribute name from
                ``list_attr_celeba.txt`` such as ``Male`` (label 1 when present).
        """
        super().__init__(*args, **kwargs)
        if (self.root / "celeba" / "img_align_celeba").is_dir():
            self.root = self.root / "celeba"
        self.target = target

    def _identities(self) -> dict[str, str]:
        path = self.root / "identity_CelebA.txt"
        if not path.is_file():
            raise self.missing("`identity_CelebA.txt` not found")
        rows = (line.split() for line in path.read_text().splitlines() if line.strip())
        return {name: identity for name, identity in rows}

    def _victim_identities(self) -> list[str]:
        ids = set(self._identities().values())
        return sorted(i for i in ids if self.IDENTITIES.assign(i) == "victim")

    @property
    def classes(self) -> list[str]:
        return self._victim_identities() if self.target == "identity" else [f"not {self.target}", self.target]

    def _attributes(self) -> dict[str, int]:
        path = self.root / "list_attr_celeba.txt"
        if not path.is_file():
            raise self.missing(f"`list_attr_celeba.txt` (needed for target {self.target!r}) not found")
        lines = path.read_text().splitlines()
        header = lines[1].split()
        if self.target not in header:
            raise ValueError(f"CelebA has no attribute {self.target!r}; choose one of {', '.join(header)}")
        column = header.index(self.target) + 1
        return {row.split()[0]: int(row.split()[column] == "1") for row in lines[2:] if row.strip()}

    def _index(self) -> dict[str, list[Record]]:
        folder = self.root / "img_align_celeba"
        if not folder.is_dir():
            raise self.missing("`img_align_celeba/` not found")
        identities = self._identities()
        victims = label_map(self._victim_identities())
        attributes = self._attributes() if self.target != "identity" else {}
        splits: dict[str, list[Record]] = {"private": [], "public": [], "test": []}
        for path in list_images(folder):
            identity = identities.get(path.name)
            if identity is None:
                continue  # an image without an identity cannot be placed on either side safely
            if identity in victims:
                label = victims[identity] if self.target == "identity" else attributes[path.name]
                record = Record(path.name, str(path), label)
                splits[self.SPLITS.assign(identity + "/" + path.name)].append(record)
            else:
                splits["public"].append(Record(path.name, str(path), 0))
        return splits


class TinyImageNetVal(ImageDataModule):
    """Tiny-ImageNet-200's validation split: the out-of-distribution public data for CIFAR-10 targets.
    All of it is ``public``."""

    subfolder = "tiny_imagenet_val"
    split_names = ("public",)
    layout_help = "`images/val_N.JPEG`, `val_annotations.txt` (file, wnid, box) and `wnids.txt`"

    def __init__(
        self,
        *args,
        train_split: str = "public",
        val_split: str | None = None,
        test_split: str = "public",
        predict_split: str = "public",
        **kwargs,
    ) -> None:
        super().__init__(
            *args,
            train_split=train_split,
            val_split=val_split,
            test_split=test_split,
            predict_split=predict_split,
            **kwargs,
        )

    @property
    def classes(self) -> list[str]:
        path = self.root / "wnids.txt"
        if not path.is_file():
            raise self.missing("`wnids.txt` not found")
        return sorted(path.read_text().split())

    def _index(self) -> dict[str, list[Record]]:
        annotations = self.root / "val_annotations.txt"
        if not annotations.is_file():
            raise self.missing("`val_annotations.txt` not found")
        labels = {wnid: i for i, wnid in enumerate(self.classes)}
        records = []
        for line in annotations.read_text().splitlines():
            if line.strip():
                name, wnid = line.split("\t")[:2]
                records.append(Record(name, str(self.root / "images" / name), labels[wnid]))
        return {"public": records}


class ImageFolders(ImageDataModule):
    """Class-folder trees, ImageNet style: ``train/<class>/*`` (split ``private``/``public`` by fraction) and
    ``val/<class>/*`` (``test``). Labels follow the sorted class-folder names."""

    subfolder = "imagenet"
    SPLITS: ClassVar[FractionSplits] = FractionSplits("imagefolders-train-v1", {"private": 0.5, "public": 0.5})
    layout_help = "`train/<class>/<image>` and `val/<class>/<image>`"

    @property
    def classes(self) -> list[str]:
        train = self.root / "train"
        if not train.is_dir():
            raise self.missing("`train/` not found")
        return sorted(p.name for p in train.iterdir() if p.is_dir())

    def _index(self) -> dict[str, list[Record]]:
        labels = {name: i for i, name in enumerate(self.classes)}
        splits: dict[str, list[Record]] = {"private": [], "public": [], "test": []}
        for part in ("train", "val"):
            for path in list_images(self.root / part):
                key = f"{path.parent.name}/{path.name}"
                if path.parent.name not in labels:  # e.g. ImageNet's flat val/ folder, not yet sorted into classes
                    raise self.missing(f"{path} is not in a class folder that `train/` also has")
                record = Record(key, str(path), labels[path.parent.name])
                splits["test" if part == "val" else self.SPLITS.assign(key)].append(record)
        return splits


class ImageFolder(ImageDataModule):
    """Any folder of images (recursively): split 40/50/10 into ``private``/``public``/``test`` by file path.
    Labels come from ``label_pattern`` (a regex whose first group, matched on the file name, names the class),
    else every label is 0. FFHQ and unlabelled public image sets use this."""

    subfolder = "images"
    SPLITS: ClassVar[FractionSplits] = FractionSplits("imagefolder-v1", {"private": 0.4, "public": 0.5, "test": 0.1})
    layout_help = "image files (.jpg, .png, ...) anywhere under the folder"

    def __init__(self, *args, label_pattern: str | None = None, **kwargs) -> None:
        """
        Args:
            label_pattern: regex whose first group, searched in the file name, is the class (e.g. ``^(n\\d+)_``
                for ImageNet samples named ``<wnid>_<name>.JPEG``); none for unlabelled images.
        """
        super().__init__(*args, **kwargs)
        self.label_pattern = re.compile(label_pattern) if label_pattern else None

    def _class_of(self, path: Path) -> str:
        if self.label_pattern is None:
            return ""
        match = self.label_pattern.search(path.name)
        if match is None:
            raise ValueError(f"file {path.name} does not match label_pattern {self.label_pattern.pattern!r}")
        return match.group(1)

    @property
    def classes(self) -> list[str]:
        if self.label_pattern is None:
            return ["image"]
        if not hasattr(self, "_classes_memo"):
            self._classes_memo = sorted({self._class_of(p) for p in list_images(self.root)})
        return self._classes_memo

    def _index(self) -> dict[str, list[Record]]:
        paths = list_images(self.root)
        if not paths:
            raise self.missing("no images found")
        labels = {name: i for i, name in enumerate(self.classes)}
        splits: dict[str, list[Record]] = {name: [] for name in self.SPLITS.names}
        for path in paths:
            key = str(path.relative_to(self.root))
            splits[self.SPLITS.assign(key)].append(Record(key, str(path), labels.get(self._class_of(path), 0)))
        return splits


class SyntheticImages(ImageDataModule):
    """Generated images for tests and dry runs: no files, any resolution, ``num_classes`` learnable classes
    (each class its own colour and stripe orientation, plus per-image noise), deterministic per (split, index)."""

    subfolder = ""
    layout_help = "(generated; no files)"

    def __init__(self, *args, num_classes: int = 4, sizes: dict[str, int] | None = None, **kwargs) -> None:
        """
        Args:
            num_classes: number of labels.
            sizes: items per split; default private 64, public 64, test 16.
        """
        super().__init__(*args, **kwargs)
        self._num_classes = num_classes
        self.sizes = {"private": 64, "public": 64, "test": 16, **(sizes or {})}

    @property
    def classes(self) -> list[str]:
        return [f"class{i}" for i in range(self._num_classes)]

    @property
    def index(self) -> dict[str, list[Record]]:  # type: ignore[override]
        if not hasattr(self, "_synthetic_index"):
            self._synthetic_index = {
                split: [self._make(split, i) for i in range(self.sizes.get(split, 0))] for split in self.split_names
            }
        return self._synthetic_index

    def _make(self, split: str, i: int) -> Record:
        seed = int(unit_hash("synthetic", f"{split}/{i}") * 2**31)
        g = torch.Generator().manual_seed(seed)
        label = i % self._num_classes
        r = self.resolution
        colour = torch.tensor([(label * 0.37) % 1, (label * 0.61 + 0.2) % 1, (label * 0.83 + 0.4) % 1])
        ramp = torch.linspace(0, 1, r)
        stripes = torch.sin(2 * np.pi * 3 * (ramp[None, :] if label % 2 else ramp[:, None])).expand(r, r)
        image = 0.5 * colour[:, None, None] + 0.25 * stripes + 0.25 + 0.1 * torch.randn(3, r, r, generator=g)
        array = (image.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
        return Record(f"{split}/{i:06d}", array, label)
