"""StyleGAN2 generator and discriminator in plain PyTorch, runnable block by block.

Parameter names, shapes and numerics follow NVlabs' stylegan2-ada-pytorch (config-f style: skip generator,
residual discriminator), so its checkpoints and rosinality's can be imported by renaming. On top of NVlabs'
interface the generator exposes the seam the progressive attack needs: the state ``(x, img)`` between
synthesis blocks (``state_at``) and the rest of the synthesis from any such state (``synthesize_from``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from pfo.models.stylegan2_ops import (
    Conv2dLayer,
    FullyConnectedLayer,
    assert_shape,
    bias_act,
    modulated_conv2d,
    normalize_2nd_moment,
    resolve_modconv,
    setup_filter,
    upsample2d,
)

NOISE_MODES = ("const", "random", "none")


class BlockState(NamedTuple):
    """What flows between synthesis blocks: features ``x`` [N, C, r, r] and the running RGB image ``img``."""

    x: Tensor | None
    img: Tensor | None


def _check_resolution(resolution: int) -> None:
    if resolution < 8 or resolution > 1024 or resolution & (resolution - 1):
        raise ValueError(f"resolution must be a power of two in [8, 1024], got {resolution}")


def _check_c_dim(c_dim: int) -> None:
    if isinstance(c_dim, bool) or not isinstance(c_dim, int) or c_dim < 0:
        raise ValueError(
            f"c_dim must be a non-negative int (0 = unconditional, else the number of classes), got {c_dim!r}"
        )


def _channels(channel_base: int, channel_max: int, res: int) -> int:
    return min(channel_base // res, channel_max)


# ----------------------------------------------------------------------------------------------------------
# Mapping.


class MappingNetwork(nn.Module):
    """MLP (z, c) -> w with a tracked average of w for truncation.

    With ``c_dim > 0`` the generator is class-conditional as in NVlabs' stylegan2-ada-pytorch: a linear layer
    ``embed`` maps the one-hot label c [N, c_dim] to w_dim features; z and the embedded c are each scaled to unit
    mean square and concatenated, so ``fc0`` reads z_dim + w_dim features. ``w_avg`` stays the average over all
    classes (NVlabs tracks one global average), so truncation pulls every class towards the same point.
    """

    def __init__(
        self,
        z_dim: int,  # Input latent (Z) dimensionality.
        w_dim: int,  # Intermediate latent (W) dimensionality.
        num_ws: int,  # Number of styles the synthesis consumes (for truncation_cutoff).
        n_mlp: int = 8,  # Number of fully connected layers.
        lr_mlp: float = 0.01,  # Learning-rate multiplier of the layers.
        w_avg_beta: float = 0.995,  # Decay of the moving average of w, updated in training mode.
        c_dim: int = 0,  # Number of classes of the one-hot label c, 0 = unconditional.
    ) -> None:
        super().__init__()
        _check_c_dim(c_dim)
        self.z_dim = z_dim
        self.w_dim = w_dim
        self.num_ws = num_ws
        self.n_mlp = n_mlp
        self.w_avg_beta = w_avg_beta
        self.c_dim = c_dim
        if c_dim > 0:
            self.embed = FullyConnectedLayer(c_dim, w_dim)  # NVlabs: embed_features = w_dim, lr multiplier 1
        for i in range(n_mlp):
            in_features = (z_dim + (w_dim if c_dim > 0 else 0)) if i == 0 else w_dim
            layer = FullyConnectedLayer(in_features, w_dim, activation="lrelu", lr_multiplier=lr_mlp)
            setattr(self, f"fc{i}", layer)
        self.register_buffer("w_avg", torch.zeros([w_dim]))

    def check_c(self, c: Tensor | None, n: int) -> None:
        """Raise a ValueError unless ``c`` fits this network: None when unconditional, [n, c_dim] otherwise."""
        if self.c_dim == 0:
            if c is not None:
                raise ValueError(
                    "this generator is unconditional (c_dim = 0) but a class label c was given; pass c=None"
                )
            return
        if c is None:
            raise ValueError(
                f"this generator is class-conditional (c_dim = {self.c_dim}): pass one-hot labels c [N, {self.c_dim}] "
                "(pfo.attacks.class_rule chooses them for an attack)"
            )
        if c.ndim != 2 or c.shape[0] != n or c.shape[1] != self.c_dim:
            raise ValueError(
                f"class labels c must be one-hot [N, c_dim] = [{n}, {self.c_dim}], got shape {list(c.shape)}"
            )

    def forward(
        self, z: Tensor, c: Tensor | None = None, truncation_psi: float = 1.0, truncation_cutoff: int | None = None
    ) -> Tensor:
        """Map z [N, z_dim] (and, for a conditional network, one-hot c [N, c_dim]) to w [N, w_dim].

        Truncation moves w towards ``w_avg``: w_avg + psi * (w - w_avg). With ``truncation_cutoff`` only the
        first ``cutoff`` styles are truncated, so the result is W+ [N, num_ws, w_dim] instead.
        """
        assert_shape(z, [None, self.z_dim], "z")
        self.check_c(c, z.shape[0])
        x = normalize_2nd_moment(z)
        if c is not None:
            x = torch.cat([x, normalize_2nd_moment(self.embed(c.to(z.dtype)))], dim=1)
        for i in range(self.n_mlp):
            x = getattr(self, f"fc{i}")(x)
        if self.training and self.w_avg_beta is not None:
            self.w_avg.copy_(x.detach().mean(dim=0).lerp(self.w_avg, self.w_avg_beta))
        if truncation_cutoff is not None:
            x = x.unsqueeze(1).repeat(1, self.num_ws, 1)
            if truncation_psi != 1:
                head = self.w_avg.lerp(x[:, :truncation_cutoff], truncation_psi)
                x = torch.cat([head, x[:, truncation_cutoff:]], dim=1)
        elif truncation_psi != 1:
            x = self.w_avg.lerp(x, truncation_psi)
        return x


# ----------------------------------------------------------------------------------------------------------
# Synthesis.


class SynthesisLayer(nn.Module):
    """Modulated 3x3 convolution (optionally upsampling by 2), noise, bias and leaky ReLU."""

    def __init__(
        self,
        in_channels: int,  # Number of input channels.
        out_channels: int,  # Number of output channels.
        w_dim: int,  # Intermediate latent (W) dimensionality.
        resolution: int,  # Output resolution of this layer.
        kernel_size: int = 3,  # Width and height of the kernel.
        up: int = 1,  # Integer upsampling factor (1 or 2).
        resample_filter: Sequence[float] = (1, 3, 3, 1),  # Low-pass filter taps for upsampling.
        conv_clamp: float | None = None,  # Clamp the output to +-X; None disables.
        modconv: str = "auto",  # Modulated-convolution formulation: 'auto', 'grouped' or 'scaled'.
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.resolution = resolution
        self.up = up
        self.padding = kernel_size // 2
        self.conv_clamp = conv_clamp
        self.modconv = modconv
        self.register_buffer("resample_filter", setup_filter(resample_filter), persistent=False)
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        self.weight = nn.Parameter(torch.randn([out_channels, in_channels, kernel_size, kernel_size]))
        self.noise_strength = nn.Parameter(torch.zeros([]))
        self.register_buffer("noise_const", torch.randn([resolution, resolution]))
        self.bias = nn.Parameter(torch.zeros([out_channels]))

    def forward(self, x: Tensor, w: Tensor, noise_mode: str = "random") -> Tensor:
        assert_shape(x, [None, self.in_channels, self.resolution // self.up, self.resolution // self.up], "x")
        styles = self.affine(w)
        noise = None
        if noise_mode == "random":
            noise = torch.randn([x.shape[0], 1, self.resolution, self.resolution], device=x.device, dtype=x.dtype)
            noise = noise * self.noise_strength
        elif noise_mode == "const":
            noise = self.noise_const * self.noise_strength
        elif noise_mode != "none":
            raise ValueError(f"unknown noise_mode {noise_mode!r}; use one of {NOISE_MODES}")
        x = modulated_conv2d(
            x,
            self.weight,
            styles,
            noise=noise,
            up=self.up,
            padding=self.padding,
            resample_filter=self.resample_filter,
            flip_weight=self.up == 1,  # NVlabs convention; pretrained weights depend on it
            impl=resolve_modconv(self.modconv, x, self.training),
        )
        return bias_act(x, self.bias, act="lrelu", clamp=self.conv_clamp)


class ToRGBLayer(nn.Module):
    """Modulated 1x1 convolution to image channels, without demodulation."""

    def __init__(
        self,
        in_channels: int,  # Number of input channels.
        out_channels: int,  # Number of image channels.
        w_dim: int,  # Intermediate latent (W) dimensionality.
        conv_clamp: float | None = None,  # Clamp the output to +-X; None disables.
        modconv: str = "auto",  # Modulated-convolution formulation: 'auto', 'grouped' or 'scaled'.
    ) -> None:
        super().__init__()
        self.conv_clamp = conv_clamp
        self.modconv = modconv
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        self.weight = nn.Parameter(torch.randn([out_channels, in_channels, 1, 1]))
        self.bias = nn.Parameter(torch.zeros([out_channels]))
        # Without demodulation the equalised-LR gain is needed; NVlabs folds it into the styles.
        self.weight_gain = 1 / math.sqrt(in_channels)

    def forward(self, x: Tensor, w: Tensor) -> Tensor:
        styles = self.affine(w) * self.weight_gain
        x = modulated_conv2d(
            x, self.weight, styles, demodulate=False, impl=resolve_modconv(self.modconv, x, self.training)
        )
        return bias_act(x, self.bias, clamp=self.conv_clamp)


class SynthesisBlock(nn.Module):
    """One resolution of the skip generator: (x, img) at res/2 -> (x, img) at res."""

    def __init__(
        self,
        in_channels: int,  # Number of input channels, 0 = first block (starts from the learned constant).
        out_channels: int,  # Number of output channels.
        w_dim: int,  # Intermediate latent (W) dimensionality.
        resolution: int,  # Resolution of this block.
        img_channels: int,  # Number of image channels.
        resample_filter: Sequence[float] = (1, 3, 3, 1),  # Low-pass filter taps for upsampling.
        conv_clamp: float | None = None,  # Clamp conv outputs to +-X; None disables.
        modconv: str = "auto",  # Modulated-convolution formulation: 'auto', 'grouped' or 'scaled'.
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.w_dim = w_dim
        self.resolution = resolution
        self.img_channels = img_channels
        self.register_buffer("resample_filter", setup_filter(resample_filter), persistent=False)
        layer_kwargs = dict(w_dim=w_dim, resolution=resolution, conv_clamp=conv_clamp, modconv=modconv)
        if in_channels == 0:
            self.const = nn.Parameter(torch.randn([out_channels, resolution, resolution]))
        else:
            self.conv0 = SynthesisLayer(
                in_channels, out_channels, up=2, resample_filter=resample_filter, **layer_kwargs
            )
        self.conv1 = SynthesisLayer(out_channels, out_channels, **layer_kwargs)
        self.torgb = ToRGBLayer(out_channels, img_channels, w_dim=w_dim, conv_clamp=conv_clamp, modconv=modconv)
        self.num_conv = 1 if in_channels == 0 else 2
        self.num_torgb = 1

    def forward(
        self, x: Tensor | None, img: Tensor | None, ws: Tensor, noise_mode: str = "random"
    ) -> tuple[Tensor, Tensor]:
        """``ws`` [N, num_conv + num_torgb, w_dim]: one style per conv, then the one of ``torgb``."""
        assert_shape(ws, [None, self.num_conv + self.num_torgb, self.w_dim], "ws")
        n = ws.shape[0]
        half = self.resolution // 2
        if self.in_channels == 0:
            assert x is None and img is None, "the first block starts from its constant; pass x=img=None"
            x = self.const.unsqueeze(0).expand(n, -1, -1, -1)
            x = self.conv1(x, ws[:, 0], noise_mode=noise_mode)
        else:
            assert x is not None and img is not None, "blocks after the first need the state (x, img)"
            assert_shape(x, [n, self.in_channels, half, half], "x")
            assert_shape(img, [n, self.img_channels, half, half], "img")
            x = self.conv0(x, ws[:, 0], noise_mode=noise_mode)
            x = self.conv1(x, ws[:, 1], noise_mode=noise_mode)
        y = self.torgb(x, ws[:, -1])
        img = y if img is None else upsample2d(img, self.resample_filter) + y
        return x, img


class SynthesisNetwork(nn.Module):
    """Stack of synthesis blocks b4 ... b{resolution}, driven by styles ws [N, num_ws, w_dim]."""

    def __init__(
        self,
        w_dim: int,  # Intermediate latent (W) dimensionality.
        resolution: int,  # Output resolution (power of two).
        img_channels: int,  # Number of image channels.
        channel_base: int = 32768,  # Channels at resolution r are min(channel_base // r, channel_max).
        channel_max: int = 512,  # Maximum number of channels in any block.
        conv_clamp: float | None = None,  # Clamp conv outputs to +-X; None disables.
        modconv: str = "auto",  # Modulated-convolution formulation: 'auto', 'grouped' or 'scaled'.
    ) -> None:
        super().__init__()
        _check_resolution(resolution)
        self.w_dim = w_dim
        self.resolution = resolution
        self.img_channels = img_channels
        self.block_resolutions = [2**i for i in range(2, int(math.log2(resolution)) + 1)]
        self.num_ws = 0
        self._ws_slices: list[slice] = []
        for res in self.block_resolutions:
            block = SynthesisBlock(
                _channels(channel_base, channel_max, res // 2) if res > 4 else 0,
                _channels(channel_base, channel_max, res),
                w_dim=w_dim,
                resolution=res,
                img_channels=img_channels,
                conv_clamp=conv_clamp,
                modconv=modconv,
            )
            setattr(self, f"b{res}", block)
            # Block k reads its convs' styles and the next style for torgb, which the next block's first
            # conv reads as well (NVlabs' layout): num_ws = number of convs + 1.
            self._ws_slices.append(slice(self.num_ws, self.num_ws + block.num_conv + block.num_torgb))
            self.num_ws += block.num_conv
        self.num_ws += 1

    @property
    def blocks(self) -> list[SynthesisBlock]:
        """Blocks in order b4 ... b{resolution}."""
        return [getattr(self, f"b{res}") for res in self.block_resolutions]

    def ws_slice(self, k: int) -> slice:
        """Indices of the styles block ``k`` consumes."""
        return self._ws_slices[k]

    def _as_wplus(self, ws: Tensor) -> Tensor:
        if ws.ndim == 2:  # W: one style for every layer
            assert_shape(ws, [None, self.w_dim], "ws")
            return ws.unsqueeze(1).expand(-1, self.num_ws, -1)
        assert_shape(ws, [None, self.num_ws, self.w_dim], "ws")
        return ws

    def run_blocks(self, start: int, stop: int, state: BlockState, ws: Tensor, noise_mode: str = "const") -> BlockState:
        """Run blocks ``start`` .. ``stop - 1`` from ``state``: the one loop every entry point shares (the
        progressive attack uses it to carry an optimised state into the next block)."""
        num_blocks = len(self.block_resolutions)
        if not 0 <= start <= stop <= num_blocks:
            raise IndexError(f"block range [{start}, {stop}) outside [0, {num_blocks}]")
        if noise_mode not in NOISE_MODES:
            raise ValueError(f"unknown noise_mode {noise_mode!r}; use one of {NOISE_MODES}")
        ws = self._as_wplus(ws)
        x, img = state
        blocks = self.blocks
        for k in range(start, stop):
            x, img = blocks[k](x, img, ws[:, self._ws_slices[k]], noise_mode=noise_mode)
        return BlockState(x, img)

    def forward(self, ws: Tensor, noise_mode: str = "const") -> Tensor:
        """Render ws ([N, w_dim] W or [N, num_ws, w_dim] W+) to images [N, C, R, R], roughly in [-1, 1]."""
        return self.run_blocks(0, len(self.block_resolutions), BlockState(None, None), ws, noise_mode).img

    def state_at(self, k: int, ws: Tensor, noise_mode: str = "const") -> BlockState:
        """The state entering block ``k`` (k = 0: (None, None); k = number of blocks: the final state)."""
        return self.run_blocks(0, k, BlockState(None, None), ws, noise_mode)

    def synthesize_from(self, k: int, state: BlockState, ws: Tensor, noise_mode: str = "const") -> Tensor:
        """Run blocks ``k`` ... last from ``state`` (the state entering block ``k``) and return the image.

        ``ws`` is the full set of styles; blocks before ``k`` ignore theirs.
        """
        return self.run_blocks(k, len(self.block_resolutions), BlockState(*state), ws, noise_mode).img


class Generator(nn.Module):
    """StyleGAN2 generator: mapping z -> w, synthesis w -> image, with block-level access for attacks."""

    def __init__(
        self,
        z_dim: int = 512,  # Input latent (Z) dimensionality.
        w_dim: int = 512,  # Intermediate latent (W) dimensionality.
        resolution: int = 256,  # Output resolution (power of two, 8 ... 1024).
        img_channels: int = 3,  # Number of image channels.
        n_mlp: int = 8,  # Number of mapping layers.
        lr_mlp: float = 0.01,  # Learning-rate multiplier of the mapping layers.
        channel_base: int = 32768,  # Channels at resolution r are min(channel_base // r, channel_max).
        channel_max: int = 512,  # Maximum number of channels in any block.
        modconv: str = "auto",  # Modulated-convolution formulation: 'auto', 'grouped' or 'scaled'.
        conv_clamp: float | None = None,  # Clamp conv outputs to +-X (NVlabs' FP16 configs use 256).
        c_dim: int = 0,  # Number of classes of the one-hot label c (NVlabs' conditioning), 0 = unconditional.
    ) -> None:
        super().__init__()
        self._config = dict(
            z_dim=z_dim,
            w_dim=w_dim,
            resolution=resolution,
            img_channels=img_channels,
            n_mlp=n_mlp,
            lr_mlp=lr_mlp,
            channel_base=channel_base,
            channel_max=channel_max,
            modconv=modconv,
            conv_clamp=conv_clamp,
            c_dim=c_dim,
        )
        self.z_dim = z_dim
        self.c_dim = c_dim
        self.w_dim = w_dim
        self.resolution = resolution
        self.img_channels = img_channels
        self.synthesis = SynthesisNetwork(
            w_dim=w_dim,
            resolution=resolution,
            img_channels=img_channels,
            channel_base=channel_base,
            channel_max=channel_max,
            conv_clamp=conv_clamp,
            modconv=modconv,
        )
        self.num_ws = self.synthesis.num_ws
        self.mapping = MappingNetwork(z_dim, w_dim, num_ws=self.num_ws, n_mlp=n_mlp, lr_mlp=lr_mlp, c_dim=c_dim)

    @property
    def config(self) -> dict[str, Any]:
        """Constructor arguments: ``Generator(**G.config)`` rebuilds the architecture."""
        return dict(self._config)

    @property
    def blocks(self) -> list[SynthesisBlock]:
        """Synthesis blocks in order b4 ... b{resolution}."""
        return self.synthesis.blocks

    @property
    def block_resolutions(self) -> list[int]:
        return list(self.synthesis.block_resolutions)

    @property
    def num_blocks(self) -> int:
        return len(self.synthesis.block_resolutions)

    def ws_slice(self, k: int) -> slice:
        """Indices into W+ of the styles block ``k`` consumes."""
        return self.synthesis.ws_slice(k)

    def state_at(self, k: int, ws: Tensor, noise_mode: str = "const") -> BlockState:
        """The state (x, img) entering block ``k``, k = 0 ... num_blocks."""
        return self.synthesis.state_at(k, ws, noise_mode=noise_mode)

    def synthesize_from(self, k: int, state: BlockState, ws: Tensor, noise_mode: str = "const") -> Tensor:
        """Finish the synthesis from the state entering block ``k``; equals ``synthesis(ws)`` bitwise."""
        return self.synthesis.synthesize_from(k, state, ws, noise_mode=noise_mode)

    def run_blocks(self, start: int, stop: int, state: BlockState, ws: Tensor, noise_mode: str = "const") -> BlockState:
        """Advance ``state`` (entering block ``start``) through blocks ``start`` .. ``stop - 1``."""
        return self.synthesis.run_blocks(start, stop, state, ws, noise_mode=noise_mode)

    def forward(
        self,
        z: Tensor,
        c: Tensor | None = None,
        truncation_psi: float = 1.0,
        truncation_cutoff: int | None = None,
        noise_mode: str = "random",
    ) -> Tensor:
        """Render z [N, z_dim] (with one-hot c [N, c_dim] for a conditional generator) to images [N, C, R, R]."""
        ws = self.mapping(z, c, truncation_psi=truncation_psi, truncation_cutoff=truncation_cutoff)
        return self.synthesis(ws, noise_mode=noise_mode)


# ----------------------------------------------------------------------------------------------------------
# Discriminator.


class DiscriminatorBlock(nn.Module):
    """Residual block: two 3x3 convs (the second downsamples) plus a 1x1 downsampling skip."""

    def __init__(
        self,
        in_channels: int,  # Number of input channels, 0 = first block (reads the image through fromrgb).
        tmp_channels: int,  # Number of channels inside the block.
        out_channels: int,  # Number of output channels.
        resolution: int,  # Input resolution of this block.
        img_channels: int,  # Number of image channels.
        resample_filter: Sequence[float] = (1, 3, 3, 1),  # Low-pass filter taps for downsampling.
        conv_clamp: float | None = None,  # Clamp conv outputs to +-X; None disables.
    ) -> None:
        super().__init__()
        if in_channels not in (0, tmp_channels):
            raise ValueError("in_channels must be 0 (first block) or tmp_channels")
        self.in_channels = in_channels
        self.tmp_channels = tmp_channels
        self.resolution = resolution
        self.img_channels = img_channels
        if in_channels == 0:
            self.fromrgb = Conv2dLayer(img_channels, tmp_channels, 1, activation="lrelu", conv_clamp=conv_clamp)
        self.conv0 = Conv2dLayer(tmp_channels, tmp_channels, 3, activation="lrelu", conv_clamp=conv_clamp)
        self.conv1 = Conv2dLayer(
            tmp_channels,
            out_channels,
            3,
            activation="lrelu",
            down=2,
            resample_filter=resample_filter,
            conv_clamp=conv_clamp,
        )
        self.skip = Conv2dLayer(tmp_channels, out_channels, 1, bias=False, down=2, resample_filter=resample_filter)

    def forward(self, x: Tensor) -> Tensor:
        """``x`` is the image for the first block, features otherwise."""
        if self.in_channels == 0:
            assert_shape(x, [None, self.img_channels, self.resolution, self.resolution], "img")
            x = self.fromrgb(x)
        assert_shape(x, [None, self.tmp_channels, self.resolution, self.resolution], "x")
        y = self.skip(x, gain=math.sqrt(0.5))  # sqrt(0.5) on both branches keeps the sum's variance
        x = self.conv1(self.conv0(x), gain=math.sqrt(0.5))
        return y + x


class MinibatchStdLayer(nn.Module):
    """Append the standard deviation across groups of samples as extra channels, to expose mode collapse.

    Group ``j`` holds samples j, j + n, j + 2n, ... (n = ceil(N / G)), which is NVlabs' grouping when N is a
    multiple of G; other batch sizes give groups of sizes differing by at most one instead of an error.
    """

    def __init__(
        self,
        group_size: int | None,  # Samples per group (capped at N); None = the whole minibatch.
        num_channels: int = 1,  # Number of std features (channels are split into that many sets).
    ) -> None:
        super().__init__()
        self.group_size = group_size
        self.num_channels = num_channels

    def forward(self, x: Tensor) -> Tensor:
        n, c, h, w = x.shape
        g = n if self.group_size is None else min(self.group_size, n)
        f = self.num_channels
        num_groups = -(-n // g)
        gid = torch.arange(n, device=x.device) % num_groups
        count = torch.bincount(gid, minlength=num_groups).to(x.dtype).reshape(-1, 1, 1)
        y = x.reshape(n, f, -1)  # [N, F, c*H*W]
        mean = torch.zeros(num_groups, *y.shape[1:], dtype=x.dtype, device=x.device).index_add(0, gid, y)
        y = y - (mean / count)[gid]
        var = torch.zeros_like(mean).index_add(0, gid, y.square()) / count  # [n, F, c*H*W]
        std = (var + 1e-8).sqrt().mean(dim=2)  # [n, F]
        y = std[gid].reshape(n, f, 1, 1).expand(n, f, h, w)
        return torch.cat([x, y], dim=1)


class DiscriminatorEpilogue(nn.Module):
    """Final 4x4 block: minibatch std, 3x3 conv, fully connected layer, one logit."""

    def __init__(
        self,
        in_channels: int,  # Number of input channels.
        resolution: int = 4,  # Resolution of this block.
        mbstd_group_size: int | None = 4,  # Minibatch-std group size; None = whole minibatch.
        mbstd_num_channels: int = 1,  # Number of minibatch-std channels, 0 = disable.
        conv_clamp: float | None = None,  # Clamp conv outputs to +-X; None disables.
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.resolution = resolution
        self.mbstd = MinibatchStdLayer(mbstd_group_size, mbstd_num_channels) if mbstd_num_channels > 0 else None
        self.conv = Conv2dLayer(
            in_channels + mbstd_num_channels, in_channels, 3, activation="lrelu", conv_clamp=conv_clamp
        )
        self.fc = FullyConnectedLayer(in_channels * resolution**2, in_channels, activation="lrelu")
        self.out = FullyConnectedLayer(in_channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        assert_shape(x, [None, self.in_channels, self.resolution, self.resolution], "x")
        if self.mbstd is not None:
            x = self.mbstd(x)
        x = self.conv(x)
        return self.out(self.fc(x.flatten(1)))


class Discriminator(nn.Module):
    """Residual StyleGAN2 discriminator: image [N, C, R, R] -> logit [N, 1]."""

    def __init__(
        self,
        resolution: int = 256,  # Input resolution (power of two, 8 ... 1024).
        img_channels: int = 3,  # Number of image channels.
        channel_base: int = 32768,  # Channels at resolution r are min(channel_base // r, channel_max).
        channel_max: int = 512,  # Maximum number of channels in any block.
        mbstd_group_size: int | None = 4,  # Minibatch-std group size; None = whole minibatch.
        mbstd_num_channels: int = 1,  # Number of minibatch-std channels, 0 = disable.
        conv_clamp: float | None = None,  # Clamp conv outputs to +-X (NVlabs' FP16 configs use 256).
    ) -> None:
        super().__init__()
        _check_resolution(resolution)
        self._config = dict(
            resolution=resolution,
            img_channels=img_channels,
            channel_base=channel_base,
            channel_max=channel_max,
            mbstd_group_size=mbstd_group_size,
            mbstd_num_channels=mbstd_num_channels,
            conv_clamp=conv_clamp,
        )
        self.resolution = resolution
        self.img_channels = img_channels
        self.block_resolutions = [2**i for i in range(int(math.log2(resolution)), 2, -1)]
        for res in self.block_resolutions:
            block = DiscriminatorBlock(
                _channels(channel_base, channel_max, res) if res < resolution else 0,
                _channels(channel_base, channel_max, res),
                _channels(channel_base, channel_max, res // 2),
                resolution=res,
                img_channels=img_channels,
                conv_clamp=conv_clamp,
            )
            setattr(self, f"b{res}", block)
        self.b4 = DiscriminatorEpilogue(
            _channels(channel_base, channel_max, 4),
            mbstd_group_size=mbstd_group_size,
            mbstd_num_channels=mbstd_num_channels,
            conv_clamp=conv_clamp,
        )

    @property
    def config(self) -> dict[str, Any]:
        """Constructor arguments: ``Discriminator(**D.config)`` rebuilds the architecture."""
        return dict(self._config)

    def forward(self, img: Tensor) -> Tensor:
        x = img
        for res in self.block_resolutions:
            x = getattr(self, f"b{res}")(x)
        return self.b4(x)
