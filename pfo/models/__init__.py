"""Plain ``nn.Module`` networks: split victims and the StyleGAN2 prior."""

from pfo.models.resnet import ResNet
from pfo.models.split import Normalize, SplitModel
from pfo.models.victim_file import load_victim, save_victim
from pfo.models.vit import ViT

__all__ = ["Normalize", "ResNet", "SplitModel", "ViT", "load_victim", "save_victim"]
