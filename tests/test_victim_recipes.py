"""bench/victim_recipes.py: the configs it builds from a victim config and the CPU minutes it estimates."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from bench.victim_recipes import cpu_minutes, recipe_config

REPO = Path(__file__).resolve().parents[1]
MINUTES = {16: 4.4, 24: 6.5, 32: 10.7}


@pytest.fixture(scope="module")
def base() -> dict:
    return yaml.safe_load((REPO / "configs" / "victim_cifar10_resnet18.yaml").read_text())


def test_a_recipe_changes_only_its_keys_validates_once_at_the_end_and_saves_nothing(base, tmp_path):
    overrides = {"trainer.max_epochs": 7, "model.init_args.optimizer.init_args.lr": 0.3}
    config = recipe_config(base, overrides, tmp_path, "r")
    assert config["trainer"]["max_epochs"] == 7 and config["trainer"]["check_val_every_n_epoch"] == 7
    assert config["model"]["init_args"]["optimizer"]["init_args"]["lr"] == 0.3
    assert config["model"]["init_args"]["optimizer"]["init_args"]["momentum"] == 0.9  # untouched
    assert config["trainer"]["callbacks"] == [] and config["trainer"]["enable_checkpointing"] is False
    assert config["trainer"]["logger"]["init_args"]["save_dir"] == str(tmp_path)
    assert config["ckpt_path"] is None  # never resumes another recipe's checkpoint
    assert base["trainer"]["max_epochs"] != 7  # the base config is not modified


def test_an_override_on_a_missing_section_names_it(base, tmp_path):
    with pytest.raises(KeyError, match="no section 'optimiser'"):
        recipe_config(base, {"model.init_args.optimiser.lr": 0.3}, tmp_path, "r")


@pytest.mark.parametrize(
    "stages, epochs, expected",
    [
        ([[4, 16], [4, 24]], 10, 4 * 4.4 + 4 * 6.5 + 2 * 10.7),
        ([[4, 16], [4, 24]], 12, 4 * 4.4 + 4 * 6.5 + 4 * 10.7),
        ([[4, 16], [4, 24]], 3, 3 * 4.4),  # the run ends inside the first stage
        ([], 8, 8 * 10.7),
    ],
)
def test_cpu_minutes_follow_the_progressive_resizing_stages(base, tmp_path, stages, epochs, expected):
    overrides = {"trainer.max_epochs": epochs, "model.init_args.progressive_resizing": stages}
    assert cpu_minutes(recipe_config(base, overrides, tmp_path, "r"), MINUTES) == pytest.approx(expected)
