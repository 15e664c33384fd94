"""Fixtures shared by the whole suite: where the real data lives, an isolated working folder, seeds, and small
helpers that write image files.

Every test runs with ``PFO_DATA_ROOT`` unset (so a user's environment never changes what a test reads), fixed
seeds, and the signal handlers it started with (Lightning installs its own during ``fit``).
"""

from __future__ import annotations

import os
import random
import signal
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
SHARED_DATA = SHARED / "data"
DATA_ROOT_ENV = "PFO_DATA_ROOT"  # pfo.data.DATA_ROOT_ENV, repeated so conftest imports nothing heavy

_SIGNALS = [s for s in ("SIGINT", "SIGTERM", "SIGUSR1", "SIGUSR2") if hasattr(signal, s)]


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch):
    """No test sees the user's ``PFO_DATA_ROOT`` (tests that want one set it, see ``isolated``), and what a test
    leaves in ``os.environ`` (Lightning's ``PL_GLOBAL_SEED``, for one) is undone after it."""
    saved = dict(os.environ)
    monkeypatch.delenv(DATA_ROOT_ENV, raising=False)
    yield
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture(autouse=True)
def _seeded():
    """The same random numbers in every test, whatever ran before it."""
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _restore_signal_handlers():
    handlers = {name: signal.getsignal(getattr(signal, name)) for name in _SIGNALS}
    yield
    for name, handler in handlers.items():
        if handler is not None:
            signal.signal(getattr(signal, name), handler)


@pytest.fixture
def plain_argv(monkeypatch) -> list[str]:
    """``sys.argv`` without pytest's own options, for entry points called as ``cli_main(args=[...])`` (LightningCLI
    warns when it sees both)."""
    monkeypatch.setattr(sys, "argv", ["train.py"])
    return sys.argv


@pytest.fixture
def isolated(tmp_path, monkeypatch) -> Path:
    """Run the test inside ``tmp_path`` with ``PFO_DATA_ROOT=<tmp_path>/data``: default paths such as ``logs/``,
    ``lightning_logs/`` and ``data/<set>`` then resolve under ``tmp_path``, never in the repository."""
    (tmp_path / "data").mkdir(exist_ok=True)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(DATA_ROOT_ENV, str(tmp_path / "data"))
    return tmp_path


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The project's read-only real data sets (``../shared/data``); skips the test where they are absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(
            f"../shared/data not found: the real-data tests need the project's shared folder beside the checkout "
            f"(looked for {SHARED_DATA})"
        )
    return SHARED_DATA


def write_image(path: Path, size: int | tuple[int, int] = 8, seed: int = 0, fmt: str | None = None) -> Path:
    """Write a small random RGB image (lossless PNG unless the suffix says otherwise) and return its path."""
    width, height = (size, size) if isinstance(size, int) else size
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, format=fmt)
    return path


@pytest.fixture
def make_image():
    """``make_image(path, size=8, seed=0)`` writes a small random RGB image and returns its path."""
    return write_image


@pytest.fixture
def link_real_files():
    """``link_real_files(source_folder, names, target_folder)`` symlinks a handful of real files into a test folder,
    so a real-data test reads only those."""

    def link(source: Path, names, target: Path) -> list[Path]:
        target.mkdir(parents=True, exist_ok=True)
        paths = []
        for name in names:
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            (target / name).symlink_to(source / name)
            paths.append(target / name)
        return paths

    return link
