"""Where pretrained weights come from: a local file the user names, or the library's own download."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn


def load_pretrained_state(
    pretrained: bool | str,
    download: Callable[[], dict[str, torch.Tensor]] | None,
    option: str = "pretrained",
) -> dict[str, torch.Tensor]:
    """A state dict from the file ``pretrained`` names (a PyTorch file read with ``weights_only=True``, or a
    ``.safetensors`` file), or from ``download()`` when it is ``True``. ``option`` is the setting's name in the
    messages (``pretrained``, ``weights``)."""
    if isinstance(pretrained, str):
        path = Path(pretrained).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"pretrained weights file {path} not found; give the path of a state-dict file")
        try:
            if path.suffix == ".safetensors":
                from safetensors.torch import load_file

                state = load_file(str(path), device="cpu")
            else:
                state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:
            raise ValueError(f"{path} is not a readable PyTorch weights file ({error})") from error
        for key in ("state_dict", "model"):
            if isinstance(state, dict) and isinstance(state.get(key), dict):
                state = state[key]
        if not isinstance(state, dict):
            raise ValueError(f"{path} does not hold a state dict")
        return state
    if download is None:
        raise ValueError(f"`{option}` must name a local weights file")
    try:
        return download()
    except Exception as error:
        raise RuntimeError(
            "could not download the pretrained weights (no network?); download them elsewhere and give the "
            f"file's path as `{option}: /path/to/weights.pth` ({error})"
        ) from error


def load_weights_keeping_classifier(
    net: nn.Module, state: dict[str, torch.Tensor], num_classes: int, what: str
) -> None:
    """Load pretrained weights into ``net``, built for ``num_classes`` outputs. Every tensor must fit by name and
    shape, except the classifier's when the file was trained for another number of classes: tensors whose first
    dimension is ``num_classes`` in ``net`` and something else in the file keep their fresh initialisation. Any
    other difference means a file for another architecture."""
    own = net.state_dict()

    def counts(key: str) -> bool:  # BatchNorm's counter is absent from older files
        return not key.endswith("num_batches_tracked")

    missing = [k for k in own if k not in state and counts(k)]
    extra = [k for k in state if k not in own and counts(k)]
    reshaped = [k for k in state if k in own and own[k].shape != state[k].shape]
    classifier = [k for k in reshaped if own[k].shape[:1] == (num_classes,) and own[k].shape[1:] == state[k].shape[1:]]
    other = [k for k in reshaped if k not in classifier]
    if missing or extra or other:
        raise ValueError(
            f"the pretrained weights do not fit this {what}: {len(missing)} tensors missing from the file (e.g. "
            f"{missing[:3]}), {len(extra)} unexpected (e.g. {extra[:3]}), {len(other)} of another shape (e.g. "
            f"{other[:3]}): they are for another architecture or other `model_kwargs`"
        )
    net.load_state_dict({k: v for k, v in state.items() if k in own and k not in reshaped}, strict=False)
