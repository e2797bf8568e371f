"""pyro_vi: variational-inference gradient estimators for Pyro.

Each estimator is a :class:`pyro.infer.ELBO` that drops into
:class:`pyro.infer.SVI` where ``Trace_ELBO`` goes.
"""

from .diagnostics import GradientStats, gradient_statistics, gradient_variance_table, psis_khat
from .elbo import (
    ControlVariateELBO,
    ImportanceWeightedELBO,
    ParticleELBO,
    ParticleTerms,
    RaoBlackwellELBO,
    ScoreFunctionELBO,
    StickingTheLandingELBO,
    score_function_guide,
)
from .gumbel_softmax import categorical_from_relaxed, gumbel_softmax_sample
from .inference_data import to_inference_data
from .training import FitResult, NonFiniteError, fit

__version__ = "0.1.0"

__all__ = [
    "ControlVariateELBO",
    "FitResult",
    "GradientStats",
    "ImportanceWeightedELBO",
    "NonFiniteError",
    "ParticleELBO",
    "ParticleTerms",
    "RaoBlackwellELBO",
    "ScoreFunctionELBO",
    "StickingTheLandingELBO",
    "categorical_from_relaxed",
    "fit",
    "gradient_statistics",
    "gradient_variance_table",
    "gumbel_softmax_sample",
    "psis_khat",
    "score_function_guide",
    "to_inference_data",
]
