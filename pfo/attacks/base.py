"""What every reconstruction attack shares: the frozen victim, the client's (defended) features, per-target
seeds, metrics, the run folder and resume. An attack only says how to reconstruct a batch of features.

``training_step`` receives a batch of targets and runs the whole attack for them (the user-facing shape of an
attack run: ``Trainer.fit`` over targets). The step never sees a target's image except through the client,
which turns it into features, and through the scoring, which happens after the reconstruction is final.
"""

from __future__ import annotations

import resource
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.strategies import DDPStrategy

from pfo.attacks.defenses import Defense, defense_generators
from pfo.attacks.outputs import AttackOutputs
from pfo.attacks.strategy import IndependentProcesses
from pfo.metrics import ReconstructionMetrics, feature_distance, is_collapsed, top1_correct
from pfo.models.split import SplitModel
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


def frozen_victim(victim: str | Path | SplitModel, split_point: str | None = None) -> SplitModel:
    """The victim an attacker works with: loaded from its file (or given), cut at ``split_point`` (default: where
    it was exported), in eval mode and with no trainable parameter."""
    model = load_victim(victim) if isinstance(victim, (str, Path)) else victim
    if split_point is not None:
        model.with_split(split_point)
    return freeze(model)


def freeze(module: torch.nn.Module) -> torch.nn.Module:
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return module


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

    def setup(self, stage: str) -> None:
        trainer = self.trainer
        strategy = trainer.strategy
        if isinstance(strategy, DDPStrategy) and not isinstance(strategy, IndependentProcesses):
            raise ValueError(
                "plain DDP would average per-target gradients across processes and repeat targets; "
                "use `trainer.strategy: pfo.attacks.IndependentProcesses` for several devices"
            )
        folder = Path(trainer.log_dir or trainer.default_root_dir)
        self.outputs = AttackOutputs(folder)
        if self.hparams.fresh and trainer.is_global_zero:
            self.outputs.clear()
        strategy.barrier("pfo-attack-setup")
        data = getattr(trainer, "datamodule", None)
        if data is not None and hasattr(data, "skip"):
            data.skip = self.outputs.finished()
            if data.skip and trainer.is_global_zero:
                print(f"resuming: {len(data.skip)} finished targets in {self.outputs.targets} are skipped")
        self.check_targets(data)

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
        peak = self.peak_memory_mb()
        for i in torch.nonzero(valid).flatten().tolist():
            record = {
                "index": int(index[i]),
                "label": int(batch["label"][i]),
                "status": "failed: non-finite loss" if bool(result.failed[i]) else "ok",
                "best_stage": int(result.best_stage[i]) if result.best_stage is not None else 0,
                "reconstruction": result.images[i].detach().cpu().float(),
                "stage_images": torch.stack([s[i] for s in result.stage_images]).cpu() if result.stage_images else None,
                "stage_losses": torch.stack([s[i] for s in result.stage_losses]).cpu() if result.stage_losses else None,
                "metrics": {k: float(v[i]) for k, v in metrics.items()},
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
        if len(self.victim.tail) and bool((labels >= 0).all()):
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
