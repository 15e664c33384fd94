"""Where pretrained ImageNet weights come from: a local file the user names, or the library's own download."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch


def load_pretrained_state(
    pretrained: bool | str, download: Callable[[], dict[str, torch.Tensor]]
) -> dict[str, torch.Tensor]:
    """A state dict from the file ``pretrained`` names, or from ``download()`` when it is ``True``."""
    if isinstance(pretrained, str):
        path = Path(pretrained).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"pretrained weights file {path} not found; give the path of a state-dict file")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:
            raise ValueError(f"{path} is not a readable PyTorch weights file ({error})") from error
        for key in ("state_dict", "model"):
            if isinstance(state, dict) and isinstance(state.get(key), dict):
                state = state[key]
        if not isinstance(state, dict):
            raise ValueError(f"{path} does not hold a state dict")
        return state
    try:
        return download()
    except Exception as error:
        raise RuntimeError(
            "could not download the pretrained weights (no network?); download them elsewhere and give the "
            f"file's path as `pretrained: /path/to/weights.pth` ({error})"
        ) from error
