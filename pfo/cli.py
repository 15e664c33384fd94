"""The command-line interface shared by ``train.py`` (stages 1 and 2), the run-folder conventions that make a
run resumable where it is preempted and requeued (SLURM), and how both entry points report bad input: one line,
``error: <what is wrong and how to fix it>``, before any work starts.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import lightning as L
import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from pfo.run_info import RunInfo

HPC_CHECKPOINT = re.compile(r"^hpc_ckpt_(\d+)\.ckpt$")

TRACEBACK_ENV = "PFO_TRACEBACK"
"""Set (to anything but empty or 0) to get the traceback of a setup error instead of its one-line message."""

# What bad input raises: our own checks (ValueError, ArtifactError, DataNotFoundError), paths that do not exist or
# cannot be written (OSError), and options Lightning rejects. Anything else is a bug and keeps its traceback.
USER_ERRORS = (ValueError, OSError, MisconfigurationException)
EXIT_BAD_INPUT = 2  # what argparse (and jsonargparse) exit with for a rejected option


def logger_folder(logger) -> str | None:
    """The folder a logger given as ``class_path``/``init_args`` writes to (``save_dir/name/version``, the
    TensorBoard and CSV layout), or None where that is not known before the run (no logger, an automatic
    ``version_N``, another kind of logger)."""
    init = logger.get("init_args") if isinstance(logger, dict) else getattr(logger, "init_args", None)
    if init is None:
        return None
    save_dir, name, version = init.get("save_dir"), init.get("name"), init.get("version")
    if save_dir is None or name is None or version is None:
        return None
    version = version if isinstance(version, str) else f"version_{version}"
    return os.path.join(str(save_dir), str(name), version)


def use_run_folder_as_root(trainer_config) -> None:
    """Make the run folder the Trainer's ``default_root_dir`` unless the config sets one: Lightning writes the
    checkpoint it saves on a SLURM preemption signal there (``hpc_ckpt_N.ckpt``) and looks there after the requeue,
    so it must be the same folder on every restart and belong to this run alone (the default, the working
    directory, is shared by every run started from it)."""
    if trainer_config.get("default_root_dir") is not None:
        return
    folder = logger_folder(trainer_config.get("logger"))
    if folder is not None:
        trainer_config["default_root_dir"] = folder


def hpc_checkpoint(folder: str | os.PathLike) -> Path | None:
    """The newest checkpoint Lightning saved on a SLURM preemption signal in ``folder``, if any."""
    if not Path(folder).is_dir():
        return None
    numbered = [(int(m.group(1)), p) for p in Path(folder).iterdir() if (m := HPC_CHECKPOINT.match(p.name))]
    return max(numbered)[1] if numbered else None


def resume_checkpoint(trainer: L.Trainer) -> str | None:
    """What ``ckpt_path: last`` resumes from: the newer of the last checkpoint (``ModelCheckpoint(save_last)``) and
    the preemption checkpoint. Lightning alone takes the preemption checkpoint only when ``ckpt_path`` is unset,
    and ``last`` ignores it: a requeued run would go back to its last periodic checkpoint."""
    candidates = set()
    for callback in trainer.checkpoint_callbacks:
        if isinstance(callback, ModelCheckpoint):
            candidates |= callback._find_last_checkpoints(trainer)  # private, pinned by constraints.txt
    hpc = hpc_checkpoint(trainer.default_root_dir)
    if hpc is not None:
        candidates.add(str(hpc))
    existing = [path for path in candidates if os.path.isfile(path)]
    return max(existing, key=os.path.getmtime) if existing else None


def _raised_by_jsonargparse(error: BaseException) -> bool:
    """Whether the innermost frame of ``error``'s traceback (where it was raised) is jsonargparse's code."""
    tb = error.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    return str(tb.tb_frame.f_globals.get("__name__", "")).partition(".")[0] == "jsonargparse"


def original_error(error: BaseException) -> BaseException:
    """The exception a class raised while jsonargparse built it from the config.

    jsonargparse tries every member of a ``Union`` type (a ``class_path`` option is ``Union[<base class>, None]``)
    and, when all fail, raises a ValueError listing every attempt and the whole config value, *from* the first
    failure: the class's own exception (``raise_union_unexpected_value`` in jsonargparse's ``_typehints.py``).
    Nested options (a defense inside an attack) nest the wrappers. Follow ``__cause__`` while jsonargparse raised
    the exception in hand."""
    seen: set[int] = set()
    while error.__cause__ is not None and id(error) not in seen and _raised_by_jsonargparse(error):
        seen.add(id(error))
        error = error.__cause__
    return error


def error_text(error: BaseException) -> str:
    """The message of ``error`` as the command line prints it. Our messages are one sentence on one line; a message
    written on several lines on purpose (a list of differing options) keeps them, indented under the first."""
    lines = [line.rstrip() for line in str(error).strip().splitlines() if line.strip()]
    return "\n  ".join(lines) if lines else type(error).__name__


def traceback_requested() -> bool:
    return os.environ.get(TRACEBACK_ENV, "").strip() not in ("", "0")


@contextmanager
def one_line_errors() -> Iterator[None]:
    """Report bad input as one line on stderr, ``error: <message>``, and exit with status 2.

    Bad input is what ``USER_ERRORS`` lists, found under jsonargparse's wrappers (see ``original_error``). Other
    exceptions (bugs) propagate as the original exception with its traceback; so does bad input when
    ``PFO_TRACEBACK`` is set."""
    try:
        yield
    except Exception as error:  # noqa: BLE001 (sorted below: bad input is reported, anything else re-raised)
        original = original_error(error)
    else:
        return
    if traceback_requested() or not isinstance(original, USER_ERRORS):
        raise original
    print(f"error: {error_text(original)}", file=sys.stderr, flush=True)
    raise SystemExit(EXIT_BAD_INPUT)


def compact_parser_error(message: str) -> str:
    """jsonargparse's message for a rejected option without its dump of the ``Union`` it tried (the subtypes, the
    given value, the ``Expected a <class 'NoneType'>`` of the ``null`` alternative), on one line."""
    noise = ("Does not validate against any of the Union subtypes", "Subtypes:", "Errors:", "Given value")
    kept = []
    for line in message.splitlines():
        text = line.strip().removeprefix("- ").strip()
        if text and not text.startswith(noise) and text != "Expected a <class 'NoneType'>":
            kept.append(text)
    return " ".join(kept) if kept else " ".join(message.split())


class CompactErrorParser(LightningArgumentParser):
    """LightningCLI's parser, reporting a rejected option in one line (and where the accepted ones are listed)
    instead of the usage of every option followed by jsonargparse's dump of the ``Union`` it tried."""

    def error(self, message: str, ex: Exception | None = None):
        if traceback_requested() or not self.exit_on_error:
            return super().error(message, ex)
        self._logger.error(message)
        prog = (getattr(ex, "subcommand_parser", None) or self).prog.replace(" [options]", "")
        print(f"error: {compact_parser_error(message)} (`{prog} --help` lists the options)", file=sys.stderr)
        self.exit(EXIT_BAD_INPUT)


def check_writable(trainer_config) -> None:
    """Refuse, before anything is built, a run folder that cannot be created or written (a read-only disk, a
    parent folder without write permission, a file where a folder should be), naming the option that moves it.
    Run it before ``use_run_folder_as_root``, which fills ``default_root_dir`` in."""
    folders = [(logger_folder(trainer_config.get("logger")), "trainer.logger.init_args.save_dir")]
    folders.append((trainer_config.get("default_root_dir"), "trainer.default_root_dir"))
    for folder, option in folders:
        if folder is None:
            continue
        existing = Path(folder).absolute()
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        problem = None
        if not existing.is_dir():
            problem = f"{existing} is a file, not a folder"
        elif not os.access(existing, os.W_OK | os.X_OK):
            problem = f"{existing} is not writable"
        if problem is not None:
            raise PermissionError(
                f"cannot write the run folder {folder}: {problem}; choose another folder with `--{option} <folder>`"
            )


GPU_ACCELERATORS = ("gpu", "cuda")
HALF_PRECISION = ("16-mixed", "bf16-mixed", "16-true", "bf16-true", "16", "bf16", 16)  # 32-true on a CPU


def check_accelerator(trainer_config) -> None:
    """A config written for GPUs, run where there is none: say which options make it run on the CPU (Lightning's
    own error, "No supported gpu backend found!", names none)."""
    accelerator = trainer_config.get("accelerator")
    if str(accelerator).lower() not in GPU_ACCELERATORS or torch.cuda.is_available():
        return
    precision = trainer_config.get("precision")
    options = "--trainer.accelerator cpu"
    if precision in HALF_PRECISION:
        options += " --trainer.precision 32-true"
    settings = f"`trainer.accelerator: {accelerator}`" + (f", `precision: {precision}`" if precision else "")
    raise ValueError(
        f"this config runs on a GPU ({settings}) but none is available here; to run on the CPU add `{options}`"
    )


def check_trainer_config(trainer_config) -> None:
    """The checks every entry point runs on the Trainer's settings before building anything."""
    check_accelerator(trainer_config)
    check_writable(trainer_config)


class TrainCLI(LightningCLI):
    """LightningCLI where YAML picks the system (victim or GAN) and the data module by ``class_path``.

    Every run folder gets the resolved ``config.yaml`` (overwritten on resume) and ``run_info.json``. The run
    folder is also the Trainer's ``default_root_dir`` (unless set), and ``ckpt_path: last`` resumes from the newest
    of the last checkpoint and the one Lightning saves when SLURM preempts the job: a requeued job continues from
    the step it was stopped at. Bad input stops the command with one line, ``error: <what to fix>``
    (``PFO_TRACEBACK=1`` shows the traceback instead; see ``one_line_errors``).
    """

    def __init__(self, args=None, **kwargs) -> None:
        with one_line_errors():
            super().__init__(
                model_class=L.LightningModule,
                datamodule_class=L.LightningDataModule,
                subclass_mode_model=True,
                subclass_mode_data=True,
                seed_everything_default=0,
                save_config_kwargs={"overwrite": True},
                trainer_defaults={"callbacks": [RunInfo()]},
                parser_class=CompactErrorParser,
                args=args,
                **kwargs,
            )

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        check_trainer_config(config["trainer"])
        use_run_folder_as_root(config["trainer"])

    def fit(self, model: L.LightningModule, **kwargs) -> None:
        if kwargs.get("ckpt_path") == "last":
            kwargs["ckpt_path"] = resume_checkpoint(self.trainer) or "last"
        self.trainer.fit(model, **kwargs)
