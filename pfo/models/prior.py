"""The prior as the GAN-inversion attacks (PFO, GLASS) see it: one small interface over any block-structured
generator.

An attack needs, and gets from a :class:`Prior`, nothing else than:

- latents: ``sample_z`` draws z from a per-target ``torch.Generator``; ``map`` turns z (and, for a conditional
  generator, a class vector ``c``) into the latent the attack searches (StyleGAN2: w, with truncation;
  DCGAN: z itself, truncation as a scale towards its mean 0); ``expand`` makes the latent that stage 0 optimises
  (W+ where the generator has one style per layer, otherwise the latent unchanged) and ``render`` draws it;
- blocks: ``num_blocks`` and ``block_resolutions``; ``state_at(k, latent)`` is the state entering block ``k``, a
  tuple of tensors named by ``state_names``; ``synthesize_from`` finishes the image from such a state and
  ``run_blocks`` steps it to a later block; ``latent_split(k)`` says which part of the expanded latent blocks
  ``k`` and later still read (the styles PFO optimises beside the state), or ``None`` when they read none;
- facts: ``value_range`` of the images, ``wplus_shape`` (or ``None``), ``resolution``, ``img_channels``,
  ``c_dim``, and the generator's ``config``.

:func:`as_prior` wraps pfo's StyleGAN2 :class:`~pfo.models.stylegan2.Generator` and the tutorial-layout
:class:`~pfo.models.dcgan.DCGANGenerator`; another block-structured generator joins by subclassing :class:`Prior`.
The adapters only forward to the generators' own block API, so the StyleGAN2 path computes exactly what it
computed before this interface existed (tests/test_priors.py checks it bitwise).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from pfo.models.dcgan import DCGANGenerator
from pfo.models.stylegan2 import NOISE_MODES, BlockState, Generator

State = tuple[Tensor, ...]


class Prior:
    """A frozen generator seen through the block interface. Subclasses wrap one family of generators."""

    value_range: tuple[float, float] = (-1.0, 1.0)  # range of the images ``render`` returns
    state_names: tuple[str, ...] = ("x",)  # the tensors that make up the state between blocks
    latent_name: str = "z"  # what stage 0 optimises, for progress bars and curves

    def __init__(self, generator: nn.Module) -> None:
        self.generator = generator

    # ----- facts ------------------------------------------------------------------------------------------
    @property
    def config(self) -> dict[str, Any]:
        """The generator's constructor arguments."""
        return dict(self.generator.config)

    @property
    def z_dim(self) -> int:
        return int(self.generator.z_dim)

    @property
    def c_dim(self) -> int:
        """Size of the class vector ``map`` accepts (0: unconditional)."""
        return int(self.config.get("c_dim", 0))

    @property
    def resolution(self) -> int:
        return int(self.generator.resolution)

    @property
    def img_channels(self) -> int:
        return int(self.generator.img_channels)

    @property
    def num_blocks(self) -> int:
        return int(self.generator.num_blocks)

    @property
    def block_resolutions(self) -> list[int]:
        return list(self.generator.block_resolutions)

    @property
    def wplus_shape(self) -> tuple[int, int] | None:
        """(number of styles, style size) of the per-layer latent, or ``None`` when the generator has none."""
        return None

    # ----- latents ----------------------------------------------------------------------------------------
    def sample_z(self, count: int, generator: torch.Generator) -> Tensor:
        """``count`` standard-normal latents [count, z_dim] on the CPU, from ``generator`` (a target's own)."""
        return torch.randn(count, self.z_dim, generator=generator)

    def map(self, z: Tensor, c: Tensor | None = None, truncation: float = 1.0) -> Tensor:
        """The latent the attack searches, for ``z`` [N, z_dim] and class vectors ``c`` [N, c_dim] (or None)."""
        raise NotImplementedError

    def expand(self, latent: Tensor) -> Tensor:
        """A new tensor holding the latent stage 0 optimises (W+ where there is one)."""
        return latent.detach().clone()

    def render(self, latent: Tensor) -> Tensor:
        """Images [N, C, R, R] in ``value_range`` from a mapped or expanded latent."""
        raise NotImplementedError

    # ----- blocks -----------------------------------------------------------------------------------------
    def state_at(self, k: int, latent: Tensor) -> State:
        """The state entering block ``k`` (1 <= k < num_blocks), one tensor per name in ``state_names``."""
        raise NotImplementedError

    def synthesize_from(self, k: int, state: State, latent: Tensor) -> Tensor:
        """The image from the state entering block ``k``; ``render(latent)`` when ``state = state_at(k, latent)``."""
        raise NotImplementedError

    def run_blocks(self, start: int, stop: int, state: State, latent: Tensor) -> State:
        """Advance ``state`` (entering block ``start``) through blocks ``start`` .. ``stop - 1``."""
        raise NotImplementedError

    def latent_split(self, k: int) -> int | None:
        """Index along dim 1 of the expanded latent from which blocks ``k`` and later read it; ``None`` when
        they read none of it."""
        return None


class StyleGAN2Prior(Prior):
    """pfo's StyleGAN2 :class:`~pfo.models.stylegan2.Generator`: latent w (truncated towards ``w_avg``), W+ with
    one style per layer, state ``(x, img)``: block features and the running RGB skip image."""

    state_names = ("x", "img")
    latent_name = "wplus"

    def __init__(self, generator: Generator, noise_mode: str = "const") -> None:
        """
        Args:
            generator: the StyleGAN2 generator.
            noise_mode: per-layer noise of every rendering: ``const`` (the fixed buffers) or ``none``.
        """
        if noise_mode not in NOISE_MODES:
            raise ValueError(f"unknown noise_mode {noise_mode!r}; use one of {NOISE_MODES}")
        super().__init__(generator)
        self.noise_mode = noise_mode

    @property
    def wplus_shape(self) -> tuple[int, int]:
        return (self.generator.num_ws, self.generator.w_dim)

    def map(self, z: Tensor, c: Tensor | None = None, truncation: float = 1.0) -> Tensor:
        if c is None:
            return self.generator.mapping(z, truncation_psi=truncation)
        return self.generator.mapping(z, c=c, truncation_psi=truncation)

    def expand(self, latent: Tensor) -> Tensor:
        if latent.ndim == 3:
            return latent.detach().clone()
        return latent.unsqueeze(1).repeat(1, self.generator.num_ws, 1)

    def render(self, latent: Tensor) -> Tensor:
        return self.generator.synthesis(latent, noise_mode=self.noise_mode)

    def state_at(self, k: int, latent: Tensor) -> State:
        return self.generator.state_at(k, latent, noise_mode=self.noise_mode)

    def synthesize_from(self, k: int, state: State, latent: Tensor) -> Tensor:
        return self.generator.synthesize_from(k, BlockState(*state), latent, self.noise_mode)

    def run_blocks(self, start: int, stop: int, state: State, latent: Tensor) -> State:
        return self.generator.run_blocks(start, stop, BlockState(*state), latent, self.noise_mode)

    def latent_split(self, k: int) -> int:
        return self.generator.ws_slice(k).start


class DCGANPrior(Prior):
    """A sequential up-sampling generator (:class:`~pfo.models.dcgan.DCGANGenerator`): the latent is z, which
    only block 0 reads; the state entering block k is one activation ``x``; no W+, no skip image.

    Truncation scales z towards its mean 0 (``psi * z``), the counterpart of StyleGAN's move towards ``w_avg``.
    """

    def map(self, z: Tensor, c: Tensor | None = None, truncation: float = 1.0) -> Tensor:
        if c is not None:
            raise ValueError("this DCGAN prior is unconditional; it takes no class vector")
        return z * truncation if truncation != 1 else z

    def render(self, latent: Tensor) -> Tensor:
        return self.generator(latent)

    def state_at(self, k: int, latent: Tensor) -> State:
        return (self.generator.state_at(k, latent),)

    def synthesize_from(self, k: int, state: State, latent: Tensor) -> Tensor:
        (x,) = state
        return self.generator.synthesize_from(k, x if k > 0 else latent)

    def run_blocks(self, start: int, stop: int, state: State, latent: Tensor) -> State:
        (x,) = state
        return (self.generator.run_blocks(start, stop, x if start > 0 else latent),)


def as_prior(generator: nn.Module | Prior, noise_mode: str = "const") -> Prior:
    """The :class:`Prior` view of a generator (a Prior is returned as it is)."""
    if isinstance(generator, Prior):
        return generator
    if isinstance(generator, Generator):
        return StyleGAN2Prior(generator, noise_mode)
    if isinstance(generator, DCGANGenerator):
        return DCGANPrior(generator)
    raise TypeError(
        f"no prior interface for a {type(generator).__name__}; use a StyleGAN2 Generator or a DCGANGenerator, "
        f"or wrap your generator in a subclass of pfo.models.prior.Prior"
    )
