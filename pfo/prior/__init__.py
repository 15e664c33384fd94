"""Stage 2: training or fine-tuning the StyleGAN2 prior (``python train.py fit --config configs/gan_*.yaml``)."""

from pfo.prior.augment import DiffAugment
from pfo.prior.system import GANDDPStrategy, GANSystem, stylegan2_adam

__all__ = ["DiffAugment", "GANDDPStrategy", "GANSystem", "stylegan2_adam"]
