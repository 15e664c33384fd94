"""Stage 1: training the victim classifier."""

from pfo.victim.system import VictimClassifier

__all__ = ["VictimClassifier"]
