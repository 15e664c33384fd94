"""The targets of an attack: which private inputs (or captured features) to reconstruct, and how they are
sharded over processes.

Targets are named by their index in a data split, the key their randomness is seeded from. Each process takes
every ``world_size``-th remaining target, with no padding by repetition; each batch is filled up to the fixed
batch size with *ghost* copies whose results are thrown away, so every step runs at the same batch size and a
target's result is bitwise the same whatever its neighbours, shard, process count or resume point.

Independent jobs (a SLURM array) split the targets with ``shard``/``num_shards``: shard ``i`` takes every
``num_shards``-th target of the sorted target list, starting at the ``i``-th; ``python -m pfo.attacks.merge``
joins their run folders into one.
"""

from __future__ import annotations

import os
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from pfo.artifacts import load_artifact, save_artifact
from pfo.data.base import ImageDataModule
from pfo.data.splits import unit_hash
from pfo.threat_model import require_target_split


def target_seed(seed: int, index: int) -> int:
    """The seed of one target's randomness (initial latents, random defenses), from (run seed, target index)."""
    return int(unit_hash(f"pfo-target-seed-{seed}", str(int(index))) * 2**62)


def target_generators(seed: int, indices: torch.Tensor) -> list[torch.Generator]:
    """One CPU generator per target. Always the CPU, whatever device the attack runs on (draws are moved there):
    CUDA generators draw other numbers, and a target's start and defense noise must not depend on the device."""
    return [torch.Generator().manual_seed(target_seed(seed, int(i))) for i in indices]


def spread_indices(length: int, count: int) -> list[int]:
    """``count`` indices spread evenly over a split of ``length`` items (splits are sorted by key, hence by class
    for class-folder data: the first ``count`` would all be one class)."""
    count = min(count, length)
    return sorted({(i * length) // count for i in range(count)})


class _TargetItems(Dataset):
    """Items by (position, ghost flag): a ghost is a copy whose results are discarded."""

    def __init__(self, base: Dataset, positions: list[int]) -> None:
        self.base, self.positions = base, positions

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, key: tuple[int, bool]) -> dict:
        position, ghost = key
        item = dict(self.base[self.positions[position]])
        item["valid"] = not ghost
        return item


class _FeatureItems(Dataset):
    def __init__(self, features: torch.Tensor, indices: torch.Tensor, labels: torch.Tensor) -> None:
        self.features, self.indices, self.labels = features, indices, labels

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict:
        return {"features": self.features[i], "index": int(self.indices[i]), "label": int(self.labels[i])}


class ShardedBatches(Sampler):
    """Batches of this process's share of the targets, padded with ghosts to a fixed size (no target repeated
    across processes, none dropped)."""

    def __init__(self, count: int, batch_size: int, rank: int = 0, world_size: int = 1, pad: bool = True) -> None:
        self.mine = list(range(rank, count, world_size))
        self.batch_size, self.pad = batch_size, pad

    def __iter__(self):
        for start in range(0, len(self.mine), self.batch_size):
            batch = [(p, False) for p in self.mine[start : start + self.batch_size]]
            if self.pad:
                batch += [(batch[0][0], True)] * (self.batch_size - len(batch))
            yield batch

    def __len__(self) -> int:
        return -(-len(self.mine) // self.batch_size)


class InStep(Sampler):
    """A process's batches, then batches of a single ghost (item 0) up to ``steps``: every process runs the same
    number of steps, and at least one.

    Under DDP Lightning's training loop makes a collective call at every step, so a process that runs out of
    targets before the others would deadlock them (it would be waiting at the end-of-run barrier); and Lightning
    refuses an empty loader on one process of several. A step whose batch holds no real target does nothing."""

    def __init__(self, batches: Sampler, steps: int) -> None:
        self.batches, self.steps = batches, max(1, steps)

    def __iter__(self):
        done = 0
        for batch in self.batches:
            yield batch
            done += 1
        for _ in range(self.steps - done):
            yield [(0, True)]

    def __len__(self) -> int:
        return max(self.steps, len(self.batches))


class Targets(L.LightningDataModule):
    """The targets: items of a data module's split, or captured features from a file (no images at all).

    Batches are dicts with ``index`` (the target's index in its split), ``label``, ``valid`` (false for ghosts)
    and either ``image`` (the client computes the features from it) or ``features``.
    """

    def __init__(
        self,
        data: ImageDataModule | None = None,
        split: str = "test",
        count: int | None = 32,
        indices: list[int] | None = None,
        features_file: str | None = None,
        batch_size: int = 32,
        pad_batches: bool = True,
        shard: int = 0,
        num_shards: int = 1,
        allow_public_targets: bool = False,
    ) -> None:
        """
        Args:
            data: the data module holding the targets (its ``resolution`` must be the victim's input size).
            split: the split the targets come from; never the attacker's ``public`` split (refused unless
                ``allow_public_targets``).
            count: how many targets, spread evenly over the split (ignored when ``indices`` is given).
            indices: explicit target indices within the split.
            features_file: attack features captured from a client (``pfo.attacks.save_features``) instead of
                images: the real threat model; image metrics are then skipped.
            batch_size: targets optimised together in one step.
            pad_batches: fill the last batch with ghost copies so every step has the same batch size (results
                bitwise independent of batch composition); off saves a little compute.
            shard: which share of the targets this run attacks, 0 <= shard < num_shards (independent jobs, e.g. a
                SLURM array; each writes its own run folder, ``python -m pfo.attacks.merge`` joins them).
            num_shards: how many shares: shard ``i`` takes every ``num_shards``-th target of the sorted target
                list, starting at the ``i``-th.
            allow_public_targets: take targets from the ``public`` split, breaking the threat model on purpose (an
                ablation: reconstructing the prior's own training images).
        """
        super().__init__()
        if data is None and features_file is None:
            raise ValueError("Targets needs `data` (a data module) or `features_file`")
        if indices is not None and len(indices) == 0:
            raise ValueError("`indices` is empty: give at least one target index, or use `count`")
        if count is not None and count < 1:
            raise ValueError(f"`count` must be at least 1, got {count}")
        if num_shards < 1 or not 0 <= shard < num_shards:
            raise ValueError(f"`shard` must be in [0, num_shards), got shard {shard} of num_shards {num_shards}")
        if features_file is None:  # a features file holds what clients sent: no split to check
            require_target_split(split, allow_public_targets)
        self.allow_public_targets = allow_public_targets
        self.data, self.split, self.count, self.indices = data, split, count, indices
        self.features_file, self.batch_size, self.pad_batches = features_file, batch_size, pad_batches
        self.shard, self.num_shards = shard, num_shards
        self.skip: set[int] = set()  # target indices already finished (set by the attack when resuming)
        self._base: Dataset | None = None
        self._all: list[int] | None = None

    def _load(self) -> None:
        if self._base is not None:
            return
        if self.features_file is not None:
            payload = load_artifact(self.features_file, "features")
            features, index = payload["state_dict"]["features"], payload["state_dict"]["index"]
            labels = payload["state_dict"].get("labels", torch.full_like(index, -1))
            self._base = _FeatureItems(features, index, labels)
            available = [int(i) for i in index]
            self.feature_meta = payload["meta"]
        else:
            require_target_split(self.split, self.allow_public_targets)  # again: `split` may have been reassigned
            self._base = self.data.dataset(self.split)
            available = list(range(len(self._base)))
        if self.indices is not None:
            bad = sorted(set(self.indices) - set(available))
            if bad:
                raise ValueError(f"target indices {bad[:5]} are not in split {self.split!r} ({len(available)} items)")
            wanted = sorted(set(self.indices))
        else:
            wanted = [available[i] for i in spread_indices(len(available), self.count or len(available))]
        if self.num_shards > 1:
            if len(wanted) < self.num_shards:
                raise ValueError(
                    f"{len(wanted)} targets cannot be split into {self.num_shards} shards (shard {self.shard} would "
                    f"be empty); use at most {len(wanted)} shards"
                )
            wanted = wanted[self.shard :: self.num_shards]
        self._position = {index: pos for pos, index in enumerate(available)}
        self._all = wanted

    @property
    def target_indices(self) -> list[int]:
        """Every target's index in its split, sorted (this shard's, with ``num_shards`` > 1)."""
        self._load()
        return list(self._all)

    def item(self, index: int) -> dict:
        self._load()
        return self._base[self._position[index]]

    def setup(self, stage: str | None = None) -> None:
        self._load()

    def train_dataloader(self) -> DataLoader:
        self._load()
        remaining = [self._position[i] for i in self._all if i not in self.skip]
        rank, world = 0, 1
        if self.trainer is not None:
            rank, world = self.trainer.global_rank, self.trainer.world_size
        sampler = ShardedBatches(len(remaining), self.batch_size, rank, world, self.pad_batches)
        steps = len(ShardedBatches(len(remaining), self.batch_size, 0, world))  # rank 0 has the most targets
        items = remaining or [self._position[self._all[0]]]  # something for item 0 when every target is done
        return DataLoader(_TargetItems(self._base, items), batch_sampler=InStep(sampler, steps))


def save_features(
    path: str | os.PathLike, features: torch.Tensor, index: torch.Tensor, labels: torch.Tensor | None = None, **meta
) -> Path:
    """Write what a client sent (defended features) with each target's index: an attack's input without images."""
    state = {"features": features.detach().cpu(), "index": torch.as_tensor(index).cpu()}
    if labels is not None:
        state["labels"] = torch.as_tensor(labels).cpu()
    return save_artifact(path, "features", {}, state, **meta)
