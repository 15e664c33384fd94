"""Bad input gets one line that names the fix, before any work starts (issue 13, items 4 to 8 and 10).

The command-line tests call ``train.cli_main`` / ``attack.cli_main`` and read what a user would see: exit status
2 and exactly one ``error: ...`` line on stderr, with no traceback, no jsonargparse ``Union`` dump and no config
dump. Attack runs use the 16-px victim and prior files of ``tests/test_attack_cli.py``.
"""

from __future__ import annotations

import os
import pickle
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from test_attack_cli import attack_config, make_artefacts, write_config

import attack
import train
from pfo.artifacts import ArtifactError
from pfo.attacks import LM, RMLE, Dropout, GaussianNoise, LaplaceNoise, Quantization, TopKPruning
from pfo.attacks.loss import AttackLoss
from pfo.cli import original_error
from pfo.data import CIFAR10, ImageFolder
from pfo.data.base import DataNotFoundError
from pfo.models import ResNet, load_victim, save_victim
from pfo.models.generator_file import load_prior

REPO = Path(__file__).resolve().parents[1]
README_SECTIONS = {m.group(1).strip() for m in re.finditer(r"^#+ (.+)$", (REPO / "README.md").read_text(), re.M)}
TORCH_UNSAFE_ADVICE = ("weights_only=False", "will likely succeed", "can still be loaded")

pytestmark = [
    pytest.mark.filterwarnings("ignore:LPIPS will be reported as missing"),
    pytest.mark.filterwarnings("ignore:.*module\\(s\\) in eval mode"),
    pytest.mark.filterwarnings("ignore:.*returned `None`, this fit will run with no optimizer"),
]


@pytest.fixture(autouse=True)
def _plain_argv(plain_argv):
    return plain_argv


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, str]:
    """A 16-px victim file and generator file (``tests/test_attack_cli.py``'s)."""
    return make_artefacts(tmp_path_factory.mktemp("files"))


def one_error_line(capsys, main, *args: str) -> str:
    """Run ``main(args)``; it must exit with status 2 after printing exactly one ``error:`` line and nothing of a
    traceback, a ``Union`` dump or a config dump. Returns the line."""
    with pytest.raises(SystemExit) as exit_:
        main(list(args))
    out, err = capsys.readouterr()
    assert exit_.value.code == 2, err[-2000:]
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, err[-3000:]
    for dump in ("Traceback", "Union subtypes", "Given value", "Namespace(", "usage:"):
        assert dump not in err + out, f"{dump!r} in the output:\n{err[-3000:]}"
    return errors[0]


def rmle_config(files: dict, root: Path, **init_args) -> dict:
    config = attack_config(files, root)
    config["model"] = {
        "class_path": "pfo.attacks.RMLE",
        "init_args": {"victim": files["victim"], "steps": 2, "progress": False, **init_args},
    }
    return config


def victim_config(root: Path) -> dict:
    """A stage-1 run shaped like configs/victim_*.yaml: a CIFAR-stem ResNet-18 at 16 px on synthetic images."""
    return {
        "model": {
            "class_path": "pfo.victim.VictimClassifier",
            "init_args": {
                "net": {
                    "class_path": "pfo.models.ResNet",
                    "init_args": {"depth": 18, "num_classes": 4, "stem": "cifar", "input_size": 16},
                }
            },
        },
        "data": {"class_path": "pfo.data.SyntheticImages", "init_args": {"resolution": 16, "batch_size": 8}},
        "trainer": {
            "max_epochs": 1,
            "accelerator": "cpu",
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "logger": {
                "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                "init_args": {"save_dir": str(root / "logs"), "name": "victim", "version": ""},
            },
        },
    }


# ----- the mechanism --------------------------------------------------------------------------------------------


def test_original_error_unwraps_only_jsonargparses_wrappers():
    """The exception a class raised while being built, found under jsonargparse's nested Union errors; an
    exception our own code raised ``from`` another is kept as it is."""
    import jsonargparse

    parser = jsonargparse.ArgumentParser(exit_on_error=False)
    parser.add_argument("--defense", type=GaussianNoise | None)
    config = parser.parse_args(["--defense", "pfo.attacks.GaussianNoise", "--defense.init_args.scale", "-1"])
    with pytest.raises(ValueError, match="Union subtypes") as wrapped:
        parser.instantiate(config)
    found = original_error(wrapped.value)
    assert type(found) is ValueError and str(found).startswith("`scale` -1.0 must be")

    try:
        try:
            raise KeyError("inner")
        except KeyError as inner:
            raise ValueError("ours, with a cause") from inner
    except ValueError as ours:
        assert original_error(ours) is ours


# ----- item 4: options checked when the attack is built ---------------------------------------------------------


@pytest.mark.parametrize(
    ("build", "option"),
    [
        (lambda v: RMLE(v, steps=-1), "`steps` -1"),
        (lambda v: RMLE(v, lr=0.0), "`lr` 0.0"),
        (lambda v: RMLE(v, tv_weight=-0.1), "`tv_weight` -0.1"),
        (lambda v: RMLE(v, init="zeros"), "`init` 'zeros'"),
        (lambda v: RMLE(v, l2_weight=float("nan")), "`l2_weight` nan"),
        (lambda v: RMLE(v, betas=(0.9, 1.0)), "`betas` 1.0"),
        (lambda v: RMLE(v, distance="l3"), "`distance` 'l3'"),
        (lambda v: LM(v, width=0), "`width` 0"),
        (lambda v: LM(v, noise_channels=2.5), "`noise_channels` 2.5"),
        (lambda v: LM(v, upsamples=-1), "`upsamples` -1"),
        (lambda v: LM(v, steps=10, lr=-0.01), "`lr` -0.01"),
    ],
    ids=["steps", "lr", "tv", "init", "l2-nan", "betas", "distance", "width", "noise", "upsamples", "lm-lr"],
)
def test_4_baseline_options_are_checked_before_the_victim_is_loaded(build, option):
    """A path that does not exist: the option's message comes first, so no file is read for a run that cannot
    start (before this change rMLE ran with -1 steps, LM failed in its first target, a negative TV weight ran)."""
    with pytest.raises(ValueError, match=re.escape(option)):
        build("no/such/victim.pt")


def test_4_an_lm_network_that_does_not_fit_the_victim_is_refused_when_built(files):
    with pytest.raises(ValueError, match=r"`upsamples` 5 needs the victim's input size \(16 px\).*lower `upsamples`"):
        LM(files["victim"], upsamples=5)


@pytest.mark.parametrize(
    ("build", "option"),
    [
        (lambda: GaussianNoise(float("nan")), "`scale` nan"),
        (lambda: LaplaceNoise(float("inf")), "`scale` inf"),
        (lambda: Dropout(float("nan")), "`rate` nan"),
        (lambda: Quantization(2.5), "`bits` 2.5"),
        (lambda: Quantization(17), "`bits` 17"),
        (lambda: TopKPruning(float("nan")), "`keep` nan"),
        (lambda: AttackLoss("mse", tv_weight=-1.0), "`tv_weight` -1.0"),
    ],
    ids=["gauss-nan", "laplace-inf", "dropout-nan", "bits-fraction", "bits-17", "keep-nan", "loss-tv"],
)
def test_4_defense_and_loss_settings_are_checked(build, option):
    with pytest.raises(ValueError, match=re.escape(option)):
        build()


def test_4_a_bad_option_stops_the_command_before_a_run_folder_is_made(files, tmp_path, isolated, capsys):
    config = write_config(tmp_path, rmle_config(files, tmp_path))
    line = one_error_line(capsys, attack.cli_main, "--config", str(config), "--model.init_args.steps", "-1")
    assert line == "error: `steps` -1 must be an integer >= 0"
    assert not (tmp_path / "logs").exists()


# ----- item 5: one line instead of jsonargparse's dump ----------------------------------------------------------


def test_5_missing_victim_file_is_one_line(files, tmp_path, isolated, capsys):
    config = write_config(tmp_path, attack_config(files, tmp_path))
    missing = tmp_path / "nowhere" / "victim.pt"
    line = one_error_line(capsys, attack.cli_main, "--config", str(config), "--model.init_args.victim", str(missing))
    assert line == f"error: no victim file at {missing}"


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--model.init_args.split_point", "layer9"], r"valid split points: .*layer1"),
        (["--model.init_args.steps", "[2, 2, 2, 2, 2]"], r"shorten `steps`"),
        (
            [
                "--model.init_args.defense",
                "pfo.attacks.GaussianNoise",
                "--model.init_args.defense.init_args.scale",
                "-1",
            ],
            r"`scale` -1(\.0)? must be a finite number >= 0",
        ),
    ],
    ids=["split-point", "too-many-stages", "nested-defense-option"],
)
def test_5_errors_while_building_the_attack_are_one_line(files, tmp_path, isolated, capsys, args, expected):
    config = write_config(tmp_path, attack_config(files, tmp_path))
    assert re.search(expected, one_error_line(capsys, attack.cli_main, "--config", str(config), *args))


def test_5_a_generator_too_small_for_the_victim_is_one_line(files, tmp_path, isolated, capsys):
    victim = save_victim(ResNet(depth=18, num_classes=4, stem="cifar", input_size=32).eval(), tmp_path / "v32.pt")
    config = attack_config(files, tmp_path)
    config["model"]["init_args"]["victim"] = str(victim)
    config["data"]["data"]["init_args"]["resolution"] = 32
    line = one_error_line(capsys, attack.cli_main, "--config", str(write_config(tmp_path, config)))
    assert "renders 16px images but the victim takes 32px" in line and "allow_upsampling" in line


def test_5_training_errors_are_one_line(tmp_path, isolated, capsys):
    config = write_config(tmp_path, victim_config(tmp_path))
    line = one_error_line(
        capsys, train.cli_main, "fit", "--config", str(config), "--model.init_args.progressive_resizing", "[[0, 8]]"
    )
    assert "progressive_resizing stage [0, 8] must be [epochs >= 1, side in 1..16]" in line


def test_5_a_renamed_option_is_one_line_naming_it(tmp_path, isolated, capsys):
    """The demo's own failure (issue 13): an option that no longer exists, rejected while parsing."""
    config = write_config(tmp_path, victim_config(tmp_path))
    line = one_error_line(
        capsys, train.cli_main, "fit", "--config", str(config), "--model.init_args.low_res_epochs", "0"
    )
    assert "pfo.victim.VictimClassifier" in line and "Option 'low_res_epochs' is not accepted" in line
    assert "train.py fit --help" in line


def test_5_the_traceback_when_asked_for(files, tmp_path, isolated, monkeypatch):
    """``PFO_TRACEBACK=1``: the original exception (not jsonargparse's wrapper) with its traceback."""
    monkeypatch.setenv("PFO_TRACEBACK", "1")
    config = write_config(tmp_path, attack_config(files, tmp_path))
    with pytest.raises(FileNotFoundError, match="no victim file at"):
        attack.cli_main(["--config", str(config), "--model.init_args.victim", str(tmp_path / "none.pt")])


@pytest.mark.slow
def test_5_the_script_prints_one_line_and_exits_2(files, tmp_path):
    """What a user sees from ``python attack.py`` itself: stderr ends with one line, no traceback."""
    config = write_config(tmp_path, attack_config(files, tmp_path))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    env.pop("PFO_TRACEBACK", None)
    command = [sys.executable, str(REPO / "attack.py"), "--config", str(config), "--model.init_args.split_point", "x"]
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr[-3000:]
    assert "Traceback" not in done.stderr and "Union" not in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("error: ") and "valid split points" in done.stderr


# ----- item 6: hints that work ----------------------------------------------------------------------------------


def test_6_missing_target_data_names_the_attack_option(files, tmp_path, isolated, capsys):
    config = attack_config(files, tmp_path)
    config["data"]["data"] = {"class_path": "pfo.data.CIFAR10", "init_args": {"resolution": 16}}
    line = one_error_line(capsys, attack.cli_main, "--config", str(write_config(tmp_path, config)))
    assert "`data.data.init_args.root`" in line and "`data.init_args.root`" not in line
    assert "PFO_DATA_ROOT" in line  # root is not set, so the environment variable would be read


def test_6_missing_training_data_names_the_train_option(tmp_path, isolated, capsys):
    config = victim_config(tmp_path)
    config["data"] = {"class_path": "pfo.data.CIFAR10", "init_args": {"resolution": 16, "root": "data/none"}}
    line = one_error_line(capsys, train.cli_main, "fit", "--config", str(write_config(tmp_path, config)))
    assert "`data.init_args.root`" in line and str((tmp_path / "data" / "none").resolve()) in line
    assert "PFO_DATA_ROOT" not in line  # root is set (as configs/gan_ffhq.yaml sets it): the variable is not read


def test_6_the_data_root_variable_is_offered_only_where_it_is_read(tmp_path, isolated):
    given = yaml.safe_load((REPO / "configs" / "gan_ffhq.yaml").read_text())["data"]["init_args"]["root"]
    with pytest.raises(DataNotFoundError) as error:
        ImageFolder(root=given).setup("fit")
    assert "PFO_DATA_ROOT" not in str(error.value) and "`data.init_args.root`" in str(error.value)
    with pytest.raises(DataNotFoundError, match="PFO_DATA_ROOT environment variable at a folder containing `cifar10/`"):
        CIFAR10().setup("fit")


def test_6_a_random_bytes_victim_file_gets_no_unsafe_advice(tmp_path):
    path = tmp_path / "victim.pt"
    path.write_bytes(os.urandom(4096))
    with pytest.raises(ArtifactError) as error:
        load_victim(path)
    message = str(error.value)
    assert "not a file torch.save wrote" in message
    assert not any(advice in message for advice in TORCH_UNSAFE_ADVICE), message


class Gadget:
    """A Python object: what a pickle that runs code on loading would hold."""


def test_6_a_file_holding_python_objects_gets_no_unsafe_advice(tmp_path):
    path = tmp_path / "victim.pt"
    torch.save({"model": Gadget()}, path)
    with pytest.raises(ArtifactError) as error:
        load_victim(path)
    message = str(error.value)
    assert "never unpickles" in message and "victim_*.yaml" in message
    assert not any(advice in message for advice in TORCH_UNSAFE_ADVICE), message


def test_6_truncated_files_are_damaged_or_incomplete(files, tmp_path):
    for kind, load in (("victim", load_victim), ("generator", load_prior)):
        data = Path(files[kind]).read_bytes()
        cut = tmp_path / f"cut_{kind}.pt"
        cut.write_bytes(data[: len(data) // 2])
        with pytest.raises(ArtifactError, match="damaged or incomplete"):
            load(cut)
    pickled = tmp_path / "network.pkl"  # an NVlabs-style pickle cut short
    pickled.write_bytes(pickle.dumps({"G_ema": list(range(1000))})[:200])
    with pytest.raises(ArtifactError, match="damaged or incomplete"):
        load_prior(pickled)


def test_6_file_errors_point_to_readme_sections_that_exist(tmp_path):
    path = tmp_path / "victim.pt"
    path.write_bytes(b"not a torch file")
    with pytest.raises(ArtifactError) as error:
        load_victim(path)
    sections = re.findall(r"README: '([^']+)'", str(error.value))
    assert sections and set(sections) <= README_SECTIONS, (sections, sorted(README_SECTIONS))


def test_6_a_lightning_checkpoint_says_how_to_get_the_victim_file(tmp_path):
    checkpoint = tmp_path / "run" / "checkpoints" / "last.ckpt"
    checkpoint.parent.mkdir(parents=True)
    torch.save({"state_dict": {}, "pytorch-lightning_version": "2.6.6"}, checkpoint)
    with pytest.raises(ArtifactError) as error:
        load_victim(checkpoint)
    message = str(error.value)
    assert f"`{tmp_path / 'run' / 'victim.pt'}`" in message and "rerun the same `train.py fit` command" in message


# ----- item 7: a GPU config on a machine without one -------------------------------------------------------------


def test_7_a_gpu_config_without_a_gpu_names_the_cpu_options(tmp_path, isolated, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    config = str(REPO / "configs" / "gan_ffhq.yaml")
    line = one_error_line(capsys, train.cli_main, "fit", "--config", config)
    assert "`--trainer.accelerator cpu --trainer.precision 32-true`" in line and "bf16-mixed" in line
    assert not (tmp_path / "logs").exists()


# ----- item 8: a run folder that cannot be written ----------------------------------------------------------------


def test_8_an_unwritable_log_folder_is_one_line_naming_the_option(files, tmp_path, isolated, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("a file where the log folder should be")
    attack_run = write_config(tmp_path, attack_config(files, tmp_path), "attack.yaml")
    save_dir = ["--trainer.logger.init_args.save_dir", str(blocker / "logs")]
    line = one_error_line(capsys, attack.cli_main, "--config", str(attack_run), *save_dir)
    assert f"cannot write the run folder {blocker / 'logs' / 'run'}" in line
    assert "is a file, not a folder" in line and "`--trainer.logger.init_args.save_dir <folder>`" in line

    train_run = write_config(tmp_path, victim_config(tmp_path), "victim.yaml")
    line = one_error_line(capsys, train.cli_main, "fit", "--config", str(train_run), *save_dir)
    assert "cannot write the run folder" in line and "--trainer.logger.init_args.save_dir" in line


# ----- item 10: every attack option has a type and a description -----------------------------------------------


@pytest.mark.parametrize(
    "attack_class",
    [
        "pfo.attacks.RMLE",
        "pfo.attacks.LM",
        "pfo.attacks.PFO",
        "pfo.attacks.GLASS",
        "pfo.attacks.PFOExtended",
        "pfo.attacks.InverseNetwork",
    ],
)
def test_10_the_victim_option_has_a_type_and_help(capsys, attack_class):
    with pytest.raises(SystemExit) as exit_:
        attack.cli_main(["--model.help", attack_class])
    assert exit_.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    text = text[text.index("Help for") :]  # past the usage line, which lists every option
    entry = text[text.index("--model.victim VICTIM") :]
    entry = entry[: entry.index(" --model.", 1)]  # up to the next option
    assert "Untyped" not in entry and "the victim file" in entry and "type: str | Path" in entry
