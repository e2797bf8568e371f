"""ImportanceWeightedELBO: degenerate equalities, the bound's ordering
against the exact log evidence, DReG's unbiasedness and signal-to-noise."""

import functools
import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import RenyiELBO, Trace_ELBO
from torch import nn

from guides.normal_gamma import NormalGammaParams, mean_field_guide
from models.catalogue import structured_guide, structured_model
from models.normal_gamma import generate_data, log_evidence, model
from pyro_vi import ImportanceWeightedELBO, StickingTheLandingELBO
from pyro_vi.diagnostics import gradient_statistics
from tests.programs import location_guide, location_model

NG_DATA = generate_data()
IMPERFECT = NormalGammaParams(m=0.8, lam=20.0, a=15.0, b=40.0)
DATA = torch.tensor([0.3, -1.2, 2.1, 0.7, 1.5, -0.4])

global_model, global_guide = location_model, location_guide


def local_model(data):
    with pyro.plate("data", len(data)):
        y = pyro.sample("y", dist.Normal(0.0, 1.0))
        pyro.sample("x", dist.Normal(y, 0.5), obs=data)


class Encoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.loc = nn.Linear(1, 1)
        self.log_scale = nn.Parameter(torch.tensor(-0.3))
        with torch.no_grad():
            self.loc.weight.fill_(0.5)
            self.loc.bias.fill_(0.1)

    def forward(self, x):
        return self.loc(x.unsqueeze(-1)).squeeze(-1), self.log_scale.exp()


ENCODER = Encoder()


def local_guide(data):
    pyro.module("encoder", ENCODER)
    loc, scale = ENCODER(data)
    with pyro.plate("data", len(data)):
        pyro.sample("y", dist.Normal(loc, scale))


def seeded_grads(elbo, model, guide, data, seed=3):
    pyro.clear_param_store()
    elbo.loss(model, guide, data)
    pyro.set_rng_seed(seed)
    loss = elbo.loss_and_grads(model, guide, data)
    grads = {n: p.grad.clone() for n, p in pyro.get_param_store().named_parameters()}
    for p in pyro.get_param_store().values():
        p.unconstrained().grad = None
    return loss, grads


@pytest.mark.parametrize("pair", ["local", "global"])
@pytest.mark.parametrize(
    "gradient,reference",
    [("reparam", Trace_ELBO), ("stl", StickingTheLandingELBO), ("dreg", StickingTheLandingELBO)],
)
def test_one_particle_is_the_elbo(pair, gradient, reference):
    model, guide = (local_model, local_guide) if pair == "local" else (global_model, global_guide)
    expected = seeded_grads(reference(num_particles=1), model, guide, DATA)
    actual = seeded_grads(ImportanceWeightedELBO(num_particles=1, gradient=gradient), model, guide, DATA)
    assert actual[0] == pytest.approx(expected[0], rel=1e-6)
    for name in expected[1]:
        assert torch.allclose(actual[1][name], expected[1][name], rtol=1e-5, atol=1e-6), name


@pytest.mark.parametrize("pair", ["local", "global"])
def test_value_equals_renyi_alpha_zero(pair):
    """Same samples, same value: with a global latent both take the joint
    log-mean-exp; with every site in the data plate both take it per point."""
    model, guide = (local_model, local_guide) if pair == "local" else (global_model, global_guide)
    kw = dict(num_particles=7, vectorize_particles=True, max_plate_nesting=1)
    pyro.set_rng_seed(2)
    renyi = RenyiELBO(alpha=0.0, **kw).loss(model, guide, DATA)
    pyro.set_rng_seed(2)
    ours = ImportanceWeightedELBO(**kw).loss(model, guide, DATA)
    assert ours == pytest.approx(renyi, rel=1e-5)


def test_local_latents_take_the_bound_per_data_point():
    """With every site in the data plate the bound is sum_n log mean_k w_kn
    (computed here from the site terms), not the joint log mean_k prod_n w_kn."""
    elbo = ImportanceWeightedELBO(num_particles=7, vectorize_particles=True, max_plate_nesting=1)
    pyro.set_rng_seed(2)
    terms = elbo.particles(local_model, local_guide, DATA)
    log_w = terms.model["x"].log_prob + terms.model["y"].log_prob - terms.guide["y"].log_prob
    per_point = (torch.logsumexp(log_w, 0) - math.log(7)).sum()
    joint = torch.logsumexp(log_w.sum(-1), 0) - math.log(7)
    pyro.set_rng_seed(2)
    assert -elbo.loss(local_model, local_guide, DATA) == pytest.approx(per_point.item(), rel=1e-5)
    assert abs(per_point.item() - joint.item()) > 0.1


def bound(num_particles, num_draws, seed=0):
    """Mean and standard error of L_K for the imperfect q, from num_draws
    independent estimates."""
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    elbo = ImportanceWeightedELBO(num_particles, vectorize_particles=True, max_plate_nesting=1)
    guide = functools.partial(mean_field_guide, init=IMPERFECT)
    values = torch.tensor([-elbo.loss(model, guide, NG_DATA) for _ in range(num_draws)], dtype=torch.float64)
    return values.mean().item(), (values.std() / math.sqrt(num_draws)).item()


def test_bound_increases_with_k_and_stays_below_log_evidence():
    """Questions 2.1.10-2.1.11 on the Normal-NormalGamma model, exact
    log p(X) = -184.467; measured (1000 draws each) L_1 = -187.84 +- 0.12,
    L_5 = -185.27 +- 0.05, L_50 = -184.54 +- 0.01."""
    log_px = log_evidence(NG_DATA)
    estimates = [bound(k, 1000) for k in (1, 5, 50)]
    for (low, low_se), (high, high_se) in zip(estimates, estimates[1:]):
        assert high - low > 4 * math.hypot(low_se, high_se), estimates
    for mean, se in estimates:
        assert mean < log_px + 4 * se, (mean, log_px)


def test_stable_for_thousands_of_particles():
    guide = functools.partial(mean_field_guide, init=NormalGammaParams(m=0.0, lam=1.0, a=1.0, b=1.0))
    elbo = ImportanceWeightedELBO(5000, gradient="dreg", vectorize_particles=True, max_plate_nesting=1)
    loss = elbo.loss_and_grads(model, guide, NG_DATA)
    assert math.isfinite(loss)
    # One draw of L_5000 from a poor q: close to log p(X) (it may exceed it;
    # only its expectation is a lower bound).
    assert abs(-loss - log_evidence(NG_DATA)) < 5
    for name, p in pyro.get_param_store().named_parameters():
        assert torch.isfinite(p.grad).all(), name


def encoder_stats(gradient, num_particles, num_draws=300):
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    elbo = ImportanceWeightedELBO(num_particles, gradient=gradient, vectorize_particles=True, max_plate_nesting=1)
    return gradient_statistics(elbo, local_model, local_guide, DATA, num_draws=num_draws)


def test_dreg_is_unbiased_for_the_iwae_gradient():
    iwae, dreg = encoder_stats("reparam", 10), encoder_stats("dreg", 10)
    for name in iwae:
        se = (iwae[name].standard_error ** 2 + dreg[name].standard_error ** 2).sqrt()
        assert ((iwae[name].mean - dreg[name].mean).abs() <= 4 * se).all(), name


def test_dreg_encoder_snr_beats_iwae_at_k50():
    """Measured at K = 50, 300 draws: encoder SNR IWAE -> DReG is
    0.13 -> 4.5 (weight), 0.084 -> 1.08 (bias), 0.042 -> 5.2 (log scale),
    ratios 35, 13, 124 (Tucker et al.: IWAE's encoder SNR decays like
    1/sqrt(K))."""
    iwae, dreg = encoder_stats("reparam", 50), encoder_stats("dreg", 50)
    for name in ("encoder$$$loc.weight", "encoder$$$loc.bias", "encoder$$$log_scale"):
        ratio = (dreg[name].snr / iwae[name].snr).min().item()
        assert ratio > 2, (name, ratio)


def test_bad_arguments():
    with pytest.raises(ValueError, match="num_particles must be an integer >= 1"):
        ImportanceWeightedELBO(num_particles=0)
    with pytest.raises(ValueError, match="gradient must be one of"):
        ImportanceWeightedELBO(gradient="rloo")

    def coin_model():
        pyro.sample("coin", dist.Bernoulli(0.3))

    def coin_guide():
        pyro.sample("coin", dist.Bernoulli(0.5))

    with pytest.raises(ValueError, match="site 'coin'"):
        ImportanceWeightedELBO(num_particles=3).loss(coin_model, coin_guide)


def model_with_param(data):
    w = pyro.param("w", torch.tensor(0.7))
    with pyro.plate("data", len(data)):
        y = pyro.sample("y", dist.Normal(0.0, 1.0))
        pyro.sample("x", dist.Normal(w * y, 0.5), obs=data)


@pytest.mark.parametrize(
    "mdl, guide, data",
    [
        (model_with_param, local_guide, DATA),
        (model, functools.partial(mean_field_guide, init=IMPERFECT), NG_DATA),
    ],
    ids=["amortized with a model param", "mean-field, global"],
)
def test_dreg_in_one_backward_pass_equals_dreg_by_two_gradients(mdl, guide, data):
    from pyro_vi.estimators.dreg import surrogate_by_hooks, surrogate_by_two_gradients
    from pyro_vi.math.bounds import log_weights_per_point, normalized_weights, per_point

    pyro.set_rng_seed(0)
    elbo = ImportanceWeightedELBO(num_particles=7, gradient="dreg", vectorize_particles=True, max_plate_nesting=1)
    terms = elbo.particles(mdl, guide, data)
    assert terms.random_samples_independent()
    log_p, log_w = log_weights_per_point(terms)
    weights = normalized_weights(log_w)
    path_log_w = log_p - per_point(terms, terms.log_q_at_stopped_parameters(), terms.guide)
    params = [p for p in {**terms.model_params, **terms.guide_params}.values() if p.requires_grad]
    kw = dict(allow_unused=True, materialize_grads=True)
    # Two gradients first: the hooks, once registered, act on every later backward pass.
    expected = torch.autograd.grad(
        surrogate_by_two_gradients(terms, weights, weights, path_log_w, log_p), params, retain_graph=True, **kw
    )
    actual = torch.autograd.grad(surrogate_by_hooks(terms, weights, weights * path_log_w), params, **kw)
    assert all(e.abs().sum() > 0 for e in expected)
    for e, a in zip(expected, actual):
        assert torch.allclose(e, a, rtol=1e-5, atol=1e-6)


def test_dreg_on_a_structured_guide_takes_two_gradients():
    from guides.normal_gamma import structured_guide

    elbo = ImportanceWeightedELBO(num_particles=3, gradient="dreg", vectorize_particles=True, max_plate_nesting=1)
    terms = elbo.particles(model, functools.partial(structured_guide, init=IMPERFECT), NG_DATA)
    assert not terms.random_samples_independent()


# ---------------------------------------------------------------- poutine.scale

SCALED_DATA = torch.tensor([0.4, -1.1, 1.6], dtype=torch.float64).repeat(10)
PRIOR = torch.tensor(0.3, dtype=torch.float64)


def scaled_model():
    with pyro.plate("data", len(SCALED_DATA)):
        z = pyro.sample("z", dist.Bernoulli(PRIOR.expand(len(SCALED_DATA))))
        pyro.sample("x", dist.Normal(2 * z - 1, 1.0), obs=SCALED_DATA)


def scaled_guide():
    init = torch.tensor([0.2, 0.5, 0.7], dtype=torch.float64).repeat(10)
    probs = pyro.param("q", init, constraint=dist.constraints.unit_interval)
    with pyro.plate("data", len(SCALED_DATA)):
        pyro.sample("z", dist.Bernoulli(probs))


def tempered_bound(q, scale, power_inside=True):
    """The exact K = 2 bound per data point, by enumerating both samples:
    :math:`\\sum_n \\sum_{a, b} q(a) q(b) \\log \\frac{1}{2}(w_n(a)^c + w_n(b)^c)`
    (``power_inside``), or ``c`` times the plain bound."""
    total = 0.0
    for a in (0.0, 1.0):
        for b in (0.0, 1.0):
            weight = (q if a else 1 - q) * (q if b else 1 - q)
            log_w = []
            for z in (a, b):
                log_p = dist.Bernoulli(PRIOR).log_prob(torch.tensor(z)) + dist.Normal(2 * z - 1, 1.0).log_prob(
                    SCALED_DATA
                )
                log_w.append(log_p - dist.Bernoulli(q).log_prob(torch.tensor(z, dtype=torch.float64)))
            log_w = torch.stack(log_w)
            inner = scale * log_w if power_inside else log_w
            bound = torch.logsumexp(inner, 0) - math.log(2)
            total = total + (weight * (bound if power_inside else scale * bound)).sum()
    return total


def test_poutine_scale_tempers_the_weights():
    """With ``poutine.scale(c)`` on model and guide, the bound is taken of the
    tempered weights, :math:`\\sum_n E \\log \\frac{1}{K}\\sum_k w_{k,n}^c` (as
    Pyro's RenyiELBO takes it), not :math:`c` times the bound: its value and
    its VIMCO gradient agree with the exact enumeration at K = 2 and c = 2,
    and the other definition lies many standard errors away."""
    scale, draws = 2.0, 600
    model, guide = poutine.scale(scaled_model, scale), poutine.scale(scaled_guide, scale)
    elbo = ImportanceWeightedELBO(num_particles=2, gradient="vimco", vectorize_particles=True, max_plate_nesting=1)
    pyro.set_rng_seed(0)
    values, grads = [], []
    for _ in range(draws):
        values.append(-elbo.loss_and_grads(model, guide))
        q = pyro.param("q").unconstrained()
        grads.append(-q.grad.clone())
        q.grad = None
    values, grads = torch.tensor(values, dtype=torch.float64), torch.stack(grads)
    q = pyro.param("q").detach().requires_grad_()
    exact = tempered_bound(q, scale)
    (exact_grad,) = torch.autograd.grad(exact, q)
    exact_grad = exact_grad * q.detach() * (1 - q.detach())  # to the unconstrained (logit) coordinates
    value_se = values.std() / math.sqrt(draws)
    assert abs(values.mean() - exact.item()) < 4.5 * value_se
    other = tempered_bound(q.detach(), scale, power_inside=False)
    assert abs(other - exact).item() > 8 * value_se  # the test tells the two definitions apart
    grad_se = grads.std(0) / math.sqrt(draws)
    assert ((grads.mean(0) - exact_grad).abs() < 4.5 * grad_se).all()
    assert (exact_grad.abs() > 10 * grad_se).any()  # a gradient off by half would be seen


def _scaled_local_model(scale):
    def model(data):
        with pyro.plate("data", len(data)), poutine.scale(scale=scale):
            y = pyro.sample("y", dist.Normal(0.0, 1.0))
        with pyro.plate("obs", len(data)):
            pyro.sample("x", dist.Normal(y, 0.5), obs=data)

    return model


def _scaled_local_guide(scale, mask=None):
    def guide(data):
        loc = pyro.param("y_loc", torch.zeros(len(data)))
        log_scale = pyro.param("y_log_scale", torch.full((len(data),), -0.3))
        with pyro.plate("data", len(data)), poutine.scale(scale=scale):
            fn = dist.Normal(loc, log_scale.exp())
            pyro.sample("y", fn if mask is None else fn.mask(mask))

    return guide


def test_dreg_rewrites_only_the_scaled_score():
    """KL annealing, poutine.scale(c) on a latent in model and guide: log w
    holds c log q, so DReG rewrites c times the score and the hook weighs the
    path by 1 - c + c w~ (w~^2 dropped the rest: 22 standard errors away from
    the IWAE gradient at c = 0.3, K = 10, 300 draws)."""
    model, guide = _scaled_local_model(0.3), _scaled_local_guide(0.3)
    stats = []
    for gradient, seed in (("reparam", 2), ("dreg", 1)):
        pyro.clear_param_store()
        pyro.set_rng_seed(seed)
        elbo = ImportanceWeightedELBO(10, gradient=gradient, vectorize_particles=True, max_plate_nesting=1)
        stats.append(gradient_statistics(elbo, model, guide, DATA, num_draws=300))
    iwae, dreg = stats
    for name in iwae:
        se = (iwae[name].standard_error ** 2 + dreg[name].standard_error ** 2).sqrt()
        assert ((iwae[name].mean - dreg[name].mean).abs() <= 4.5 * se).all(), name
        assert (iwae[name].mean.abs() > 10 * se).any(), name  # a weight off by w~ would be seen


@pytest.mark.parametrize("vectorize", [True, False], ids=["vec", "seq"])
def test_dreg_of_a_masked_out_density_is_the_iwae_gradient(vectorize):
    """A guide density masked out (.mask(False)) is not in log w: there is no
    score to rewrite, and on the same draws DReG is the IWAE gradient."""
    model, guide = _scaled_local_model(1.0), _scaled_local_guide(1.0, mask=False)
    grads = []
    for gradient in ("reparam", "dreg"):
        pyro.clear_param_store()
        pyro.set_rng_seed(0)
        elbo = ImportanceWeightedELBO(5, gradient=gradient, vectorize_particles=vectorize, max_plate_nesting=1)
        elbo.loss_and_grads(model, guide, DATA)
        grads.append({name: p.grad.clone() for name, p in pyro.get_param_store().named_parameters()})
    for name in grads[0]:
        assert grads[0][name].abs().sum() > 0, name
        assert torch.allclose(grads[1][name], grads[0][name], rtol=1e-5, atol=1e-6), name


def test_dreg_refuses_a_scaled_site_in_a_structured_guide():
    elbo = ImportanceWeightedELBO(4, gradient="dreg", vectorize_particles=True)
    with pytest.raises(ValueError, match="site 'a' is scaled or masked"):
        elbo.loss(structured_model, poutine.scale(structured_guide, scale=0.5))
