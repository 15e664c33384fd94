"""Choose PFO's l1 radii (or its stage schedule) for a split point on the attacker's PUBLIC images (issue 16).

A radius that fits one split point is wrong at another (at ``layer4`` 0.03 per element beat 0.1; at shallow splits
a wide ball lets the features speak). The attacker may tune it, but only on data it has: the public split, never
the targets. :func:`calibrate_radius` runs the attack, as configured, on ``count`` public images (spread over the
split, each seeded by its index as a target is) once per value of a grid, and keeps the value with the best mean
PSNR; :func:`rule_yaml` writes the choices as the ``radius_rule`` of ``pfo.attacks.PFOExtended``.

The schedule is calibrated the same way (``option="steps"``): where the budget goes matters (at a shallow split
the pixel stage can use most of it, and at 64 px ``[200, 100, 100, 100]`` never frees the last block while
``[200, 75, 75, 75, 75]`` does), and the attacker can only judge that on public images too. Every schedule of a
grid must spend the same steps, so the choice never buys budget. A rule's schedule moves steps between the
configured stages; one with other stages goes into the config's ``steps`` instead.
``bench/calibrate_radius.py`` is the command-line entry point of both.

The calibration refuses any split but ``public`` before it reads an image (``pfo.threat_model``);
``allow_nonpublic_training`` breaks that rule on purpose (an oracle ablation), as for the attacker's networks.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch

from pfo.attacks.base import ReconstructionAttack
from pfo.attacks.pfo_extended import RULE_OPTIONS, rule_entries
from pfo.attacks.targets import spread_indices
from pfo.metrics import psnr, summarize
from pfo.threat_model import ALLOW_NONPUBLIC_TRAINING, PUBLIC, ThreatModelError

POST_HOC = ("guide_blend",)  # options applied to the attack's answer after its last stage


@dataclass
class RadiusCalibration:
    """One split point's calibration: a row per grid value, and the value chosen."""

    split_point: str
    option: str  # one of RULE_OPTIONS: a radius, the guide's weight or blend, or the schedule (steps)
    indices: list[int]  # the public images used (positions in the public split)
    rows: list[dict] = field(default_factory=list)  # value, psnr_mean, psnr_median, psnr_std, feature_loss, seconds
    best: float | list[int] | None = None

    @property
    def edge_hint(self) -> str | None:
        """Where a radius chosen at the end of its (numeric) grid leaves the optimum unknown, the values to try next;
        ``None`` when the choice lies inside the grid, the option is a schedule, or the choice is ``null`` (no ball)."""
        numbers = sorted(r["value"] for r in self.rows if isinstance(r["value"], (int, float)))
        if self.option == "steps" or len(numbers) < 2 or not isinstance(self.best, (int, float)):
            return None
        if self.best == numbers[0]:
            return f"chosen at the grid's smallest value: the best may lie below {self.best:g}; try smaller values too"
        if self.best == numbers[-1]:
            return f"chosen at the grid's largest value: the best may lie above {self.best:g}; try larger values too"
        return None

    def table(self) -> str:
        """The rows as a Markdown table, the chosen value marked (and a hint when it is at the grid's edge)."""
        lines = [
            f"{self.option} at {self.split_point} on {len(self.indices)} public images",
            "",
            "| value | PSNR mean | PSNR median | PSNR std | feature loss mean | s / image | |",
            "| ---: | ---: | ---: | ---: | ---: | ---: | --- |",
        ]
        for row in self.rows:
            mark = "chosen" if row["value"] == self.best else ""
            value = "null" if row["value"] is None else row["value"]
            lines.append(
                f"| {value} | {row['psnr_mean']:.2f} | {row['psnr_median']:.2f} | {row['psnr_std']:.2f} | "
                f"{row['feature_loss']:.4g} | {row['seconds']:.2f} | {mark} |"
            )
        if self.edge_hint:
            lines += ["", self.edge_hint]
        return "\n".join(lines)


def check_grid(option: str, grid: Sequence) -> None:
    """A grid of radii (numbers or null), or of schedules that all spend the same number of steps."""
    if option not in RULE_OPTIONS:
        raise ValueError(f"`option` {option!r} must be one of {', '.join(RULE_OPTIONS)}")
    if not grid:
        raise ValueError("`grid` is empty; give the values to try")
    if option != "steps":
        for value in grid:
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
                raise ValueError(f"a {option} grid holds numbers or null, got {value!r}")
        return
    for value in grid:
        if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or not value:
            raise ValueError(f"a steps grid holds schedules such as [200, 100, 100, 100], got {value!r}")
    budgets = {sum(value) for value in grid}
    if len(budgets) > 1:
        raise ValueError(
            f"the schedules {[list(v) for v in grid]} spend {sorted(budgets)} steps; calibrate schedules of one budget "
            "so that the choice is about where the steps go, not how many there are"
        )


def require_public(split: str, allow: bool) -> None:
    """Refuse a calibration on anything but the attacker's public data."""
    if split != PUBLIC and not allow:
        raise ThreatModelError(
            f"radii are calibrated on the attacker's public data only, never on {split!r} (the victim's private "
            f"data or the targets); use `split: public`, or `{ALLOW_NONPUBLIC_TRAINING}: true` to break the threat "
            "model on purpose"
        )


def calibrate_radius(
    make_attack: Callable[[float | list[int] | None], ReconstructionAttack],
    data,
    grid: Sequence[float | Sequence[int] | None],
    *,
    split_point: str,
    option: str = "feature_radius",
    count: int = 16,
    batch_size: int = 16,
    split: str = PUBLIC,
    allow_nonpublic_training: bool = False,
) -> RadiusCalibration:
    """Run ``make_attack(value)`` for every value of ``grid`` on ``count`` images of ``data``'s ``split`` and keep
    the value with the best mean PSNR (the first of equals).

    Args:
        make_attack: builds the attack with ``option`` set to ``value`` at ``split_point``.
        data: a pfo data module (anything whose ``dataset(split)`` serves ``{"image", "index"}`` items).
        grid: the values to try (null: no constraint), or for ``steps`` schedules of one total budget.
        split_point: the split point the attacks cut the victim at (recorded; ``make_attack`` sets it).
        option: what is calibrated: ``feature_radius``, ``image_radius``, ``pixel_radius``, ``guide_weight``,
            ``guide_blend`` (one run at 0, each value blended after it: the same images as a run per value) or
            ``steps``.
        count: public images, spread over the split.
        batch_size: images attacked at once (results are per image; the batch size only sets the speed).
        split: ``public``; any other split is refused unless ``allow_nonpublic_training``.
        allow_nonpublic_training: calibrate on another split on purpose (an ablation that breaks the threat model).
    """
    require_public(split, allow_nonpublic_training)
    check_grid(option, grid)
    if option == "steps":
        grid = [[int(s) for s in value] for value in grid]
    dataset = data.dataset(split)
    indices = spread_indices(len(dataset), count)
    items = [dataset[i] for i in indices]
    images = torch.stack([item["image"] for item in items])
    index = torch.tensor([int(item["index"]) for item in items])
    result = RadiusCalibration(split_point=split_point, option=option, indices=indices)
    # The blend acts after the attack's last stage: one unblended run serves every value of the grid, each row
    # what a run with that value computes (PFOExtended.blend_with_guide), and each charged the run's time.
    runs = [(0.0, grid)] if option in POST_HOC else [(value, [value]) for value in grid]
    for run_value, values in runs:
        attack = make_attack(run_value)
        scores, losses = [[] for _ in values], [[] for _ in values]  # per grid value, a part per batch
        start = time.perf_counter()
        for first in range(0, len(images), batch_size):
            batch, ids = images[first : first + batch_size], index[first : first + batch_size]
            h = attack.client_features(batch, ids)
            with torch.enable_grad():
                answer = attack.reconstruct(h, ids)
            for v, value in enumerate(values):
                final = attack.blend_with_guide(answer, h, value) if option in POST_HOC else answer
                scores[v].append(psnr(final.images.detach().cpu().clamp(0, 1), batch))
                losses[v].append(final.feature_loss.detach().cpu())
        seconds = (time.perf_counter() - start) / len(images)
        for v, value in enumerate(values):
            stats = summarize({"psnr": torch.cat(scores[v]), "feature_loss": torch.cat(losses[v])})
            result.rows.append(
                {
                    "value": value,
                    "psnr_mean": stats["psnr"]["mean"],
                    "psnr_median": stats["psnr"]["median"],
                    "psnr_std": stats["psnr"]["std"],
                    "feature_loss": stats["feature_loss"]["mean"],
                    "seconds": seconds,
                }
            )
    best = max(range(len(result.rows)), key=lambda i: (result.rows[i]["psnr_mean"], -i))
    result.best = result.rows[best]["value"]
    return result


def rule_yaml(calibrations: Sequence[RadiusCalibration], earlier: Mapping[str, Mapping] | None = None) -> str:
    """The chosen values as a ``radius_rule`` snippet for ``pfo.attacks.PFOExtended``'s ``init_args``, added to
    an ``earlier`` rule (``{split point: {option: value}}``) where one is given."""
    rule = rule_entries(earlier or {})
    for c in calibrations:
        rule.setdefault(c.split_point, {})[c.option] = c.best
    lines = ["radius_rule:"]
    for split_point, entry in rule.items():
        values = ", ".join(f"{k}: {'null' if v is None else v}" for k, v in entry.items())
        lines.append(f"  {split_point}: {{{values}}}")
    return "\n".join(lines) + "\n"
