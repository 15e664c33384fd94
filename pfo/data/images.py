"""Reading images from disk into fixed-size tensors, and the dataset of one split."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision.transforms import functional as TF

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


@dataclass(frozen=True)
class Record:
    """One item of a data set: a stable key (what split assignment hashes), where its pixels are, its label."""

    key: str
    source: str | np.ndarray  # a file path, or an HWC uint8 array already in memory
    label: int


def to_square_tensor(image: Image.Image | np.ndarray, resolution: int) -> torch.Tensor:
    """Centre-crop to a square on the shorter side, resize to ``resolution`` and return CHW uint8.

    Cropping first keeps faces and objects undistorted (CelebA is 178x218, ImageNet photos vary)."""
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    image = image.convert("RGB")
    side = min(image.size)
    image = TF.center_crop(image, [side, side])
    if side != resolution:
        image = image.resize((resolution, resolution), Image.BICUBIC if side < resolution else Image.LANCZOS)
    return torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1).contiguous()


def load_record(record: Record, resolution: int) -> torch.Tensor:
    if isinstance(record.source, np.ndarray):
        return to_square_tensor(record.source, resolution)
    with Image.open(record.source) as image:
        return to_square_tensor(image, resolution)


class SplitDataset(Dataset):
    """The items of one split, each a dict ``{"image": float [0, 1] CHW, "label": int, "index": int}``.

    ``index`` is the item's position in its split (records sorted by key): attacks seed each target's randomness
    from it, so a target's result does not depend on which other targets share its batch, shard or process.
    With ``cache`` every image is decoded once into one uint8 tensor, which suits the small 32-64 px data sets.
    """

    def __init__(self, records: list[Record], resolution: int, cache: bool = True) -> None:
        self.records = records
        self.resolution = resolution
        self._pixels: torch.Tensor | None = None
        if cache and records:
            self._pixels = torch.stack([load_record(r, resolution) for r in records])

    def __len__(self) -> int:
        return len(self.records)

    def pixels(self, i: int) -> torch.Tensor:
        if self._pixels is not None:
            return self._pixels[i]
        return load_record(self.records[i], self.resolution)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.pixels(i).float() / 255.0, "label": self.records[i].label, "index": i}


def list_images(folder: Path) -> list[Path]:
    """Every image file under ``folder`` (recursively), in a stable order."""
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
