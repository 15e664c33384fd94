"""Plain ``nn.Module`` networks: split victims and the StyleGAN2 prior."""

from pfo.models.generator_file import load_discriminator_from_file, load_generator, load_prior, save_generator
from pfo.models.resnet import ResNet
from pfo.models.split import Normalize, SplitModel
from pfo.models.stylegan2 import Discriminator, Generator
from pfo.models.victim_file import load_victim, save_victim
from pfo.models.vit import ViT

__all__ = ["Normalize", "ResNet", "SplitModel", "ViT", "load_victim", "save_victim"]
__all__ += ["Discriminator", "Generator", "load_discriminator_from_file", "load_generator", "load_prior"]
__all__ += ["save_generator"]
