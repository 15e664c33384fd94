"""The generator file: a StyleGAN2 prior (and optionally its discriminator) handed from stage 2 to the attacks.

``train.py fit --config configs/gan_*.yaml`` exports one (the EMA generator, plus the discriminator so fine-tuning
can restart from it). :func:`load_prior` is what attacks call: it also reads pretrained rosinality ``.pt`` and
NVlabs ``.pkl`` checkpoints (through :mod:`pfo.models.stylegan2_import`), so a config names any of them the same way.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import torch

from pfo.artifacts import (
    FORMAT,
    VERSION,
    ArtifactError,
    build_from_config,
    damage,
    load_artifact,
    load_failure,
    save_artifact,
)
from pfo.models.dcgan import DCGANGenerator, is_dcgan_checkpoint, load_dcgan
from pfo.models.named_priors import is_prior_name, named_prior_path
from pfo.models.stylegan2 import Discriminator, Generator
from pfo.models.stylegan2_import import (
    _LEGACY_TORCH_MAGIC,
    SUPPORTED_FORMATS,
    PersistentStub,
    _torch_load,
    load_discriminator,
    load_nvlabs_pkl,
    load_pickle_safely,
    load_rosinality,
)

KIND = "generator"

PRIOR_FORMATS = f"a pfo generator file (what `train.py fit --config configs/gan_*.yaml` exports), {SUPPORTED_FORMATS}"


def _class_config(module: torch.nn.Module) -> dict[str, Any]:
    return {"class_path": f"{type(module).__module__}.{type(module).__qualname__}", "init_args": module.config}


def _cpu_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}


def save_generator(
    G: Generator, path: str | os.PathLike, discriminator: Discriminator | None = None, **meta: Any
) -> Path:
    """Write ``G`` (and ``discriminator``, for fine-tuning) atomically; ``meta`` e.g. ``kimg=...``, ``dataset=...``.

    The file holds the constructor arguments and weights only, so it loads without pfo's training code.
    """
    if discriminator is not None:
        meta["discriminator"] = {**_class_config(discriminator), "state_dict": _cpu_state(discriminator)}
    return save_artifact(
        path,
        KIND,
        _class_config(G),
        _cpu_state(G),
        resolution=G.resolution,
        z_dim=G.z_dim,
        w_dim=G.w_dim,
        num_ws=G.num_ws,
        **meta,
    )


def _load_weights(module: torch.nn.Module, state_dict: Mapping[str, torch.Tensor], path: Path, what: str) -> None:
    missing, unexpected = module.load_state_dict(state_dict, strict=False)
    if missing or unexpected:
        raise ArtifactError(
            f"{path}: {what} weights do not fit the architecture (missing {list(missing)[:3]}, unexpected "
            f"{list(unexpected)[:3]}); the file is damaged or was edited"
        )


def _generator_from_payload(payload: dict, path: Path) -> Generator:
    G = build_from_config(payload["config"], Generator)
    _load_weights(G, payload["state_dict"], path, "generator")
    meta = dict(payload["meta"])
    meta["has_discriminator"] = "discriminator" in meta
    meta.pop("discriminator", None)
    G.meta = meta
    return G.eval()


def _discriminator_from_payload(payload: dict, path: Path) -> Discriminator | None:
    entry = payload["meta"].get("discriminator")
    if entry is None:
        return None
    D = build_from_config({"class_path": entry["class_path"], "init_args": entry["init_args"]}, Discriminator)
    _load_weights(D, entry["state_dict"], path, "discriminator")
    return D.eval()


def load_generator(path: str | os.PathLike) -> Generator:
    """Rebuild the generator of a pfo generator file, in eval mode, with ``G.meta`` holding the file's metadata.

    Parameters keep ``requires_grad=True`` (fine-tuning needs them); an attack that only optimises latents or
    features should call ``G.requires_grad_(False)`` so no parameter gradients are computed.
    """
    return _generator_from_payload(load_artifact(path, KIND), Path(path))


def load_discriminator_from_file(path: str | os.PathLike) -> Discriminator:
    """The discriminator saved beside the generator (``save_generator(..., discriminator=D)``), in eval mode."""
    D = _discriminator_from_payload(load_artifact(path, KIND), Path(path))
    if D is None:
        raise ArtifactError(f"{path} holds no discriminator; it was exported without one")
    return D


class PriorNetworks(NamedTuple):
    """What a prior checkpoint holds: the sampling generator, and where present the training G and D."""

    G_ema: Generator
    G: Generator | None
    D: Discriminator | None


def _torch_payload(path: Path) -> Any:
    """The object in a torch.save file (zip, or the pre-1.6 format of many shared rosinality checkpoints), or
    ``None`` when ``path`` is not one (NVlabs pickles)."""
    with open(path, "rb") as f:
        legacy = f.read(len(_LEGACY_TORCH_MAGIC)) == _LEGACY_TORCH_MAGIC
    if not (legacy or zipfile.is_zipfile(path)):
        return None
    try:
        return _torch_load(path)  # weights_only, plus argparse.Namespace (rosinality's training checkpoints)
    except Exception as error:  # a damaged or code-carrying file: not something we load
        raise ArtifactError(f"{load_failure(path, 'a StyleGAN2 prior', error)}; expected {PRIOR_FORMATS}") from error


def _is_rosinality(obj: Any) -> bool:
    return isinstance(obj, Mapping) and ("g_ema" in obj or "style.1.weight" in obj)


def _foreign(path: Path, what: str) -> ArtifactError:
    return ArtifactError(f"{path} is {what}, not a StyleGAN2 prior; expected {PRIOR_FORMATS}")


def _read(path: Path) -> tuple[str, Any]:
    """``('pfo', payload)``, ``('rosinality', checkpoint)`` or ``('nvlabs', data)``, each file read once; anything
    else raises :class:`~pfo.artifacts.ArtifactError` naming the formats we read."""
    if not path.is_file():
        raise FileNotFoundError(f"no prior file at {path}")
    if (why := damage(path)) is not None:
        raise ArtifactError(f"{path} is damaged or incomplete ({why}); copy or write it again")
    obj = _torch_payload(path)
    if isinstance(obj, Mapping) and obj.get("format") == FORMAT:
        if obj.get("kind") != KIND:
            raise _foreign(path, f"a pfo {obj.get('kind')} file")
        if obj.get("version", 0) > VERSION:
            raise ArtifactError(f"{path} was written by a newer pfo (format version {obj['version']}); upgrade pfo")
        return "pfo", obj
    if obj is not None:
        if _is_rosinality(obj):
            return "rosinality", obj
        if is_dcgan_checkpoint(obj):
            return "dcgan", obj
        if isinstance(obj, Mapping) and "pytorch-lightning_version" in obj:
            raise _foreign(path, "a Lightning checkpoint (its run folder holds the exported generator.pt)")
        keys = sorted(map(str, obj))[:8] if isinstance(obj, Mapping) else type(obj).__name__
        raise _foreign(path, f"a torch file holding {keys}")
    try:
        data = load_pickle_safely(path)
    except Exception as error:  # malformed or foreign pickles fail in many ways; all mean "not a prior"
        if isinstance(error, EOFError) or "truncated" in str(error):  # a pickle that stops part-way
            raise ArtifactError(f"{path} is damaged or incomplete (the pickle stops part-way)") from error
        raise _foreign(path, f"neither a torch file nor a readable NVlabs pickle ({str(error)[:200]})") from error
    if not (isinstance(data, Mapping) and any(isinstance(v, PersistentStub) for v in data.values())):
        raise _foreign(path, "a pickle without NVlabs networks")
    return "nvlabs", data


def load_prior(path: str | os.PathLike, **overrides: Any) -> Generator | DCGANGenerator:
    """The sampling generator of any supported prior file (pfo generator file, rosinality ``.pt``, NVlabs
    ``.pkl``, tutorial DCGAN ``netG_state_dict`` file, detected by content; or a named prior such as
    ``digiface-dcgan64``, see :mod:`pfo.models.named_priors`), in eval mode; raises
    :class:`~pfo.artifacts.ArtifactError` naming the formats for anything else.

    ``overrides`` reach the constructors of imported generators (e.g. ``lr_mlp``, ``modconv``); a pfo file carries
    its own configuration. As with :func:`load_generator`, parameters keep ``requires_grad=True``.
    """
    path = named_prior_path(path) if is_prior_name(path) else Path(path)  # pfo.models.named_priors
    kind, obj = _read(path)
    if kind == "dcgan":
        return load_dcgan(obj, str(path))
    if kind == "pfo":
        return _generator_from_payload(obj, path)
    if kind == "rosinality":
        return load_rosinality(obj, **overrides)
    return load_nvlabs_pkl(obj, **overrides)


def load_prior_networks(path: str | os.PathLike, **overrides: Any) -> PriorNetworks:
    """Every network a prior file holds, in eval mode, whatever its format (what fine-tuning starts from).

    ``G`` is the training generator where the file has one (rosinality ``g``, NVlabs ``G``; a pfo file keeps only
    the EMA generator), ``D`` the discriminator where present.
    """
    path = Path(path)
    kind, obj = _read(path)
    if kind == "dcgan":
        raise ArtifactError(f"{path} is a DCGAN generator: attacks use it as a prior, but only StyleGAN2 is fine-tuned")
    if kind == "pfo":
        return PriorNetworks(_generator_from_payload(obj, path), None, _discriminator_from_payload(obj, path))
    if kind == "rosinality":
        G = load_rosinality(obj, which="g", **overrides) if "g" in obj else None
        return PriorNetworks(load_rosinality(obj, **overrides), G, load_discriminator(obj) if "d" in obj else None)
    G = load_nvlabs_pkl(obj, which="G", **overrides) if isinstance(obj.get("G"), PersistentStub) else None
    D = load_discriminator(obj) if isinstance(obj.get("D"), PersistentStub) else None
    return PriorNetworks(load_nvlabs_pkl(obj, **overrides), G, D)
