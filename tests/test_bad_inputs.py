"""Bad inputs to pyro_vi's top-level modules (to_inference_data, the
diagnostics, exponential families, Gumbel-softmax): each is refused with a
``ValueError`` (or a documented subclass) whose message names the argument and
the value (issue 10; the runner and the case format are in tests/refusals.py,
the other cases in tests/*/test_bad_inputs.py, all of which are counted
here)."""

import math

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import Trace_ELBO

from pyro_vi import (
    FAMILIES,
    NaturalParameterDomainError,
    categorical_from_relaxed,
    get_family,
    gradient_statistics,
    gradient_variance_table,
    gumbel_softmax_sample,
    log_importance_weights,
    psis_khat,
    to_inference_data,
)
from tests.estimators.test_bad_inputs import CASES as ESTIMATOR_CASES
from tests.models.test_bad_inputs import CASES as MODEL_CASES
from tests.programs import subsampled_model
from tests.refusals import RUNS, X, assert_refused, case_ids, guide, model
from tests.training.test_bad_inputs import CASES as TRAINING_CASES


def two_latents(x):
    pyro.sample("w", dist.Normal(0.0, 1.0))
    model(x)


def _to_idata(m=model, g=guide, **kwargs):
    kwargs.setdefault("num_samples", 4)
    kwargs.setdefault("num_chains", 2)
    return lambda tmp: to_inference_data(m, g, X, **kwargs)


def _stats(**kwargs):
    kwargs.setdefault("num_draws", 3)
    elbo = kwargs.pop("elbo", Trace_ELBO())
    return lambda tmp: gradient_statistics(elbo, model, guide, X, **kwargs)


CASES = [
    # --- to_inference_data
    (
        "to_inference_data",
        "float num_samples",
        _to_idata(num_samples=8.0),
        ValueError,
        r"num_samples must be an integer >= 1, got 8\.0 \(float\)",
    ),
    (
        "to_inference_data",
        "zero num_chains",
        _to_idata(num_chains=0),
        ValueError,
        r"num_chains must be an integer >= 1, got 0",
    ),
    (
        "to_inference_data",
        "num_samples not divisible",
        _to_idata(num_samples=5, num_chains=2),
        ValueError,
        r"num_samples=5 is not divisible by num_chains=2",
    ),
    ("to_inference_data", "string seed", _to_idata(seed="1"), ValueError, r"seed must be an integer .*got '1'"),
    (
        "to_inference_data",
        "string log_likelihood",
        _to_idata(log_likelihood="yes"),
        ValueError,
        r"log_likelihood must be True or False, got 'yes'",
    ),
    (
        "to_inference_data",
        "observed is a list",
        _to_idata(observed=[X]),
        ValueError,
        r"observed must be a dict site name -> value",
    ),
    (
        "to_inference_data",
        "guide class",
        _to_idata(g=dict),
        ValueError,
        r"guide must be a function or an instance, got the class dict",
    ),
    (
        "to_inference_data",
        "guide lacks a model latent",
        _to_idata(m=two_latents),
        ValueError,
        r"the guide has no sample site for the model's latent site\(s\) 'w'",
        RUNS,
    ),
    (
        "to_inference_data",
        "observed name not in the model",
        _to_idata(observed={"nope": X}),
        ValueError,
        r"observed names \['nope'\] are not sample sites",
        RUNS,
    ),
    (
        "to_inference_data",
        "subsampled plate",
        _to_idata(m=subsampled_model),
        ValueError,
        r"site 'x' is in the subsampled plate 'data' \(2 of 5\)",
        RUNS,
    ),
    # --- diagnostics
    (
        "gradient_statistics",
        "float num_draws",
        _stats(num_draws=3.0),
        ValueError,
        r"num_draws must be an integer >= 2, got 3\.0 \(float\)",
    ),
    ("gradient_statistics", "one draw", _stats(num_draws=1), ValueError, r"num_draws must be an integer >= 2, got 1"),
    (
        "gradient_statistics",
        "ELBO class",
        _stats(elbo=Trace_ELBO),
        ValueError,
        r"elbo must be an ELBO instance .*got the class Trace_ELBO",
    ),
    (
        "gradient_statistics",
        "params as one string",
        _stats(params="loc"),
        ValueError,
        r"params must be a list of param names, got 'loc'",
    ),
    (
        "gradient_statistics",
        "param never touched",
        _stats(params=["nope"]),
        ValueError,
        r"params \['nope'\] were not touched",
        RUNS,
    ),
    (
        "gradient_variance_table",
        "unknown reference",
        lambda tmp: gradient_variance_table({"a": {}}, "b"),
        ValueError,
        r"reference='b' is not one of the estimators \['a'\]",
    ),
    (
        "gradient_variance_table",
        "not gradient statistics",
        lambda tmp: gradient_variance_table({"a": {"p": 1.0}}, "a"),
        ValueError,
        r"stats_by_estimator must be a dict estimator name -> gradient_statistics",
    ),
    (
        "psis_khat",
        "2-D weights",
        lambda tmp: psis_khat(np.zeros((5, 10))),
        ValueError,
        r"log_weights must be 1-D, got shape \(5, 10\)",
    ),
    (
        "psis_khat",
        "too few weights",
        lambda tmp: psis_khat(np.zeros(10) + np.arange(10)),
        ValueError,
        r"log_weights has 10 values; PSIS needs at least 21",
    ),
    (
        "psis_khat",
        "NaN weight",
        lambda tmp: psis_khat(np.r_[np.zeros(29), np.nan]),
        ValueError,
        r"log_weights must be finite",
    ),
    (
        "psis_khat",
        "strings",
        lambda tmp: psis_khat(["a"] * 30),
        ValueError,
        r"log_weights must be a 1-D tensor or array of numbers, got list",
    ),
    (
        "log_importance_weights",
        "float num_samples",
        lambda tmp: log_importance_weights(model, guide, X, num_samples=2.5),
        ValueError,
        r"num_samples must be an integer >= 1, got 2\.5",
    ),
    (
        "log_importance_weights",
        "guide lacks a model latent",
        lambda tmp: log_importance_weights(two_latents, guide, X, num_samples=3),
        ValueError,
        r"latent site\(s\) 'w'",
        RUNS,
    ),
    # --- exponential families
    (
        "ExponentialFamily",
        "boolean parameter",
        lambda tmp: FAMILIES["normal"].log_prob([True, 1.0], 0.5),
        ValueError,
        r"normal: parameter loc must be a number, got the boolean True",
    ),
    (
        "ExponentialFamily",
        "boolean tensor",
        lambda tmp: FAMILIES["gamma"].check_params(torch.tensor([True, True])),
        ValueError,
        r"gamma: parameter theta must be a number, got the boolean",
    ),
    (
        "ExponentialFamily",
        "string parameter",
        lambda tmp: FAMILIES["poisson"].fisher(["2.0"]),
        ValueError,
        r"poisson: parameter rate must be a number or a tensor, got '2\.0' \(str\)",
    ),
    (
        "ExponentialFamily",
        "negative scale",
        lambda tmp: FAMILIES["normal"].fisher([0.0, -1.0]),
        ValueError,
        r"normal: parameter scale must be finite and positive, got -1\.0",
    ),
    (
        "ExponentialFamily",
        "data outside the support",
        lambda tmp: FAMILIES["poisson"].log_prob([2.0], torch.tensor([1.5])),
        ValueError,
        r"poisson: data must be a non-negative integer, got 1\.5",
    ),
    (
        "ExponentialFamily",
        "natural parameters outside the domain",
        lambda tmp: FAMILIES["gamma"].mean_params(torch.tensor([-1.5, -1.0])),
        NaturalParameterDomainError,
        r"eta = \[-1\.5, -1\.0\] lie outside the domain of gamma: they map to a parameter concentration",
    ),
    ("get_family", "unknown name", lambda tmp: get_family("weibull"), ValueError, r"got 'weibull'"),
    # --- Gumbel-softmax
    (
        "gumbel_softmax_sample",
        "negative sample_shape",
        lambda tmp: gumbel_softmax_sample(torch.zeros(3), 1.0, sample_shape=(-1,)),
        ValueError,
        r"sample_shape\[0\] must be an integer >= 0, got -1",
    ),
    (
        "gumbel_softmax_sample",
        "sample_shape an int",
        lambda tmp: gumbel_softmax_sample(torch.zeros(3), 1.0, sample_shape=5),
        ValueError,
        r"sample_shape must be a sequence of non-negative integers .*got 5 \(int\)",
    ),
    (
        "gumbel_softmax_sample",
        "zero temperature",
        lambda tmp: gumbel_softmax_sample(torch.zeros(3), 0.0),
        ValueError,
        r"temperature must be > 0, got 0\.0",
    ),
    (
        "gumbel_softmax_sample",
        "-inf logit",
        lambda tmp: gumbel_softmax_sample(torch.tensor([0.0, -math.inf]), 1.0),
        ValueError,
        r"logits must be finite \(NaN or inf found\)",
    ),
    (
        "gumbel_softmax_sample",
        "string hard",
        lambda tmp: gumbel_softmax_sample(torch.zeros(3), 1.0, hard="yes"),
        ValueError,
        r"hard must be True or False, got 'yes'",
    ),
    (
        "categorical_from_relaxed",
        "NaN sample",
        lambda tmp: categorical_from_relaxed(torch.tensor([0.2, math.nan])),
        ValueError,
        r"y contains NaN",
    ),
]


@pytest.mark.parametrize("case", CASES, ids=case_ids(CASES))
def test_bad_input_is_refused_naming_the_problem(case, tmp_path):
    assert_refused(case, tmp_path)


def test_the_catalogue_is_large_and_its_cases_distinct():
    ids = case_ids(CASES + ESTIMATOR_CASES + TRAINING_CASES + MODEL_CASES)
    assert len(ids) >= 60
    assert len(set(ids)) == len(ids)
