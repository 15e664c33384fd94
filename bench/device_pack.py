"""Pack what a GPU call made (``bench/gpu_strong_priors.sh``) into the few files a device call brings back, and unpack
them at home into the same layout, so ``bench/benchmark.py --report_only`` tabulates the runs as if made here.

A call brings back at most 8 files of at most 16 MiB each (64 MiB in all). So: the victim file
(``victim_<name>/victim.pt``, CIFAR-10's or the faces') gzipped and cut into parts, each prior's
``gan_<name>/generator.pt`` as it is, and one archive of the attack runs and the training logs. Each
target's file loses its per-stage images and its original (the originals, the same 16 targets in every run, are kept
once in ``originals.pt`` and put back on unpacking); every metric, reconstruction and timing stays.

    python bench/device_pack.py pack logs/gpu --out "$OUT"
    python bench/device_pack.py unpack /work/.device/<call>/files --dest logs/gpu
"""

from __future__ import annotations

import argparse
import gzip
import io
import shutil
import sys
import tarfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # pfo, uninstalled too (a bare GPU machine)

from pfo.attacks.outputs import TARGETS_DIR, AttackOutputs  # noqa: E402 (after the path above)

PART_BYTES = 15 * 2**20
VICTIMS = "victim_*/victim.pt"  # the victims a call trained (one per setting), relative to its work folder
PRIORS = "gan_*/generator.pt"  # and its priors
PART = ".victim.pt.gz."  # <victim folder>.victim.pt.gz.NN: a victim's parts
RUNS = "runs.tar.gz"
ORIGINALS = "originals.pt"
# What of a run or training folder travels back (TensorBoard events, per-image PNGs and all but each prior's last two
# sample grids stay: the figures are redrawn at home).
KEPT_SUFFIXES = {".json", ".yaml", ".md", ".csv", ".png", ".txt"}
LOG_LINES = 300
# What an attack-only call brings back: the runs, and the choices made on public images that configured them
# (bench/gpu_strong_priors.sh's calibration_blend_<split>/ folders and the radius_rule.yaml they make).
RUN_FILES = ("bench/", "calibration", "radius_rule.yaml")


def slim_target(path: Path, originals: dict[int, torch.Tensor]) -> bytes:
    """A target file's bytes without its stage images and original (the original is kept in ``originals``)."""
    result = AttackOutputs(path.parent.parent).read_target(int(path.stem))  # refuses a damaged file by name
    original = result.pop("original", None)
    if original is not None:
        known = originals.setdefault(int(result["index"]), original)
        if not torch.equal(known, original):
            raise ValueError(f"{path}: target {result['index']} differs from the same target in another run")
    result.pop("stage_images", None)
    buffer = io.BytesIO()
    torch.save(result, buffer)
    return buffer.getvalue()


def add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def log_tail(path: Path) -> bytes:
    lines = path.read_text(errors="replace").splitlines()[-LOG_LINES:]
    return ("\n".join(lines) + "\n").encode()


def pack(work: Path, out: Path, runs_only: bool = False) -> list[Path]:
    """Write the files for the trip back into ``out`` (``runs_only``: leave the victim and the priors, already at
    home, and their training folders behind)."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for victim in [] if runs_only else sorted(work.glob(VICTIMS)):
        data = gzip.compress(victim.read_bytes(), compresslevel=1)
        for k in range(0, len(data), PART_BYTES):
            part = out / f"{victim.parent.name}{PART}{k // PART_BYTES:02d}"
            part.write_bytes(data[k : k + PART_BYTES])
            written.append(part)
    for generator in [] if runs_only else sorted(work.glob(PRIORS)):
        written.append(Path(shutil.copyfile(generator, out / f"{generator.parent.name}.generator.pt")))
    originals: dict[int, torch.Tensor] = {}
    dropped = {p for folder in work.glob("*/samples") for p in sorted(folder.glob("*.png"))[:-2]}  # keep the last 2
    dropped |= set(work.glob("bench/*/comparison.png"))  # redrawn by the merge at home
    with tarfile.open(out / RUNS, "w:gz", compresslevel=6) as tar:
        for path in sorted(work.rglob("*")):
            relative = path.relative_to(work).as_posix()
            if not path.is_file() or path in dropped or relative.startswith(("data/", "pack/", "bench_cache/")):
                continue
            if runs_only and not relative.startswith(RUN_FILES):
                continue
            if path.parent.name == "targets" and path.suffix == ".pt":
                add_bytes(tar, relative, slim_target(path, originals))
            elif path.suffix == ".log":
                add_bytes(tar, relative, log_tail(path))
            elif path.suffix in KEPT_SUFFIXES and "/images/" not in f"/{relative}":
                tar.add(path, relative)
        buffer = io.BytesIO()
        torch.save(originals, buffer)
        add_bytes(tar, ORIGINALS, buffer.getvalue())
    written.append(out / RUNS)
    for path in written:
        print(f"{path.name}: {path.stat().st_size / 2**20:.1f} MiB")
    return written


def unpack(files: Path, dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    for name in sorted({p.name.split(PART)[0] for p in files.glob(f"*{PART}*")}):
        parts = sorted(files.glob(f"{name}{PART}*"))
        victim = dest / name / "victim.pt"
        victim.parent.mkdir(parents=True, exist_ok=True)
        victim.write_bytes(gzip.decompress(b"".join(p.read_bytes() for p in parts)))
        print(f"{victim} ({len(parts)} parts)")
    for generator in sorted(files.glob("*.generator.pt")):
        prior = dest / generator.name.removesuffix(".generator.pt") / "generator.pt"
        prior.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(generator, prior)
        print(prior)
    runs = files / RUNS
    if not runs.is_file():
        return
    with tarfile.open(runs, "r:gz") as tar:
        tar.extractall(dest, filter="data")
    originals = torch.load(dest / ORIGINALS, map_location="cpu", weights_only=True)
    restored = 0
    for outputs in (AttackOutputs(folder.parent) for folder in sorted(dest.rglob(TARGETS_DIR)) if folder.is_dir()):
        for index in sorted(outputs.finished()):
            result = outputs.read_target(index)
            if "original" not in result and index in originals:
                outputs.write_target(index, {**result, "original": originals[index]})  # atomically, as attacks do
                restored += 1
    print(f"{runs.name}: extracted into {dest}; originals put back into {restored} target files")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pack", help="pack a GPU call's work folder")
    p.add_argument("work", type=Path)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--runs_only", action="store_true", help="only the attack runs (the models are at home already)")
    u = sub.add_parser("unpack", help="unpack the files a call brought back")
    u.add_argument("files", type=Path)
    u.add_argument("--dest", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.command == "pack":
        pack(args.work, args.out, args.runs_only)
    else:
        unpack(args.files, args.dest)


if __name__ == "__main__":
    sys.exit(main())
