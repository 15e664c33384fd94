"""Join the run folders of independent attack jobs over shares of the same targets (a SLURM array:
``--data.shard i --data.num_shards n``) into one run folder whose merged files (``metrics.csv``,
``summary.json``, ``reconstructions.pt``, ``comparison.png``, ``images/``) are those of a single run over all the
targets::

    python -m pfo.attacks.merge --out logs/pfo_resnet logs/pfo_resnet/shard-*-of-4

The per-target result files are copied into ``OUT/targets/`` and merged as a run's own are; ``OUT/merged_from.json``
names the shards. The shards must run the same attack on the same targets (their ``config.yaml`` may differ only in
the shard, the trainer and the logger; their recorded settings, ``fingerprint.json``, not at all), be disjoint, and
be finished (``--partial`` merges whatever is done). ``OUT`` records the shards' settings, so an attack run resumed
in it later is checked against them like any run's. Merging again after more shards finished is safe: it only adds
and overwrites.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

import yaml

from pfo.attacks.fingerprint import compare_fingerprints, describe_differences, read_fingerprint, write_fingerprint
from pfo.attacks.outputs import AttackOutputs

SHARD_KEYS = ("shard", "num_shards")


def _config(folder: Path) -> dict | None:
    path = folder / "config.yaml"
    return yaml.safe_load(path.read_text()) if path.is_file() else None


def _attack_settings(config: dict) -> dict:
    """What must be equal across shards: the attack, the targets apart from the shard, the seed."""
    data = {k: v for k, v in (config.get("data") or {}).items() if k not in SHARD_KEYS}
    return {"seed_everything": config.get("seed_everything"), "model": config.get("model"), "data": data}


def _first_difference(a, b, path: str = "") -> str:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b), key=str):
            found = _first_difference(a.get(key), b.get(key), f"{path}.{key}" if path else str(key))
            if found:
                return found
        return ""
    return "" if a == b else f"{path}: {a!r} != {b!r}"


def _finished_run(folder: Path, done: set[int]) -> bool:
    """A run that reached its end merged its folder: ``metrics.csv`` lists exactly its finished targets."""
    path = folder / "metrics.csv"
    if not path.is_file():
        return False
    with open(path) as f:
        rows = [line.split(",", 1)[0] for line in f.read().splitlines()[1:] if line]
    return sorted(int(r) for r in rows) == sorted(done)


def _copy(source: Path, target: Path) -> None:
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    shutil.copyfile(source, tmp)
    os.replace(tmp, target)


def merge_runs(
    out: str | os.PathLike, shards: Sequence[str | os.PathLike], stage_images: bool | None = None, partial: bool = False
) -> dict:
    """Merge the shard run folders into ``out`` and return its summary (``summary.json``).

    Args:
        out: the merged run folder (created; may be a folder an earlier merge of the same shards wrote).
        shards: the shards' run folders.
        stage_images: also write every stage's PNG; default: as the shards' ``save_stage_images``.
        partial: merge shards that have not finished (their missing targets are missing from the result).
    """
    out, folders = Path(out), [Path(s) for s in shards]
    if not folders:
        raise ValueError("no shard folder given")
    owner: dict[int, Path] = {}
    reference: tuple[Path, dict] | None = None
    numbers: dict[int, Path] = {}
    num_shards = None
    settings: tuple[Path, dict] | None = None  # the first shard's recorded settings
    for folder in folders:
        if not folder.is_dir():
            raise FileNotFoundError(f"shard folder {folder} does not exist")
        if folder.resolve() == out.resolve():
            raise ValueError(f"{folder} is both a shard and the output: merge into another folder")
        outputs = AttackOutputs(folder)
        done = outputs.finished()
        if not done:
            raise ValueError(f"{folder} holds no finished target ({outputs.targets} is empty or missing)")
        if not partial and not _finished_run(folder, done):
            raise ValueError(
                f"{folder} has not finished (its metrics.csv is missing or lists other targets than {outputs.targets}"
                "): rerun or requeue that shard, or pass --partial to merge what is done"
            )
        for index in done:
            if index in owner:
                raise ValueError(
                    f"target {index} is in both {owner[index]} and {folder}: shards must be disjoint (the same "
                    "num_shards, a different shard each)"
                )
            owner[index] = folder
        recorded = read_fingerprint(folder)
        if recorded is not None and settings is None:
            settings = (folder, recorded)
        elif recorded is not None and (differences := compare_fingerprints(settings[1], recorded)):
            raise ValueError(
                f"{settings[0]} and {folder} ran different attacks or targets:\n{describe_differences(differences)}"
            )
        config = _config(folder)
        if config is not None:
            if reference is None:
                reference = (folder, config)
            else:
                difference = _first_difference(_attack_settings(reference[1]), _attack_settings(config))
                if difference:
                    raise ValueError(f"{reference[0]} and {folder} ran different attacks or targets ({difference})")
            data = config.get("data") or {}
            shard, count = data.get("shard", 0), data.get("num_shards", 1)
            if num_shards is not None and count != num_shards:
                raise ValueError(f"{folder} is a shard of {count} but {reference[0]} one of {num_shards}")
            num_shards = count
            if shard in numbers:
                raise ValueError(f"{numbers[shard]} and {folder} are both shard {shard}")
            numbers[shard] = folder
    if num_shards is not None and not partial and len(numbers) == len(folders):
        missing = sorted(set(range(num_shards)) - set(numbers))
        if missing:
            raise ValueError(f"shards {missing} of {num_shards} are missing; pass --partial to merge without them")

    target = AttackOutputs(out)
    earlier = read_fingerprint(out)
    if settings is not None and earlier is not None and (differences := compare_fingerprints(earlier, settings[1])):
        raise ValueError(
            f"{out} already holds results of other settings:\n{describe_differences(differences)}\nmerge into a new "
            "folder"
        )
    stale = target.finished() - set(owner)
    if stale:
        raise ValueError(
            f"{out} already holds results for targets {sorted(stale)[:5]} that none of these shards has: merge into "
            "a new folder"
        )
    target.targets.mkdir(parents=True, exist_ok=True)
    if settings is not None:
        write_fingerprint(out, settings[1])
    for index, folder in sorted(owner.items()):
        _copy(AttackOutputs(folder).path(index), target.path(index))
    if stage_images is None:
        model = (reference[1].get("model") or {}) if reference else {}
        stage_images = bool((model.get("init_args") or {}).get("save_stage_images", False))
    summary = target.merge(stage_images=stage_images)
    counts = {str(folder): sum(1 for f in owner.values() if f == folder) for folder in folders}
    (out / "merged_from.json").write_text(json.dumps({"shards": counts, "num_shards": num_shards}, indent=2) + "\n")
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pfo.attacks.merge",
        description="Merge the run folders of attack shards (--data.shard/--data.num_shards, a SLURM array) into "
        "one run folder with the files of a single run over all targets.",
    )
    parser.add_argument("--out", required=True, help="the merged run folder, e.g. logs/pfo_resnet")
    parser.add_argument("shards", nargs="+", help="the shards' run folders, e.g. logs/pfo_resnet/shard-*-of-4")
    parser.add_argument(
        "--stage-images",
        action="store_true",
        default=None,
        help="also write every stage's PNG (default: as the shards)",
    )
    parser.add_argument("--partial", action="store_true", help="merge shards that have not finished (or are missing)")
    args = parser.parse_args(argv)
    try:
        summary = merge_runs(args.out, args.shards, stage_images=args.stage_images, partial=args.partial)
    except (ValueError, FileNotFoundError) as error:
        print(f"merge: {error}", file=sys.stderr)
        return 1
    print(f"merged {summary['targets']} targets from {len(args.shards)} shards into {args.out}")
    for name, stats in summary["metrics"].items():
        print(f"  {name:18s} mean {stats['mean']:.4f}  median {stats['median']:.4f}  std {stats['std']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
