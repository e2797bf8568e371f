"""pyro_vi: variational-inference gradient estimators for Pyro.

Each estimator is a :class:`pyro.infer.ELBO` that drops into
:class:`pyro.infer.SVI` where ``Trace_ELBO`` goes.
"""

from .diagnostics import (
    GradientStats,
    fresh_svi_step,
    gradient_statistics,
    gradient_variance_table,
    log_importance_weights,
    psis_khat,
    step_time_ratios,
    step_time_table,
    step_times,
)
from .estimators import (
    AutoELBO,
    ControlVariateELBO,
    DisARMELBO,
    ImportanceWeightedELBO,
    ImportanceWeightedGradient,
    ParticleELBO,
    RaoBlackwellELBO,
    ReinforceLeaveOneOutELBO,
    ScoreFunctionELBO,
    StickingTheLandingELBO,
)
from .exponential_family import FAMILIES, ExponentialFamily, NaturalParameterDomainError, get_family
from .gumbel_softmax import categorical_from_relaxed, gumbel_noise, gumbel_softmax_sample
from .inference_data import to_inference_data
from .optim import (
    DescentStep,
    NaturalGradient,
    descent_step,
    natural_gradient,
    natural_gradient_step,
    natural_parameter_step,
)
from .particles import Needs, Particles, SiteTerm, score_function_guide
from .training import FitResult, NonFiniteError, OutOfSupportError, fit, load_checkpoint
from .training.distributed import average_gradients, process, sum_over_processes

__version__ = "0.1.0"

__all__ = [
    "AutoELBO",
    "ControlVariateELBO",
    "DescentStep",
    "DisARMELBO",
    "ExponentialFamily",
    "FAMILIES",
    "FitResult",
    "GradientStats",
    "ImportanceWeightedELBO",
    "ImportanceWeightedGradient",
    "NaturalGradient",
    "NaturalParameterDomainError",
    "NonFiniteError",
    "OutOfSupportError",
    "ParticleELBO",
    "Needs",
    "Particles",
    "RaoBlackwellELBO",
    "ReinforceLeaveOneOutELBO",
    "ScoreFunctionELBO",
    "SiteTerm",
    "StickingTheLandingELBO",
    "average_gradients",
    "categorical_from_relaxed",
    "descent_step",
    "fit",
    "fresh_svi_step",
    "get_family",
    "gradient_statistics",
    "gradient_variance_table",
    "gumbel_noise",
    "gumbel_softmax_sample",
    "load_checkpoint",
    "log_importance_weights",
    "natural_gradient",
    "natural_gradient_step",
    "natural_parameter_step",
    "process",
    "psis_khat",
    "score_function_guide",
    "step_time_ratios",
    "step_time_table",
    "step_times",
    "sum_over_processes",
    "to_inference_data",
]
