"""Natural gradients: the Gamma MLE (GD against NGD), the CAVI identity on
Normal-NormalGamma, natural-gradient SVI through pyro.infer.SVI, and bad input."""

import functools

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.optim import Adam
from torch.distributions import constraints

from experiments.gamma_natural_gradient import (
    average_nll,
    data_statistics,
    descend,
    gamma_mle,
    inverse_fisher_closed_form,
    iterations_to_reach,
    nll_gradient,
    sample_data,
)
from experiments.natural_gradient_svi import robbins_monro
from guides.normal_gamma import (
    DEFAULT_INIT,
    MEAN_FIELD_FACTORS,
    MU_LOC,
    MU_PRECISION,
    TAU_CONCENTRATION,
    TAU_RATE,
    NormalGammaParams,
    cavi,
    cavi_step,
    closed_form_loss,
    mean_field_guide,
    params_from_store,
)
from guides.normal_gamma import elbo as closed_form_elbo
from models.normal_gamma import COURSE_PRIOR, generate_data, model, sufficient_statistics
from pyro_vi import (
    NaturalGradient,
    NaturalParameterDomainError,
    descent_step,
    natural_gradient,
    natural_gradient_step,
    natural_parameter_step,
)
from pyro_vi.training import fit

NAMES = (MU_LOC, MU_PRECISION, TAU_CONCENTRATION, TAU_RATE)


@pytest.fixture
def float64():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


@pytest.fixture(scope="module")
def data():
    return generate_data().to(torch.float64)


@pytest.mark.parametrize("init", [(1.0, 10.0), (0.5, 0.5)])
def test_ngd_reaches_gamma_mle_in_fewer_iterations_than_gd(init):
    stats = data_statistics(sample_data(1000, 3.0, 2.0, seed=0))
    best = float(average_nll(gamma_mle(stats), stats))
    tol, lr = 1e-6, 0.5
    counts = {}
    for method in ("GD", "NGD"):
        run = descend(method, init, stats, lr, steps=800, max_halvings=30)
        assert (run["path"] > 0).all(), f"{method} left alpha, beta > 0"
        counts[method] = iterations_to_reach(run["nll"], best, tol)
        print(
            f"start {init}, lr {lr}: {method} reaches the MLE NLL within {tol:g} nats in "
            f"{counts[method]} iterations ({run['halved_steps']} halved steps)"
        )
    assert counts["NGD"] is not None and counts["GD"] is not None
    assert counts["NGD"] < counts["GD"] / 10


def test_gamma_mle_is_stationary_and_gradient_is_autograd():
    stats = data_statistics(sample_data(1000, 3.0, 2.0, seed=0))
    mle = gamma_mle(stats)
    assert nll_gradient(mle, stats).abs().max() < 1e-12
    theta = torch.tensor([1.3, 7.0], dtype=torch.float64, requires_grad=True)
    grad = torch.autograd.grad(average_nll(theta, stats), theta)[0]
    assert torch.allclose(nll_gradient(theta.detach(), stats), grad, rtol=1e-12)


def test_natural_gradient_uses_the_explicit_inverse_fisher():
    theta = torch.tensor([[0.3, 0.5], [3.0, 2.0], [40.0, 0.1]], dtype=torch.float64)
    grad = torch.tensor([[1.0, -2.0], [0.3, 0.7], [-1.0, 5.0]], dtype=torch.float64)
    expected = (inverse_fisher_closed_form(theta) @ grad[..., None])[..., 0]
    assert torch.allclose(natural_gradient("gamma_shape_scale", theta, grad), expected, rtol=1e-10)


def test_usual_and_natural_parameter_steps_agree_to_first_order():
    theta, grad = torch.tensor([2.0, 3.0], dtype=torch.float64), torch.tensor([0.4, -0.1], dtype=torch.float64)

    def gap(family, lr):
        usual = natural_gradient_step(family, theta, grad, lr).theta
        return (usual - natural_parameter_step(family, theta, grad, lr).theta).abs().max()

    # eta = (shape - 1, -rate) is affine in (shape, rate): the two steps coincide
    assert gap("gamma", 0.5) < 1e-14
    # eta = (shape - 1, -1/scale) is not: they differ at O(lr^2)
    assert 50 < gap("gamma_shape_scale", 1e-2) / gap("gamma_shape_scale", 1e-3) < 200


def test_steps_refuse_to_leave_the_domain_or_halve():
    theta, grad = torch.tensor([1.0, 1.0], dtype=torch.float64), torch.tensor([3.0, 0.0], dtype=torch.float64)
    with pytest.raises(NaturalParameterDomainError, match="leaves the domain of gamma_shape_scale.*shape"):
        descent_step("gamma_shape_scale", theta, grad, lr=1.0)
    step = descent_step("gamma_shape_scale", theta, grad, lr=1.0, max_halvings=3)
    assert step.step_size == 0.25 and torch.allclose(step.theta, torch.tensor([0.25, 1.0], dtype=torch.float64))
    with pytest.raises(ValueError, match="lr must be > 0, got -1"):
        natural_gradient_step("gamma", theta, grad, lr=-1)


def _setup_guide(init):
    pyro.clear_param_store()
    mean_field_guide(None, init=init)
    store = pyro.get_param_store()
    return [store[name].unconstrained() for name in NAMES]


def _exact_gradients(data):
    pyro.get_param_store()  # the guide's params exist
    loss = closed_form_loss(model, mean_field_guide, data)
    loss.backward()


def _assert_refused_changing_nothing(step, params, error, match):
    """``step(params)`` raises ``error`` matching ``match`` and leaves every param as it was."""
    before = [p.detach().clone() for p in params]
    with pytest.raises(error, match=match):
        step(params)
    assert all(torch.equal(p, old) for p, old in zip(params, before))


def _jacobi_cavi(data, q: NormalGammaParams):
    """Each factor's CAVI update computed from the other factor's OLD value."""
    n, mean, ss = sufficient_statistics(data)
    lambda_n = COURSE_PRIOR.lambda0 + n
    m = (COURSE_PRIOR.lambda0 * COURSE_PRIOR.mu0 + n * mean) / lambda_n
    b = COURSE_PRIOR.b0 + 0.5 * (
        ss + n * (mean - q.m) ** 2 + COURSE_PRIOR.lambda0 * (q.m - COURSE_PRIOR.mu0) ** 2 + lambda_n / q.lam
    )
    return NormalGammaParams(m=m, lam=lambda_n * q.a / q.b, a=COURSE_PRIOR.a0 + 0.5 * (n + 1), b=b)


def _assert_params_close(actual: NormalGammaParams, expected: NormalGammaParams, rtol=1e-12):
    for field in ("m", "lam", "a", "b"):
        assert getattr(actual, field) == pytest.approx(getattr(expected, field), rel=rtol), field


START_POINTS = [
    DEFAULT_INIT,
    NormalGammaParams(m=-0.5, lam=0.3, a=2.0, b=0.7),
    NormalGammaParams(m=3.0, lam=50.0, a=80.0, b=20.0),
]


@pytest.mark.parametrize("start", START_POINTS)
def test_unit_natural_gradient_step_on_both_factors_is_jacobi_cavi(float64, data, start):
    params = _setup_guide(start)
    _exact_gradients(data)
    NaturalGradient(MEAN_FIELD_FACTORS, lr=1.0)(params)
    _assert_params_close(params_from_store(), _jacobi_cavi(data, start))


@pytest.mark.parametrize("start", START_POINTS)
def test_unit_steps_factor_by_factor_are_a_cavi_sweep(float64, data, start):
    params = _setup_guide(start)
    optim = NaturalGradient(MEAN_FIELD_FACTORS, lr=1.0)
    for factor_params in (params[:2], params[2:]):  # q(mu), then q(tau) from the new q(mu)
        _exact_gradients(data)
        optim(factor_params)
        for p in params:
            p.grad = None
    _assert_params_close(params_from_store(), cavi_step(data, start))


def test_natural_gradient_svi_reaches_cavi_optimum(float64, data):
    optimum = cavi(data).elbo
    pyro.set_rng_seed(0)
    elbo = Trace_ELBO(num_particles=10, vectorize_particles=True, max_plate_nesting=1)
    svi = SVI(
        model,
        functools.partial(mean_field_guide, init=DEFAULT_INIT),
        NaturalGradient(MEAN_FIELD_FACTORS, lr=robbins_monro(0.5, 0.7), max_halvings=10),
        elbo,
    )
    gaps = []
    for _ in range(150):
        svi.step(data)
        q = params_from_store()
        gaps.append(optimum - float(closed_form_elbo(data, q)))
    print(f"natural-gradient SVI: gap {gaps[0]:.3g} nats after 1 step, max over steps 100-150 {max(gaps[100:]):.2e}")
    assert gaps[0] > 1.0
    assert max(gaps[100:]) < 0.01


def test_domain_error_is_clear_and_changes_nothing(float64, data):
    start = NormalGammaParams(m=0.0, lam=1.0, a=200.0, b=1.0)  # a far above the CAVI a = 51.5
    params = _setup_guide(start)
    _exact_gradients(data)
    _assert_refused_changing_nothing(
        NaturalGradient(MEAN_FIELD_FACTORS, lr=2.0), params, NaturalParameterDomainError, "factor 'tau'.*concentration"
    )
    optim = NaturalGradient(MEAN_FIELD_FACTORS, lr=2.0, max_halvings=5)
    optim(params)
    assert optim.last_step_sizes == {"mu": 2.0, "tau": 1.0}
    assert params_from_store().a == pytest.approx(51.5, rel=1e-9)  # rho = 1: the CAVI value


def test_params_without_factor_are_refused_or_go_to_fallback(float64, data):
    mu_only = {"mu": MEAN_FIELD_FACTORS["mu"]}
    params = _setup_guide(DEFAULT_INIT)
    _exact_gradients(data)
    _assert_refused_changing_nothing(
        NaturalGradient(mu_only, lr=1.0), params, ValueError, "no factor for param.*q_tau_concentration"
    )
    NaturalGradient(mu_only, lr=1.0, fallback=Adam({"lr": 0.1}))(params)
    q = params_from_store()
    assert q.lam == pytest.approx(_jacobi_cavi(data, DEFAULT_INIT).lam, rel=1e-12)
    # Adam's first step moves each unconstrained (log) value by lr = 0.1
    assert abs(np.log(q.a)) == pytest.approx(0.1, rel=1e-6) and abs(np.log(q.b)) == pytest.approx(0.1, rel=1e-6)


def test_bad_factors_and_constraints():
    with pytest.raises(ValueError, match="needs 2 param names"):
        NaturalGradient({"tau": ("gamma", ["a"])})
    with pytest.raises(ValueError, match="one of"):
        NaturalGradient({"tau": ("beta", ["a", "b"])})
    with pytest.raises(ValueError, match="more than one factor"):
        NaturalGradient({"x": ("gamma", ["a", "b"]), "y": ("gamma", ["b", "c"])})
    with pytest.raises(ValueError, match="lr must be > 0, got 0"):
        NaturalGradient(MEAN_FIELD_FACTORS, lr=0)
    p = pyro.param("p", torch.tensor([0.2, 0.8]), constraint=constraints.simplex).unconstrained()
    p.grad = torch.ones_like(p)
    with pytest.raises(ValueError, match="'p'.*elementwise constraint"):
        NaturalGradient({"x": ("normal", ["p", "s"])})([p, pyro.param("s", torch.ones(2)).unconstrained()])


def test_fit_checkpoint_resume_matches_uninterrupted_run(float64, data, tmp_path):
    def run(num_steps, resume):
        pyro.clear_param_store()
        pyro.set_rng_seed(1)
        optim = NaturalGradient(MEAN_FIELD_FACTORS, lr=robbins_monro(0.5, 0.7), max_halvings=10)
        elbo = Trace_ELBO(num_particles=4, vectorize_particles=True, max_plate_nesting=1)
        fit(
            model,
            functools.partial(mean_field_guide, init=DEFAULT_INIT),
            elbo,
            optim,
            data,
            num_steps=num_steps,
            checkpoint=str(tmp_path / "ckpt.pt"),
            checkpoint_every=5,
            resume=resume,
        )
        return params_from_store(), optim.num_steps

    reference, _ = run(20, resume=False)
    (tmp_path / "ckpt.pt").unlink()
    run(10, resume=False)
    resumed, steps_after_resume = run(20, resume=True)
    assert steps_after_resume == 20  # the schedule's counter came back from the checkpoint
    assert resumed == reference


def test_batched_factor_unit_step_gives_the_conjugate_posterior(float64):
    """Two independent Gamma-Poisson groups in one batched factor: with exact expectations a
    step of size 1 lands on the exact posterior Gamma(1 + sum_n x_gn, 1 + N)."""
    counts = torch.tensor([[1.0, 2.0, 3.0], [10.0, 12.0, 11.0]])

    def guide(counts):
        a = pyro.param("a", torch.ones(2), constraint=constraints.positive)
        b = pyro.param("b", torch.ones(2), constraint=constraints.positive)
        return a, b

    def exact_loss(model, guide, counts):  # -ELBO for lambda_g ~ Gamma(1, 1), x_gn ~ Poisson(lambda_g)
        a, b = guide(counts)
        e_lam, e_log_lam = a / b, torch.digamma(a) - b.log()
        n = counts.shape[1]
        e_log_joint = counts.sum(1) * e_log_lam - n * e_lam - torch.lgamma(counts + 1).sum(1) - e_lam
        return -(e_log_joint + dist.Gamma(a, b).entropy()).sum()

    svi = SVI(lambda counts: None, guide, NaturalGradient({"lam": ("gamma", ["a", "b"])}, lr=1.0), exact_loss)
    svi.step(counts)
    assert torch.allclose(pyro.param("a"), 1 + counts.sum(1), rtol=1e-12)
    assert torch.allclose(pyro.param("b"), torch.full((2,), 4.0), rtol=1e-12)


# ---------------------------------------------------------------------------
# issue 10: factor names that match nothing, NaN gradients, singular Fisher


def test_factor_names_that_match_no_param_are_refused(float64, data):
    typo = {"mu": ("normal_precision", ["q_mu_locc", MU_PRECISION]), "tau": MEAN_FIELD_FACTORS["tau"]}
    params = _setup_guide(DEFAULT_INIT)
    _exact_gradients(data)
    _assert_refused_changing_nothing(
        NaturalGradient(typo, lr=1.0, fallback=Adam({"lr": 0.1})),
        params,
        ValueError,
        r"factors name param\(s\) \['q_mu_locc'\] that are not in the Pyro param store.*'q_mu_loc'",
    )


def test_nan_gradient_is_refused_naming_the_param(float64, data):
    params = _setup_guide(DEFAULT_INIT)
    _exact_gradients(data)
    params[2].grad[...] = float("nan")  # q_tau_concentration
    _assert_refused_changing_nothing(
        NaturalGradient(MEAN_FIELD_FACTORS, lr=1.0),
        params,
        ValueError,
        r"factor 'tau': the gradient of param 'q_tau_concentration' is not finite \(nan\)",
    )
    with pytest.raises(ValueError, match="grad_theta for gamma parameter rate is not finite"):
        natural_gradient("gamma", [2.0, 1.0], torch.tensor([0.5, float("nan")]))
    with pytest.raises(ValueError, match="grad_theta for normal parameter loc is not finite"):
        natural_parameter_step("normal", [0.0, 1.0], [float("inf"), 0.0], lr=0.1)


def test_singular_fisher_is_a_clear_error_not_a_linalg_error():
    # Gamma(1e30, 1): trigamma(a) a = 1 in float64, the determinant is 0
    for call in (
        lambda: natural_gradient("gamma", [1e30, 1.0], torch.tensor([1.0, 0.0])),
        lambda: natural_parameter_step("gamma", [1e30, 1.0], torch.tensor([1.0, 0.0]), lr=0.1),
    ):
        with pytest.raises(
            ValueError,
            match=r"gamma: the Fisher information at concentration=1e\+30, rate=1 is "
            r"singular to working precision",
        ) as raised:
            call()
        assert not isinstance(raised.value, torch.linalg.LinAlgError)


def test_float32_natural_steps_of_extreme_normals_stay_in_the_domain():
    # -1 / (2 scale^2) overflows float32 at scale 1e-20 and underflows at 1e20
    for scale in (1e-20, 1e20):
        theta = torch.tensor([0.0, scale])
        grad = torch.tensor([1.0, 1.0]) / scale
        step = natural_parameter_step("normal", theta, grad, lr=0.1)
        expected = natural_parameter_step("normal", theta.double(), grad.double(), lr=0.1).theta
        assert step.theta.dtype == torch.float32
        torch.testing.assert_close(step.theta, expected.float())
        ng = natural_gradient("normal", theta, grad)
        torch.testing.assert_close(ng, natural_gradient("normal", theta.double(), grad.double()).float())
