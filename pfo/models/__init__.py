"""Plain ``nn.Module`` networks: split victims and the priors (StyleGAN2, DCGAN), with the prior interface."""

from pfo.models.dcgan import DCGANGenerator
from pfo.models.generator_file import load_discriminator_from_file, load_generator, load_prior, save_generator
from pfo.models.graph_split import TimmModel, TorchvisionModel
from pfo.models.head import Head
from pfo.models.latent_encoder import LatentEncoder
from pfo.models.named_priors import NAMED_PRIORS, load_named_prior, named_prior_path
from pfo.models.prior import DCGANPrior, Prior, StyleGAN2Prior, as_prior
from pfo.models.resnet import ResNet
from pfo.models.split import Normalize, SplitModel
from pfo.models.stylegan2 import Discriminator, Generator
from pfo.models.victim_file import load_victim, save_victim
from pfo.models.vit import ViT

__all__ = ["Normalize", "ResNet", "SplitModel", "ViT", "load_victim", "save_victim"]
__all__ += ["Discriminator", "Generator", "load_discriminator_from_file", "load_generator", "load_prior"]
__all__ += ["save_generator"]
__all__ += ["NAMED_PRIORS", "DCGANGenerator", "DCGANPrior", "Prior", "StyleGAN2Prior", "as_prior", "load_named_prior"]
__all__ += ["named_prior_path"]
__all__ += ["Head", "TimmModel", "TorchvisionModel"]
__all__ += ["LatentEncoder"]
