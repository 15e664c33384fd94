"""Named priors: pretrained generators that a config names instead of a path (``generator: digiface-dcgan64``).

A name resolves to one file in the prior cache, checked against its sha256 before it is read, and read with
``torch.load(weights_only=True)`` only: the package that publishes the weights is never imported and none of its
code is unpickled. pfo downloads nothing; when the file is missing the error gives the one command that fetches
it.

The cache folder is, in order: the ``cache_dir`` argument, the environment variable ``PFO_PRIOR_CACHE``,
``$XDG_CACHE_HOME/pfo/priors``, ``~/.cache/pfo/priors``. A registered name always means the named prior; a file
that happens to carry that name is reached with a path (``./digiface-dcgan64``).
"""

from __future__ import annotations

import os
import shlex
import zipfile
from dataclasses import dataclass
from pathlib import Path

from pfo.artifacts import ArtifactError, file_digest

CACHE_ENV = "PFO_PRIOR_CACHE"


@dataclass(frozen=True)
class NamedPrior:
    """A pretrained prior pfo knows by name: where its file comes from and what it is."""

    name: str
    filename: str  # the file's name in the cache folder
    sha256: str  # of the file, checked before every load
    architecture: str  # what the file holds
    resolution: int  # output images are resolution x resolution
    training_data: str
    licence: str
    source: str  # where the file is published
    fetch: str  # shell command writing the file to {dest} (a quoted path)


NAMED_PRIORS: dict[str, NamedPrior] = {
    prior.name: prior
    for prior in [
        NamedPrior(
            name="digiface-dcgan64",
            filename="digiface_dcgan64_weights.tar",
            sha256="0c3b90b138cfc4e8a73310b9fd5ce2a8f1f3a542a037de277412307fcd28771f",
            architecture="PyTorch-tutorial DCGAN generator (nz 100, ngf 64, RGB, Tanh output), `netG_state_dict`",
            resolution=64,
            training_data="DigiFace-1M (synthetic face renders)",
            licence="MIT",
            source="PyPI package gan-face-generate 1.1.1, file gan_face_generate/weights.tar of its wheel",
            fetch=(
                "pip download gan-face-generate==1.1.1 --no-deps -d /tmp/gfg && unzip -p "
                "/tmp/gfg/gan_face_generate-1.1.1-py3-none-any.whl gan_face_generate/weights.tar > {dest}"
            ),
        ),
    ]
}


def is_prior_name(value: str | os.PathLike) -> bool:
    """Whether ``value`` is a registered prior name (not a path)."""
    return isinstance(value, str) and value in NAMED_PRIORS


def default_cache_dir() -> Path:
    """``$PFO_PRIOR_CACHE``, else ``$XDG_CACHE_HOME/pfo/priors``, else ``~/.cache/pfo/priors``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "pfo" / "priors"


def fetch_command(name: str, cache_dir: str | os.PathLike | None = None) -> str:
    """The one shell command that puts the named prior's file into the cache folder."""
    prior = _registered(name)
    folder = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    dest = shlex.quote(str(folder / prior.filename))
    return f"mkdir -p {shlex.quote(str(folder))} && " + prior.fetch.format(dest=dest)


def _registered(name: str) -> NamedPrior:
    if name not in NAMED_PRIORS:
        raise ValueError(f"no named prior {name!r}; the named priors are {', '.join(sorted(NAMED_PRIORS))}")
    return NAMED_PRIORS[name]


def named_prior_path(name: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """The verified file of the named prior in the cache folder (see the module docstring for which folder).

    Raises FileNotFoundError when it is missing and :class:`~pfo.artifacts.ArtifactError` when it is damaged or
    holds other bytes than the registered ones, each one line with the command that fetches the right file.
    """
    prior = _registered(name)
    folder = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    path = folder / prior.filename
    command = fetch_command(name, folder)
    if not path.is_file():
        hint = f"; or set {CACHE_ENV} to a folder that holds {prior.filename}" if cache_dir is None else ""
        raise FileNotFoundError(
            f"the named prior {name!r} is not in the cache ({path} is missing); fetch it with: {command}{hint}"
        )
    digest = file_digest(path)
    if digest == prior.sha256:
        return path
    if not _intact_zip(path):
        raise ArtifactError(
            f"{path} (named prior {name!r}) is damaged or incomplete; delete it and fetch it again with: {command}"
        )
    raise ArtifactError(
        f"{path} is not the file of the named prior {name!r} (sha256 {digest[:16]}..., expected "
        f"{prior.sha256[:16]}...); replace it with the file this command fetches: {command}"
    )


def _intact_zip(path: Path) -> bool:
    """A torch.save file is a zip; one cut short or overwritten is not, or fails its CRC check."""
    try:
        with zipfile.ZipFile(path) as archive:
            return archive.testzip() is None
    except (zipfile.BadZipFile, OSError, EOFError):
        return False


def load_named_prior(name: str, cache_dir: str | os.PathLike | None = None):
    """The generator of the named prior, in eval mode (see :func:`pfo.models.generator_file.load_prior`)."""
    from pfo.models.generator_file import load_prior

    return load_prior(named_prior_path(name, cache_dir))
