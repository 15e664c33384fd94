"""Data modules: real data sets with fixed, disjoint splits, and synthetic images for tests."""

from pfo.data.base import DATA_ROOT_ENV, DataNotFoundError, ImageDataModule, resolve_root
from pfo.data.datasets import (
    CIFAR10,
    LFW,
    CelebA,
    ImageFolder,
    ImageFolders,
    SyntheticImages,
    TinyImageNetVal,
)
from pfo.data.images import Record, SplitDataset
from pfo.data.splits import FractionSplits, unit_hash

__all__ = [
    "CIFAR10",
    "DATA_ROOT_ENV",
    "LFW",
    "CelebA",
    "DataNotFoundError",
    "FractionSplits",
    "ImageDataModule",
    "ImageFolder",
    "ImageFolders",
    "Record",
    "SplitDataset",
    "SyntheticImages",
    "TinyImageNetVal",
    "resolve_root",
    "unit_hash",
]
