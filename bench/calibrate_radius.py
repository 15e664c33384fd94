"""Calibrate PFO's l1 radius (or its stage schedule) per split point on the attacker's PUBLIC images, and write the
``radius_rule`` that ``pfo.attacks.PFOExtended`` reads (issue 16). The protocol is
``pfo.attacks.radius_calibration``; this is its command line.

    python bench/calibrate_radius.py --config configs/pfo_extended_resnet.yaml \
        --split_points conv1 layer1 layer2 layer3 layer4 --grid 0.01 0.03 0.1 0.3 --count 16
    python bench/calibrate_radius.py --config configs/pfo_extended_resnet.yaml --option pixel_radius \
        --grid 0.005 0.02 0.05 null --split_points layer1 -- --model.init_args.steps [150,100,100,75,75]
    python bench/calibrate_radius.py --config configs/pfo_lfw.yaml --option steps \
        --grid "[200,100,100,100]" "[200,75,75,75,75]" --split_points layer2 layer3 layer4

The attack is the config's (victim, prior, steps, defense, ...) with the split point and the calibrated option
replaced (a grid value is YAML: ``0.1``, ``null``, ``[200,75,75,75,75]``; the schedules of a ``steps`` grid
must spend the same steps); options after ``--`` are passed on as to ``attack.py``. The images are ``--count``
images of the config's data set's ``public`` split, spread over it: never the targets (the calibration refuses any
other split). With a ``PFOExtended`` config the config's ``radius_rule`` is set aside (null) and the start is
``init: random`` (an encoder is made for one split point) unless ``--keep_init``. Writes into ``--out``:
``radius_rule.yaml`` (paste it into a PFOExtended config's ``init_args``; for PFO put a chosen schedule into
``steps``), ``calibration.md`` (one table per split point) and ``calibration.json``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pfo.attacks.cli import AttackCLI  # noqa: E402 (after the path above)
from pfo.attacks.pfo_extended import RULE_OPTIONS, PFOExtended, rule_entries  # noqa: E402
from pfo.attacks.radius_calibration import calibrate_radius, check_grid, rule_yaml  # noqa: E402
from pfo.models.split import SplitModel  # noqa: E402


def grid_value(text: str) -> float | list[int] | None:
    """A radius (``0.1``, ``null``) or a schedule (``[200,75,75,75,75]``), read as YAML."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        value = text  # refused below
    if value is None or (isinstance(value, (int, float)) and not isinstance(value, bool)):
        return value
    if isinstance(value, list) and value and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        return value
    raise argparse.ArgumentTypeError(f"{text!r} is not a number, null or a list such as [200,100,100,100]")


def attack_args(args: argparse.Namespace, split_point: str, value, extended: bool) -> list[str]:
    """``attack.py`` options building the config's attack at ``split_point`` with the option set to ``value``."""
    options = ["--config", str(args.config), "--model.init_args.split_point", split_point]
    text = "null" if value is None else (json.dumps(value) if isinstance(value, list) else repr(value))
    options += [f"--model.init_args.{args.option}", text]
    options += ["--model.init_args.progress", "false"]
    if extended:  # the earlier choices (--rule), less the option calibrated now, which they would override
        rule = {split: {k: v for k, v in entry.items() if k != args.option} for split, entry in args.rule.items()}
        rule = {split: entry for split, entry in rule.items() if entry}
        options += ["--model.init_args.radius_rule", json.dumps(rule) if rule else "null"]
        if not args.keep_init:
            options += ["--model.init_args.init", "random", "--model.init_args.encoder", "null"]
    return options + args.attack_options


def earlier_rule(parser: argparse.ArgumentParser, path: Path | None) -> dict:
    """The ``radius_rule`` of ``path`` as ``{split point: {option: value}}`` (empty without one)."""
    if path is None:
        return {}
    if not path.is_file():
        parser.error(f"--rule {path}: no such file (bench/calibrate_radius.py writes radius_rule.yaml in --out)")
    try:
        rule = (yaml.safe_load(path.read_text()) or {}).get("radius_rule")
    except (yaml.YAMLError, AttributeError) as error:
        parser.error(f"--rule {path} is not a radius_rule.yaml: {error}")
    if not isinstance(rule, dict) or not rule:
        parser.error(f"--rule {path} holds no `radius_rule:` mapping (bench/calibrate_radius.py writes one)")
    return rule_entries(rule)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    ours, attack_options = (argv[: argv.index("--")], argv[argv.index("--") + 1 :]) if "--" in argv else (argv, [])
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, required=True, help="an attack config (PFO or PFOExtended)")
    parser.add_argument("--split_points", nargs="+", required=True, help="split points to calibrate")
    parser.add_argument("--grid", nargs="+", type=grid_value, required=True, help="values to try (null: no ball)")
    parser.add_argument(
        "--option", default="feature_radius", choices=RULE_OPTIONS,
        help="what to calibrate (default feature_radius; steps: the stage schedule)",
    )  # fmt: skip
    parser.add_argument("--count", type=int, default=16, help="public images (default 16)")
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--keep_init", action="store_true", help="keep the config's `init` and `encoder`")
    parser.add_argument(
        "--rule", type=Path,
        help="radius_rule.yaml of an earlier calibration: the attacks use its other choices; the new rule adds to it",
    )  # fmt: skip
    parser.add_argument("--out", type=Path, default=Path("logs/calibrate_radius"))
    args = parser.parse_args(ours)
    try:
        check_grid(args.option, args.grid)
    except ValueError as error:
        parser.error(str(error))
    args.attack_options = attack_options
    args.rule = earlier_rule(parser, args.rule)
    sys.argv[1:] = []  # the attack's options go to AttackCLI as `args`; it warns when it also sees ours
    model = yaml.safe_load(args.config.read_text())["model"]["class_path"]
    module, _, name = model.rpartition(".")
    extended = issubclass(getattr(importlib.import_module(module), name), PFOExtended)

    calibrations = []
    for split_point in args.split_points:

        def make_attack(value, split_point=split_point):
            return AttackCLI(attack_args(args, split_point, value, extended), run=False).model

        first = AttackCLI(attack_args(args, split_point, args.grid[0], extended), run=False)
        if not isinstance(first.model.victim, SplitModel):
            raise SystemExit(f"error: {args.config} does not attack a split victim")
        data = first.datamodule.data
        result = calibrate_radius(
            make_attack, data, args.grid, split_point=split_point, option=args.option, count=args.count,
            batch_size=args.batch_size,
        )  # fmt: skip
        print(result.table() + "\n", flush=True)
        calibrations.append(result)

    args.out.mkdir(parents=True, exist_ok=True)
    snippet = rule_yaml(calibrations, args.rule)
    (args.out / "radius_rule.yaml").write_text(snippet)
    (args.out / "calibration.md").write_text("\n\n".join(c.table() for c in calibrations) + "\n")
    rows = [{"split_point": c.split_point, "option": c.option, "indices": c.indices, "best": c.best, "rows": c.rows}
            for c in calibrations]  # fmt: skip
    (args.out / "calibration.json").write_text(json.dumps({"config": str(args.config), "results": rows}, indent=2))
    print(snippet)
    print(f"written to {args.out}: radius_rule.yaml, calibration.md, calibration.json")
    if args.option == "steps" and not extended:
        print("PFO reads no rule: put the schedule chosen for your split point into the config's `steps`")


if __name__ == "__main__":
    main()
