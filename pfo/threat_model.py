"""The attacker's data rules (GUIDE section 1), checked where a network meets its data, before any training step.

- A victim trains on the ``private`` split (it may validate on ``test``).
- The attacker's networks (the prior, the inverse network's decoder) train and validate on ``public`` only: the
  attacker never sees the private training data or the target images.
- Targets never come from ``public``: reconstructing the attacker's own data measures nothing.

A config only names splits (``pfo.data.splits`` fixes what they hold), so reading the names the data module will
serve is enough to enforce the rules. Each rule has one explicit option that allows breaking it for an ablation
(``ALLOW_OPTIONS``); the run records which splits each network saw, in the exported file and in ``run_info.json``.
"""

from __future__ import annotations

from typing import Any

PUBLIC = "public"
PRIVATE = "private"

# The options that allow breaking a rule on purpose, by the rule they lift.
ALLOW_NONPUBLIC_TRAINING = "allow_nonpublic_training"  # a prior or decoder trained or validated off `public`
ALLOW_NONPRIVATE_TRAINING = "allow_nonprivate_training"  # a victim trained off `private`
ALLOW_PUBLIC_TARGETS = "allow_public_targets"  # targets taken from `public`
ALLOW_OPTIONS = (ALLOW_NONPUBLIC_TRAINING, ALLOW_NONPRIVATE_TRAINING, ALLOW_PUBLIC_TARGETS)

_STAGE_SPLITS = {"train": "train_split", "val": "val_split", "test": "test_split", "predict": "predict_split"}


class ThreatModelError(ValueError):
    """A run that would break the threat model; the message names the rule, the fix and the option that allows
    breaking it on purpose."""


def data_splits(data: Any) -> dict[str, str | None] | None:
    """The split a data module serves for each loop (``train``, ``val``, ``test``, ``predict``), or None for a data
    module that names no splits (plain loaders, a custom module): then nothing can be checked."""
    if data is None or not hasattr(data, "train_split"):
        return None
    return {loop: getattr(data, attribute, None) for loop, attribute in _STAGE_SPLITS.items()}


def splits_seen(data: Any, loops: tuple[str, ...]) -> dict[str, str | None]:
    """The splits a system running ``loops`` reads (``{"train": "public", "val": None}``); ``"unknown"`` for data
    that names none. What exported files and ``run_info.json`` record."""
    splits = data_splits(data)
    if splits is None:
        return {loop: "unknown" for loop in loops}
    return {loop: splits[loop] for loop in loops}


def require_attacker_data(network: str, data: Any, loops: tuple[str, ...], allow: bool) -> dict[str, str | None]:
    """Refuse an attacker's network that would train (or validate) on anything but ``public``; returns the splits
    it will see. ``loops``: the loops the system runs (``("train",)`` without a validation step)."""
    seen = splits_seen(data, loops)
    if allow:
        return seen
    if data_splits(data) is None:
        raise ThreatModelError(
            f"the attacker's {network} may learn from public data only, but its data names no split, so nothing "
            f"shows it is public; use a pfo data module with `train_split: public`, or set "
            f"`{ALLOW_NONPUBLIC_TRAINING}: true` to train on other data on purpose"
        )
    for loop, split in seen.items():
        if split is not None and split != PUBLIC:
            attribute = _STAGE_SPLITS[loop]
            fix = "public" if loop == "train" else "null (or public)"
            raise ThreatModelError(
                f"the attacker's {network} may learn from public data only, but its data module's {attribute} is "
                f"{split!r}; set `data.init_args.{attribute}: {fix}`, or `{ALLOW_NONPUBLIC_TRAINING}: true` to break "
                "the threat model on purpose"
            )
    return seen


def require_victim_data(data: Any, allow: bool) -> dict[str, str | None]:
    """Refuse a victim that would train on anything but ``private``; returns the splits it will see."""
    seen = splits_seen(data, ("train", "val"))
    if allow:
        return seen
    if data_splits(data) is None:
        raise ThreatModelError(
            "the victim trains on the private split, but its data names no split, so nothing shows it is private; "
            f"use a pfo data module with `train_split: private`, or set `{ALLOW_NONPRIVATE_TRAINING}: true` to "
            "train on other data on purpose"
        )
    if seen["train"] != PRIVATE:
        raise ThreatModelError(
            f"the victim trains on the private split, but its data module's train_split is {seen['train']!r}; set "
            f"`data.init_args.train_split: private`, or `{ALLOW_NONPRIVATE_TRAINING}: true` to break the threat "
            "model on purpose"
        )
    return seen


def require_target_split(split: str, allow: bool) -> None:
    """Refuse targets from the attacker's public data."""
    if split == PUBLIC and not allow:
        raise ThreatModelError(
            "targets never come from the public split (the attacker's own data); set `data.split: test` (or "
            f"another private split), or `{ALLOW_PUBLIC_TARGETS}: true` to attack public images on purpose"
        )


def allowed_exceptions(*holders: Any) -> list[str]:
    """The threat-model options set to true on any of ``holders`` (systems' hparams, data modules)."""
    found = []
    for holder in holders:
        hparams = getattr(holder, "hparams", None)
        for name in ALLOW_OPTIONS:
            value = getattr(holder, name, None)
            if value is None and hparams is not None:
                value = hparams.get(name) if hasattr(hparams, "get") else None
            if value and name not in found:
                found.append(name)
    return found
