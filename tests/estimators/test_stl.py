"""StickingTheLandingELBO: unbiased, zero variance at the exact posterior,
model parameters untouched, non-reparameterizable sites refused."""

import functools

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.distributions import constraints
from pyro.infer import Trace_ELBO
from pyro.infer.autoguide import AutoDiagonalNormal, AutoMultivariateNormal, AutoNormal, AutoStructured

from guides.normal_gamma import elbo_gradient, exact_structured_params, mean_field_guide, structured_guide
from models.catalogue import nested_model
from models.normal_gamma import generate_data, model
from pyro_vi import ImportanceWeightedELBO, StickingTheLandingELBO
from pyro_vi.diagnostics import gradient_statistics
from tests.helpers import NORMAL_GAMMA_AWAY as AWAY
from tests.helpers import NORMAL_GAMMA_NAMES as NAMES
from tests.helpers import losses_and_grads_on_the_same_draws

DATA = generate_data()


def stats(elbo, guide, num_draws=200, seed=0, mdl=model, data=DATA):
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    return gradient_statistics(elbo, mdl, guide, data, num_draws=num_draws)


def test_unbiased_against_the_exact_gradient():
    grad = elbo_gradient(DATA.double(), AWAY)  # in (m, lambda, a, b); chain rule to the logs
    exact = [-float(grad[k]) * (1.0 if k == "m" else getattr(AWAY, k)) for k in ("m", "lam", "a", "b")]
    s = stats(StickingTheLandingELBO(50, vectorize_particles=True), functools.partial(mean_field_guide, init=AWAY))
    for name, g in zip(NAMES, exact):
        assert abs(s[name].mean.item() - g) < 4 * s[name].standard_error.item(), (name, s[name].mean, g)
        assert s[name].standard_error.item() < 0.1 * abs(g), name


def test_zero_variance_at_the_exact_posterior():
    """The structured guide at the exact NormalGamma posterior: log p - log q
    is constant in z, so every path gradient is zero; Trace_ELBO keeps the
    score term's noise."""
    guide = functools.partial(structured_guide, init=exact_structured_params(DATA))
    stl = stats(StickingTheLandingELBO(10, vectorize_particles=True), guide, num_draws=50)
    reparam = stats(Trace_ELBO(num_particles=10, vectorize_particles=True), guide, num_draws=50)
    for name in NAMES:
        assert reparam[name].variance.item() > 1e-2, name
        # float32: the path gradient is zero up to rounding of terms of size ~100.
        assert stl[name].variance.item() < 1e-6, (name, stl[name].variance)
        assert abs(stl[name].mean.item()) < 1e-3, name


def noise_model(data):
    noise = pyro.param("noise", torch.tensor(1.3), constraint=constraints.positive)
    loc = pyro.sample("loc", dist.Normal(0.0, 2.0))
    with pyro.plate("data", len(data)):
        pyro.sample("x", dist.Normal(loc, noise), obs=data)


def noise_guide(data):
    m = pyro.param("m", torch.tensor(0.2))
    s = pyro.param("s", torch.tensor(0.5), constraint=constraints.positive)
    pyro.sample("loc", dist.Normal(m, s))


@pytest.mark.parametrize("vectorize", [True, False])
def test_model_parameters_get_the_trace_elbo_gradient(vectorize):
    elbos = (
        Trace_ELBO(num_particles=3, vectorize_particles=vectorize),
        StickingTheLandingELBO(num_particles=3, vectorize_particles=vectorize),
    )
    data = torch.tensor([0.3, 1.2, -0.7])
    (trace_loss, trace_grads), (stl_loss, stl_grads) = losses_and_grads_on_the_same_draws(
        elbos, noise_model, noise_guide, data, seed=4
    )
    assert trace_loss == pytest.approx(stl_loss, rel=1e-6)
    assert torch.allclose(trace_grads["noise"], stl_grads["noise"], rtol=1e-5)
    # ... while the guide's gradients differ: the score term is gone.
    assert not torch.allclose(trace_grads["s"], stl_grads["s"])


@pytest.mark.parametrize("autoguide", [AutoNormal, AutoDiagonalNormal, AutoMultivariateNormal])
def test_autoguides_unbiased(autoguide):
    """Against Trace_ELBO's mean gradient: the autoguides' Delta sites carry
    the log-Jacobian of their transforms, which is path and must be kept."""
    data = torch.tensor([0.3, 1.2, -0.7, 2.0])

    def positive_model(data):
        scale = pyro.sample("scale", dist.LogNormal(0.0, 1.0))
        loc = pyro.sample("loc", dist.Normal(0.0, 2.0))
        with pyro.plate("data", len(data)):
            pyro.sample("x", dist.Normal(loc, scale), obs=data)

    guide = autoguide(positive_model)
    results = []
    for elbo in (
        Trace_ELBO(num_particles=100, vectorize_particles=True),
        StickingTheLandingELBO(num_particles=100, vectorize_particles=True),
    ):
        pyro.clear_param_store()
        pyro.set_rng_seed(0)
        guide(data)
        results.append(gradient_statistics(elbo, positive_model, guide, data, num_draws=100))
    for name in results[0]:
        a, b = results[0][name], results[1][name]
        se = (a.standard_error**2 + b.standard_error**2).sqrt()
        assert ((a.mean - b.mean).abs() <= 4 * se + 1e-6).all(), (name, a.mean, b.mean)


def test_non_reparameterizable_site_is_refused_by_name():
    def coin_model():
        pyro.sample("coin", dist.Bernoulli(0.3))

    def coin_guide():
        pyro.sample("coin", dist.Bernoulli(pyro.param("p", torch.tensor(0.5), constraint=constraints.unit_interval)))

    with pytest.raises(ValueError, match="site 'coin'"):
        StickingTheLandingELBO().loss_and_grads(coin_model, coin_guide)


def test_unbiased_on_a_tiny_vae_and_decoder_gradient_unchanged():
    """The VAE with a tiny network: STL's mean gradient equals Trace_ELBO's
    for every encoder and decoder parameter, and on the same samples the
    decoder gets exactly Trace_ELBO's gradient."""
    from guides.vae import Encoder
    from guides.vae import guide as vae_guide
    from models.vae import Decoder, VAEConfig
    from models.vae import model as vae_model

    config = VAEConfig(data_dim=6, hidden_dims=(4,), latent_dim=2)
    torch.manual_seed(0)
    decoder, encoder = Decoder(config, mean_pixel=0.4), Encoder(config)
    x = torch.bernoulli(torch.full((5, 6), 0.4), generator=torch.Generator().manual_seed(1))
    mdl = functools.partial(vae_model, decoder=decoder)
    gd = functools.partial(vae_guide, encoder=encoder)
    kw = dict(num_particles=50, vectorize_particles=True, max_plate_nesting=1)
    results = []
    for elbo in (Trace_ELBO(**kw), StickingTheLandingELBO(**kw)):
        pyro.clear_param_store()
        pyro.set_rng_seed(0)
        results.append(gradient_statistics(elbo, mdl, gd, x, num_draws=100))
    for name in results[0]:
        a, b = results[0][name], results[1][name]
        se = (a.standard_error**2 + b.standard_error**2).sqrt()
        assert ((a.mean - b.mean).abs() <= 4 * se + 1e-6).all(), name
    same = []
    for elbo in (Trace_ELBO(**kw), StickingTheLandingELBO(**kw)):
        pyro.clear_param_store()
        for p in list(decoder.parameters()) + list(encoder.parameters()):
            p.grad = None  # the modules outlive the param store
        pyro.set_rng_seed(3)
        elbo.loss_and_grads(mdl, gd, x)
        same.append({n: p.grad.clone() for n, p in pyro.get_param_store().named_parameters()})
    decoder_names = [n for n in same[0] if n.startswith("decoder")]
    assert decoder_names
    for name in decoder_names:
        assert torch.allclose(same[0][name], same[1][name], rtol=1e-5, atol=1e-6), name


@pytest.mark.parametrize(
    "guide, rerun",
    [
        (functools.partial(mean_field_guide, init=AWAY), False),
        (functools.partial(structured_guide, init=AWAY), True),
        (AutoMultivariateNormal(model), False),
    ],
    ids=["mean-field", "structured", "AutoMultivariateNormal"],
)
def test_stopped_log_q_without_a_rerun_equals_the_rerun(guide, rerun):
    """A guide whose random sites depend on no other sample skips the rerun,
    with the same values and parameter gradients (an autoguide's point masses,
    which depend on its latent sample, keep their whole density and need
    none); a structured guide is rerun."""
    from pyro import poutine
    from pyro.poutine.util import prune_subsample_sites

    from pyro_vi.particles import run
    from pyro_vi.particles.pyro_compat import particle_plate

    pyro.set_rng_seed(0)
    StickingTheLandingELBO(num_particles=4, vectorize_particles=True).loss(model, guide, DATA)  # creates the params
    vectorized_guide = particle_plate(4, plate_dims=1)(guide)
    replay_trace = poutine.trace(vectorized_guide).get_trace(DATA)
    direct = run._log_prob_at_detached(prune_subsample_sites(replay_trace))
    assert (direct is None) == rerun
    if direct is None:
        return
    again = run._rerun_on_detached(vectorized_guide, replay_trace, (DATA,), {})
    params = [p.unconstrained() for p in pyro.get_param_store().values()]
    for name in direct:
        assert torch.allclose(direct[name], again[name])
        grads = [
            torch.autograd.grad(t.sum(), params, retain_graph=True, allow_unused=True, materialize_grads=True)
            for t in (direct[name], again[name])
        ]
        for g1, g2 in zip(*grads):
            assert torch.allclose(g1, g2)


@pytest.mark.parametrize("vectorize", [True, False], ids=["vec", "seq"])
@pytest.mark.parametrize(
    "estimator, reference",
    [
        (StickingTheLandingELBO, Trace_ELBO),
        (
            functools.partial(ImportanceWeightedELBO, gradient="stl"),
            functools.partial(ImportanceWeightedELBO, gradient="reparam"),
        ),
        (
            functools.partial(ImportanceWeightedELBO, gradient="dreg"),
            functools.partial(ImportanceWeightedELBO, gradient="reparam"),
        ),
    ],
    ids=["stl", "iw-stl", "dreg"],
)
def test_point_mass_densities_keep_their_gradient(estimator, reference, vectorize):
    """AutoStructured draws parameter-free auxiliaries and puts the
    parameters in point masses, z = loc + scale * eps with log_density
    -log scale: no site has a score to drop, so on the same draws the
    path-derivative estimators equal the reparameterized gradient (stopping
    the point masses' log_density dropped the entropy's gradient, a bias of
    about 100 standard errors)."""
    kw = dict(num_particles=4, vectorize_particles=vectorize, max_plate_nesting=2)
    results = []
    for elbo in (estimator(**kw), reference(**kw)):
        guide = AutoStructured(nested_model)  # a fresh module: its gradients do not accumulate
        ((loss, grads),) = losses_and_grads_on_the_same_draws([elbo], nested_model, guide, seed=1)
        results.append((loss, grads))
    (loss, grads), (ref_loss, ref_grads) = results
    assert loss == pytest.approx(ref_loss, rel=1e-6)
    assert grads.keys() == ref_grads.keys()
    for name in grads:
        assert ref_grads[name].abs().sum() > 0, name
        assert torch.allclose(grads[name], ref_grads[name], rtol=1e-5, atol=1e-6), name
