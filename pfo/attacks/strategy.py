"""Running independent attacks in several processes (GPUs, nodes) under ``Trainer.fit``.

An attack's ``training_step`` optimises per-target tensors it creates itself; nothing is shared between
processes. Plain DDP would do two wrong things here: wrap the module in ``DistributedDataParallel`` (which
refuses a module without trainable parameters and would average gradients across processes that hold different
targets) and shard with a sampler that pads by repeating targets. This strategy keeps DDP's process group
(launch, ranks, barriers, SLURM environment) and skips the wrapping; ``pfo.attacks.targets`` shards without
padding.
"""

from __future__ import annotations

from lightning.pytorch.strategies import DDPStrategy


class IndependentProcesses(DDPStrategy):
    """DDP's processes and process group, without wrapping the module: no gradient is ever all-reduced."""

    strategy_name = "independent"

    def configure_ddp(self) -> None:
        """Leave the module unwrapped (DDP would average per-target gradients across processes)."""


def _register() -> None:
    """Make ``trainer.strategy: independent`` work from YAML and the command line."""
    from lightning.pytorch.strategies import StrategyRegistry

    if "independent" not in StrategyRegistry:
        StrategyRegistry.register(
            "independent", IndependentProcesses, description="DDP processes without module wrapping (pfo attacks)"
        )


_register()
