"""The data-module base: a data set on disk, split once and for all into named disjoint parts."""

from __future__ import annotations

import os
from functools import cached_property
from pathlib import Path
from typing import ClassVar

import lightning as L
import torch
from torch.utils.data import DataLoader

from pfo.data.augment import random_crop_flip
from pfo.data.images import Record, SplitDataset
from pfo.data.splits import check_split_name

DATA_ROOT_ENV = "PFO_DATA_ROOT"


class DataNotFoundError(FileNotFoundError):
    """The data set is not where the config says; the message says where we looked and how to fix it."""


def resolve_root(root: str | os.PathLike | None, subfolder: str) -> Path:
    """``root`` when given; otherwise ``$PFO_DATA_ROOT/<subfolder>``; otherwise ``data/<subfolder>``."""
    if root is not None:
        return Path(root).expanduser()
    base = os.environ.get(DATA_ROOT_ENV)
    return Path(base).expanduser() / subfolder if base else Path("data") / subfolder


class ImageDataModule(L.LightningDataModule):
    """Images of one data set, served by split name.

    Subclasses say where the data lives (``subfolder``), how to index it (``_index``, returning every split's
    records) and which splits exist (``split_names``). Splits are defined in code, so a victim config naming
    ``private`` and a prior config naming ``public`` can never overlap. Batches are dicts with ``image`` in
    [0, 1] (N, 3, R, R), ``label`` and ``index`` (the item's position in its split).
    """

    subfolder: ClassVar[str] = ""
    split_names: ClassVar[tuple[str, ...]] = ("private", "public", "test")
    layout_help: ClassVar[str] = ""
    # The option that sets ``root`` in the command in use: ``train.py`` has the data module at ``data``; ``attack.py``
    # nests it in the targets (``data.data``) and says so (``AttackCLI.after_instantiate_classes``).
    root_option: str = "data.init_args.root"

    def __init__(
        self,
        root: str | None = None,
        resolution: int = 32,
        train_split: str = "private",
        val_split: str | None = "test",
        test_split: str = "test",
        predict_split: str = "test",
        batch_size: int = 128,
        num_workers: int = 0,
        augment: bool = False,
        cache: bool = True,
    ) -> None:
        """
        Args:
            root: folder holding the data set; default ``$PFO_DATA_ROOT/<subfolder>`` or ``data/<subfolder>``.
            resolution: side of the square images served (centre crop, then resize).
            train_split: split that ``fit`` trains on (``private`` for a victim, ``public`` for a prior).
            val_split: split validated on during ``fit``; ``null`` for none.
            test_split: split used by ``test``.
            predict_split: split used by ``predict`` (and by attacks for their targets).
            batch_size: images per batch.
            num_workers: data-loader worker processes (0 decodes in the main process).
            augment: random translation (4 px at 32 px, scaled with resolution) and horizontal flips in training.
            cache: decode each split once into memory (right for the 32-64 px data sets).
        """
        super().__init__()
        for split in (train_split, val_split, test_split, predict_split):
            if split is not None:
                check_split_name(split, self.split_names, type(self).__name__)
        if not isinstance(resolution, int) or resolution < 8:  # any size: victims use 224, generators 2^k
            raise ValueError(f"resolution must be an integer >= 8 (the side in pixels), got {resolution!r}")
        self.root = resolve_root(root, self.subfolder)
        self.root_given = root is not None
        self.resolution = resolution
        self.train_split, self.val_split = train_split, val_split
        self.test_split, self.predict_split = test_split, predict_split
        self.batch_size, self.num_workers = batch_size, num_workers
        self.augment, self.cache = augment, cache
        self._datasets: dict[str, SplitDataset] = {}

    # --- what subclasses provide ---------------------------------------------------------------------------
    def _index(self) -> dict[str, list[Record]]:
        raise NotImplementedError

    @property
    def classes(self) -> list[str]:
        """Names of the labels of the private/test splits, in label order."""
        raise NotImplementedError

    # --- shared machinery ----------------------------------------------------------------------------------
    def missing(self, what: str) -> DataNotFoundError:
        """The error for data that is not where ``root`` says, in one line: where we looked, the layout expected,
        and the fix. ``PFO_DATA_ROOT`` is only offered where it would be read (``root`` not set)."""
        fix = f"set `{self.root_option}` to the folder holding the data"
        if not self.root_given:
            fix += f", or point the {DATA_ROOT_ENV} environment variable at a folder containing `{self.subfolder}/`"
        return DataNotFoundError(
            f"{type(self).__name__}: {what} under {self.root.resolve()} (expected: {self.layout_help}); {fix}"
        )

    @cached_property
    def index(self) -> dict[str, list[Record]]:
        """Every split's records, sorted by key (what ``index`` in a batch refers to)."""
        if not self.root.exists():
            raise self.missing("no data found")
        splits = {name: [] for name in self.split_names}
        for name, records in self._index().items():
            splits[name] = sorted(records, key=lambda r: r.key)
        return splits

    def records(self, split: str) -> list[Record]:
        check_split_name(split, self.split_names, type(self).__name__)
        return self.index[split]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def dataset(self, split: str) -> SplitDataset:
        if split not in self._datasets:
            records = self.records(split)
            if not records:
                raise self.missing(f"split {split!r} is empty")
            self._datasets[split] = SplitDataset(records, self.resolution, cache=self.cache)
        return self._datasets[split]

    def setup(self, stage: str | None = None) -> None:
        wanted = {
            "fit": [self.train_split, self.val_split],
            "validate": [self.val_split],
            "test": [self.test_split],
            "predict": [self.predict_split],
        }.get(stage or "", [self.train_split, self.val_split, self.test_split])
        for split in wanted:
            if split is not None:
                self.dataset(split)

    def loader(self, split: str, shuffle: bool = False, drop_last: bool = False) -> DataLoader:
        return DataLoader(
            self.dataset(split),
            batch_size=self.batch_size,
            shuffle=shuffle,
            drop_last=drop_last,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self.loader(
            self.train_split, shuffle=True, drop_last=len(self.dataset(self.train_split)) > self.batch_size
        )

    def val_dataloader(self) -> DataLoader | list:
        return [] if self.val_split is None else self.loader(self.val_split)

    def test_dataloader(self) -> DataLoader:
        return self.loader(self.test_split)

    def predict_dataloader(self) -> DataLoader:
        return self.loader(self.predict_split)

    def on_after_batch_transfer(self, batch: dict, dataloader_idx: int) -> dict:
        if self.augment and self.trainer is not None and self.trainer.training:
            batch = dict(batch)
            batch["image"] = random_crop_flip(batch["image"], padding=max(1, self.resolution // 8))
        return batch


def label_map(names) -> dict[str, int]:
    """Label per name, in sorted order, so labels do not depend on the order files were listed."""
    return {name: i for i, name in enumerate(sorted(set(names)))}


def images_tensor(records: list[Record], resolution: int) -> torch.Tensor:
    """All images of ``records`` as one float tensor in [0, 1] (for tests and small scripts)."""
    return SplitDataset(records, resolution, cache=True)._pixels.float() / 255.0
