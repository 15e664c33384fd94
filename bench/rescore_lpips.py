"""Add LPIPS to finished attack runs made where the AlexNet weights were not (a GPU machine the 64-MiB trip could not
bring them to), from each target's stored reconstruction and original, then redo each run's merge (summary, metrics
table, reconstructions and figures). Every other metric is left as the run measured it.

    python bench/rescore_lpips.py logs/gpu/bench --lpips_weights ../shared/weights/alexnet_features.pth
    python bench/benchmark.py --report_only --out logs/gpu/bench ...   # the table, now with LPIPS
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # pfo, uninstalled too (a bare GPU machine)

from pfo.attacks.outputs import AttackOutputs  # noqa: E402 (after the path above)
from pfo.metrics import LPIPS_MIN_SIZE, load_lpips, lpips_distance  # noqa: E402 (after the path above)


def run_folders(roots: list[Path]) -> list[Path]:
    """Every attack run folder (one holding ``targets/``) at or under ``roots``."""
    found = set()
    for root in roots:
        if (root / "targets").is_dir():
            found.add(root)
        found.update(p.parent for p in root.rglob("targets") if p.is_dir())
    return sorted(found)


def rescore(folder: Path, model: torch.nn.Module, overwrite: bool = False) -> int:
    """Add LPIPS to each target of the run in ``folder`` that lacks it (all of them with ``overwrite``); returns how
    many target files were rewritten. A target without its original cannot be scored and is left as it is."""
    outputs = AttackOutputs(folder)
    changed = 0
    for result in outputs.results():
        if ("lpips" in result["metrics"] and not overwrite) or result.get("original") is None:
            continue
        recon, original = result["reconstruction"].float()[None], result["original"].float()[None]
        if min(recon.shape[-2:]) < LPIPS_MIN_SIZE:
            continue
        result["metrics"]["lpips"] = float(lpips_distance(model, recon, original)[0])
        result.get("unreported", {}).pop("lpips", None)
        outputs.write_target(result["index"], result)
        changed += 1
    if changed:
        outputs.merge()
    return changed


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("roots", type=Path, nargs="+", help="run folders, or folders holding them (a --out)")
    parser.add_argument("--lpips_weights", required=True, help="AlexNet weights (torchvision layout) for LPIPS")
    parser.add_argument("--overwrite", action="store_true", help="recompute LPIPS where a run already has it")
    args = parser.parse_args(argv)
    model = load_lpips(args.lpips_weights)
    folders = run_folders(args.roots)
    if not folders:
        raise SystemExit(f"no attack run folders (with targets/) under {', '.join(map(str, args.roots))}")
    for folder in folders:
        print(f"{folder}: LPIPS added to {rescore(folder, model, args.overwrite)} targets")


if __name__ == "__main__":
    sys.exit(main())
