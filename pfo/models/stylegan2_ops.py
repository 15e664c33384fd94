"""Low-level StyleGAN2 operations in plain PyTorch.

Everything here is built from ``F.conv2d``, ``F.conv_transpose2d``, ``F.pad`` and element-wise ops, so the
generator runs (and differentiates) on any device without compiled extensions. The conventions (weight layout,
filter normalisation, padding arithmetic, which convolutions flip their kernel) follow NVlabs'
stylegan2-ada-pytorch, so that its checkpoints load unchanged and reproduce its outputs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

MODCONV_IMPLS = ("grouped", "scaled")
LRELU_ALPHA = 0.2
LRELU_GAIN = math.sqrt(2.0)  # keeps the second moment of N(0,1) activations after a leaky ReLU


def assert_shape(t: Tensor, shape: Sequence[int | None], name: str = "tensor") -> None:
    """Check ``t.shape`` against ``shape`` (``None`` matches any size) with a readable message."""
    ok = t.ndim == len(shape) and all(s is None or s == d for s, d in zip(shape, t.shape))
    if not ok:
        want = ", ".join("*" if s is None else str(s) for s in shape)
        raise AssertionError(f"{name} has shape {list(t.shape)}, expected [{want}]")


def normalize_2nd_moment(x: Tensor, dim: int = 1, eps: float = 1e-8) -> Tensor:
    """Scale each vector to unit mean square, so the mapping network sees z on a fixed sphere."""
    return x * (x.square().mean(dim=dim, keepdim=True) + eps).rsqrt()


# ----------------------------------------------------------------------------------------------------------
# Bias + activation.


def bias_act(
    x: Tensor,
    b: Tensor | None = None,
    act: str = "linear",
    gain: float | None = None,
    clamp: float | None = None,
) -> Tensor:
    """Add a per-channel bias (dim 1), apply the activation, scale by ``gain`` and clamp to +-``clamp``.

    ``gain=None`` takes the activation's default (sqrt(2) for ``lrelu``, 1 for ``linear``).
    """
    if act not in ("linear", "lrelu"):
        raise ValueError(f"unknown activation {act!r}; use 'linear' or 'lrelu'")
    if gain is None:
        gain = LRELU_GAIN if act == "lrelu" else 1.0
    if b is not None:
        x = x + b.reshape([1, -1] + [1] * (x.ndim - 2))
    if act == "lrelu":
        x = F.leaky_relu(x, LRELU_ALPHA)
    if gain != 1:
        x = x * gain
    if clamp is not None:
        x = x.clamp(-clamp, clamp)
    return x


# ----------------------------------------------------------------------------------------------------------
# FIR filtering.


def setup_filter(f: Sequence[float] | Tensor, gain: float = 1.0) -> Tensor:
    """Turn 1-D taps into the normalised 2-D filter (outer product, summing to ``gain``)."""
    f = torch.as_tensor(f, dtype=torch.float32)
    if f.ndim == 1:
        f = torch.outer(f, f)
    if f.ndim != 2:
        raise ValueError(f"filter must be 1-D or 2-D, got {f.ndim}-D")
    return f * (gain / f.sum())


def _depthwise(f: Tensor, channels: int, dtype: torch.dtype) -> Tensor:
    return f.to(dtype)[None, None].repeat(channels, 1, 1, 1)


def upfirdn2d(
    x: Tensor,
    f: Tensor,
    up: int = 1,
    down: int = 1,
    padding: Sequence[int] = (0, 0, 0, 0),
    gain: float = 1.0,
    flip_filter: bool = False,
) -> Tensor:
    """Upsample (zero insertion), pad, FIR-filter and downsample every channel of ``x`` [N, C, H, W].

    Same semantics as NVlabs' ``upfirdn2d``: ``padding`` is (x0, x1, y0, y1) on the upsampled image, negative
    values crop, the filter is applied as a true convolution unless ``flip_filter``. Zero insertion and the
    filter are fused into one depthwise ``conv_transpose2d`` (the transposed convolution *is* the convolution
    of the zero-stuffed input), so no zero-stuffed tensor is built.
    """
    assert_shape(x, [None, None, None, None], "x")
    if up > 1 and down > 1:
        raise ValueError("upfirdn2d: up and down together are not supported")
    c = x.shape[1]
    kh, kw = f.shape
    px0, px1, py0, py1 = padding
    f = f * gain
    if up > 1:
        # conv_transpose2d convolves (does not correlate): the kernel is flipped only to correlate.
        weight = _depthwise(f.flip([0, 1]) if flip_filter else f, c, x.dtype)
        # The full transposed output starts kw-1 samples before the padded window: move the padding there.
        px0, px1, py0, py1 = px0 - (kw - 1), px1 - (kw - up), py0 - (kh - 1), py1 - (kh - up)
        crop_x, crop_y = max(min(-px0, -px1), 0), max(min(-py0, -py1), 0)
        x = F.conv_transpose2d(x, weight, stride=up, padding=(crop_y, crop_x), groups=c)
        rest = [px0 + crop_x, px1 + crop_x, py0 + crop_y, py1 + crop_y]
        return F.pad(x, rest) if any(rest) else x
    weight = _depthwise(f if flip_filter else f.flip([0, 1]), c, x.dtype)
    if any((px0, px1, py0, py1)):
        if px0 == px1 and py0 == py1 and px0 >= 0 and py0 >= 0:
            return F.conv2d(x, weight, stride=down, padding=(py0, px0), groups=c)
        x = F.pad(x, [px0, px1, py0, py1])
    return F.conv2d(x, weight, stride=down, groups=c)


def upsample2d(x: Tensor, f: Tensor, up: int = 2) -> Tensor:
    """Upsample by ``up`` with FIR low-pass ``f``; output is exactly ``up`` times larger."""
    fh, fw = f.shape
    p = [(fw + up - 1) // 2, (fw - up) // 2, (fh + up - 1) // 2, (fh - up) // 2]
    return upfirdn2d(x, f, up=up, padding=p, gain=up * up)


def downsample2d(x: Tensor, f: Tensor, down: int = 2) -> Tensor:
    """FIR low-pass then keep every ``down``-th sample; output is exactly ``down`` times smaller."""
    fh, fw = f.shape
    p = [(fw - down + 1) // 2, (fw - down) // 2, (fh - down + 1) // 2, (fh - down) // 2]
    return upfirdn2d(x, f, down=down, padding=p)


# ----------------------------------------------------------------------------------------------------------
# Convolution with resampling.


def conv2d_resample(
    x: Tensor,
    w: Tensor,
    f: Tensor | None = None,
    up: int = 1,
    down: int = 1,
    padding: int = 0,
    groups: int = 1,
    flip_weight: bool = True,
) -> Tensor:
    """2-D convolution with optional FIR up- or downsampling by 2 (or any integer), as NVlabs defines it.

    ``flip_weight=True`` correlates (like ``F.conv2d``); ``False`` convolves. NVlabs' synthesis layers use
    ``False`` when upsampling, and pretrained weights depend on it. ``padding`` refers to the resampled image.
    """
    out_channels, in_per_group, kh, kw = w.shape
    if up > 1 and down > 1:
        raise ValueError("conv2d_resample: up and down together are not supported")
    if up == 1 and down == 1:
        w = w if flip_weight else w.flip([2, 3])
        return F.conv2d(x, w, padding=padding, groups=groups)
    assert f is not None, "resampling needs a filter"
    fh, fw = f.shape
    if down > 1:
        p = [
            padding + (fw - down + 1) // 2,
            padding + (fw - down) // 2,
            padding + (fh - down + 1) // 2,
            padding + (fh - down) // 2,
        ]
        w = w if flip_weight else w.flip([2, 3])
        if kh == 1 and kw == 1:  # a 1x1 conv commutes with the filter: downsample first, 4x cheaper
            return F.conv2d(upfirdn2d(x, f, down=down, padding=p), w, groups=groups)
        return F.conv2d(upfirdn2d(x, f, padding=p), w, stride=down, groups=groups)
    # Upsampling: strided transposed convolution, then the FIR filter on the result.
    if groups == 1:
        wt = w.transpose(0, 1)
    else:
        wt = w.reshape(groups, out_channels // groups, in_per_group, kh, kw).transpose(1, 2)
        wt = wt.reshape(groups * in_per_group, out_channels // groups, kh, kw)
    wt = wt.flip([2, 3]) if flip_weight else wt  # conv_transpose2d convolves; flip to correlate
    px0 = padding + (fw + up - 1) // 2 - (kw - 1)
    px1 = padding + (fw - up) // 2 - (kw - up)
    py0 = padding + (fh + up - 1) // 2 - (kh - 1)
    py1 = padding + (fh - up) // 2 - (kh - up)
    pxt, pyt = max(min(-px0, -px1), 0), max(min(-py0, -py1), 0)
    x = F.conv_transpose2d(x, wt, stride=up, padding=(pyt, pxt), groups=groups)
    return upfirdn2d(x, f, padding=[px0 + pxt, px1 + pxt, py0 + pyt, py1 + pyt], gain=up * up)


# ----------------------------------------------------------------------------------------------------------
# Modulated convolution.


def modulated_conv2d(
    x: Tensor,
    weight: Tensor,
    styles: Tensor,
    noise: Tensor | None = None,
    up: int = 1,
    padding: int = 0,
    resample_filter: Tensor | None = None,
    demodulate: bool = True,
    flip_weight: bool = True,
    impl: str = "grouped",
) -> Tensor:
    """StyleGAN2 modulated convolution: scale input channels by per-sample ``styles``, convolve, demodulate.

    ``x`` [N, I, H, W], ``weight`` [O, I, k, k], ``styles`` [N, I]; ``noise`` broadcasts onto the output
    after demodulation. Two formulations, equal up to float rounding:

    - ``grouped``: build per-sample weights [N*O, I, k, k] and run one grouped convolution (NVlabs
      ``fused_modconv=True``). Demodulation is folded into the weights.
    - ``scaled``: scale ``x`` by the styles, convolve with the shared weight, scale the output by the
      demodulation coefficients (NVlabs ``fused_modconv=False``). One ordinary convolution for the whole
      batch; its coefficients come from a [N, I] x [I, O] product, not the [N, O, I, k, k] weight tensor.
    """
    n = x.shape[0]
    out_channels, in_channels, kh, kw = weight.shape
    assert_shape(x, [n, in_channels, None, None], "x")
    assert_shape(styles, [n, in_channels], "styles")
    if impl == "scaled":
        x = x * styles.reshape(n, -1, 1, 1)
        x = conv2d_resample(x, weight, resample_filter, up=up, padding=padding, flip_weight=flip_weight)
        if demodulate:
            wsq = weight.square().sum(dim=[2, 3])  # [O, I]
            dcoefs = (styles.square() @ wsq.t() + 1e-8).rsqrt()  # [N, O]
            x = x * dcoefs.reshape(n, -1, 1, 1)
        return x + noise if noise is not None else x
    if impl != "grouped":
        raise ValueError(f"unknown modconv impl {impl!r}; use one of {MODCONV_IMPLS}")
    w = weight.unsqueeze(0) * styles.reshape(n, 1, -1, 1, 1)  # [N, O, I, k, k]
    if demodulate:
        w = w * (w.square().sum(dim=[2, 3, 4]) + 1e-8).rsqrt().reshape(n, -1, 1, 1, 1)
    x = x.reshape(1, n * in_channels, *x.shape[2:])
    w = w.reshape(n * out_channels, in_channels, kh, kw)
    x = conv2d_resample(x, w, resample_filter, up=up, padding=padding, groups=n, flip_weight=flip_weight)
    x = x.reshape(n, out_channels, *x.shape[2:])
    return x + noise if noise is not None else x


def resolve_modconv(mode: str, x: Tensor, training: bool = False) -> str:
    """Pick the modulated-convolution formulation for ``mode`` given the device of ``x``.

    ``auto`` on CPU picks ``scaled``: ``bench/modconv.py`` (1 thread, torch 2.14) measured it as fast or
    faster at batch 1 and much faster at batch 32, in both the training and the attack setting, e.g. the
    whole 32-px prior generator forward+backward at batch 32: 634 ms grouped vs 218 ms scaled (training),
    512 vs 194 ms (attack). One shared-weight convolution uses oneDNN's large kernels; the grouped form runs
    N small convolutions and must build and differentiate the [N, O, I, k, k] weights (the styles need
    gradients in both settings).
    On CUDA it follows NVlabs' PyTorch code (``fused_modconv = not training``): ``scaled`` in training mode,
    ``grouped`` in eval mode, which is also what their projector (a latent-optimisation attack, G in eval)
    differentiates through. Not measured here (no GPU); name a formulation to override.
    The choice depends only on device and mode, never on grad mode or batch, so ``state_at`` +
    ``synthesize_from`` reproduce ``synthesis`` bitwise.
    """
    if mode in MODCONV_IMPLS:
        return mode
    if mode != "auto":
        raise ValueError(f"unknown modconv {mode!r}; use 'auto' or one of {MODCONV_IMPLS}")
    if x.device.type == "cuda":
        return "scaled" if training else "grouped"
    return "scaled"


# ----------------------------------------------------------------------------------------------------------
# Equalised-learning-rate layers.


class FullyConnectedLayer(nn.Module):
    """Linear layer with equalised learning rate.

    The weight is stored as N(0,1)/lr_multiplier and scaled at run time by lr_multiplier/sqrt(fan_in), so
    every layer learns at the same speed under Adam whatever its fan-in; ``lr_multiplier`` slows a layer down
    (0.01 in the mapping network).
    """

    def __init__(
        self,
        in_features: int,  # Number of input features.
        out_features: int,  # Number of output features.
        bias: bool = True,  # Add a learned bias before the activation?
        activation: str = "linear",  # 'linear' or 'lrelu'.
        lr_multiplier: float = 1.0,  # Learning-rate multiplier of this layer.
        bias_init: float = 0.0,  # Initial value of the bias (1 for style affines: styles start at 1).
    ) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.activation = activation
        self.weight = nn.Parameter(torch.randn([out_features, in_features]) / lr_multiplier)
        self.bias = nn.Parameter(torch.full([out_features], float(bias_init))) if bias else None
        self.weight_gain = lr_multiplier / math.sqrt(in_features)
        self.bias_gain = lr_multiplier

    def forward(self, x: Tensor) -> Tensor:
        w = self.weight * self.weight_gain
        b = None
        if self.bias is not None:
            b = self.bias * self.bias_gain if self.bias_gain != 1 else self.bias
        if self.activation == "linear":
            return F.linear(x, w, b)
        return bias_act(F.linear(x, w), b, act=self.activation)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, activation={self.activation}"


class Conv2dLayer(nn.Module):
    """Convolution with equalised learning rate, optional FIR down/upsampling, bias, activation and clamp."""

    def __init__(
        self,
        in_channels: int,  # Number of input channels.
        out_channels: int,  # Number of output channels.
        kernel_size: int,  # Width and height of the kernel.
        bias: bool = True,  # Add a learned bias before the activation?
        activation: str = "linear",  # 'linear' or 'lrelu'.
        up: int = 1,  # Integer upsampling factor.
        down: int = 1,  # Integer downsampling factor.
        resample_filter: Sequence[float] = (1, 3, 3, 1),  # Low-pass filter taps for resampling.
        conv_clamp: float | None = None,  # Clamp the output to +-X; None disables.
    ) -> None:
        super().__init__()
        self.activation = activation
        self.up = up
        self.down = down
        self.conv_clamp = conv_clamp
        self.padding = kernel_size // 2
        self.weight_gain = 1 / math.sqrt(in_channels * kernel_size**2)
        self.register_buffer("resample_filter", setup_filter(resample_filter), persistent=False)
        self.weight = nn.Parameter(torch.randn([out_channels, in_channels, kernel_size, kernel_size]))
        self.bias = nn.Parameter(torch.zeros([out_channels])) if bias else None

    def forward(self, x: Tensor, gain: float = 1.0) -> Tensor:
        w = self.weight * self.weight_gain
        x = conv2d_resample(
            x,
            w,
            self.resample_filter,
            up=self.up,
            down=self.down,
            padding=self.padding,
            flip_weight=self.up == 1,
        )
        act_gain = (LRELU_GAIN if self.activation == "lrelu" else 1.0) * gain
        clamp = self.conv_clamp * gain if self.conv_clamp is not None else None
        return bias_act(x, self.bias, act=self.activation, gain=act_gain, clamp=clamp)
