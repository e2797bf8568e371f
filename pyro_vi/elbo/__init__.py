"""Gradient estimators of variational objectives, one per module."""

from .control_variate import ControlVariateELBO
from .particles import ParticleELBO, ParticleTerms, score_function_guide
from .rao_blackwell import RaoBlackwellELBO
from .score_function import ScoreFunctionELBO

__all__ = [
    "ControlVariateELBO",
    "ParticleELBO",
    "ParticleTerms",
    "RaoBlackwellELBO",
    "ScoreFunctionELBO",
    "score_function_guide",
]
