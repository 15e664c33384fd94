"""Import pretrained StyleGAN2 weights into :mod:`pfo.models.stylegan2`, without running foreign code.

Two formats are understood:

- rosinality/stylegan2-pytorch ``.pt`` checkpoints: a ``torch.save``'d dict holding the generator state dict
  under ``g_ema`` (often also ``g``, ``d``, ``latent_avg``). Read with ``torch.load(weights_only=True)``.
- NVlabs/stylegan2-ada-pytorch network pickles (``.pkl``): a pickle of ``{'G', 'D', 'G_ema', ...}`` whose
  networks are "persistent" objects carrying the *source code* of their module, which NVlabs' loader
  ``exec``s. Here :class:`RestrictedUnpickler` rebuilds only tensors and plain containers and turns every
  persistent object into an inert :class:`PersistentStub` holding its saved state; the source is never run.

Class-conditional NVlabs generators (``c_dim > 0``, e.g. the CIFAR-10 network) import too (rule N2); their
discriminators do not. Our networks use NVlabs' parameter names, so a pickle maps by name; rosinality's names and
storage conventions are translated rule by rule (see ``_rosinality_generator_to_pfo``). The architecture is inferred
from tensor shapes; keyword overrides reach the constructor (e.g. ``lr_mlp``, which no shape reveals).

Public API: :func:`import_generator` (any supported file), :func:`load_rosinality`, :func:`load_nvlabs_pkl`,
:func:`load_discriminator`, :func:`load_pickle_safely`, :class:`RestrictedUnpickler`.
"""

from __future__ import annotations

import argparse
import io
import math
import os
import pickle
import re
import struct
import warnings
import zipfile
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any, BinaryIO

import torch
from torch import Tensor

from pfo.artifacts import damage, load_failure
from pfo.models.stylegan2 import Discriminator, Generator

PathLike = str | os.PathLike

SUPPORTED_FORMATS = (
    "a rosinality/stylegan2-pytorch checkpoint (.pt: a torch.save'd dict with a 'g_ema' generator state "
    "dict) or an NVlabs/stylegan2-ada-pytorch network pickle (.pkl: a pickle of {'G', 'D', 'G_ema', ...})"
)

# ==========================================================================================================
# Restricted unpickling.
#
# A pickle is a program: every GLOBAL/STACK_GLOBAL opcode names a callable that REDUCE/NEWOBJ/INST/OBJ then
# calls with pickled arguments. All of those go through ``find_class``, so an allow-list there decides what
# can run at all. Everything allowed below is either a pure container, or a wrapper written here that checks
# its arguments and then calls torch's own tensor-rebuild helpers.


class PersistentStub:
    """Inert stand-in for an NVlabs persistent object: its class name and pickled state, never its code.

    ``state`` is the object's ``__dict__`` as pickled: for a ``torch.nn.Module`` that includes
    ``_parameters``, ``_buffers``, ``_modules`` (submodules are stubs again) and NVlabs' ``_init_kwargs``.
    """

    def __init__(self, class_name: str, state: dict[str, Any], version: Any = None) -> None:
        self.class_name = class_name
        self.state = state
        self.version = version

    def __setstate__(self, state: Any) -> None:
        # Only reachable from a hand-crafted pickle; keep the data, never treat it as attributes.
        self.__dict__["extra_state"] = state

    def __repr__(self) -> str:
        return f"PersistentStub({self.class_name!r})"

    @property
    def init_kwargs(self) -> dict[str, Any]:
        """Keyword arguments the object was constructed with (NVlabs records them), or ``{}``."""
        kwargs = self.state.get("_init_kwargs")
        return dict(kwargs) if isinstance(kwargs, Mapping) else {}

    def attr(self, name: str, default: Any = None) -> Any:
        """A plain attribute of the pickled object (e.g. ``group_size``), or ``default``."""
        return self.state.get(name, default)

    def submodule(self, dotted: str) -> PersistentStub | None:
        """The stub at ``dotted`` (``'synthesis.b4'``), or ``None`` when absent."""
        node: PersistentStub | None = self
        for part in dotted.split("."):
            modules = node.state.get("_modules") or {}
            node = modules.get(part)
            if not isinstance(node, PersistentStub):
                return None
        return node

    def tensors(self, prefix: str = "") -> dict[str, Tensor]:
        """Flatten parameters and buffers of the whole tree, named like ``Module.state_dict()``."""
        out: dict[str, Tensor] = {}
        for group in ("_parameters", "_buffers"):
            for name, value in (self.state.get(group) or {}).items():
                if value is None:
                    continue
                if not isinstance(value, Tensor):
                    raise ValueError(f"{prefix}{name} in {self.class_name} is {type(value).__name__}, not a tensor")
                out[prefix + name] = value.detach()
        for name, child in (self.state.get("_modules") or {}).items():
            if child is None:
                continue
            if not isinstance(child, PersistentStub):
                raise ValueError(
                    f"submodule {prefix}{name} of {self.class_name} is a {type(child).__name__}, not a "
                    "persistent NVlabs object; this pickle is not a stylegan2-ada-pytorch network"
                )
            out.update(child.tensors(f"{prefix}{name}."))
        return out


class _EasyDict(dict):
    """Stand-in for ``dnnlib.util.EasyDict`` (a dict with attribute access): loaded as a plain dict."""

    def __setstate__(self, state: Any) -> None:
        pass  # an EasyDict has no state besides its items


class _Inert:
    """Placeholder for an allowed-but-unneeded object (e.g. a numpy array): remembers only what it was."""

    def __init__(self, what: str) -> None:
        self.what = what

    def __setstate__(self, state: Any) -> None:
        pass

    def __repr__(self) -> str:
        return f"<{self.what} not loaded>"


class _NumpyDType:
    """Stand-in for ``numpy.dtype``: keeps the type code and byte order so scalars can be decoded."""

    def __init__(self, code: Any = "", *_: Any) -> None:
        self.code = str(code)
        self.byteorder = "<"

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) > 1 and state[1] in ("<", ">"):
            self.byteorder = state[1]


_NUMPY_SCALAR_CODES = {"f8": "d", "f4": "f", "i8": "q", "i4": "i", "u8": "Q", "u4": "I", "b1": "?"}


def _numpy_scalar(dtype: Any, data: Any = b"") -> Any:
    """Decode a pickled numpy scalar (NVlabs keeps gains like ``np.sqrt(2)``) with ``struct``, not numpy."""
    if isinstance(dtype, _NumpyDType) and isinstance(data, bytes) and dtype.code in _NUMPY_SCALAR_CODES:
        fmt = ("<" if dtype.byteorder != ">" else ">") + _NUMPY_SCALAR_CODES[dtype.code]
        if struct.calcsize(fmt) == len(data):
            return struct.unpack(fmt, data)[0]
    return _Inert("numpy scalar")


def _numpy_array(*_: Any) -> _Inert:
    return _Inert("numpy array")


class _TypeTag:
    """What ``torch.Tensor``/``torch.nn.Parameter`` unpickle to: a tag, not the (callable) class."""

    def __init__(self, name: str) -> None:
        self.name = name


_TENSOR = _TypeTag("Tensor")
_PARAMETER = _TypeTag("Parameter")


def _check_storage(storage: Any) -> None:
    if not isinstance(storage, (torch.storage.TypedStorage, torch.UntypedStorage)):
        raise pickle.UnpicklingError(f"tensor rebuilt from a {type(storage).__name__}, not a torch storage")


def _check_ints(name: str, value: Any) -> tuple[int, ...]:
    if not isinstance(value, (tuple, list)) or not all(isinstance(v, int) for v in value):
        raise pickle.UnpicklingError(f"tensor {name} must be a tuple of ints, got {value!r}")
    return tuple(value)


def _rebuild_tensor(storage: Any, offset: Any, size: Any, stride: Any, *_: Any) -> Tensor:
    """Checked ``torch._utils._rebuild_tensor_v2``; drops pickled backward hooks and metadata."""
    _check_storage(storage)
    if not isinstance(offset, int):
        raise pickle.UnpicklingError("tensor storage offset must be an int")
    size, stride = _check_ints("size", size), _check_ints("stride", stride)
    return torch._utils._rebuild_tensor_v2(storage, offset, size, stride, False, OrderedDict())


def _rebuild_tensor_v3(
    storage: Any, offset: Any, size: Any, stride: Any, _rg: Any, _hooks: Any, dtype: Any, *_: Any
) -> Tensor:
    """Checked ``torch._utils._rebuild_tensor_v3`` (explicit dtype)."""
    _check_storage(storage)
    if not isinstance(dtype, torch.dtype) or not isinstance(offset, int):
        raise pickle.UnpicklingError("bad tensor dtype or offset")
    size, stride = _check_ints("size", size), _check_ints("stride", stride)
    return torch._utils._rebuild_tensor_v3(storage, offset, size, stride, False, OrderedDict(), dtype)


def _rebuild_parameter(data: Any, requires_grad: Any = False, *_: Any) -> Tensor:
    """Parameters are loaded as ``nn.Parameter``; pickled hooks and extra state are dropped."""
    if not isinstance(data, Tensor):
        raise pickle.UnpicklingError("parameter data is not a tensor")
    return torch.nn.Parameter(data, requires_grad=bool(requires_grad))


_REBUILDERS = (_rebuild_tensor, _rebuild_tensor_v3, _rebuild_parameter)


def _rebuild_from_type(func: Any, new_type: Any, args: Any, _state: Any = None) -> Tensor:
    """``torch._tensor._rebuild_from_type_v2`` restricted to plain tensors and parameters."""
    if func not in _REBUILDERS or new_type not in (_TENSOR, _PARAMETER) or not isinstance(args, tuple):
        raise pickle.UnpicklingError("refusing to rebuild a tensor of an unknown subclass")
    t = func(*args)
    return torch.nn.Parameter(t, requires_grad=False) if new_type is _PARAMETER else t


def _load_storage_bytes(data: Any) -> Any:
    """``torch.storage._load_from_bytes`` (how ``pickle.dump`` stores a storage), but ``weights_only``."""
    if not isinstance(data, (bytes, bytearray)):
        raise pickle.UnpicklingError("storage payload is not bytes")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TypedStorage deprecation notices
        storage = torch.load(io.BytesIO(bytes(data)), map_location="cpu", weights_only=True)
    _check_storage(storage)
    return storage


def _persistent_stand_in(meta: Any) -> PersistentStub:
    """Replacement for ``torch_utils.persistence._reconstruct_persistent_obj``: keeps ``meta['state']`` and
    the class name; ``meta['module_src']`` (the code NVlabs would ``exec``) is dropped unread."""
    if not isinstance(meta, Mapping):
        raise pickle.UnpicklingError("persistent object metadata is not a dict")
    if meta.get("type", "class") != "class":
        raise pickle.UnpicklingError(f"unsupported persistent object type {meta.get('type')!r}")
    class_name, state = meta.get("class_name"), meta.get("state")
    if not isinstance(class_name, str) or not isinstance(state, Mapping):
        raise pickle.UnpicklingError("persistent object without a class name or state dict")
    return PersistentStub(class_name, dict(state), meta.get("version"))


def _codecs_encode(text: Any, encoding: Any = "utf-8") -> bytes:
    """Protocol-2 pickles store ``bytes`` as ``_codecs.encode(str, 'latin1')``; nothing else is allowed."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError("_codecs.encode is only allowed for latin1 byte strings")
    return text.encode("latin1")


def _reconstructor(cls: Any, base: Any, state: Any = None) -> Any:
    """``copyreg._reconstructor`` (protocol 0/1 objects), restricted to the dict stand-ins above."""
    if cls is _EasyDict and base is dict:
        return _EasyDict(state or {})
    raise pickle.UnpicklingError("copyreg._reconstructor is only allowed for EasyDict")


_TORCH_DTYPES = {
    name: getattr(torch, name)
    for name in ("float64", "float32", "float16", "bfloat16", "int64", "int32", "int16", "int8", "uint8")
}

_TORCH_DTYPES["bool"] = torch.bool

# (module, name) -> what the pickle gets instead. Anything not listed is refused.
_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v3"): _rebuild_tensor_v3,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type,
    ("torch._tensor", "Tensor"): _TENSOR,
    ("torch", "Tensor"): _TENSOR,
    ("torch.nn.parameter", "Parameter"): _PARAMETER,
    ("torch.storage", "_load_from_bytes"): _load_storage_bytes,
    ("collections", "OrderedDict"): OrderedDict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("_codecs", "encode"): _codecs_encode,
    ("copyreg", "_reconstructor"): _reconstructor,
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): _persistent_stand_in,
    ("dnnlib.util", "EasyDict"): _EasyDict,
    ("dnnlib", "EasyDict"): _EasyDict,
    # NVlabs modules keep numpy floats such as weight_gain = lr / np.sqrt(fan_in) in their state.
    ("numpy", "dtype"): _NumpyDType,
    ("numpy.core.multiarray", "scalar"): _numpy_scalar,
    ("numpy._core.multiarray", "scalar"): _numpy_scalar,
    ("numpy.core.multiarray", "_reconstruct"): _numpy_array,
    ("numpy._core.multiarray", "_reconstruct"): _numpy_array,
    ("numpy", "ndarray"): _Inert,
}
_MODULE_ALIASES = {"__builtin__": "builtins", "copy_reg": "copyreg"}  # Python 2 names in protocol <= 2


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that rebuilds tensors, storages and plain containers and refuses every other global.

    NVlabs persistent objects become :class:`PersistentStub` (their embedded source is never executed),
    ``dnnlib.EasyDict`` becomes a dict, numpy scalars are decoded with ``struct`` and numpy arrays become
    inert placeholders. Persistent ids (``torch.save``'s zip format) are refused; use ``torch.load`` there.
    """

    def find_class(self, module: str, name: str) -> Any:
        module = _MODULE_ALIASES.get(module, module)
        if (module, name) in _ALLOWED_GLOBALS:
            return _ALLOWED_GLOBALS[(module, name)]
        if module == "torch" and name in _TORCH_DTYPES:
            return _TORCH_DTYPES[name]
        if module.startswith("dnnlib.tflib"):
            raise pickle.UnpicklingError(
                f"{module}.{name} is a TensorFlow StyleGAN2 network; convert the pickle with "
                "stylegan2-ada-pytorch's legacy.py (or rosinality's convert_weight.py) first"
            )
        raise pickle.UnpicklingError(
            f"refusing to load global {module}.{name}: only tensors, plain containers and NVlabs persistent "
            "networks (read as inert data) are allowed"
        )

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("persistent ids are not supported by the restricted unpickler")


def load_pickle_safely(path_or_file: PathLike | BinaryIO) -> Any:
    """Unpickle with :class:`RestrictedUnpickler` (no code from the file runs)."""
    if hasattr(path_or_file, "read"):
        return RestrictedUnpickler(path_or_file).load()
    with open(path_or_file, "rb") as f:
        return RestrictedUnpickler(f).load()


# ==========================================================================================================
# Architecture inference (on a state dict already in our naming).


def _infer_channel_rule(channels: Mapping[int, int]) -> tuple[int, int]:
    """Find (channel_base, channel_max) with ``min(channel_base // r, channel_max) == channels[r]`` for all r.

    Below the cap, ``base // r == c`` means ``base`` in [c*r, c*r + r - 1]; at the cap, ``base >= cap*r``.
    NVlabs' usual 32768 / 16384 are preferred when they fit, so configs read back as the familiar numbers.
    """
    cmax = max(channels.values())
    lo, hi = 1, math.inf
    for r, c in channels.items():
        if c < cmax:
            lo, hi = max(lo, c * r), min(hi, c * r + r - 1)
        else:
            lo = max(lo, cmax * r)
    if lo > hi:
        raise ValueError(
            f"channel counts {dict(sorted(channels.items()))} do not follow min(channel_base // res, "
            "channel_max) for any channel_base; our generator cannot represent this checkpoint"
        )
    for base in (32768, 16384):
        if lo <= base <= hi:
            return base, cmax
    return int(lo), cmax


def _indices(keys: Any, pattern: str) -> list[int]:
    return sorted(int(m.group(1)) for k in keys if (m := re.fullmatch(pattern, k)))


def _infer_generator_config(sd: Mapping[str, Tensor]) -> dict[str, Any]:
    """Generator constructor arguments implied by the shapes of a state dict in our naming."""
    fcs = _indices(sd, r"mapping\.fc(\d+)\.weight")
    ress = _indices(sd, r"synthesis\.b(\d+)\.conv1\.weight")
    if not fcs or not ress:
        raise ValueError("state dict has no mapping.fc*/synthesis.b*.conv1 weights: not a StyleGAN2 generator")
    if fcs != list(range(len(fcs))) or ress != [2**i for i in range(2, 2 + len(ress))]:
        raise ValueError(f"incomplete generator: mapping layers {fcs}, synthesis blocks {ress}")
    resolution = ress[-1]
    base, cmax = _infer_channel_rule({r: int(sd[f"synthesis.b{r}.conv1.weight"].shape[0]) for r in ress})
    w_dim = int(sd[f"mapping.fc{fcs[-1]}.weight"].shape[0])
    # A conditional mapping's fc0 reads z and the embedded label side by side (rule N2).
    embed = sd.get("mapping.embed.weight")
    c_dim, embedded = (int(embed.shape[1]), int(embed.shape[0])) if embed is not None else (0, 0)
    if embed is not None and embedded != w_dim:
        raise ValueError(
            f"the label embedding has {embedded} features but w_dim is {w_dim}; our conditional generator embeds "
            "labels into w_dim features (NVlabs' default embed_features=None)"
        )
    z_dim = int(sd["mapping.fc0.weight"].shape[1]) - embedded
    if z_dim < 1:
        raise ValueError(
            f"mapping.fc0 reads {z_dim + embedded} features, too few for a {embedded}-feature label "
            "embedding and a latent z; this generator has no latent input and is not supported"
        )
    config = dict(
        z_dim=z_dim,
        w_dim=w_dim,
        resolution=resolution,
        img_channels=int(sd[f"synthesis.b{resolution}.torgb.weight"].shape[0]),
        n_mlp=len(fcs),
        lr_mlp=0.01,  # not visible in the weights; both projects default to 0.01
        channel_base=base,
        channel_max=cmax,
    )
    if c_dim:
        config["c_dim"] = c_dim
    return config


def _infer_discriminator_config(sd: Mapping[str, Tensor]) -> dict[str, Any]:
    """Discriminator constructor arguments implied by the shapes of a state dict in our naming."""
    ress = _indices(sd, r"b(\d+)\.conv0\.weight")
    if not ress or "b4.conv.weight" not in sd:
        raise ValueError("state dict has no b*.conv0 / b4.conv weights: not a StyleGAN2 discriminator")
    resolution = ress[-1]
    if ress != [2**i for i in range(3, 3 + len(ress))]:
        raise ValueError(f"incomplete discriminator: blocks {ress}")
    channels = {r: int(sd[f"b{r}.conv0.weight"].shape[0]) for r in ress}
    channels[4] = int(sd["b4.conv.weight"].shape[0])
    base, cmax = _infer_channel_rule(channels)
    return dict(
        resolution=resolution,
        img_channels=int(sd[f"b{resolution}.fromrgb.weight"].shape[1]),
        channel_base=base,
        channel_max=cmax,
        mbstd_group_size=4,
        mbstd_num_channels=int(sd["b4.conv.weight"].shape[1]) - channels[4],
    )


def _build_and_load(cls: type, config: dict[str, Any], sd: dict[str, Tensor], source: str) -> Any:
    """Construct ``cls(**config)`` and copy ``sd`` in, with readable errors for any mismatch.

    Every parameter must come from the checkpoint; buffers it lacks keep their constructed values (only
    ``mapping.w_avg`` can be missing, handled by the caller).
    """
    try:
        model = cls(**config)
    except (TypeError, ValueError) as e:
        raise ValueError(f"cannot build {cls.__name__}({config}) for {source}: {e}") from e
    own = model.state_dict()
    unexpected = sorted(set(sd) - set(own))
    missing = sorted(k for k in own if k not in sd and k != "mapping.w_avg")
    wrong = [
        f"{k}: checkpoint {tuple(v.shape)} vs ours {tuple(own[k].shape)}"
        for k, v in sd.items()
        if k in own and v.shape != own[k].shape
    ]
    if unexpected or missing or wrong:
        raise ValueError(
            f"{source} does not fit {cls.__name__}({config}): "
            + "; ".join(
                f"{label}: {items[:6]}{' ...' if len(items) > 6 else ''}"
                for label, items in (("unexpected", unexpected), ("missing", missing), ("shape", wrong))
                if items
            )
        )
    merged = {k: sd.get(k, v).to(v.dtype) for k, v in own.items()}
    model.load_state_dict(merged, strict=True)
    return model.eval()


# ==========================================================================================================
# rosinality/stylegan2-pytorch.
#
# Rules, all read in rosinality model.py (stylegan2-pytorch @ bef283a) against NVlabs training/networks.py
# (stylegan2-ada-pytorch @ d72cc7d):
#  R1 mapping: ``style.0`` is PixelNorm (no weights), so ``style.{i+1}`` -> ``mapping.fc{i}``. EqualLinear
#     stores weight N(0,1)/lr_mul, applies lr_mul/sqrt(in) and bias*lr_mul (model.py:138-159), and
#     fused_leaky_relu is lrelu(x+b, 0.2)*sqrt(2): identical to FullyConnectedLayer (networks.py:100-117),
#     so copied unchanged.
#  R2 constant: ConstantInput.input [1, C, 4, 4] (model.py:323) -> ``b4.const`` [C, 4, 4] (drop dim 0).
#  R3 layer order: ``conv1``/``to_rgb1`` are the 4x4 block; for block b{2**(j+3)}: ``convs.{2j}`` is the
#     upsampling conv0, ``convs.{2j+1}`` conv1, ``to_rgbs.{j}`` torgb (model.py:430-471).
#  R4 modulated conv weight [1, O, I, k, k] (model.py:211) -> [O, I, k, k]. Scale 1/sqrt(I*k*k) then
#     demodulation (model.py:258-263); NVlabs skips the scale (networks.py:55-60) but demodulation cancels
#     any constant factor (they differ only in where eps=1e-8 enters), so the weight is copied as is.
#  R5 the up-sampling conv0 is NOT flipped or transposed: rosinality runs conv_transpose2d(stride 2,
#     padding 0) on the stored weight then Blur(k*4, pad (1, 1)) (model.py:191-197, 269-282); NVlabs'
#     conv2d_resample for up=2, k=3, filter 4, padding 1 computes px0=1+2-2=1, px1=1+1-1=1, pxt=0, runs
#     conv_transpose2d without a flip (flip_weight=False in SynthesisLayer turns into the wrapper's
#     flip_weight=True) and then upfirdn2d(pad 1, gain 4) (conv2d_resample.py:95-139, networks.py:298).
#     Both importers from TF flip Conv0_up identically (convert_weight.py:34-36,176; legacy.py:184).
#  R6 modulation: ``conv.modulation`` EqualLinear(bias_init=1) (model.py:215) -> ``affine`` (bias init 1,
#     networks.py:278); both hold TF's mod_bias+1 (convert_weight.py:24, legacy.py:183).
#  R7 bias: FusedLeakyReLU's ``activate.bias`` [O] (model.py:358) -> ``bias``; both add it after the noise
#     and apply lrelu*sqrt(2) (model.py:361-364, networks.py:292-304).
#  R8 noise: NoiseInjection.weight [1] (model.py:309) -> ``noise_strength`` [] ; ``noises.noise_{i}``
#     [1, 1, r, r] -> ``noise_const`` [r, r] with noise_0 -> b4.conv1, noise_{2j+1} -> b{..}.conv0,
#     noise_{2j+2} -> b{..}.conv1 (model.py:446-449, 555-560; legacy.py:186,192: noise{2*log2(r)-5|4}).
#  R9 ToRGB: weight [1, C, I, 1, 1] -> [C, I, 1, 1]; bias [1, C, 1, 1] -> [C]; no demodulation and the
#     1/sqrt(I) scale on the weight equals NVlabs' on the styles (model.py:376-381, networks.py:318-322).
#  R10 ``latent_avg`` [w_dim] (convert_weight.py:252-254) -> ``mapping.w_avg``.
#  R11 ``*.blur.kernel`` / ``to_rgbs.*.upsample.kernel`` are fixed [1,3,3,1] filter buffers: checked, dropped.


def _expected_blur(scale: float) -> Tensor:
    k = torch.tensor([1.0, 3.0, 3.0, 1.0])
    return torch.outer(k, k) / 64.0 * scale


def _check_filter(key: str, value: Tensor, scale: float) -> None:
    if value.shape != (4, 4) or not torch.allclose(value.float(), _expected_blur(scale)):
        raise ValueError(f"{key} is not the [1, 3, 3, 1] blur StyleGAN2 uses; this checkpoint is not supported")


def _rosinality_layer_names(sd: Mapping[str, Any]) -> dict[str, str]:
    """rosinality layer prefix -> our prefix for every synthesis layer in ``sd`` (rule R3)."""
    names = {"conv1": "synthesis.b4.conv1", "to_rgb1": "synthesis.b4.torgb"}
    for j in _indices(sd, r"to_rgbs\.(\d+)\.conv\.weight"):
        res = 2 ** (j + 3)
        names[f"convs.{2 * j}"] = f"synthesis.b{res}.conv0"
        names[f"convs.{2 * j + 1}"] = f"synthesis.b{res}.conv1"
        names[f"to_rgbs.{j}"] = f"synthesis.b{res}.torgb"
    return names


def _noise_target(i: int) -> str:
    """Rule R8: which of our layers reads rosinality's ``noises.noise_{i}``."""
    if i == 0:
        return "synthesis.b4.conv1"
    res = 2 ** ((i + 5) // 2)
    return f"synthesis.b{res}.conv{0 if i % 2 else 1}"


def _rosinality_generator_to_pfo(sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Translate a rosinality ``Generator.state_dict()`` to our names and layouts (rules R1-R11)."""
    layers = _rosinality_layer_names(sd)
    out: dict[str, Tensor] = {}
    for key, value in sd.items():
        value = value.detach()
        if m := re.fullmatch(r"style\.(\d+)\.(weight|bias)", key):  # R1
            out[f"mapping.fc{int(m.group(1)) - 1}.{m.group(2)}"] = value
        elif key == "input.input":  # R2
            out["synthesis.b4.const"] = value.reshape(value.shape[1:])
        elif m := re.fullmatch(r"noises\.noise_(\d+)", key):  # R8
            out[f"{_noise_target(int(m.group(1)))}.noise_const"] = value.reshape(value.shape[-2:])
        elif m := re.fullmatch(r"(conv1|convs\.\d+|to_rgb1|to_rgbs\.\d+)\.(.+)", key):
            if m.group(1) not in layers:
                raise ValueError(f"{key}: layer without a matching to_rgbs entry (truncated checkpoint?)")
            ours, rest = layers[m.group(1)], m.group(2)
            if rest == "conv.weight":  # R4, R5, R9
                out[f"{ours}.weight"] = value.reshape(value.shape[1:])
            elif rest in ("conv.modulation.weight", "conv.modulation.bias"):  # R6
                out[f"{ours}.affine.{rest.rsplit('.', 1)[1]}"] = value
            elif rest == "activate.bias":  # R7
                out[f"{ours}.bias"] = value
            elif rest == "noise.weight":  # R8
                out[f"{ours}.noise_strength"] = value.reshape(())
            elif rest == "bias" and ours.endswith("torgb"):  # R9
                out[f"{ours}.bias"] = value.flatten()
            elif rest in ("conv.blur.kernel", "upsample.kernel"):  # R11
                _check_filter(key, value, 4.0)
            else:
                raise ValueError(f"unrecognised rosinality generator key {key!r}")
        else:
            raise ValueError(f"unrecognised rosinality generator key {key!r} (SWAGAN or another variant?)")
    return out


# Discriminator rules (model.py:573-697 vs networks.py:504-727):
#  D1 ``convs.0`` = ConvLayer(3, C, 1): EqualConv2d ``convs.0.0.weight`` + FusedLeakyReLU ``convs.0.1.bias``
#     -> ``b{R}.fromrgb``. EqualConv2d's 1/sqrt(I*k*k) equals Conv2dLayer's weight_gain.
#  D2 ResBlock ``convs.{n}`` (n >= 1) is block b{R / 2**(n-1)}: ``conv1.0.weight``/``conv1.1.bias`` -> conv0;
#     ``conv2`` = [Blur, EqualConv2d, FusedLeakyReLU] so ``conv2.1.weight``/``conv2.2.bias`` -> conv1;
#     ``skip`` = [Blur, EqualConv2d(bias=False)] so ``skip.1.weight`` -> skip. (out+skip)/sqrt(2) equals
#     NVlabs' sqrt(0.5) gain on both branches; blur pads (2, 2) / (1, 1) then stride 2 as NVlabs' down=2.
#  D3 ``final_conv.0.weight``/``final_conv.1.bias`` -> ``b4.conv``; ``final_linear.0`` -> ``b4.fc``;
#     ``final_linear.1`` -> ``b4.out``. Minibatch std: group 4, 1 channel, same grouping (model.py:670-690).


def _rosinality_discriminator_to_pfo(sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Translate a rosinality ``Discriminator.state_dict()`` to our names (rules D1-D3)."""
    blocks = _indices(sd, r"convs\.(\d+)\.conv1\.0\.weight")
    resolution = 4 * 2 ** len(blocks)
    fixed = {
        "convs.0.0.weight": f"b{resolution}.fromrgb.weight",
        "convs.0.1.bias": f"b{resolution}.fromrgb.bias",
        "final_conv.0.weight": "b4.conv.weight",
        "final_conv.1.bias": "b4.conv.bias",
        "final_linear.0.weight": "b4.fc.weight",
        "final_linear.0.bias": "b4.fc.bias",
        "final_linear.1.weight": "b4.out.weight",
        "final_linear.1.bias": "b4.out.bias",
    }
    inner = {
        "conv1.0.weight": "conv0.weight",
        "conv1.1.bias": "conv0.bias",
        "conv2.1.weight": "conv1.weight",
        "conv2.2.bias": "conv1.bias",
        "skip.1.weight": "skip.weight",
    }
    out: dict[str, Tensor] = {}
    for key, value in sd.items():
        value = value.detach()
        if key in fixed:
            out[fixed[key]] = value
        elif (m := re.fullmatch(r"convs\.(\d+)\.(.+)", key)) and int(m.group(1)) >= 1:
            res = resolution // 2 ** (int(m.group(1)) - 1)
            if m.group(2) in inner:
                out[f"b{res}.{inner[m.group(2)]}"] = value
            elif m.group(2) in ("conv2.0.kernel", "skip.0.kernel"):
                _check_filter(key, value, 1.0)
            else:
                raise ValueError(f"unrecognised rosinality discriminator key {key!r}")
        else:
            raise ValueError(f"unrecognised rosinality discriminator key {key!r}")
    return out


def _torch_load(path: PathLike) -> Any:
    """``torch.load(weights_only=True)``; rosinality's training checkpoints also pickle ``argparse.Namespace``
    (train.py saves ``args``), a plain attribute bag, which is allowed on top of the tensor globals."""
    with torch.serialization.safe_globals([argparse.Namespace]):
        return torch.load(path, map_location="cpu", weights_only=True)


def _rosinality_checkpoint(path_or_dict: PathLike | Mapping[str, Any]) -> Mapping[str, Any]:
    ckpt = path_or_dict if isinstance(path_or_dict, Mapping) else _torch_load(path_or_dict)
    if not isinstance(ckpt, Mapping):
        raise ValueError(f"expected {SUPPORTED_FORMATS}; got a {type(ckpt).__name__}")
    if "style.1.weight" in ckpt:  # a bare generator state dict
        return {"g_ema": ckpt}
    return ckpt


def _estimate_w_avg(G: Generator, samples: int, seed: int = 0) -> None:
    """Average w over ``samples`` z ~ N(0, I) (what rosinality's ``mean_latent`` does), in chunks."""
    gen = torch.Generator().manual_seed(seed)
    total = torch.zeros(G.w_dim)
    with torch.no_grad():
        for start in range(0, samples, 1024):
            z = torch.randn(min(1024, samples - start), G.z_dim, generator=gen)
            total += G.mapping(z).sum(dim=0)
    G.mapping.w_avg.copy_(total / samples)


def load_rosinality(
    path_or_dict: PathLike | Mapping[str, Any],
    which: str = "g_ema",
    w_avg_samples: int = 4096,
    **overrides: Any,
) -> Generator:
    """Build our :class:`Generator` from a rosinality/stylegan2-pytorch checkpoint.

    ``which`` picks ``g_ema`` (the averaged generator everybody samples from) or ``g``. ``latent_avg`` becomes
    ``mapping.w_avg``; training checkpoints lack it, so it is then estimated from ``w_avg_samples`` mapped
    z's (0 leaves zeros). ``overrides`` replace inferred constructor arguments (e.g. ``lr_mlp``, ``modconv``).
    """
    ckpt = _rosinality_checkpoint(path_or_dict)
    if which not in ckpt:
        raise ValueError(f"rosinality checkpoint has no {which!r} (keys: {sorted(ckpt)})")
    sd = _rosinality_generator_to_pfo(ckpt[which])
    latent_avg = ckpt.get("latent_avg") if which == "g_ema" else None
    if isinstance(latent_avg, Tensor):
        sd["mapping.w_avg"] = latent_avg.detach().reshape(-1)
    config = {**_infer_generator_config(sd), **overrides}
    G = _build_and_load(Generator, config, sd, f"rosinality {which!r}")
    if "mapping.w_avg" not in sd and w_avg_samples > 0:
        _estimate_w_avg(G, w_avg_samples)
    return G


# ==========================================================================================================
# NVlabs/stylegan2-ada-pytorch.
#
# Names are ours already (mandated). Rules:
#  N1 ``resample_filter`` buffers are fixed [1,3,3,1] filters (networks.py:142,274,354,531): checked, dropped.
#  N2 a conditional generator's ``mapping.embed`` [w_dim, c_dim] gives c_dim; its fc0 reads z_dim + w_dim
#     features (networks.py:186-196), so z_dim = fc0 inputs - w_dim; the pickle's ``c_dim`` init kwarg must agree.
#     A label embedding of other than w_dim features (a non-default ``embed_features``), conditional
#     discriminators (``mapping`` in D, used only to fine-tune) and non-default architectures (synthesis
#     'resnet'/'orig', discriminator 'skip'/'orig') have no counterpart here: refused.
#  N3 lr_mlp comes from ``mapping.fc0.bias_gain`` (= lr_multiplier, networks.py:103), conv_clamp from the
#     synthesis init kwargs; channel_base/channel_max from the init kwargs when they agree with the shapes.
#  N4 ``use_noise=False`` layers have no noise_strength/noise_const: filled with 0 / zeros (no noise added).


def _nvlabs_tensors(stub: PersistentStub) -> dict[str, Tensor]:
    """All parameters and buffers of ``stub`` in our naming, minus the fixed filters (rule N1)."""
    sd = {}
    for key, value in stub.tensors().items():
        if key.endswith("resample_filter"):
            _check_filter(key, value if value.ndim == 2 else torch.outer(value, value), 1.0)
        else:
            sd[key] = value
    return sd


def _nvlabs_data(path_or_data: PathLike | Mapping[str, Any]) -> Mapping[str, Any]:
    if isinstance(path_or_data, Mapping):
        return path_or_data
    try:
        data = load_pickle_safely(path_or_data)
    except Exception as e:  # malformed pickles fail in many ways; all mean "not an NVlabs pickle"
        raise ValueError(
            f"{path_or_data}: not a readable NVlabs network pickle ({e}); expected {SUPPORTED_FORMATS}"
        ) from e
    if not isinstance(data, Mapping):
        raise ValueError(f"{path_or_data}: pickle holds a {type(data).__name__}; expected {SUPPORTED_FORMATS}")
    return data


def _nvlabs_net(data: Mapping[str, Any], which: str, class_name: str) -> PersistentStub:
    net = data.get(which)
    if not isinstance(net, PersistentStub):
        raise ValueError(
            f"NVlabs pickle has no {which!r} network (keys: {sorted(map(str, data))}); supported: {SUPPORTED_FORMATS}"
        )
    if net.class_name != class_name:
        raise ValueError(
            f"{which!r} is a {net.class_name}, expected a stylegan2-ada-pytorch {class_name}; supported: "
            f"{SUPPORTED_FORMATS}"
        )
    return net


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def load_nvlabs_pkl(path_or_data: PathLike | Mapping[str, Any], which: str = "G_ema", **overrides: Any) -> Generator:
    """Build our :class:`Generator` from an NVlabs stylegan2-ada-pytorch pickle, without running its code.

    ``which`` is ``'G_ema'`` (for sampling) or ``'G'``. ``overrides`` replace inferred constructor arguments.
    """
    net = _nvlabs_net(_nvlabs_data(path_or_data), which, "Generator")
    sd = _nvlabs_tensors(net)
    c_dim = net.init_kwargs.get("c_dim", 0)  # N2
    has_embed = "mapping.embed.weight" in sd
    if isinstance(c_dim, int) and (c_dim > 0) != has_embed:
        raise ValueError(
            f"NVlabs {which!r} says c_dim={c_dim} but {'has' if has_embed else 'lacks'} the label embedding "
            "mapping.embed; the pickle is damaged or incomplete"
        )
    if any(re.fullmatch(r"synthesis\.b\d+\.skip\.weight", k) for k in sd):  # N2
        raise ValueError("only the 'skip' synthesis architecture is supported, this generator is 'resnet'")
    for key in [k for k in sd if re.fullmatch(r"synthesis\.b\d+\.conv[01]\.weight", k)]:  # N4
        layer = key.rsplit(".", 1)[0]
        if f"{layer}.noise_strength" not in sd:
            res = int(layer.split(".")[1][1:])
            sd[f"{layer}.noise_strength"] = torch.zeros([])
            sd[f"{layer}.noise_const"] = torch.zeros([res, res])
    config = _infer_generator_config(sd)
    fc0 = net.submodule("mapping.fc0")
    if fc0 is not None and _number(fc0.attr("bias_gain")) is not None:  # N3
        config["lr_mlp"] = _number(fc0.attr("bias_gain"))
    synthesis = net.submodule("synthesis")
    skw = {**(synthesis.init_kwargs if synthesis is not None else {})}
    skw.update(net.init_kwargs.get("synthesis_kwargs") or {})
    if _number(skw.get("conv_clamp")) is not None:
        config["conv_clamp"] = skw["conv_clamp"]
    base, cmax = skw.get("channel_base"), skw.get("channel_max")
    if isinstance(base, int) and isinstance(cmax, int):
        ress = _indices(sd, r"synthesis\.b(\d+)\.conv1\.weight")
        if all(min(base // r, cmax) == sd[f"synthesis.b{r}.conv1.weight"].shape[0] for r in ress):
            config["channel_base"], config["channel_max"] = base, cmax
    config.update(overrides)
    G = _build_and_load(Generator, config, sd, f"NVlabs {which!r}")
    if isinstance(c_dim, int) and c_dim > 0 and G.c_dim != c_dim:
        raise ValueError(f"NVlabs {which!r} says c_dim={c_dim} but its label embedding reads {G.c_dim} classes")
    return G


def _nvlabs_discriminator(data: Mapping[str, Any], overrides: dict[str, Any]) -> Discriminator:
    net = _nvlabs_net(data, "D", "Discriminator")
    sd = _nvlabs_tensors(net)
    if any(k.startswith("mapping.") for k in sd):  # N2
        raise ValueError(
            "conditional NVlabs discriminators (c_dim > 0) are not supported, so a conditional prior cannot be "
            "fine-tuned; attacks need only its generator: load it with load_prior / import_generator"
        )
    arch = net.init_kwargs.get("architecture", "resnet")
    if arch != "resnet":
        raise ValueError(f"only the 'resnet' discriminator is supported, this one is {arch!r}")
    config = _infer_discriminator_config(sd)
    mbstd = net.submodule("b4.mbstd")
    if mbstd is not None:
        group = mbstd.attr("group_size")
        config["mbstd_group_size"] = group if group is None or isinstance(group, int) else 4
    if net.init_kwargs.get("conv_clamp") is not None:
        config["conv_clamp"] = net.init_kwargs["conv_clamp"]
    config.update(overrides)
    return _build_and_load(Discriminator, config, sd, "NVlabs 'D'")


# ==========================================================================================================
# Format detection.


# torch.save's pre-1.6 format starts with its magic number pickled as a protocol-2 long (serialization.py).
_LEGACY_TORCH_MAGIC = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19"


def _sniff(path: PathLike) -> tuple[str, Any]:
    """Return ``('rosinality', ckpt)`` or ``('nvlabs', data)``, or raise ValueError naming the formats.

    torch.save files (zip, or the legacy magic number) go through ``torch.load(weights_only=True)``; any
    other file is tried as a pickle with :class:`RestrictedUnpickler`.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(path)
    if (why := damage(path)) is not None:
        raise ValueError(f"{path} is damaged or incomplete ({why}); copy or write it again")
    with open(path, "rb") as f:
        head = f.read(len(_LEGACY_TORCH_MAGIC))
    if zipfile.is_zipfile(path) or head == _LEGACY_TORCH_MAGIC:
        try:
            obj = _torch_load(path)
        except Exception as e:  # any failure means "not a supported file"
            raise ValueError(
                f"{load_failure(path, 'a StyleGAN2 checkpoint', e)}; supported: {SUPPORTED_FORMATS}"
            ) from e
        if isinstance(obj, Mapping) and ("g_ema" in obj or "style.1.weight" in obj):
            return "rosinality", obj
        what = (
            f"a dict with keys {sorted(map(str, obj))[:8]}" if isinstance(obj, Mapping) else f"a {type(obj).__name__}"
        )
        raise ValueError(
            f"{path} is a torch file holding {what}, not a StyleGAN2 checkpoint; supported: {SUPPORTED_FORMATS}"
        )
    try:
        data = load_pickle_safely(path)
    except Exception as e:  # malformed pickles fail in many ways
        if isinstance(e, EOFError) or "truncated" in str(e):  # a pickle that stops part-way
            raise ValueError(f"{path} is damaged or incomplete (the pickle stops part-way)") from e
        raise ValueError(
            f"{path} is neither a torch file nor a readable NVlabs pickle "
            f"({type(e).__name__}: {str(e)[:200]}); "
            f"supported: {SUPPORTED_FORMATS}"
        ) from e
    if isinstance(data, Mapping) and any(isinstance(v, PersistentStub) for v in data.values()):
        return "nvlabs", data
    raise ValueError(f"{path} is a pickle without NVlabs networks; supported: {SUPPORTED_FORMATS}")


def import_generator(path: PathLike, **overrides: Any) -> Generator:
    """Load the sampling generator (``g_ema`` / ``G_ema``) from either format, detected by content."""
    kind, obj = _sniff(path)
    if kind == "rosinality":
        return load_rosinality(obj, **overrides)
    return load_nvlabs_pkl(obj, **overrides)


def load_discriminator(path_or_data: PathLike | Mapping[str, Any], **overrides: Any) -> Discriminator:
    """Load the discriminator (rosinality ``d`` / NVlabs ``D``) from a file or an already loaded checkpoint.

    Raises ValueError when the checkpoint has none (e.g. rosinality files converted without ``--disc``).
    """
    if isinstance(path_or_data, Mapping):
        is_nvlabs = any(isinstance(v, PersistentStub) for v in path_or_data.values())
        kind, obj = ("nvlabs" if is_nvlabs else "rosinality"), path_or_data
    else:
        kind, obj = _sniff(path_or_data)
    if kind == "nvlabs":
        return _nvlabs_discriminator(obj, overrides)
    if "d" not in obj:
        raise ValueError(f"rosinality checkpoint has no discriminator 'd' (keys: {sorted(map(str, obj))})")
    sd = _rosinality_discriminator_to_pfo(obj["d"])
    config = {**_infer_discriminator_config(sd), **overrides}
    return _build_and_load(Discriminator, config, sd, "rosinality 'd'")
