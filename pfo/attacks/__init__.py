"""Stage 3: data-reconstruction attacks on split inference, and client-side defenses."""

from pfo.attacks.base import Reconstruction, ReconstructionAttack
from pfo.attacks.defenses import (
    Defense,
    Dropout,
    GaussianNoise,
    LaplaceNoise,
    Quantization,
    TopKPruning,
    accuracy_under_defense,
)
from pfo.attacks.encoder_trainer import LatentEncoderTrainer, load_encoder
from pfo.attacks.glass import GLASS
from pfo.attacks.inverse_network import InverseNetwork, InverseNetworkTrainer
from pfo.attacks.lm import LM
from pfo.attacks.loss import AttackLoss, feature_distance, total_variation
from pfo.attacks.optimization import OptimizationAttack
from pfo.attacks.outputs import AttackOutputs
from pfo.attacks.pfo import PFO, GANInversionAttack
from pfo.attacks.pfo_extended import PFOExtended
from pfo.attacks.projection import l1_radius, project_deviation_, project_l1_ball
from pfo.attacks.radius_calibration import RadiusCalibration, calibrate_radius, rule_yaml
from pfo.attacks.rmle import RMLE
from pfo.attacks.strategy import IndependentProcesses
from pfo.attacks.targets import Targets, save_features, target_seed

__all__ = [
    "GLASS",
    "LM",
    "PFO",
    "PFOExtended",
    "RMLE",
    "AttackLoss",
    "AttackOutputs",
    "Defense",
    "Dropout",
    "GANInversionAttack",
    "GaussianNoise",
    "IndependentProcesses",
    "InverseNetwork",
    "InverseNetworkTrainer",
    "LaplaceNoise",
    "LatentEncoderTrainer",
    "OptimizationAttack",
    "Quantization",
    "RadiusCalibration",
    "Reconstruction",
    "ReconstructionAttack",
    "Targets",
    "TopKPruning",
    "accuracy_under_defense",
    "calibrate_radius",
    "feature_distance",
    "l1_radius",
    "load_encoder",
    "project_deviation_",
    "project_l1_ball",
    "rule_yaml",
    "save_features",
    "target_seed",
    "total_variation",
]
