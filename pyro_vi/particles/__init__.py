"""The run phase: the guide and the model run with particles, once, and
everything an estimator declared it needs computed into a frozen record
(:class:`Particles`); the estimators' arithmetic reads only that record."""

from .handlers import ScoreFunctionMessenger, is_point_mass, score_function_guide
from .record import BernoulliTerm, Particles, ScoreDistribution, SiteTerm
from .run import Needs, Sampler

__all__ = [
    "BernoulliTerm",
    "Needs",
    "Particles",
    "Sampler",
    "ScoreDistribution",
    "ScoreFunctionMessenger",
    "SiteTerm",
    "is_point_mass",
    "score_function_guide",
]
