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
    fresh_svi_step,
    get_family,
    gradient_statistics,
    gradient_variance_table,
    gumbel_softmax_sample,
    log_importance_weights,
    psis_khat,
    step_time_ratios,
    step_times,
    to_inference_data,
)
from tests.estimators.test_bad_inputs import CASES as ESTIMATOR_CASES
from tests.models.test_bad_inputs import CASES as MODEL_CASES
from tests.programs import subsampled_model
from tests.refusals import RUNS, X, assert_refused, case_ids, guide, model, refusals
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
    *refusals(
        "to_inference_data",
        ("float num_samples", _to_idata(num_samples=8.0), r"num_samples must be an integer >= 1, got 8\.0 \(float\)"),
        ("zero num_chains", _to_idata(num_chains=0), r"num_chains must be an integer >= 1, got 0"),
        (
            "num_samples not divisible",
            _to_idata(num_samples=5, num_chains=2),
            r"num_samples=5 is not divisible by num_chains=2",
        ),
        ("string seed", _to_idata(seed="1"), r"seed must be an integer .*got '1'"),
        ("string log_likelihood", _to_idata(log_likelihood="yes"), r"log_likelihood must be True or False, got 'yes'"),
        ("observed is a list", _to_idata(observed=[X]), r"observed must be a dict site name -> value"),
        ("guide class", _to_idata(g=dict), r"guide must be a function or an instance, got the class dict"),
        (
            "guide lacks a model latent",
            _to_idata(m=two_latents),
            r"the guide has no sample site for the model's latent site\(s\) 'w'",
            RUNS,
        ),
        (
            "observed name not in the model",
            _to_idata(observed={"nope": X}),
            r"observed names \['nope'\] are not sample sites",
            RUNS,
        ),
        (
            "subsampled plate",
            _to_idata(m=subsampled_model),
            r"site 'x' is in the subsampled plate 'data' \(2 of 5\)",
            RUNS,
        ),
    ),
    # --- diagnostics
    *refusals(
        "gradient_statistics",
        ("float num_draws", _stats(num_draws=3.0), r"num_draws must be an integer >= 2, got 3\.0 \(float\)"),
        ("one draw", _stats(num_draws=1), r"num_draws must be an integer >= 2, got 1"),
        ("ELBO class", _stats(elbo=Trace_ELBO), r"elbo must be an ELBO instance .*got the class Trace_ELBO"),
        ("params as one string", _stats(params="loc"), r"params must be a list of param names, got 'loc'"),
        ("param never touched", _stats(params=["nope"]), r"params \['nope'\] were not touched", RUNS),
    ),
    *refusals(
        "gradient_variance_table",
        (
            "unknown reference",
            lambda tmp: gradient_variance_table({"a": {}}, "b"),
            r"reference='b' is not one of the estimators \['a'\]",
        ),
        (
            "not gradient statistics",
            lambda tmp: gradient_variance_table({"a": {"p": 1.0}}, "a"),
            r"stats_by_estimator must be a dict estimator name -> gradient_statistics",
        ),
    ),
    *refusals(
        "fresh_svi_step",
        ("ELBO class", lambda tmp: fresh_svi_step(model, guide, Trace_ELBO, X), r"elbo must be an ELBO instance"),
        (
            "torch optimizer",
            lambda tmp: fresh_svi_step(model, guide, Trace_ELBO(), X, optim=torch.optim.Adam),
            r"optim must be a pyro.optim optimizer such as Adam\(\{'lr': 1e-3\}\), got <class 'torch.optim",
        ),
    ),
    *refusals(
        "step_times",
        ("no steps", lambda tmp: step_times({}), r"steps must be a non-empty dict name -> zero-argument factory"),
        ("a step, not its factory", lambda tmp: step_times({"a": 1.0}), r"steps must be a non-empty dict .*got \{'a'"),
        (
            "zero rounds",
            lambda tmp: step_times({"a": lambda: print}, rounds=0),
            r"rounds must be an integer >= 1, got 0",
        ),
        (
            "factory of a number",
            lambda tmp: step_times({"Trace_ELBO": lambda: 0.5}),
            r"steps\['Trace_ELBO'\]\(\) must return the step to time \(a callable\), got 0\.5",
        ),
    ),
    *refusals(
        "step_time_ratios",
        (
            "unknown reference",
            lambda tmp: step_time_ratios({"a": [1.0]}, "b"),
            r"reference='b' is not one of the timed",
        ),
        (
            "different rounds",
            lambda tmp: step_time_ratios({"a": [1.0], "b": [1.0, 2.0]}, "a"),
            r"times must hold the same number of rounds for every step",
        ),
        ("a zero time", lambda tmp: step_time_ratios({"a": [0.0]}, "a"), r"each a positive time in seconds"),
        ("not per round", lambda tmp: step_time_ratios({"a": 1.0}, "a"), r"times must be step_times\(...\)'s output"),
    ),
    *refusals(
        "psis_khat",
        ("2-D weights", lambda tmp: psis_khat(np.zeros((5, 10))), r"log_weights must be 1-D, got shape \(5, 10\)"),
        (
            "too few weights",
            lambda tmp: psis_khat(np.zeros(10) + np.arange(10)),
            r"log_weights has 10 values; PSIS needs at least 21",
        ),
        ("NaN weight", lambda tmp: psis_khat(np.r_[np.zeros(29), np.nan]), r"log_weights must be finite"),
        (
            "strings",
            lambda tmp: psis_khat(["a"] * 30),
            r"log_weights must be a 1-D tensor or array of numbers, got list",
        ),
    ),
    *refusals(
        "log_importance_weights",
        (
            "float num_samples",
            lambda tmp: log_importance_weights(model, guide, X, num_samples=2.5),
            r"num_samples must be an integer >= 1, got 2\.5",
        ),
        (
            "guide lacks a model latent",
            lambda tmp: log_importance_weights(two_latents, guide, X, num_samples=3),
            r"latent site\(s\) 'w'",
            RUNS,
        ),
    ),
    # --- exponential families
    *refusals(
        "ExponentialFamily",
        (
            "boolean parameter",
            lambda tmp: FAMILIES["normal"].log_prob([True, 1.0], 0.5),
            r"normal: parameter loc must be a number, got the boolean True",
        ),
        (
            "boolean tensor",
            lambda tmp: FAMILIES["gamma"].check_params(torch.tensor([True, True])),
            r"gamma: parameter theta must be a number, got the boolean",
        ),
        (
            "string parameter",
            lambda tmp: FAMILIES["poisson"].fisher(["2.0"]),
            r"poisson: parameter rate must be a number or a tensor, got '2\.0' \(str\)",
        ),
        (
            "negative scale",
            lambda tmp: FAMILIES["normal"].fisher([0.0, -1.0]),
            r"normal: parameter scale must be finite and positive, got -1\.0",
        ),
        (
            "data outside the support",
            lambda tmp: FAMILIES["poisson"].log_prob([2.0], torch.tensor([1.5])),
            r"poisson: data must be a non-negative integer, got 1\.5",
        ),
    ),
    *refusals(
        "ExponentialFamily",
        (
            "natural parameters outside the domain",
            lambda tmp: FAMILIES["gamma"].mean_params(torch.tensor([-1.5, -1.0])),
            r"eta = \[-1\.5, -1\.0\] lie outside the domain of gamma: they map to a parameter concentration",
        ),
        error=NaturalParameterDomainError,
    ),
    *refusals("get_family", ("unknown name", lambda tmp: get_family("weibull"), r"got 'weibull'")),
    # --- Gumbel-softmax
    *refusals(
        "gumbel_softmax_sample",
        (
            "negative sample_shape",
            lambda tmp: gumbel_softmax_sample(torch.zeros(3), 1.0, sample_shape=(-1,)),
            r"sample_shape\[0\] must be an integer >= 0, got -1",
        ),
        (
            "sample_shape an int",
            lambda tmp: gumbel_softmax_sample(torch.zeros(3), 1.0, sample_shape=5),
            r"sample_shape must be a sequence of non-negative integers .*got 5 \(int\)",
        ),
        (
            "zero temperature",
            lambda tmp: gumbel_softmax_sample(torch.zeros(3), 0.0),
            r"temperature must be > 0, got 0\.0",
        ),
        (
            "-inf logit",
            lambda tmp: gumbel_softmax_sample(torch.tensor([0.0, -math.inf]), 1.0),
            r"logits must be finite \(NaN or inf found\)",
        ),
        (
            "string hard",
            lambda tmp: gumbel_softmax_sample(torch.zeros(3), 1.0, hard="yes"),
            r"hard must be True or False, got 'yes'",
        ),
    ),
    *refusals(
        "categorical_from_relaxed",
        ("NaN sample", lambda tmp: categorical_from_relaxed(torch.tensor([0.2, math.nan])), r"y contains NaN"),
    ),
]


@pytest.mark.parametrize("case", CASES, ids=case_ids(CASES))
def test_bad_input_is_refused_naming_the_problem(case, tmp_path):
    assert_refused(case, tmp_path)


def test_the_catalogue_is_large_and_its_cases_distinct():
    ids = case_ids(CASES + ESTIMATOR_CASES + TRAINING_CASES + MODEL_CASES)
    assert len(ids) >= 60
    assert len(set(ids)) == len(ids)
