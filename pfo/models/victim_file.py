"""The victim file: a split model's architecture, weights, input normalisation and resolution."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pfo.artifacts import ArtifactError, build_from_config, load_artifact, save_artifact
from pfo.models.split import SplitModel


def save_victim(model: SplitModel, path: str | os.PathLike, **meta: Any) -> Path:
    """Export ``model`` (e.g. ``classes=[...]``, ``test_accuracy=...`` as metadata)."""
    return save_artifact(
        path,
        "victim",
        model.export_config(),
        {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
        input_size=model.input_size,
        num_classes=model.num_classes,
        split_points=model.split_points,
        mean=model.normalize.mean.flatten().tolist(),
        std=model.normalize.std.flatten().tolist(),
        **meta,
    )


def load_victim(path: str | os.PathLike, split_point: str | None = None) -> SplitModel:
    """Rebuild the victim in eval mode, split at ``split_point`` (default: where it was exported)."""
    payload = load_artifact(path, "victim")
    config = {**payload["config"], "init_args": dict(payload["config"]["init_args"])}
    model = build_from_config(config, SplitModel)
    try:
        missing, unexpected = model.load_state_dict(payload["state_dict"], strict=False)
    except RuntimeError as error:  # tensors of another shape
        raise ArtifactError(
            f"{path}: weights do not fit the architecture; the file is damaged or was edited ({error})"
        ) from error
    if missing or unexpected:
        raise ArtifactError(
            f"{path}: weights do not fit the architecture (missing {missing[:3]}, unexpected "
            f"{unexpected[:3]}); the file is damaged or was edited"
        )
    if split_point is not None:
        model.with_split(split_point)
    model.meta = payload["meta"]
    return model.eval()
