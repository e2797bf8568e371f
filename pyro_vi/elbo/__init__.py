"""Gradient estimators of variational objectives, one per module."""

from .control_variate import ControlVariateELBO
from .disarm import DisARMELBO
from .importance_weighted import ImportanceWeightedELBO
from .particles import ParticleELBO, ParticleTerms, SiteTerm, score_function_guide
from .rao_blackwell import RaoBlackwellELBO
from .reinforce_leave_one_out import ReinforceLeaveOneOutELBO
from .score_function import ScoreFunctionELBO
from .sticking_the_landing import StickingTheLandingELBO

__all__ = [
    "ControlVariateELBO",
    "DisARMELBO",
    "ImportanceWeightedELBO",
    "ParticleELBO",
    "ParticleTerms",
    "RaoBlackwellELBO",
    "ReinforceLeaveOneOutELBO",
    "ScoreFunctionELBO",
    "SiteTerm",
    "StickingTheLandingELBO",
    "score_function_guide",
]
