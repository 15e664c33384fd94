"""Compare victim-training recipes side by side: each recipe is the victim config with a few options changed,
trained to the end through ``train.py fit``, several at once, and scored on its validation split.

The point is to choose a schedule for a slow machine on a fast one: a GPU trains a CIFAR-10 ResNet-18 recipe in a
minute, and its accuracy is (up to run-to-run noise) what the same recipe reaches anywhere, so a dozen recipes can
be compared in minutes and only the winner timed on the slow machine. ``--cpu_minutes`` converts each recipe's
epochs into the slow machine's minutes from measured minutes per epoch at each progressive-resizing side.

    python bench/victim_recipes.py --recipes bench/victim_recipes.yaml --parallel 8 --out bench_results/recipes \\
        [--config configs/victim_cifar10_resnet18.yaml] [--cpu_minutes 16=4.4 24=6.5 32=10.7]

A recipe file maps names to overrides given as dotted keys of the config, e.g.::

    longer:
      trainer.max_epochs: 12
      model.init_args.progressive_resizing: [[4, 16], [4, 24]]

Each run validates once, after its last epoch (that is the accuracy reported), writes no checkpoints, and keeps its
log and victim file under ``--out/<name>/``. Prints a Markdown table and writes ``--out/recipes.json``.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml

REPO = Path(__file__).resolve().parents[1]


def set_dotted(config: dict, dotted: str, value) -> None:
    """``config['a']['b'] = value`` for ``dotted='a.b'``; a missing level is an error naming the key."""
    *parents, last = dotted.split(".")
    node = config
    for key in parents:
        if not isinstance(node.get(key), dict):
            raise KeyError(f"override {dotted!r}: the config has no section {key!r} on that path")
        node = node[key]
    node[last] = value


def recipe_config(base: dict, overrides: dict, out: Path, name: str) -> dict:
    """The base config with ``overrides`` applied, one validation at the end, no checkpoints, logs in ``out``."""
    config = copy.deepcopy(base)
    for dotted, value in overrides.items():
        set_dotted(config, dotted, value)
    trainer = config.setdefault("trainer", {})
    trainer["check_val_every_n_epoch"] = trainer.get("max_epochs", 1)
    trainer["callbacks"] = []
    trainer["enable_checkpointing"] = False
    trainer["enable_progress_bar"] = False
    trainer["logger"] = {
        "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
        "init_args": {"save_dir": str(out), "name": name, "version": ""},
    }
    config["ckpt_path"] = None
    return config


def cpu_minutes(config: dict, minutes_per_epoch: dict[int, float]) -> float | None:
    """The recipe's training time on the slow machine, from its minutes per epoch at each side."""
    if not minutes_per_epoch:
        return None
    full = config["model"]["init_args"]["net"]["init_args"].get("input_size", 32)
    stages = config["model"]["init_args"].get("progressive_resizing", []) or []
    sides = [side for count, side in stages for _ in range(count)]
    epochs = config["trainer"]["max_epochs"]
    return sum(minutes_per_epoch[sides[e] if e < len(sides) else full] for e in range(epochs))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipes", required=True, help="YAML file: recipe name -> {dotted key: value}")
    parser.add_argument("--config", default="configs/victim_cifar10_resnet18.yaml")
    parser.add_argument("--out", default="bench_results/recipes")
    parser.add_argument("--parallel", type=int, default=1, help="recipes trained at once (they share the device)")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads per run")
    parser.add_argument("--cpu_minutes", nargs="*", default=[], help="SIDE=MINUTES per epoch on the slow machine")
    parser.add_argument("--deadline", type=float, default=None, help="seconds; then stop the runs still going")
    args = parser.parse_args()

    base = yaml.safe_load(Path(args.config).read_text())
    recipes = yaml.safe_load(Path(args.recipes).read_text())
    minutes = {int(k): float(v) for k, v in (item.split("=") for item in args.cpu_minutes)}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "PYTHONUNBUFFERED": "1"}

    configs, pending, running, started, seconds = {}, list(recipes), {}, {}, {}
    begin = time.perf_counter()
    for name in recipes:
        configs[name] = recipe_config(base, recipes[name] or {}, out, name)
        (out / f"{name}.yaml").write_text(yaml.safe_dump(configs[name], sort_keys=False))
    while pending or running:
        while pending and len(running) < args.parallel:
            name = pending.pop(0)
            log = open(out / f"{name}.log", "w")  # noqa: SIM115 (closed when the run ends)
            command = [sys.executable, str(REPO / "train.py"), "fit", "--config", str(out / f"{name}.yaml")]
            running[name] = (subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env), log)
            started[name] = time.perf_counter()
        time.sleep(2)
        if args.deadline is not None and time.perf_counter() - begin > args.deadline:
            pending.clear()  # reported as not run
            for process, _ in running.values():
                process.terminate()
        for name, (process, log) in list(running.items()):
            if process.poll() is not None:
                log.close()
                seconds[name] = time.perf_counter() - started[name]
                print(f"{name}: exit {process.returncode} after {seconds[name]:.0f} s", flush=True)
                del running[name]

    rows = []
    for name in recipes:
        victim = out / name / "victim.pt"
        accuracy = None
        if victim.is_file():
            accuracy = torch.load(victim, map_location="cpu", weights_only=True)["meta"].get("val_accuracy")
        config = configs[name]
        rows.append(
            {
                "recipe": name,
                "overrides": recipes[name] or {},
                "epochs": config["trainer"]["max_epochs"],
                "cpu_minutes": cpu_minutes(config, minutes),
                "accuracy": accuracy,
                "seconds_here": round(seconds[name], 1) if name in seconds else None,
            }
        )
    (out / "recipes.json").write_text(json.dumps(rows, indent=2))
    print("\n| recipe | epochs | est. CPU min | accuracy | s here | overrides |\n|---|---|---|---|---|---|")
    for row in rows:
        acc = "not finished" if row["accuracy"] is None else f"{100 * row['accuracy']:.2f} %"
        here = "" if row["seconds_here"] is None else f"{row['seconds_here']:.0f}"
        est = "" if row["cpu_minutes"] is None else f"{row['cpu_minutes']:.0f}"
        print(f"| {row['recipe']} | {row['epochs']} | {est} | {acc} | {here} | {row['overrides']} |")


if __name__ == "__main__":
    main()
