"""Several finished attack runs on the same targets, side by side: a short table of their image metrics and one
figure (the originals, then each attack's reconstructions, one row per attack, labelled with its mean PSNR).

    python -m pfo.report PFO=logs/demo_pfo GLASS=logs/demo_glass --figure logs/comparison.png

``scripts/demo.sh`` ends with it. A run's own folder already holds its ``summary.json``, ``metrics.csv`` and
``comparison.png``; this puts runs together.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from pfo.attacks.outputs import AttackOutputs

METRICS = (("psnr", "PSNR dB", 2), ("ssim", "SSIM", 3), ("lpips", "LPIPS", 3))
LPIPS_MISSING = (
    "LPIPS: not reported (no AlexNet weights: put torchvision's alexnet weights in its cache, or name a file with "
    "`lpips_weights`; scripts/demo.sh reads PFO_LPIPS_WEIGHTS)"
)


def read_summary(folder: str | Path) -> dict:
    """A finished run's ``summary.json``; a clear error where the run did not finish."""
    path = Path(folder) / "summary.json"
    if not path.is_file():
        raise FileNotFoundError(f"no summary.json in {folder}: the run did not finish (its log says why)")
    return json.loads(path.read_text())


def _cell(stats: dict | None, digits: int) -> str:
    if not stats or not math.isfinite(stats.get("mean", math.nan)):
        return "n/a"
    return f"{stats['mean']:.{digits}f} / {stats['median']:.{digits}f}"


def summary_table(runs: Mapping[str, str | Path]) -> str:
    """One row per run: targets, then PSNR, SSIM and LPIPS as ``mean / median`` (LPIPS ``n/a`` without AlexNet
    weights, with one line saying how to get them)."""
    summaries = {name: read_summary(folder) for name, folder in runs.items()}
    header = ["attack", "targets", *(f"{label} mean / median" for _, label, _ in METRICS)]
    rows = [
        [name, str(s["targets"] - s.get("failed", 0)), *(_cell(s["metrics"].get(m), d) for m, _, d in METRICS)]
        for name, s in summaries.items()
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in [header, *rows]]
    lines.insert(1, "  ".join("-" * width for width in widths))
    if not any("lpips" in s["metrics"] for s in summaries.values()):
        lines.append(LPIPS_MISSING)
    return "\n".join(lines)


def comparison_figure(runs: Mapping[str, str | Path], path: str | Path, count: int = 8, scale: int = 3) -> Path:
    """The originals in the first row, then one row per run (its reconstructions of the same targets), each row
    labelled on the left; images enlarged ``scale`` times (nearest neighbour) so 32-px images can be seen.

    Targets are the first ``count`` that every run finished."""
    results = {name: {r["index"]: r for r in AttackOutputs(folder).results()} for name, folder in runs.items()}
    shared = sorted(set.intersection(*(set(r) for r in results.values()))) if results else []
    shared = [i for i in shared if all(results[n][i].get("original") is not None for n in results)][:count]
    if not shared:
        raise ValueError(f"the runs {', '.join(runs)} have no finished target in common (with its original image)")
    first = next(iter(results.values()))
    labels = ["original"]
    rows = [torch.stack([first[i]["original"].float() for i in shared])]
    for name, by_index in results.items():
        psnr = read_summary(runs[name])["metrics"].get("psnr", {}).get("mean", math.nan)
        labels.append(f"{name}  {psnr:.1f} dB" if math.isfinite(psnr) else name)
        rows.append(torch.stack([by_index[i]["reconstruction"].float() for i in shared]))
    side = rows[0].shape[-1] * scale
    pad, label_width = 2, 110
    figure = Image.new("RGB", (label_width + len(shared) * (side + pad), len(rows) * (side + pad)), "white")
    draw = ImageDraw.Draw(figure)
    for r, (label, images) in enumerate(zip(labels, rows)):
        top = r * (side + pad)
        draw.text((4, top + side // 2 - 5), label, fill="black")
        big = F.interpolate(images.clamp(0, 1), scale_factor=scale, mode="nearest")
        for c, image in enumerate(big):
            pixels = (image.permute(1, 2, 0) * 255).round().byte().numpy()
            figure.paste(Image.fromarray(pixels), (label_width + c * (side + pad), top))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.save(path)
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", metavar="NAME=FOLDER", help="a finished attack run and its label")
    parser.add_argument("--figure", type=Path, default=None, help="also write the side-by-side figure here")
    parser.add_argument("--count", type=int, default=8, help="targets in the figure")
    args = parser.parse_args(argv)
    runs = {}
    for item in args.runs:
        name, sep, folder = item.partition("=")
        if not sep or not name or not folder:
            parser.error(f"give each run as NAME=FOLDER, got {item!r}")
        runs[name] = folder
    try:
        print(summary_table(runs))
        if args.figure is not None:
            print(f"figure: {comparison_figure(runs, args.figure, count=args.count)}")
    except (FileNotFoundError, ValueError) as error:
        parser.exit(2, f"error: {error}\n")


if __name__ == "__main__":
    main()
