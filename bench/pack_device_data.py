"""Bundle the data a GPU call needs into one file of the checkout that travels with it (``.carry/``, ignored by
git), and unpack it there.

A device machine sees only the checkout, and at most 64 MiB of it: CIFAR-10 (its ``train/`` and ``test/`` class
folders, 53 MiB as the JPEGs of ``../shared/data``) fits whole, Tiny-ImageNet only in part beside it; the faces
setting's LFW (``lfw64/``, 31 MiB) fits whole, with room for the DigiFace prior's 14 MiB of weights (copied as they are
into ``.carry/weights/``, the call's ``PFO_PRIOR_CACHE``). The 64,000 small files
travel as one bundle (their bytes back to back, and a JSON index), which costs nothing per file. Splits are a pure
function of each file's key (``pfo.data.splits``), so the copy has exactly the ``private``/``public``/``test``
membership of the original: a prior trained there on ``public`` never sees a file the victim trains on here.

    python bench/pack_device_data.py --source ../shared/data --bundle .carry/data.bundle --tinyimagenet 3800
    python bench/pack_device_data.py --unpack .carry/data.bundle --dest /tmp/pfo_data   # on the device machine
    python bench/pack_device_data.py --cifar10_train 10 --tinyimagenet 0   # a call that only attacks
    python bench/pack_device_data.py --lfw --no_cifar10 --tinyimagenet 0   # the faces setting (SETTING=faces)
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
from pathlib import Path


def cifar10_files(source: Path, train: int | None = None) -> list[Path]:
    """The files of CIFAR-10's ``test/`` class folders and of ``train/`` (only the first ``train`` of them when
    given: a call that only attacks needs the test images, and the data module a non-empty ``train/``)."""
    files = []
    for part in ("train", "test"):
        folder = source / "cifar10" / part
        if not folder.is_dir():
            raise SystemExit(f"no CIFAR-10 class folders at {folder}: point --source at the folder holding cifar10/")
        found = sorted(folder.glob("*/*"))
        files += found[:train] if part == "train" and train is not None else found
    return files


def tinyimagenet_files(source: Path, count: int) -> tuple[list[Path], str]:
    """The first ``count`` validation images (in annotation order) and an annotation file listing only them
    (``pfo.data.TinyImageNetVal`` reads every listed image)."""
    root = source / "tiny_imagenet_val"
    lines = [line for line in (root / "val_annotations.txt").read_text().splitlines() if line.strip()][:count]
    return [root / "images" / line.split("\t")[0] for line in lines], "\n".join(lines) + "\n"


def lfw_files(source: Path) -> list[Path]:
    """Every image of ``lfw64/`` (the faces victim's people and the public people alike: one call trains both)."""
    folder = source / "lfw64"
    found = sorted(p for p in folder.rglob("*") if p.is_file())
    if not found:
        raise SystemExit(f"no LFW images at {folder}: point --source at the folder holding lfw64/")
    return found


def write_bundle(
    source: Path,
    bundle: Path,
    tinyimagenet: int,
    cifar10_train: int | None = None,
    cifar10: bool = True,
    lfw: bool = False,
) -> dict[str, int]:
    """Write the files' bytes back to back into ``bundle`` and ``<bundle>.json.gz`` (path -> offset, length);
    returns the bytes per data set."""
    entries: dict[str, tuple[int, int]] = {}
    sizes: dict[str, int] = {}
    bundle.parent.mkdir(parents=True, exist_ok=True)
    with open(bundle, "wb") as out:

        def add(relative: str, data: bytes) -> None:
            entries[relative] = (out.tell(), len(data))
            out.write(data)
            name = relative.split("/")[0]
            sizes[name] = sizes.get(name, 0) + len(data)

        for path in (cifar10_files(source, cifar10_train) if cifar10 else []) + (lfw_files(source) if lfw else []):
            add(path.relative_to(source).as_posix(), path.read_bytes())
        if tinyimagenet > 0:
            images, annotations = tinyimagenet_files(source, tinyimagenet)
            for path in images:
                add(path.relative_to(source).as_posix(), path.read_bytes())
            add("tiny_imagenet_val/val_annotations.txt", annotations.encode())
            wnids = source / "tiny_imagenet_val" / "wnids.txt"
            add("tiny_imagenet_val/wnids.txt", wnids.read_bytes())
    with gzip.open(index_path(bundle), "wt") as f:
        json.dump(entries, f)
    return sizes


def index_path(bundle: Path) -> Path:
    return bundle.with_name(bundle.name + ".json.gz")


def unpack(bundle: Path, dest: Path) -> int:
    """Write every file of ``bundle`` under ``dest``; returns how many."""
    with gzip.open(index_path(bundle), "rt") as f:
        entries = json.load(f)
    with open(bundle, "rb") as data:
        for relative, (offset, length) in entries.items():
            target = dest / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            data.seek(offset)
            target.write_bytes(data.read(length))
    return len(entries)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--source", default="../shared/data", help="folder holding cifar10/, tiny_imagenet_val/ and lfw64/"
    )
    parser.add_argument("--bundle", default=".carry/data.bundle", help="the bundle to write (an ignored folder)")
    parser.add_argument("--tinyimagenet", type=int, default=3800, help="Tiny-ImageNet images to bundle (0: none)")
    parser.add_argument(
        "--cifar10_train", type=int, help="bundle only the first N CIFAR-10 training images (default: all)"
    )
    parser.add_argument("--no_cifar10", action="store_true", help="leave CIFAR-10 out (a faces call)")
    parser.add_argument("--lfw", action="store_true", help="bundle lfw64/ whole (the faces setting)")
    parser.add_argument("--unpack", metavar="BUNDLE", help="unpack this bundle into --dest instead")
    parser.add_argument("--dest", default="data", help="where --unpack writes the data sets")
    args = parser.parse_args(argv)
    if args.unpack:
        print(f"unpacked {unpack(Path(args.unpack), Path(args.dest))} files into {args.dest}")
        return
    sizes = write_bundle(
        Path(args.source), Path(args.bundle), args.tinyimagenet, args.cifar10_train, not args.no_cifar10, args.lfw
    )
    for name, size in sizes.items():
        print(f"{name}: {size / 2**20:.1f} MiB")
    total = Path(args.bundle).stat().st_size + index_path(Path(args.bundle)).stat().st_size
    print(f"{args.bundle}: {total / 2**20:.1f} MiB with its index (a device call carries at most 64 MiB in all)")


if __name__ == "__main__":
    sys.exit(main())
