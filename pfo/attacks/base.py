"""What every reconstruction attack shares: the frozen victim, the client's (defended) features, per-target
seeds, metrics, the run folder and resume. An attack only says how to reconstruct a batch of features.

``training_step`` receives a batch of targets and runs the whole attack for them (the user-facing shape of an
attack run: ``Trainer.fit`` over targets). The step never sees a target's image except through the client,
which turns it into features, and through the scoring, which happens after the reconstruction is final.

A run folder holds the results of one set of settings (``pfo.attacks.fingerprint``) and one run at a time. Before
Lightning writes anything into it (``prepare_data``, first process), the run locks the folder and compares the
settings recorded there with its own: a rerun with other settings stops there, naming the options that differ;
a rerun with the same settings resumes. A run that fails before its first target leaves the folder as it found it.
"""

from __future__ import annotations

import resource
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.strategies import DDPStrategy
from torch import nn

from pfo.artifacts import build_from_config
from pfo.attacks.defenses import Defense, defense_generators
from pfo.attacks.fingerprint import (
    FINGERPRINT_FILE,
    compare_fingerprints,
    describe_differences,
    read_fingerprint,
    run_fingerprint,
    write_fingerprint,
)
from pfo.attacks.outputs import AttackOutputs, FolderSnapshot, RunLock
from pfo.attacks.strategy import IndependentProcesses
from pfo.metrics import ReconstructionMetrics, feature_distance, is_collapsed, top1_correct
from pfo.models.split import SplitModel, has_tail
from pfo.models.victim_file import load_victim


@dataclass
class Reconstruction:
    """An attack's answer for a batch: final images in [0, 1] at the victim's input size, and per-stage detail."""

    images: torch.Tensor  # [N, 3, R, R] in [0, 1]
    feature_loss: torch.Tensor  # [N] feature distance of the final images
    failed: torch.Tensor  # [N] bool: the loss became NaN/inf and the target was stopped
    best_stage: torch.Tensor | None = None  # [N] index of the stage whose image was kept
    stage_images: list[torch.Tensor] = field(default_factory=list)  # per stage [N, 3, R, R]
    stage_losses: list[torch.Tensor] = field(default_factory=list)  # per stage [N]
    classes: torch.Tensor | None = None  # [N] the class a conditional prior rendered each target in


def frozen_victim(victim: str | Path | dict | SplitModel, split_point: str | None = None) -> SplitModel:
    """The victim an attacker works with: loaded from its file, built from an inline ``{class_path, init_args}``
    (a config's network given in place of a file), or given; cut at ``split_point`` (default: where it was
    exported), in eval mode and with no trainable parameter."""
    if isinstance(victim, dict):
        victim = build_from_config({"init_args": {}, **victim}, SplitModel)
    model = load_victim(victim) if isinstance(victim, (str, Path)) else victim
    if split_point is not None:
        model.with_split(split_point)
    return freeze(model)


def freeze(module: torch.nn.Module) -> torch.nn.Module:
    """``module`` in eval mode with no trainable parameter: what an attacker may only query (the victim, a prior, a
    trained decoder or encoder). Lightning warns of modules in eval mode as training starts; these are so on
    purpose, so its warning is silenced here (filters are process-wide; a repeated call adds nothing)."""
    warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode at the start of training")
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return module


# ----- the run folder -------------------------------------------------------------------------------------------

WAYS_ON = (
    "give this run its own folder (`--trainer.logger.init_args.name NEW`) to keep both, or pass "
    "`--model.init_args.fresh true` to discard the results in it"
)


class SettingsChanged(ValueError):
    """A run folder holds results of other settings than the run's."""


def run_folder(trainer: L.Trainer) -> Path:
    """Where an attack run writes: ``trainer.log_dir`` (else ``default_root_dir``), found without the collective
    call ``trainer.log_dir`` makes, so that one process can ask alone."""
    folder = None
    if trainer.loggers:
        logger = trainer.loggers[0]
        folder = logger.log_dir if isinstance(logger, (TensorBoardLogger, CSVLogger)) else logger.save_dir
    return Path(folder or trainer.default_root_dir)


def check_run_folder(folder: str | Path, fingerprint: dict) -> None:
    """Refuse (``SettingsChanged``) a folder holding results of other settings than ``fingerprint``, or results
    with no record of their settings; a folder without results takes any."""
    done = AttackOutputs(folder).finished()
    if not done:
        return
    recorded = read_fingerprint(folder)
    if recorded is None:
        raise SettingsChanged(
            f"{folder} holds {len(done)} finished targets but no record of the settings that made them "
            f"({FINGERPRINT_FILE}: an older pfo, or the file was removed), so they cannot be checked against this "
            f"run's; {WAYS_ON}"
        )
    differences = compare_fingerprints(recorded, fingerprint)
    if differences:
        raise SettingsChanged(
            f"{folder} holds {len(done)} finished targets of other settings (recorded -> this run):\n"
            f"{describe_differences(differences)}\n{WAYS_ON[0].upper()}{WAYS_ON[1:]}"
        )


class StoppedByFirstProcess(ValueError):
    """The first process refused the run (its own message says why); the others stop with it."""


class _RunFolderRelease(L.Callback):
    """Gives the run folder back when a run ends by an exception (a LightningModule has no such hook)."""

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        pl_module.release_run_folder(failed=True)


# ----- which metrics of the victim's labels a run can report -----------------------------------------------------

LABEL_METRICS = ("top1", "utility_top1")
NO_TAIL = "the victim has no tail (the server's part is unknown), so nothing scores its predictions"
NO_LABELS = "the targets carry no labels"


def _some(names: list[str], shown: int = 3) -> str:
    listed = ", ".join(str(n) for n in names[:shown])
    return f"{len(names)} classes ({listed}{', ...' if len(names) > shown else ''})"


def target_classes(datamodule) -> tuple[list[str] | None, str]:
    """The targets' class names in label order (None: not known) and where they come from."""
    if datamodule is None:
        return None, "the targets"
    if getattr(datamodule, "features_file", None) is not None:
        classes = (getattr(datamodule, "feature_meta", None) or {}).get("classes")
        return (list(classes) if classes else None), f"the features file {datamodule.features_file}"
    data = getattr(datamodule, "data", datamodule)
    try:
        classes = data.classes
    except (AttributeError, NotImplementedError):
        return None, type(data).__name__
    return (list(classes) if classes is not None else None), type(data).__name__


def label_space_problem(victim: nn.Module, datamodule) -> str | None:
    """Why the victim's top-1 accuracy (``top1``, ``utility_top1``) means nothing on these targets, or None when
    it does: the victim must have a tail, and the targets' labels must be the victim's classes.

    The victim file names its classes (``classes``, written at export from the training data). The targets' data
    module names theirs; the lists must be equal. An older victim file (or a network built in code) names none:
    then the numbers of classes must agree. Targets whose classes are unknown (a features file that names none, a
    data module without ``classes``) are taken to be labelled as the victim's, as a client's captured features
    are."""
    if not has_tail(victim):
        return NO_TAIL
    ours, where = target_classes(datamodule)
    if ours is None:
        return None
    meta = getattr(victim, "meta", None) or {}
    theirs = list(meta.get("classes") or [])
    trained_on = f" (trained on {meta['dataset']})" if meta.get("dataset") else ""
    if theirs:
        if ours != theirs:
            return (
                f"the targets' labels are {where}'s {_some(ours)}, not the victim's{trained_on} {_some(theirs)}, so "
                "its predictions cannot be scored against them"
            )
        return None
    count = getattr(victim, "num_classes", None)
    if count is not None and len(ours) != count:
        return (
            f"the targets' labels are {where}'s {_some(ours)}, but the victim predicts {count} classes (its file "
            "does not name them: an older export), so its predictions cannot be scored against them"
        )
    return None


class ReconstructionAttack(L.LightningModule):
    """Base of all attacks. Subclasses implement ``reconstruct(h_star, index) -> Reconstruction``."""

    def __init__(
        self,
        victim: str | SplitModel,
        split_point: str | None = None,
        defense: Defense | None = None,
        seed: int = 0,
        lpips_weights: str | None = None,
        save_stage_images: bool = False,
        fresh: bool = False,
    ) -> None:
        """
        Args:
            victim: the victim file (``train.py fit`` of a victim config writes one), or a SplitModel.
            split_point: where the client cuts the victim (default: the split point stored in the file).
            defense: what the client does to its features before sending them (noise, dropout, ...).
            seed: run seed; each target's randomness is seeded from (seed, the target's index in its split).
            lpips_weights: AlexNet backbone weights for LPIPS (torchvision layout); default torchvision's cache.
                Without weights LPIPS is reported as missing (never computed on random weights).
            save_stage_images: also write every stage's image as PNG (the tensors always keep them).
            fresh: forget the finished targets of an earlier run in the same folder and start over.
        """
        super().__init__()
        self.save_hyperparameters(ignore=["victim", "defense", "generator"])
        self.victim = frozen_victim(victim, split_point)
        self.defense = defense
        self.seed = seed
        self.scorer = ReconstructionMetrics(lpips_weights)
        self.automatic_optimization = False
        self.outputs: AttackOutputs | None = None
        self._originals: dict[int, torch.Tensor] = {}
        # Why top1/utility_top1 are left empty (None: reported); the targets' label space is checked in setup.
        self.label_problem: str | None = None if has_tail(self.victim) else NO_TAIL
        self._explained: set[str] = set()
        self._lock: RunLock | None = None
        self._snapshot: FolderSnapshot | None = None  # armed until the run folder is this run's (end of setup)
        self._fingerprint: dict | None = None
        self._refusal: Exception | None = None  # the first process's, raised in setup when there are several

    # ----- what an attack provides --------------------------------------------------------------------------
    def reconstruct(self, h_star: torch.Tensor, index: torch.Tensor) -> Reconstruction:
        """Reconstruct the victim inputs behind features ``h_star`` (targets ``index``, for seeding)."""
        raise NotImplementedError

    # ----- the client ---------------------------------------------------------------------------------------
    @torch.no_grad()
    def client_features(self, images: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """What the client sends for its private ``images`` (moved to the attack's device): the head's features,
        through the defense."""
        h = self.victim.forward_head(images.to(self.device))
        if self.defense is not None:
            generators = defense_generators(self.seed, index)
            h = self.defense(h, generators)
        return h

    def observed_features(self, batch: dict) -> torch.Tensor:
        if "features" in batch:
            return batch["features"]
        return self.client_features(batch["image"], batch["index"])

    # ----- Lightning hooks ----------------------------------------------------------------------------------
    def train(self, mode: bool = True):
        """The victim (and any prior) stays in eval mode: BatchNorm must use its running statistics."""
        super().train(mode)
        self.victim.eval()
        for module in self.frozen_modules():
            module.eval()
        return self

    def frozen_modules(self) -> list[torch.nn.Module]:
        """Networks besides the victim that must stay in eval mode (a subclass's generator)."""
        return []

    def configure_optimizers(self):
        return None  # each training_step creates and optimises its own per-target variables

    def configure_callbacks(self) -> list[L.Callback]:
        return [_RunFolderRelease()]

    def prepare_data(self) -> None:
        """Before Lightning writes anything into the run folder (its logger's files, ``config.yaml``,
        ``run_info.json``), on the first process alone: lock the folder for this run, and refuse it when it holds
        results of other settings (unless ``fresh``). Nothing in the folder changes before both pass."""
        trainer = self.trainer
        if trainer.global_rank != 0:
            return
        try:
            self.open_run_folder(run_folder(trainer))
        except Exception as error:
            if trainer.world_size == 1:
                raise
            # Raised here, the first process would end while the others wait for it at Lightning's next barrier
            # (where they die of a lost connection): every process stops together in setup instead.
            self._refusal = error

    def open_run_folder(self, folder: Path) -> None:
        # The fingerprint reads the targets' item list first: missing data fails here, before any file exists.
        fingerprint = run_fingerprint(self, getattr(self.trainer, "datamodule", None))
        snapshot, lock = FolderSnapshot(folder), RunLock(folder)
        lock.acquire()
        self._lock, self._snapshot = lock, snapshot
        if not self.hparams.fresh:
            check_run_folder(folder, fingerprint)
        self._fingerprint = fingerprint

    def release_run_folder(self, failed: bool = False) -> None:
        """Unlock the run folder; after a failure before the folder became this run's (setup), put it back as it
        was (a new folder is removed, so no folder holding only a log file is left behind)."""
        try:
            if failed and self._snapshot is not None and self._lock is not None:
                self._snapshot.restore()
        finally:
            self._snapshot = None
            if self._lock is not None:
                self._lock.release()
                self._lock = None

    def teardown(self, stage: str) -> None:
        self.release_run_folder()

    def setup(self, stage: str) -> None:
        trainer = self.trainer
        strategy = trainer.strategy
        if isinstance(strategy, DDPStrategy) and not isinstance(strategy, IndependentProcesses):
            raise ValueError(
                "plain DDP would average per-target gradients across processes and repeat targets; "
                "use `trainer.strategy: pfo.attacks.IndependentProcesses` for several devices"
            )
        if trainer.world_size > 1:
            refused = strategy.broadcast(self._refusal is not None, src=0)
            if self._refusal is not None:
                raise self._refusal
            if refused:
                raise StoppedByFirstProcess("the first process refused the run; its message above says why")
        folder = Path(trainer.log_dir or trainer.default_root_dir)
        self.outputs = AttackOutputs(folder)
        data = getattr(trainer, "datamodule", None)
        self.check_targets(data)
        self.label_problem = label_space_problem(self.victim, data)
        if trainer.is_global_zero:
            self.claim_run_folder(folder)
        strategy.barrier("pfo-attack-setup")
        if data is not None and hasattr(data, "skip"):
            data.skip = self.outputs.finished()
            if data.skip and trainer.is_global_zero:
                print(f"resuming: {len(data.skip)} finished targets in {self.outputs.targets} are skipped")
        if self.label_problem is not None:
            self.explain_once(self.label_problem)

    def claim_run_folder(self, folder: Path) -> None:
        """Every check passed: start over when ``fresh``, record this run's settings, and set aside the result
        files that cannot be read back (their targets are attacked again)."""
        if self._lock is None:  # setup called without Trainer.fit's prepare_data
            self.open_run_folder(folder)
        if self.hparams.fresh:
            self.outputs.clear()
        write_fingerprint(folder, self._fingerprint)
        self._snapshot = None  # from here on the folder is this run's: a failure keeps what it wrote
        for index, path, problem in self.outputs.set_aside_damaged():
            warnings.warn(
                f"{problem}: it is set aside as {path.name}.damaged and target {index} is attacked again",
                stacklevel=2,
            )

    def explain_once(self, reason: str) -> None:
        """Say once per run (first process) why ``top1``/``utility_top1`` are left empty."""
        if reason in self._explained:
            return
        self._explained.add(reason)
        if self._trainer is None or self.trainer.is_global_zero:
            print(f"top1 and utility_top1 are left empty: {reason}")

    def unreported(self, labels: torch.Tensor) -> str | None:
        """Why the label metrics are not reported for a batch with these labels (None: they are)."""
        if self.label_problem is None and not bool((labels >= 0).all()):
            self.explain_once(NO_LABELS)
            return NO_LABELS
        return self.label_problem

    def check_targets(self, data) -> None:
        inner = getattr(data, "data", None)
        resolution = getattr(inner, "resolution", None)
        if (
            resolution is not None
            and getattr(data, "features_file", None) is None
            and resolution != self.victim.input_size
        ):
            raise ValueError(
                f"the targets are {resolution}px images but the victim takes {self.victim.input_size}px; set "
                f"`data.data.init_args.resolution: {self.victim.input_size}`"
            )

    def training_step(self, batch: dict, batch_idx: int) -> None:
        index, valid = batch["index"], batch["valid"]
        if not bool(valid.any()):
            return  # only ghosts: the stand-in batch of a process with no target left (see targets.InStep)
        h_star = self.observed_features(batch)
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        start = time.perf_counter()
        with torch.enable_grad():
            result = self.reconstruct(h_star, index)
        seconds = (time.perf_counter() - start) / max(1, int(valid.sum()))
        metrics = self.score(result, batch, h_star)
        reason = self.unreported(batch["label"])
        peak = self.peak_memory_mb()
        for i in torch.nonzero(valid).flatten().tolist():
            record = {
                "index": int(index[i]),
                "label": int(batch["label"][i]),
                "status": "failed: non-finite loss" if bool(result.failed[i]) else "ok",
                "best_stage": int(result.best_stage[i]) if result.best_stage is not None else 0,
                "prior_class": int(result.classes[i]) if result.classes is not None else None,
                "reconstruction": result.images[i].detach().cpu().float(),
                "stage_images": torch.stack([s[i] for s in result.stage_images]).cpu() if result.stage_images else None,
                "stage_losses": torch.stack([s[i] for s in result.stage_losses]).cpu() if result.stage_losses else None,
                "metrics": {k: float(v[i]) for k, v in metrics.items()},
                "unreported": dict.fromkeys(LABEL_METRICS, reason) if reason else {},
                "seconds": seconds,
                "peak_memory_mb": peak,
                # the private input, for the comparison figure of any merge (resumed, multi-process, sharded runs)
                "original": batch["image"][i].detach().cpu().float() if "image" in batch else None,
            }
            self.outputs.write_target(record["index"], record)
            if "image" in batch and len(self._originals) < 64:
                self._originals[record["index"]] = batch["image"][i].detach().cpu()
        done = len(self.outputs.finished())
        self.log("targets_done", float(done), prog_bar=True, on_step=True, logger=False, batch_size=len(index))
        for name in ("psnr", "feature_distance"):
            if name in metrics:
                kept = metrics[name][valid.cpu()]  # metrics come back on the CPU
                kept = kept[torch.isfinite(kept)]
                if kept.numel():
                    self.log(f"attack/{name}", kept.mean(), on_step=True, batch_size=len(kept))

    @torch.no_grad()
    def score(self, result: Reconstruction, batch: dict, h_star: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-target metrics. Images are read here, after the reconstruction is final, and nowhere else."""
        recon = result.images.clamp(0, 1)
        metrics: dict[str, torch.Tensor] = {}
        if "image" in batch:
            metrics.update(self.scorer(recon, batch["image"]))
        else:
            metrics["collapsed"] = is_collapsed(recon)
        metrics["feature_distance"] = feature_distance(self.victim.forward_head(recon), h_star)
        labels = batch["label"]
        if self.unreported(labels) is None:
            metrics["top1"] = top1_correct(self.victim(recon), labels)
            # The server's own prediction from the (defended) features it received: the utility a defense keeps.
            metrics["utility_top1"] = top1_correct(self.victim.tail(h_star), labels)
        return {k: v.detach().float().cpu() for k, v in metrics.items()}

    def peak_memory_mb(self) -> float:
        """CUDA: peak allocated during the batch; CPU: the process's peak resident memory so far."""
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """An attack has no training state: the victim and prior come from the config, progress is the per-target
        files. Lightning still writes a checkpoint when SLURM preempts the run (``hpc_ckpt_N.ckpt``, auto-requeue);
        keep it small and free of loop progress."""
        checkpoint["state_dict"] = {}
        checkpoint.pop("loops", None)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Restore nothing. Restored loop progress would make a requeued run stop after as many batches as the run
        before it had left, but the requeued run's loader already leaves out the finished targets, so the rest
        would be lost; and another run's weights must never replace what this config built."""
        checkpoint["state_dict"] = self.state_dict()
        checkpoint.pop("loops", None)

    def on_train_end(self) -> None:
        self.trainer.strategy.barrier("pfo-attack-merge")
        if not self.trainer.is_global_zero:
            return
        summary = self.outputs.merge(self._originals, stage_images=self.hparams.save_stage_images)
        if not summary:
            warnings.warn("no target was attacked: nothing to merge", stacklevel=2)
            return
        self._log_summary(summary)
        print(f"attack results: {self.outputs.folder} (metrics.csv, summary.json, comparison.png)")
        for name, stats in summary["metrics"].items():
            print(f"  {name:18s} mean {stats['mean']:.4f}  median {stats['median']:.4f}  std {stats['std']:.4f}")

    def _log_summary(self, summary: dict) -> None:
        logger = self.logger
        if logger is None or not hasattr(logger, "experiment"):
            return
        experiment = logger.experiment
        if hasattr(experiment, "add_scalar"):
            for name, stats in summary["metrics"].items():
                experiment.add_scalar(f"summary/{name}_mean", stats["mean"], 0)
            grid = self.outputs.folder / "comparison.png"
            if grid.exists():
                from torchvision.io import read_image

                experiment.add_image("comparison", read_image(str(grid))[:3], 0)

    def log_curve(self, tag: str, value: float, step: int) -> None:
        """A scalar inside the per-target optimisation (many per training_step), straight to TensorBoard."""
        logger = self.logger
        if logger is not None and hasattr(logger, "experiment") and hasattr(logger.experiment, "add_scalar"):
            logger.experiment.add_scalar(tag, value, step)
