"""Gradient estimators of variational objectives, one paper per module."""

from .auto import AutoELBO
from .base import ImportanceWeightedGradient, ParticleELBO
from .control_variate import ControlVariateELBO
from .disarm import DisARMELBO
from .iwae import ImportanceWeightedELBO
from .rao_blackwell import RaoBlackwellELBO
from .rloo import ReinforceLeaveOneOutELBO
from .score_function import ScoreFunctionELBO
from .stl import StickingTheLandingELBO

__all__ = [
    "AutoELBO",
    "ControlVariateELBO",
    "DisARMELBO",
    "ImportanceWeightedELBO",
    "ImportanceWeightedGradient",
    "ParticleELBO",
    "RaoBlackwellELBO",
    "ReinforceLeaveOneOutELBO",
    "ScoreFunctionELBO",
    "StickingTheLandingELBO",
]
