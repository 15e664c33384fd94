"""Writers of small StyleGAN2 checkpoints in rosinality's and NVlabs' formats, made from our networks.

They reproduce the source projects' on-disk layouts without either project installed:

- rosinality/stylegan2-pytorch: the ``state_dict()`` of its ``Generator``/``Discriminator`` (model.py),
  saved with ``torch.save`` like its ``convert_weight.py`` / ``train.py``.
- NVlabs/stylegan2-ada-pytorch: ``pickle.dump`` of ``{'G', 'D', 'G_ema', ...}`` where every network is a
  persistent object, i.e. reduces to ``torch_utils.persistence._reconstruct_persistent_obj(meta)`` with
  ``meta = {type, version, module_src, class_name, state}`` and ``state`` the module's ``__dict__``
  (persistence.py ``Decorator.__reduce__``). Fake ``torch_utils``/``dnnlib`` modules exist only while dumping,
  so that ``pickle`` can name the globals.

``rosinality_reference_images`` renders a rosinality state dict following rosinality's forward pass, written
independently of our generator, to check that imported weights mean the same thing here.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import pickle
import sys
import types
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from pfo.models.stylegan2 import Discriminator, Generator

# What NVlabs would exec on load; our importer must never run it.
INERT_MODULE_SRC = "raise RuntimeError('module_src must never be executed')\n"

# ----------------------------------------------------------------------------------------------------------
# Weights that any implementation with NVlabs' names can be given.


def fill_seeded(model: torch.nn.Module, seed: int, lr_mlp: float = 0.01) -> torch.nn.Module:
    """Overwrite every parameter and buffer except the fixed ``resample_filter`` taps with values drawn in sorted
    name order from ``seed``: our networks and NVlabs' then hold the same weights whatever order their
    constructors drew in. Biases, noise strengths and ``w_avg`` are small, style biases centred on 1 (as
    trained networks have them), and the mapping layers' weights and biases are stored divided by their
    learning-rate multiplier ``lr_mlp`` (0.01 unless given) as both projects store them, so w depends on z and c
    as much as in a trained network and every path of the forward pass matters."""
    gen = torch.Generator().manual_seed(seed)
    tensors = dict(model.named_parameters()) | dict(model.named_buffers())
    with torch.no_grad():
        for name in sorted(k for k in tensors if not k.endswith("resample_filter")):
            t = tensors[name]
            small = "bias" in name or "noise_strength" in name or "w_avg" in name
            value = torch.randn(t.shape, generator=gen, dtype=torch.float64) * (0.3 if small else 1.0)
            if name.startswith("mapping.fc"):
                value = value / lr_mlp
            t.copy_(value + (1.0 if name.endswith("affine.bias") else 0.0))
    return model.eval()


# ----------------------------------------------------------------------------------------------------------
# rosinality layout.


def rosinality_generator_state(G: Generator) -> dict[str, Tensor]:
    """``G`` as the state dict of rosinality's ``Generator(size, style_dim, n_mlp)`` (model.py:391-475)."""
    sd = {k: v.detach().clone() for k, v in G.state_dict().items()}
    out: dict[str, Tensor] = {}
    for i in range(G.config["n_mlp"]):
        out[f"style.{i + 1}.weight"] = sd[f"mapping.fc{i}.weight"]
        out[f"style.{i + 1}.bias"] = sd[f"mapping.fc{i}.bias"]
    out["input.input"] = sd["synthesis.b4.const"].unsqueeze(0)
    blur = torch.outer(torch.tensor([1.0, 3, 3, 1]), torch.tensor([1.0, 3, 3, 1])) / 64 * 4

    def styled(prefix: str, ours: str, up: bool) -> None:
        out[f"{prefix}.conv.weight"] = sd[f"{ours}.weight"].unsqueeze(0)
        out[f"{prefix}.conv.modulation.weight"] = sd[f"{ours}.affine.weight"]
        out[f"{prefix}.conv.modulation.bias"] = sd[f"{ours}.affine.bias"]
        out[f"{prefix}.noise.weight"] = sd[f"{ours}.noise_strength"].reshape(1)
        out[f"{prefix}.activate.bias"] = sd[f"{ours}.bias"]
        if up:
            out[f"{prefix}.conv.blur.kernel"] = blur.clone()

    def torgb(prefix: str, ours: str, up: bool) -> None:
        out[f"{prefix}.conv.weight"] = sd[f"{ours}.weight"].unsqueeze(0)
        out[f"{prefix}.conv.modulation.weight"] = sd[f"{ours}.affine.weight"]
        out[f"{prefix}.conv.modulation.bias"] = sd[f"{ours}.affine.bias"]
        out[f"{prefix}.bias"] = sd[f"{ours}.bias"].reshape(1, -1, 1, 1)
        if up:
            out[f"{prefix}.upsample.kernel"] = blur.clone()

    styled("conv1", "synthesis.b4.conv1", up=False)
    torgb("to_rgb1", "synthesis.b4.torgb", up=False)
    out["noises.noise_0"] = sd["synthesis.b4.conv1.noise_const"].reshape(1, 1, 4, 4)
    for j, res in enumerate(G.block_resolutions[1:]):
        styled(f"convs.{2 * j}", f"synthesis.b{res}.conv0", up=True)
        styled(f"convs.{2 * j + 1}", f"synthesis.b{res}.conv1", up=False)
        torgb(f"to_rgbs.{j}", f"synthesis.b{res}.torgb", up=True)
        out[f"noises.noise_{2 * j + 1}"] = sd[f"synthesis.b{res}.conv0.noise_const"].reshape(1, 1, res, res)
        out[f"noises.noise_{2 * j + 2}"] = sd[f"synthesis.b{res}.conv1.noise_const"].reshape(1, 1, res, res)
    return out


def rosinality_discriminator_state(D: Discriminator) -> dict[str, Tensor]:
    """``D`` as the state dict of rosinality's ``Discriminator(size)`` (model.py:573-697)."""
    sd = {k: v.detach().clone() for k, v in D.state_dict().items()}
    res0 = D.resolution
    blur = torch.outer(torch.tensor([1.0, 3, 3, 1]), torch.tensor([1.0, 3, 3, 1])) / 64
    out = {"convs.0.0.weight": sd[f"b{res0}.fromrgb.weight"], "convs.0.1.bias": sd[f"b{res0}.fromrgb.bias"]}
    for n, res in enumerate(D.block_resolutions, start=1):
        out[f"convs.{n}.conv1.0.weight"] = sd[f"b{res}.conv0.weight"]
        out[f"convs.{n}.conv1.1.bias"] = sd[f"b{res}.conv0.bias"]
        out[f"convs.{n}.conv2.0.kernel"] = blur.clone()
        out[f"convs.{n}.conv2.1.weight"] = sd[f"b{res}.conv1.weight"]
        out[f"convs.{n}.conv2.2.bias"] = sd[f"b{res}.conv1.bias"]
        out[f"convs.{n}.skip.0.kernel"] = blur.clone()
        out[f"convs.{n}.skip.1.weight"] = sd[f"b{res}.skip.weight"]
    out["final_conv.0.weight"] = sd["b4.conv.weight"]
    out["final_conv.1.bias"] = sd["b4.conv.bias"]
    for i, name in enumerate(("fc", "out")):
        out[f"final_linear.{i}.weight"] = sd[f"b4.{name}.weight"]
        out[f"final_linear.{i}.bias"] = sd[f"b4.{name}.bias"]
    return out


def save_rosinality(
    path: Path,
    G: Generator,
    D: Discriminator | None = None,
    latent_avg: bool = True,
    training: bool = False,
    legacy: bool = False,
) -> dict[str, Any]:
    """Write a rosinality checkpoint: convert_weight.py's ``{g_ema, latent_avg[, g, d]}`` or, with
    ``training``, train.py's ``{g, d, g_ema, g_optim, d_optim, args, ada_aug_p}``. ``legacy`` uses
    torch.save's pre-1.6 format, which the widely shared 2020 checkpoints have."""
    ckpt: dict[str, Any] = {"g_ema": rosinality_generator_state(G)}
    if latent_avg:
        ckpt["latent_avg"] = G.mapping.w_avg.detach().clone()
    if D is not None:
        ckpt["d"] = rosinality_discriminator_state(D)
    if training:
        ckpt["g"] = rosinality_generator_state(G)
        ckpt["g_optim"] = {"state": {}, "param_groups": [{"lr": 0.002, "params": [0, 1]}]}
        ckpt["d_optim"] = {"state": {}, "param_groups": [{"lr": 0.002, "params": [0]}]}
        ckpt["args"] = argparse.Namespace(size=G.resolution, n_mlp=G.config["n_mlp"], latent=G.w_dim)
        ckpt["ada_aug_p"] = 0.0
    torch.save(ckpt, path, _use_new_zipfile_serialization=not legacy)
    return ckpt


# ----------------------------------------------------------------------------------------------------------
# NVlabs layout.


def _fake_reconstruct_persistent_obj(meta: Any) -> Any:
    raise RuntimeError("writer-side stand-in; never called")


_fake_reconstruct_persistent_obj.__module__ = "torch_utils.persistence"
_fake_reconstruct_persistent_obj.__name__ = "_reconstruct_persistent_obj"
_fake_reconstruct_persistent_obj.__qualname__ = "_reconstruct_persistent_obj"


class FakeEasyDict(dict):
    """Pickles as ``dnnlib.util.EasyDict`` (while :func:`_fake_nvlabs_modules` is active)."""


FakeEasyDict.__module__ = "dnnlib.util"
FakeEasyDict.__name__ = FakeEasyDict.__qualname__ = "EasyDict"


@contextlib.contextmanager
def _fake_nvlabs_modules() -> Iterator[None]:
    """Make ``torch_utils.persistence`` and ``dnnlib.util`` importable by name while pickling."""
    mods = {
        name: types.ModuleType(name) for name in ("torch_utils", "torch_utils.persistence", "dnnlib", "dnnlib.util")
    }
    mods["torch_utils.persistence"]._reconstruct_persistent_obj = _fake_reconstruct_persistent_obj
    mods["torch_utils"].persistence = mods["torch_utils.persistence"]
    mods["dnnlib.util"].EasyDict = FakeEasyDict
    mods["dnnlib"].util = mods["dnnlib.util"]
    saved = {name: sys.modules.get(name) for name in mods}
    sys.modules.update(mods)
    try:
        yield
    finally:
        for name, old in saved.items():
            if old is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = old


class Persistent:
    """Pickles exactly like an NVlabs ``@persistent_class`` module instance."""

    def __init__(
        self,
        class_name: str,
        init_kwargs: dict[str, Any] | None = None,
        params: dict[str, Tensor] | None = None,
        buffers: dict[str, Tensor] | None = None,
        modules: dict[str, Persistent | None] | None = None,
        module_src: str = INERT_MODULE_SRC,
        **attrs: Any,
    ) -> None:
        self.class_name = class_name
        self.module_src = module_src
        self.state: dict[str, Any] = {
            "training": False,
            "_parameters": OrderedDict(
                (k, torch.nn.Parameter(v.detach().clone(), requires_grad=False)) for k, v in (params or {}).items()
            ),
            "_buffers": OrderedDict((k, v.detach().clone()) for k, v in (buffers or {}).items()),
            "_non_persistent_buffers_set": set(),
            "_backward_hooks": OrderedDict(),
            "_forward_hooks": OrderedDict(),
            "_forward_pre_hooks": OrderedDict(),
            "_state_dict_hooks": OrderedDict(),
            "_load_state_dict_pre_hooks": OrderedDict(),
            "_modules": OrderedDict(modules or {}),
            **attrs,
            "_init_args": (),
            "_init_kwargs": FakeEasyDict(init_kwargs or {}),
        }

    def __reduce__(self) -> tuple[Any, ...]:
        meta = dict(type="class", version=6, module_src=self.module_src, class_name=self.class_name, state=self.state)
        return (_fake_reconstruct_persistent_obj, (meta,))


def _filter() -> Tensor:
    k = torch.tensor([1.0, 3, 3, 1])
    return torch.outer(k, k) / 64


def _fc(sd: dict[str, Tensor], name: str, lr: float = 1.0, activation: str = "linear", bias_init: float = 0):
    w = sd[f"{name}.weight"]
    return Persistent(
        "FullyConnectedLayer",
        dict(
            in_features=w.shape[1],
            out_features=w.shape[0],
            activation=activation,
            lr_multiplier=lr,
            bias_init=bias_init,
        ),
        params={"weight": w, "bias": sd[f"{name}.bias"]},
        activation=activation,
        weight_gain=lr / np.sqrt(w.shape[1]),  # a numpy float64, as in networks.py:102
        bias_gain=lr,
    )


def _nvlabs_generator(G: Generator, sd: dict[str, Tensor], module_src: str) -> Persistent:
    cfg = G.config
    syn_kwargs = FakeEasyDict(
        channel_base=cfg["channel_base"],
        channel_max=cfg["channel_max"],
        num_fp16_res=0,
        conv_clamp=cfg["conv_clamp"],
    )
    blocks: dict[str, Persistent | None] = {}
    for res in G.block_resolutions:
        p = f"synthesis.b{res}"
        layers: dict[str, Persistent | None] = {}
        for conv in ("conv0", "conv1") if res > 4 else ("conv1",):
            q = f"{p}.{conv}"
            layers[conv] = Persistent(
                "SynthesisLayer",
                dict(
                    in_channels=sd[f"{q}.weight"].shape[1],
                    out_channels=sd[f"{q}.weight"].shape[0],
                    resolution=res,
                ),
                params={
                    "weight": sd[f"{q}.weight"],
                    "noise_strength": sd[f"{q}.noise_strength"],
                    "bias": sd[f"{q}.bias"],
                },
                buffers={"resample_filter": _filter(), "noise_const": sd[f"{q}.noise_const"]},
                modules={"affine": _fc(sd, f"{q}.affine", bias_init=1)},
                module_src=module_src,
                resolution=res,
                up=2 if conv == "conv0" else 1,
                use_noise=True,
                activation="lrelu",
                conv_clamp=cfg["conv_clamp"],
                padding=1,
                act_gain=np.sqrt(2),
            )
        q = f"{p}.torgb"
        layers["torgb"] = Persistent(
            "ToRGBLayer",
            dict(in_channels=sd[f"{q}.weight"].shape[1], out_channels=sd[f"{q}.weight"].shape[0]),
            params={"weight": sd[f"{q}.weight"], "bias": sd[f"{q}.bias"]},
            modules={"affine": _fc(sd, f"{q}.affine", bias_init=1)},
            module_src=module_src,
            conv_clamp=cfg["conv_clamp"],
            weight_gain=1 / np.sqrt(sd[f"{q}.weight"].shape[1]),
        )
        blocks[f"b{res}"] = Persistent(
            "SynthesisBlock",
            dict(
                in_channels=0 if res == 4 else sd[f"{p}.conv0.weight"].shape[1],
                resolution=res,
                architecture="skip",
            ),
            params={"const": sd[f"{p}.const"]} if res == 4 else {},
            buffers={"resample_filter": _filter()},
            modules=layers,
            module_src=module_src,
            resolution=res,
            architecture="skip",
            use_fp16=False,
            num_conv=len(layers) - 1,
            num_torgb=1,
        )
    synthesis = Persistent(
        "SynthesisNetwork",
        dict(w_dim=G.w_dim, img_resolution=G.resolution, img_channels=G.img_channels, **syn_kwargs),
        modules=blocks,
        module_src=module_src,
        block_resolutions=list(G.block_resolutions),
        num_ws=G.num_ws,
    )
    fcs = {f"fc{i}": _fc(sd, f"mapping.fc{i}", lr=cfg["lr_mlp"], activation="lrelu") for i in range(cfg["n_mlp"])}
    if G.c_dim:  # networks.py:186-187: the label embedding is registered before the fc layers
        fcs = {"embed": _fc(sd, "mapping.embed"), **fcs}
    mapping = Persistent(
        "MappingNetwork",
        dict(
            z_dim=G.z_dim,
            c_dim=G.c_dim,
            w_dim=G.w_dim,
            num_ws=G.num_ws,
            num_layers=cfg["n_mlp"],
            lr_multiplier=cfg["lr_mlp"],
        ),
        buffers={"w_avg": sd["mapping.w_avg"]},
        modules=fcs,
        module_src=module_src,
        z_dim=G.z_dim,
        c_dim=G.c_dim,
        num_layers=cfg["n_mlp"],
        w_avg_beta=0.995,
    )
    return Persistent(
        "Generator",
        dict(
            z_dim=G.z_dim,
            c_dim=G.c_dim,
            w_dim=G.w_dim,
            img_resolution=G.resolution,
            img_channels=G.img_channels,
            mapping_kwargs=FakeEasyDict(num_layers=cfg["n_mlp"], lr_multiplier=cfg["lr_mlp"]),
            synthesis_kwargs=syn_kwargs,
        ),
        modules={"synthesis": synthesis, "mapping": mapping},
        module_src=module_src,
        z_dim=G.z_dim,
        c_dim=G.c_dim,
        w_dim=G.w_dim,
        img_resolution=G.resolution,
        num_ws=G.num_ws,
    )


def _conv(sd: dict[str, Tensor], name: str, activation: str, down: int = 1) -> Persistent:
    w = sd[f"{name}.weight"]
    params = {"weight": w}
    if f"{name}.bias" in sd:
        params["bias"] = sd[f"{name}.bias"]
    return Persistent(
        "Conv2dLayer",
        dict(
            in_channels=w.shape[1],
            out_channels=w.shape[0],
            kernel_size=w.shape[2],
            activation=activation,
            down=down,
        ),
        params=params,
        buffers={"resample_filter": _filter()},
        activation=activation,
        up=1,
        down=down,
        conv_clamp=None,
        padding=w.shape[2] // 2,
        weight_gain=1 / np.sqrt(w.shape[1] * w.shape[2] ** 2),
        act_gain=np.sqrt(2) if activation == "lrelu" else 1.0,
    )


def _nvlabs_discriminator(D: Discriminator) -> Persistent:
    sd = {k: v.detach() for k, v in D.state_dict().items()}
    cfg = D.config
    modules: dict[str, Persistent | None] = {}
    for res in D.block_resolutions:
        p = f"b{res}"
        layers = {}
        if f"{p}.fromrgb.weight" in sd:
            layers["fromrgb"] = _conv(sd, f"{p}.fromrgb", "lrelu")
        layers["conv0"] = _conv(sd, f"{p}.conv0", "lrelu")
        layers["conv1"] = _conv(sd, f"{p}.conv1", "lrelu", down=2)
        layers["skip"] = _conv(sd, f"{p}.skip", "linear", down=2)
        modules[p] = Persistent(
            "DiscriminatorBlock",
            dict(resolution=res, architecture="resnet"),
            buffers={"resample_filter": _filter()},
            modules=layers,
            resolution=res,
            architecture="resnet",
        )
    mbstd = Persistent(
        "MinibatchStdLayer",
        dict(group_size=cfg["mbstd_group_size"], num_channels=cfg["mbstd_num_channels"]),
        group_size=cfg["mbstd_group_size"],
        num_channels=cfg["mbstd_num_channels"],
    )
    modules["b4"] = Persistent(
        "DiscriminatorEpilogue",
        dict(in_channels=sd["b4.conv.weight"].shape[0], cmap_dim=0, resolution=4),
        modules={
            "mbstd": mbstd,
            "conv": _conv(sd, "b4.conv", "lrelu"),
            "fc": _fc(sd, "b4.fc", activation="lrelu"),
            "out": _fc(sd, "b4.out"),
        },
    )
    return Persistent(
        "Discriminator",
        dict(
            c_dim=0,
            img_resolution=D.resolution,
            img_channels=D.img_channels,
            architecture="resnet",
            channel_base=cfg["channel_base"],
            channel_max=cfg["channel_max"],
            epilogue_kwargs=FakeEasyDict(mbstd_group_size=cfg["mbstd_group_size"]),
        ),
        modules=modules,
        c_dim=0,
        img_resolution=D.resolution,
    )


def nvlabs_snapshot(
    G: Generator,
    D: Discriminator | None = None,
    replace: dict[str, Tensor] | None = None,
    module_src: str = INERT_MODULE_SRC,
) -> dict[str, Any]:
    """The dict training_loop.py pickles: ``G``, ``D``, ``G_ema``, ``augment_pipe``, ``training_set_kwargs``.

    ``replace`` swaps tensors (NVlabs names) in ``G_ema`` before writing, for hand-built expectations.
    """
    sd = {k: v.detach().clone() for k, v in G.state_dict().items()}
    sd_ema = {**sd, **(replace or {})}
    return {
        "G": _nvlabs_generator(G, sd, module_src),
        "D": _nvlabs_discriminator(D) if D is not None else None,
        "G_ema": _nvlabs_generator(G, sd_ema, module_src),
        "augment_pipe": Persistent("AugmentPipe", dict(xflip=1), buffers={"p": torch.zeros([])}, xflip=1.0),
        "training_set_kwargs": dict(
            class_name="training.dataset.ImageFolderDataset", path="x.zip", use_labels=G.c_dim > 0, xflip=False
        ),
    }


def dump_nvlabs(obj: Any, path: Path, protocol: int = 4) -> None:
    """``pickle.dump`` with the fake NVlabs modules importable (as training_loop.py:366-367 does)."""
    with _fake_nvlabs_modules(), open(path, "wb") as f:
        pickle.dump(obj, f, protocol=protocol)


def save_nvlabs_pkl(path: Path, G: Generator, D: Discriminator | None = None, protocol: int = 4, **kw: Any) -> None:
    """Write an NVlabs-format network pickle of ``G`` (and ``D``)."""
    dump_nvlabs(nvlabs_snapshot(G, D, **kw), path, protocol)


# ----------------------------------------------------------------------------------------------------------
# rosinality's forward pass, re-derived from model.py for reference renders.


def _upfirdn(x: Tensor, k: Tensor, up: int, pad: tuple[int, int]) -> Tensor:
    """rosinality's upfirdn2d (op/upfirdn2d.py native path): zero-insert, pad both axes, true convolution."""
    n, c, h, w = x.shape
    if up > 1:
        z = x.new_zeros(n, c, h * up, w * up)
        z[:, :, ::up, ::up] = x
        x = z
    x = F.pad(x, [pad[0], pad[1], pad[0], pad[1]])
    kern = k.flip([0, 1]).to(x.dtype)[None, None].repeat(c, 1, 1, 1)
    return F.conv2d(x, kern, groups=c)


def _blur_kernel(scale: float) -> Tensor:
    k = torch.tensor([1.0, 3, 3, 1], dtype=torch.float64)
    return torch.outer(k, k) / 64 * scale


def _modconv(sd: dict[str, Tensor], p: str, x: Tensor, style: Tensor, demod: bool, up: bool) -> Tensor:
    weight = sd[f"{p}.conv.weight"]  # [1, O, I, k, k]
    _, o, i, k, _ = weight.shape
    mw = sd[f"{p}.conv.modulation.weight"]
    s = F.linear(style, mw / math.sqrt(mw.shape[1]), sd[f"{p}.conv.modulation.bias"])  # EqualLinear, lr_mul 1
    w = weight / math.sqrt(i * k * k) * s.view(-1, 1, i, 1, 1)
    if demod:
        w = w * torch.rsqrt(w.pow(2).sum([2, 3, 4]) + 1e-8).view(-1, o, 1, 1, 1)
    outs = []
    for b in range(x.shape[0]):
        if up:  # model.py:269-282: conv_transpose2d(stride 2, pad 0) with [I, O, k, k], then Blur(pad (1, 1))
            y = F.conv_transpose2d(x[b : b + 1], w[b].transpose(0, 1), stride=2, padding=0)
            outs.append(_upfirdn(y, _blur_kernel(4.0), 1, (1, 1)))
        else:
            outs.append(F.conv2d(x[b : b + 1], w[b], padding=k // 2))
    return torch.cat(outs)


def _styled(sd: dict[str, Tensor], p: str, x: Tensor, style: Tensor, noise: Tensor, up: bool) -> Tensor:
    out = _modconv(sd, p, x, style, demod=True, up=up)
    out = out + sd[f"{p}.noise.weight"] * noise  # NoiseInjection
    out = out + sd[f"{p}.activate.bias"].view(1, -1, 1, 1)  # FusedLeakyReLU: bias, lrelu 0.2, * sqrt(2)
    return F.leaky_relu(out, 0.2) * math.sqrt(2)


def _to_rgb(sd: dict[str, Tensor], p: str, x: Tensor, style: Tensor, skip: Tensor | None) -> Tensor:
    out = _modconv(sd, p, x, style, demod=False, up=False) + sd[f"{p}.bias"]
    if skip is not None:
        out = out + _upfirdn(skip, _blur_kernel(4.0), 2, (2, 1))  # Upsample: pad0 = 1 + 2 - 1, pad1 = 1
    return out


def rosinality_mapping(sd: dict[str, Tensor], z: Tensor, lr_mlp: float = 0.01) -> Tensor:
    """``Generator.style``: PixelNorm then EqualLinear(lr_mul) + fused lrelu, from model.py:14-19, 132-161."""
    sd = {k: v.double() for k, v in sd.items()}
    z = z.double()
    x = z * torch.rsqrt(z.pow(2).mean(1, keepdim=True) + 1e-8)
    i = 1
    while f"style.{i}.weight" in sd:
        w = sd[f"style.{i}.weight"]
        x = F.linear(x, w * (lr_mlp / math.sqrt(w.shape[1])))
        x = F.leaky_relu(x + sd[f"style.{i}.bias"] * lr_mlp, 0.2) * math.sqrt(2)
        i += 1
    return x


def rosinality_reference_images(sd: dict[str, Tensor], latent: Tensor) -> Tensor:
    """rosinality ``Generator.forward``, ``randomize_noise=False``, on W+ ``latent`` [N, n_latent, w_dim]."""
    sd = {k: v.double() for k, v in sd.items()}
    latent = latent.double()
    out = sd["input.input"].repeat(latent.shape[0], 1, 1, 1)
    out = _styled(sd, "conv1", out, latent[:, 0], sd["noises.noise_0"], up=False)
    skip = _to_rgb(sd, "to_rgb1", out, latent[:, 1], None)
    i, j = 1, 0
    while f"to_rgbs.{j}.conv.weight" in sd:
        out = _styled(sd, f"convs.{2 * j}", out, latent[:, i], sd[f"noises.noise_{i}"], up=True)
        out = _styled(sd, f"convs.{2 * j + 1}", out, latent[:, i + 1], sd[f"noises.noise_{i + 1}"], up=False)
        skip = _to_rgb(sd, f"to_rgbs.{j}", out, latent[:, i + 2], skip)
        i, j = i + 2, j + 1
    return skip


def _equal_conv(sd: dict[str, Tensor], key: str, x: Tensor, stride: int = 1, padding: int = 0) -> Tensor:
    w = sd[key]  # EqualConv2d: weight * 1/sqrt(I*k*k) (model.py:94-123)
    return F.conv2d(x, w / math.sqrt(w.shape[1] * w.shape[2] ** 2), stride=stride, padding=padding)


def _lrelu(x: Tensor, bias: Tensor) -> Tensor:
    return F.leaky_relu(x + bias.view(1, -1, *[1] * (x.ndim - 2)), 0.2) * math.sqrt(2)


def rosinality_reference_logits(sd: dict[str, Tensor], img: Tensor) -> Tensor:
    """rosinality ``Discriminator.forward`` (model.py:573-697), re-derived in float64."""
    sd = {k: v.double() for k, v in sd.items()}
    x = _lrelu(_equal_conv(sd, "convs.0.0.weight", img.double()), sd["convs.0.1.bias"])
    n = 1
    while f"convs.{n}.conv1.0.weight" in sd:
        p = f"convs.{n}"
        out = _lrelu(_equal_conv(sd, f"{p}.conv1.0.weight", x, padding=1), sd[f"{p}.conv1.1.bias"])
        # ConvLayer(downsample): Blur pad ((4-2)+(3-1)+1)//2 = 2, 4//2 = 2, then a stride-2 unpadded conv.
        out = _upfirdn(out, _blur_kernel(1.0), 1, (2, 2))
        out = _lrelu(_equal_conv(sd, f"{p}.conv2.1.weight", out, stride=2), sd[f"{p}.conv2.2.bias"])
        # 1x1 skip: Blur pad ((4-2)+0+1)//2 = 1, 2//2 = 1, stride-2 conv, no bias, no activation.
        skip = _equal_conv(sd, f"{p}.skip.1.weight", _upfirdn(x, _blur_kernel(1.0), 1, (1, 1)), stride=2)
        x = (out + skip) / math.sqrt(2)
        n += 1
    b, c, h, w = x.shape
    group = min(b, 4)
    std = x.view(group, -1, 1, c, h, w)
    std = torch.sqrt(std.var(0, unbiased=False) + 1e-8).mean([2, 3, 4], keepdim=True).squeeze(2)
    x = torch.cat([x, std.repeat(group, 1, h, w)], 1)
    x = _lrelu(_equal_conv(sd, "final_conv.0.weight", x, padding=1), sd["final_conv.1.bias"]).view(b, -1)
    w0 = sd["final_linear.0.weight"]
    x = _lrelu(F.linear(x, w0 / math.sqrt(w0.shape[1])), sd["final_linear.0.bias"])
    w1 = sd["final_linear.1.weight"]
    return F.linear(x, w1 / math.sqrt(w1.shape[1]), sd["final_linear.1.bias"])
