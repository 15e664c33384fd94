"""DCGAN generator (Radford et al. 2016) in the PyTorch tutorial's layout, in plain PyTorch, runnable block by block.

The tutorial's generator is one ``nn.Sequential`` called ``main``: a 4x4 transposed convolution from the latent
``z`` [N, nz, 1, 1] to 4x4 features, then transposed convolutions that double the resolution, each followed by
BatchNorm and ReLU, and a last one to ``nc`` image channels followed by Tanh. The parameters live in ``main`` with
the tutorial's layer indices, so a tutorial generator's state dict (the pretrained DigiFace prior's
``netG_state_dict`` among them) loads unchanged.

On top of that layout this module exposes the seam the progressive attack needs, under the names the StyleGAN2
generator uses: block ``k`` is one up-sampling stage (its transposed convolution, then BatchNorm + ReLU or Tanh),
named by the resolution it outputs (b4, b8, ..., b64); the state entering block ``k`` is the activation block
``k - 1`` produced (``state_at``), and ``synthesize_from`` finishes the image from it. There is no mapping network,
no per-layer latent (W+) and no RGB skip image: the latent feeds block 0 only.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from pfo.models.stylegan2_ops import assert_shape


def _check_resolution(resolution: int) -> None:
    if resolution < 8 or resolution & (resolution - 1):
        raise ValueError(f"resolution must be a power of two >= 8, got {resolution}")


class DCGANGenerator(nn.Module):
    """Sequential up-sampling generator z -> image in [-1, 1], with block-level access for attacks.

    The defaults are the tutorial's 64-px generator (nz 100, ngf 64, RGB). Hidden block ``b{r}`` has
    ``ngf * resolution // (2 * r)`` channels (ngf x 8, 4, 2, 1 at 64 px); the last block makes the image.
    """

    def __init__(
        self,
        nz: int = 100,  # Input latent (z) dimensionality.
        ngf: int = 64,  # Feature maps of the last hidden block (at resolution / 2); earlier blocks double it.
        nc: int = 3,  # Number of image channels.
        resolution: int = 64,  # Output resolution (power of two >= 8); one block per doubling from 4x4.
    ) -> None:
        super().__init__()
        _check_resolution(resolution)
        self._config = dict(nz=nz, ngf=ngf, nc=nc, resolution=resolution)
        self.z_dim = nz
        self.resolution = resolution
        self.img_channels = nc
        self.block_resolutions = [2**i for i in range(2, int(math.log2(resolution)) + 1)]
        self.block_channels = [ngf * resolution // (2 * r) for r in self.block_resolutions[:-1]] + [nc]
        layers: list[nn.Module] = []
        self._block_layers: list[slice] = []  # where block k's layers sit in ``main``
        in_channels = nz
        for k, out_channels in enumerate(self.block_channels):
            first, last = k == 0, k == len(self.block_channels) - 1
            start = len(layers)
            # Block 0 grows 1x1 to 4x4 (kernel 4, stride 1, no padding); the others double (stride 2, padding 1).
            layers.append(
                nn.ConvTranspose2d(in_channels, out_channels, 4, 1 if first else 2, 0 if first else 1, bias=False)
            )
            layers += [nn.Tanh()] if last else [nn.BatchNorm2d(out_channels), nn.ReLU()]
            self._block_layers.append(slice(start, len(layers)))
            in_channels = out_channels
        self.main = nn.Sequential(*layers)

    @property
    def config(self) -> dict[str, Any]:
        """Constructor arguments: ``DCGANGenerator(**G.config)`` rebuilds the architecture."""
        return dict(self._config)

    @property
    def num_blocks(self) -> int:
        return len(self.block_resolutions)

    def block(self, k: int) -> nn.Sequential:
        """Block ``k`` (output resolution ``block_resolutions[k]``): a view of its layers in ``main``."""
        return self.main[self._block_layers[k]]

    def state_shape(self, k: int) -> list[int]:
        """Shape of one sample's state entering block ``k`` (k = 0: the latent as [nz, 1, 1])."""
        if k == 0:
            return [self.z_dim, 1, 1]
        return [self.block_channels[k - 1], self.block_resolutions[k - 1], self.block_resolutions[k - 1]]

    def _as_input(self, z: Tensor) -> Tensor:
        if z.ndim == 2:  # [N, nz]: the latent as the attacks hold it
            assert_shape(z, [None, self.z_dim], "z")
            return z[:, :, None, None]
        assert_shape(z, [None, self.z_dim, 1, 1], "z")
        return z

    def run_blocks(self, start: int, stop: int, state: Tensor) -> Tensor:
        """Run blocks ``start`` .. ``stop - 1`` from ``state`` (the input of block ``start``; for block 0 the
        latent, [N, nz] or [N, nz, 1, 1]): the one loop every entry point shares."""
        if not 0 <= start <= stop <= self.num_blocks:
            raise IndexError(f"block range [{start}, {stop}) outside [0, {self.num_blocks}]")
        x = self._as_input(state) if start == 0 else state
        for k in range(start, stop):
            assert_shape(x, [None, *self.state_shape(k)], f"input of b{self.block_resolutions[k]}")
            x = self.block(k)(x)
        return x

    def state_at(self, k: int, z: Tensor) -> Tensor:
        """The activation entering block ``k`` (k = 0: the latent; k = num_blocks: the image)."""
        return self.run_blocks(0, k, z) if k > 0 else self._as_input(z)

    def synthesize_from(self, k: int, state: Tensor) -> Tensor:
        """Finish the image from the state entering block ``k``; equals ``forward(z)`` bitwise."""
        return self.run_blocks(k, self.num_blocks, state)

    def forward(self, z: Tensor) -> Tensor:
        """Render latents ``z`` ([N, nz] or the tutorial's [N, nz, 1, 1]) to images [N, nc, R, R] in [-1, 1]."""
        return self.run_blocks(0, self.num_blocks, z)


def is_dcgan_checkpoint(obj: Any) -> bool:
    """Whether a ``torch.load``-ed object is a tutorial DCGAN generator: a checkpoint holding ``netG_state_dict``
    (the tutorial's training script and the DigiFace package save that) or such a state dict itself."""
    if isinstance(obj, Mapping) and "netG_state_dict" in obj:
        return True
    return isinstance(obj, Mapping) and "main.0.weight" in obj and "main.1.running_mean" in obj


def dcgan_from_state_dict(state_dict: Mapping[str, Tensor], where: str = "the state dict") -> DCGANGenerator:
    """Build the generator a tutorial-layout state dict describes (nz, ngf, nc and resolution read from the
    weight shapes), load it strictly and return it in eval mode."""
    convs = sorted(
        (int(key.split(".")[1]), value)
        for key, value in state_dict.items()
        if key.startswith("main.") and key.endswith(".weight") and getattr(value, "ndim", 0) == 4
    )
    if len(convs) < 2:
        raise ValueError(f"{where} is not a DCGAN generator: it holds {len(convs)} transposed convolutions")
    nz, nc = convs[0][1].shape[0], convs[-1][1].shape[1]
    ngf = convs[-1][1].shape[0]
    G = DCGANGenerator(nz=nz, ngf=ngf, nc=nc, resolution=2 ** (len(convs) + 1))
    try:
        G.load_state_dict(dict(state_dict))
    except RuntimeError as error:
        raise ValueError(
            f"{where} does not fit the tutorial DCGAN generator layout ({str(error).splitlines()[0]})"
        ) from error
    return G.eval()


def load_dcgan(checkpoint: Mapping[str, Any], where: str = "the checkpoint") -> DCGANGenerator:
    """The generator of a tutorial DCGAN checkpoint (``{'netG_state_dict': ...}``) or bare state dict."""
    state_dict = checkpoint.get("netG_state_dict", checkpoint)
    if not isinstance(state_dict, Mapping):
        raise ValueError(f"{where}: `netG_state_dict` is a {type(state_dict).__name__}, not a state dict")
    return dcgan_from_state_dict(state_dict, where)
