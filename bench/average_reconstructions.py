"""PSNR rewards the mean of the images the features allow, not any one of them: where the features leave much of
the image open (a deep split), the mean squared error of the posterior mean is half that of a single sharp sample
of the same posterior (3 dB of PSNR). A decoder trained with MSE (the inverse network) approximates that mean; PFO
and GLASS return one sharp image each.

This script measures it on finished runs: it averages the reconstructions that several runs made of the same
targets, and compares the average's PSNR, SSIM and LPIPS with each run's. No attack is rerun and no budget is
spent: it reads each run's ``targets/`` files.

    python bench/average_reconstructions.py logs/gpu/bench/pfo_*layer4_cifar10_* logs/gpu/bench/glass_layer4_cifar10_* \
        --lpips_weights ../shared/weights/alexnet_features.pth
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # pfo, uninstalled too

from pfo.attacks.outputs import AttackOutputs  # noqa: E402 (after the path above)
from pfo.metrics import load_lpips, lpips_distance, psnr, ssim  # noqa: E402 (after the path above)


def load_runs(folders: list[Path]) -> tuple[dict[str, dict[int, torch.Tensor]], dict[int, torch.Tensor]]:
    """Each run's reconstruction per target, and the targets' originals; refuses runs of different targets."""
    runs, originals = {}, {}
    for folder in folders:
        outputs = AttackOutputs(folder)
        results = {r["index"]: r for r in outputs.results()}
        if not results:
            raise SystemExit(f"{folder}: no finished targets")
        if runs and set(results) != set(originals):
            raise SystemExit(
                f"{folder} attacked targets {sorted(results)}, the runs before it {sorted(originals)}: "
                "average runs of the same targets"
            )
        for index, result in results.items():
            original = result.get("original")
            if original is None:
                raise SystemExit(f"{folder}: target {index} has no original to compare with")
            if not torch.equal(originals.setdefault(index, original), original):  # False for another shape too
                raise SystemExit(f"{folder}: target {index} is another image than in the runs before it")
        runs[folder.name] = {index: r["reconstruction"].float() for index, r in results.items()}
    return runs, originals


def average(runs: dict[str, dict[int, torch.Tensor]]) -> dict[int, torch.Tensor]:
    """The per-target mean of the runs' reconstructions (pixel by pixel)."""
    indices = next(iter(runs.values())).keys()
    return {i: torch.stack([run[i] for run in runs.values()]).mean(0) for i in indices}


def scores(images: dict[int, torch.Tensor], originals: dict[int, torch.Tensor], lpips_model=None) -> dict[str, list]:
    """Per-target PSNR, SSIM (and LPIPS with a model), in target order."""
    indices = sorted(images)
    x = torch.stack([images[i] for i in indices])
    y = torch.stack([originals[i].float() for i in indices])
    out = {"psnr": psnr(x, y).tolist(), "ssim": ssim(x, y).tolist()}
    if lpips_model is not None:
        out["lpips"] = lpips_distance(lpips_model, x, y).tolist()
    return out


def table(folders: list[Path], lpips_weights: str | None = None) -> str:
    """A markdown table: each run, then their average (mean / median over the targets)."""
    runs, originals = load_runs(folders)
    model = load_lpips(lpips_weights) if lpips_weights else None
    rows = {name: scores(images, originals, model) for name, images in runs.items()}
    rows[f"average of the {len(runs)} runs above"] = scores(average(runs), originals, model)
    metrics = list(next(iter(rows.values())))
    lines = [
        "| run | " + " | ".join(f"{m.upper()} mean / median" for m in metrics) + " |",
        "|---|" + "---|" * len(metrics),
    ]
    digits = {"psnr": 2, "ssim": 3, "lpips": 4}
    for name, values in rows.items():
        cells = [
            f"{statistics.mean(values[m]):.{digits[m]}f} / {statistics.median(values[m]):.{digits[m]}f}"
            for m in metrics
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + f"\n\n{len(originals)} targets.\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", type=Path, nargs="+", help="finished attack run folders (with targets/), 2 or more")
    parser.add_argument("--lpips_weights", help="AlexNet weights (torchvision layout): add LPIPS")
    args = parser.parse_args(argv)
    if len(args.runs) < 2:
        parser.error("give at least two runs to average")
    print(table(args.runs, args.lpips_weights))


if __name__ == "__main__":
    sys.exit(main())
