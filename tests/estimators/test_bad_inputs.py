"""Bad inputs to the estimators, in their constructors and in loss with
programs they refuse: each is refused with a ``ValueError`` whose message
names the argument and the value (issue 10; the runner and the case format
are in tests/refusals.py)."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch

from tests.helpers import CV, IW, RB, RLOO, SF, STL, DisARM
from tests.programs import subsampled_model
from tests.refusals import RUNS, X, assert_refused, case_ids, gamma_model, guide, model, negative_guide, refusals


def guide_batched_z(x):  # z in a plate the model does not have
    with pyro.plate("data", len(x)):
        pyro.sample("z", dist.Normal(pyro.param("loc", torch.zeros(len(x))), 1.0))


def gamma_exponential_model(x):  # the child's argument is the latent: a negative draw must be named first
    rate = pyro.sample("rate", dist.Gamma(2.0, 2.0))
    with pyro.plate("data", len(x)):
        pyro.sample("x", dist.Exponential(rate), obs=x.abs())


def nested_plates_model(x):
    with pyro.plate("rows", 2, dim=-2), pyro.plate("data", len(x), dim=-1):
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        pyro.sample("x", dist.Normal(z, 1.0), obs=x.expand(2, len(x)))


def nested_plates_guide(x):
    with pyro.plate("rows", 2, dim=-2), pyro.plate("data", len(x), dim=-1):
        pyro.sample("z", dist.Normal(pyro.param("loc", torch.zeros(2, len(x))), 1.0))


def _out_of_support_loss(elbo, validation):
    def call(tmp):
        with pyro.validation_enabled(validation):
            return elbo.loss_and_grads(gamma_exponential_model, negative_guide, X)

    return call


OUT_OF_SUPPORT = (
    r"site 'rate': the guide drew (a value|[0-9]+ of [0-9]+ values) outside the support "
    r"GreaterThanEq\(lower_bound=0\.0\) of the model's Gamma \(-[0-9.]+\), from the guide's Normal\(loc="
)


def _loss(elbo, m, g):
    return lambda tmp: elbo.loss(m, g, X)


CASES = [
    # --- estimators: constructors (validated in pyro_vi/estimators) and loss with bad programs
    *refusals(
        "ScoreFunctionELBO",
        ("float num_particles", lambda tmp: SF(num_particles=2.5), r"num_particles must be an integer >= 1, got 2\.5"),
        ("string num_particles", lambda tmp: SF(num_particles="3"), r"num_particles must be an integer >= 1, got '3'"),
        (
            "float max_plate_nesting",
            lambda tmp: SF(max_plate_nesting=1.5),
            r"max_plate_nesting must be an integer >= 0, got 1\.5",
        ),
    ),
    *refusals(
        "ControlVariateELBO",
        ("two particles", lambda tmp: CV(num_particles=2), r"num_particles must be an integer >= 3, got 2"),
        ("infinite coefficient", lambda tmp: CV(coefficient=math.inf), r"coefficient must be a finite number, got inf"),
        ("boolean coefficient", lambda tmp: CV(coefficient=True), r"coefficient must be a real number, got True"),
        (
            "unknown coefficient name",
            lambda tmp: CV(coefficient="optimal"),
            r"coefficient must be one of .*got 'optimal'",
        ),
    ),
    *refusals(
        "RaoBlackwellELBO",
        (
            "coefficient ignored without control variate",
            lambda tmp: RB(control_variate=False, coefficient=0.5),
            r"coefficient=0\.5 has no effect with control_variate=False",
        ),
        (
            "string control_variate",
            lambda tmp: RB(control_variate="yes"),
            r"control_variate must be True or False, got 'yes'",
        ),
    ),
    *refusals(
        "StickingTheLandingELBO",
        (
            "string vectorize_particles",
            lambda tmp: STL(vectorize_particles="yes"),
            r"vectorize_particles must be True or False, got 'yes'",
        ),
    ),
    *refusals(
        "ImportanceWeightedELBO",
        (
            "unknown gradient",
            lambda tmp: IW(gradient="foo"),
            r"gradient must be one of 'reparam', 'stl', 'dreg', 'vimco', 'disarm', got 'foo'",
        ),
        ("zero particles", lambda tmp: IW(num_particles=0), r"num_particles must be an integer >= 1, got 0"),
        (
            "VIMCO with one particle",
            lambda tmp: IW(num_particles=1, gradient="vimco"),
            r"num_particles must be an integer >= 2, got 1",
        ),
    ),
    *refusals(
        "RaoBlackwellELBO",
        ("string pathwise", lambda tmp: RB(pathwise="yes"), r"pathwise must be True or False, got 'yes'"),
    ),
    *refusals(
        "ControlVariateELBO", ("integer pathwise", lambda tmp: CV(pathwise=1), r"pathwise must be True or False, got 1")
    ),
    *refusals(
        "ReinforceLeaveOneOutELBO",
        (
            "one particle",
            lambda tmp: RLOO(num_particles=1),
            r"num_particles must be an integer >= 2, got 1",
        ),
    ),
    *refusals(
        "DisARMELBO",
        (
            "float number of pairs",
            lambda tmp: DisARM(num_particles=1.5),
            r"num_particles must be an integer >= 1, got 1\.5",
        ),
    ),
    *refusals(
        "ImportanceWeightedELBO.loss",
        (
            "latent outside a subsampled plate",
            _loss(IW(num_particles=2), subsampled_model, guide),
            r"site 'z' lies outside the subsampled plate 'data'",
            RUNS,
        ),
    ),
    *refusals(
        "ScoreFunctionELBO.loss",
        ("model not callable", _loss(SF(), "model", guide), r"'model' is not callable", RUNS),
        (
            "guide shape differs from the model's",
            _loss(SF(num_particles=2), model, guide_batched_z),
            r"""site ["']z["']""",
            RUNS,
        ),
    ),
    *refusals(
        "StickingTheLandingELBO.loss",
        ("guide draws outside the model's support", _loss(STL(), gamma_model, negative_guide), r"site 'rate'", RUNS),
    ),
    *[
        (
            f"{cls.__name__}.loss_and_grads",
            f"guide draws outside the model's support ({'vectorized' if vectorize else 'sequential'}, "
            f"validation {'on' if validation else 'off'})",
            _out_of_support_loss(cls(num_particles=4, vectorize_particles=vectorize), validation),
            ValueError,
            OUT_OF_SUPPORT,
            RUNS,
        )
        for cls in (SF, CV, RB, RLOO, DisARM, STL, IW)
        for vectorize in (True, False)
        for validation in (True, False)
    ],
    *[
        (
            f"{cls.__name__}.loss",
            f"max_plate_nesting below the programs' plates ({'vectorized' if vectorize else 'sequential'})",
            _loss(
                cls(num_particles=4, max_plate_nesting=1, vectorize_particles=vectorize),
                nested_plates_model,
                nested_plates_guide,
            ),
            ValueError,
            r"max_plate_nesting=1 is less than the 2 plate dims the programs use.*pass max_plate_nesting=2",
            RUNS,
        )
        for cls in (CV, STL, IW)
        for vectorize in (True, False)
    ],
]


@pytest.mark.parametrize("case", CASES, ids=case_ids(CASES))
def test_bad_input_is_refused_naming_the_problem(case, tmp_path):
    assert_refused(case, tmp_path)
