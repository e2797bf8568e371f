"""Per-particle scores (pyro_vi/elbo/scores.py) against the batched Jacobian
of the whole particle-wide graph, the oracle, on every pair of the
catalogue; the control-variate arithmetic from sums against the direct
formulas."""

import warnings

import pyro
import pyro.distributions as dist
import pytest
import torch

from models.catalogue import CATALOGUE
from pyro_vi import ControlVariateELBO, RaoBlackwellELBO
from pyro_vi.diagnostics import gradient_statistics
from pyro_vi.math import jacobians as scores
from pyro_vi.math.control_variates import COSTLY_WEIGHTS, controlled_gradient
from pyro_vi.math.signals import markov_blanket_signals, per_particle
from pyro_vi.particles.distributions import functional

# every pair whose guide sites may all take a score
SCORE_PAIRS = sorted(name for name, pair in CATALOGUE.items() if not {"guide_messenger", "moving_support"} & pair.tags)


def batched_jacobian(rows, params):
    """The oracle: one backward pass per row of the particle-wide graph,
    batched (``is_grads_batched``), O(S^2 P)."""
    eye = torch.eye(rows.shape[0], dtype=rows.dtype)
    return torch.autograd.grad(
        rows, params, grad_outputs=eye, is_grads_batched=True, retain_graph=True, allow_unused=True
    )


def _terms(pair, vectorize, num_particles=4):
    spec = CATALOGUE[pair]
    pyro.set_rng_seed(0)
    guide = spec.guide()
    # every random guide site with a score; the record with the signals' factors and the score distributions
    elbo = RaoBlackwellELBO(num_particles=num_particles, vectorize_particles=vectorize)
    elbo.loss(spec.model, guide, *spec.args)  # creates the params
    pyro.set_rng_seed(1)
    return elbo.particles(spec.model, guide, *spec.args)


@pytest.mark.parametrize("vectorize", [True, False], ids=["vectorized", "sequential"])
@pytest.mark.parametrize("pair", SCORE_PAIRS)
def test_per_particle_scores_equal_the_batched_jacobian(pair, vectorize):
    terms = _terms(pair, vectorize)
    params = [p for p in terms.guide_params.values() if p.requires_grad]
    signals = markov_blanket_signals(terms) if terms.score_sites() else {}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no legacy-vmap fallback (a UserWarning)
        actual = scores.particle_gradients(terms, [{}, signals], params)
    rows = [terms.score_log_q(), 0.0]
    for site in terms.score_sites():
        rows[1] = rows[1] + per_particle(site.score_log_prob * signals[site.name])
    for k, row in enumerate(rows):
        row = torch.as_tensor(row)
        expected = batched_jacobian(row, params) if row.requires_grad and params else [None] * len(params)
        for param, got, want in zip(params, actual, expected):
            if want is None or not want.abs().sum():
                assert got is None or not got.dense(param)[k].abs().sum()
                continue
            assert torch.allclose(got.dense(param)[k], want, rtol=1e-5, atol=1e-6), pair


@pytest.mark.parametrize(
    "pair,sparse",
    [
        ("local", set()),
        ("amortized", set()),
        ("auto_normal", set()),
        ("auto_multivariate_normal", set()),
        ("subsample_local_param_event_dim", {"loc"}),
        ("subsample_global", {"ym"}),
        ("amortized_subsample", set()),
    ],
)
def test_shared_distributions_take_the_fast_path(pair, sparse, monkeypatch):
    """Mean-field, amortized and autoguides never take one backward pass
    per particle, and subsampled per-datum params get gradients on the
    touched rows only."""
    terms = _terms(pair, True, num_particles=5)
    monkeypatch.setattr(scores, "_one_particle_at_a_time", None)
    names = [n for n, p in terms.guide_params.items() if p.requires_grad]
    grads = scores.particle_gradients(terms, [{}], [terms.guide_params[n] for n in names])
    assert {n for n, g in zip(names, grads) if g is not None and g.index is not None} == sparse
    for name, g in zip(names, grads):
        if g is not None and g.index is not None:
            assert g.index.numel() == 3 < terms.guide_params[name].shape[0]


def direct_controlled_gradient(f, h, coefficient):
    """BBVI's formulas written out, in float64."""
    f, h = f.double(), h.double()
    hc, fc = h - h.mean(0), f - f.mean(0)
    if coefficient == "pooled":
        a = (fc * hc).sum(0) / (hc * hc).sum(0)
    else:
        coefficients = []
        for s in range(len(h)):
            keep = torch.arange(len(h)) != s
            hk, fk = h[keep] - h[keep].mean(0), f[keep] - f[keep].mean(0)
            coefficients.append((fk * hk).sum(0) / (hk * hk).sum(0))
        a = torch.stack(coefficients)
    return (f - a * h).mean(0)


@pytest.mark.parametrize("coefficient", ["pooled", "leave_one_out"])
@pytest.mark.parametrize("with_signal", [True, False])
def test_controlled_gradient_from_sums_equals_the_direct_formula(coefficient, with_signal):
    generator = torch.Generator().manual_seed(0)
    h = torch.randn(7, 3, generator=generator)
    signal = 50.0 + torch.randn(7, generator=generator)  # a large mean, as log-weights have
    f = h * signal[:, None] if with_signal else torch.randn(7, 3, generator=generator) + h
    got = (
        controlled_gradient(h, coefficient, signal=signal) if with_signal else controlled_gradient(h, coefficient, f=f)
    )
    assert torch.allclose(got.double(), direct_controlled_gradient(f, h, coefficient), rtol=1e-4, atol=1e-4)


def test_fixed_coefficient():
    h, signal = torch.tensor([[1.0], [2.0], [-1.0]]), torch.tensor([3.0, 1.0, 2.0])
    expected = ((h[:, 0] * (signal - 0.5)).mean()).item()
    assert controlled_gradient(h, 0.5, signal=signal).item() == pytest.approx(expected)


@pytest.mark.parametrize("coefficient", ["pooled", "leave_one_out"])
def test_float32_arithmetic_keeps_a_large_signal_out_of_the_rounding(coefficient):
    """Scores far from 0 (mean 20, sd 1) and the log-weights of many data
    (mean -10,000, sd 1), in float32: with the signal shifted by its mean
    (and the sums centred) the arithmetic agrees with the float64 formula
    to 2e-5 of the terms' scale. Unshifted, f = hL of about 2e5 loses 0.13
    to 0.31 of terms of about 230 (20 seeds); shifted, at most 0.0022."""
    generator = torch.Generator().manual_seed(0)
    h = 20.0 + torch.randn(8, 64, generator=generator)
    signal = -1e4 + torch.randn(8, generator=generator)
    got = controlled_gradient(h, coefficient, signal=signal)
    expected = direct_controlled_gradient(h.double() * signal.double()[:, None], h, coefficient)
    assert got.dtype == torch.float32
    assert (got.double() - expected).abs().max() < 2e-5 * expected.abs().mean()


@pytest.mark.parametrize("estimator", ["ControlVariateELBO", "RaoBlackwellELBO"])
@pytest.mark.parametrize("pair", ["local", "subsample_global", "auto_normal", "positive_supports"])
def test_distribution_coordinates_equal_parameter_coordinates_on_mean_field_guides(pair, estimator):
    """Where the parameters map element by element onto the distributions'
    tensors, a coefficient per distribution scalar is a coefficient per
    parameter: the same gradient on the same particles."""
    from models.catalogue import elbo_for, take_grads

    grads = []
    for config in (estimator, estimator + "(parameters)"):
        spec = CATALOGUE[pair]
        pyro.clear_param_store()
        pyro.set_rng_seed(0)
        guide = spec.guide()
        elbo = elbo_for(config, True, spec, num_particles=6)
        elbo.loss(spec.model, guide, *spec.args)
        pyro.set_rng_seed(1)
        elbo.loss_and_grads(spec.model, guide, *spec.args)
        grads.append(take_grads())
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        assert torch.allclose(grads[0][name], grads[1][name], rtol=1e-4, atol=1e-5), name


@pytest.mark.parametrize("with_signal", [True, False])
def test_leave_one_out_coefficient_when_the_other_scores_are_equal(with_signal):
    """Where the other particles' scores are all equal (a discrete site they
    all drew alike), the slope of f on h is undefined; the sums' rounding
    left a variance of ~1e-7 that gave an arbitrary coefficient. Now the
    coefficient is the others' f / h, their mean signal for f = h L: the
    REINFORCE leave-one-out baseline, exactly."""
    h = torch.full((6, 2), 0.37)
    h[0, 1] = -1.1  # particle 0 differs in the second entry only
    signal = 40.0 + torch.tensor([0.3, -1.2, 2.1, 0.7, 1.5, -0.4])
    f = h * signal[:, None]
    got = (
        controlled_gradient(h, "leave_one_out", signal=signal)
        if with_signal
        else controlled_gradient(h, "leave_one_out", f=f)
    )
    s = len(signal)
    baseline = (signal.sum() - signal) / (s - 1)
    # Entry 0: every particle's others are equal -> the leave-one-out baseline.
    assert got[0].item() == pytest.approx((h[:, 0] * (signal - baseline)).mean().item(), abs=1e-4)
    # Entry 1: particle 0's others are equal (its coefficient is its
    # baseline); every other particle's others include particle 0, so its
    # coefficient is the regression slope.
    coefficients = [baseline[0]]
    for k in range(1, s):
        keep = torch.arange(s) != k
        hk, fk = h[keep, 1] - h[keep, 1].mean(), f[keep, 1] - f[keep, 1].mean()
        coefficients.append((fk * hk).sum() / (hk * hk).sum())
    expected = (f[:, 1] - torch.stack(coefficients) * h[:, 1]).mean().item()
    assert got[1].item() == pytest.approx(expected, abs=1e-3)


@pytest.mark.parametrize("num_particles", [3, 6])
def test_leave_one_out_coefficient_when_the_other_scores_are_all_zero(num_particles):
    """A particle whose others all have a score of exactly 0 (a subsampled
    row only it touched, with one trace per particle): their variance is 0
    and their regression through the origin gives the coefficient 0, so its
    term is f / S. The leave-one-out variance left by the sums' rounding
    (~1e-16) used to pass a threshold of 0 and give an arbitrary
    coefficient in about one draw in seven."""
    generator = torch.Generator().manual_seed(0)
    for _ in range(50):
        h = torch.zeros(num_particles, 4)
        h[-1] = torch.randn(4, generator=generator)
        signal = 5 * torch.randn(num_particles, generator=generator) - 20
        got = controlled_gradient(h, "leave_one_out", signal=signal)
        assert torch.allclose(got, h[-1] * signal[-1] / num_particles, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("estimator", [ControlVariateELBO, RaoBlackwellELBO])
@pytest.mark.parametrize("weights", [COSTLY_WEIGHTS, COSTLY_WEIGHTS + 1])
def test_parameter_coordinates_warn_once_above_a_million_weights(estimator, weights):
    def model():
        pyro.sample("z", dist.Normal(0.0, 1.0))

    def guide():
        w = pyro.param("w", torch.zeros(weights))
        pyro.sample("z", dist.Normal(w[:2].sum(), 1.0))

    pyro.clear_param_store()
    for coordinates, warns in [("distributions", False), ("parameters", weights > COSTLY_WEIGHTS)]:
        elbo = estimator(num_particles=3, vectorize_particles=True, coordinates=coordinates)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for _ in range(2):
                elbo.loss_and_grads(model, guide)
        costly = [w for w in caught if "coordinates=" in str(w.message)]
        assert len(costly) == int(warns), (coordinates, [str(w.message) for w in caught])
        if warns:
            message = str(costly[0].message)
            assert costly[0].category is UserWarning
            for named in (estimator.__name__, f"{weights:,}", 'coordinates="distributions"'):
                assert named in message


def _low_rank_model(x):
    z = pyro.sample("z", dist.MultivariateNormal(torch.zeros(3), torch.eye(3)))
    pyro.sample("x", dist.Normal(z, 1.0).to_event(1), obs=x)


LOW_RANK = dict(loc=[0.5, 0.7, 1.2], cov_factor=[[0.3, -0.2], [0.1, 0.4], [-0.3, 0.2]], cov_diag=[0.6, 0.6, 0.6])
LOW_RANK_DATA = torch.tensor([0.3, 1.5, 2.7])


def _low_rank_guide(x):
    loc = pyro.param("loc", torch.tensor(LOW_RANK["loc"]))
    cov_factor = pyro.param("cov_factor", torch.tensor(LOW_RANK["cov_factor"]))
    cov_diag = pyro.param("cov_diag", torch.tensor(LOW_RANK["cov_diag"]), constraint=dist.constraints.positive)
    pyro.sample("z", dist.LowRankMultivariateNormal(loc, cov_factor, cov_diag))


def _low_rank_exact_loss_gradient():
    """The negative ELBO's gradient from its closed form: for
    :math:`q = N(m, \\Sigma)`, :math:`\\Sigma = F F^\\top + \\mathrm{diag}(d)`,
    :math:`\\mathrm{ELBO} = -\\frac{1}{2}(|m|^2 + |x - m|^2) - \\mathrm{tr}\\,\\Sigma
    + \\frac{1}{2}\\log\\det\\Sigma` up to a constant; ``cov_diag`` by its logarithm."""
    loc = torch.tensor(LOW_RANK["loc"], dtype=torch.float64, requires_grad=True)
    factor = torch.tensor(LOW_RANK["cov_factor"], dtype=torch.float64, requires_grad=True)
    log_diag = torch.tensor(LOW_RANK["cov_diag"], dtype=torch.float64).log().requires_grad_()
    covariance = factor @ factor.T + torch.diag(log_diag.exp())
    x = LOW_RANK_DATA.double()
    elbo = -0.5 * (loc.square().sum() + (x - loc).square().sum()) - covariance.trace() + 0.5 * covariance.logdet()
    grads = torch.autograd.grad(-elbo, (loc, factor, log_diag))
    return dict(zip(("loc", "cov_factor", "cov_diag"), grads))


def test_a_distribution_with_derived_tensors_falls_back_to_parameter_coordinates():
    """``LowRankMultivariateNormal`` stores ``_capacitance_tril``, computed
    from its ``cov_factor`` and ``cov_diag``: the partial score with respect
    to it, the others held fixed, is not a score of the family (its mean is
    not zero), so no control variate may be attached to it. A distribution's
    arguments are free coordinates however the program computed them; a
    tensor it stores apart from them is taken as computed from another where
    the two share an input."""
    learned = torch.randn(4, 6, requires_grad=True)
    loc, log_scale = (torch.ones(5, 4) @ learned).chunk(2, -1)
    scale = torch.rand(3, requires_grad=True)
    locs = learned.reshape(4, 3, 2)
    mixture = dist.MixtureOfDiagNormals(locs, locs.exp(), learned[:, :3])
    free = {
        "Normal of two chunks": (dist.Normal(loc, log_scale.exp()), True),
        "Normal whose scale the program computed from its loc": (dist.Normal(loc, loc.exp()), True),
        "MultivariateNormal": (dist.MultivariateNormal(loc, scale_tril=torch.diag_embed(scale)), True),
        # its scale_tril is stored apart from its argument: from the layer that gives loc too, it is taken apart
        "amortized MultivariateNormal": (
            dist.MultivariateNormal(loc, scale_tril=torch.diag_embed(log_scale.exp())),
            False,
        ),
        "LowRankMultivariateNormal": (dist.LowRankMultivariateNormal(loc, loc.unsqueeze(-1), log_scale.exp()), False),
        "StudentT": (dist.StudentT(log_scale.exp(), loc, 1.0), False),
        # a normalized copy of the component logits, as the data plate expands it: each tensor expanded alone
        "MixtureOfDiagNormals": (mixture.expand([5, 4]), False),
        "Categorical": (dist.Categorical(logits=loc), False),
    }
    for name, (fn, expected) in free.items():
        assert scores._free_coordinates(fn) == expected, name


@pytest.mark.parametrize("vectorize", [True, False], ids=["vec", "seq"])
def test_a_low_rank_guide_takes_per_particle_gradients_of_its_parameters(vectorize):
    elbo = RaoBlackwellELBO(num_particles=3, vectorize_particles=vectorize, max_plate_nesting=0)
    pyro.clear_param_store()
    particles = elbo.particles(_low_rank_model, _low_rank_guide, LOW_RANK_DATA)
    assert scores.distribution_gradients(particles, [{}]) is None


@pytest.mark.parametrize("estimator", [ControlVariateELBO, RaoBlackwellELBO])
def test_unbiased_on_a_low_rank_multivariate_normal_guide(estimator):
    """Against the exact gradient. With a control variate on the capacitance
    matrix's entries, whose scores average -1.1, the default coordinates
    biased the covariance's gradient by 0.18 to 0.58 (20 standard errors at
    1,000 draws of 10 particles)."""
    elbo = estimator(num_particles=200, vectorize_particles=True, max_plate_nesting=0)
    found = _assert_unbiased(elbo, _low_rank_model, _low_rank_guide, LOW_RANK_DATA, _low_rank_exact_loss_gradient())
    for name in ("cov_factor", "cov_diag"):  # the old coordinates' bias on these was 0.18 to 0.58: 6 of these
        assert (found[name].standard_error < 0.03).all(), name


def _assert_unbiased(elbo, model, guide, data, exact):
    """The mean gradient of 20 draws of ``elbo`` within 4.5 standard errors
    of ``exact`` (``{param: gradient of the loss}``); returns the statistics."""
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    found = gradient_statistics(elbo, model, guide, data, num_draws=20)
    for name, value in exact.items():
        mean, error = found[name].mean.double(), found[name].standard_error.double()
        assert ((mean - value).abs() < 4.5 * error).all(), (name, mean, value, error)
    return found


MIXTURE_DATA = torch.tensor([0.3, 1.5, 2.7])
MIXTURE_LOCS = [[-1.0, 0.0], [1.0, 0.5]]


def _mixture_model(x):
    with pyro.plate("data", 3):
        z = pyro.sample("z", dist.Normal(0.0, 2.0).expand([2]).to_event(1))
        pyro.sample("x", dist.Normal(z.sum(-1), 1.0), obs=x)


def _mixture_guide(x):
    with pyro.plate("data", 3):
        locs = pyro.param("locs", torch.tensor(MIXTURE_LOCS).expand(3, 2, 2).clone())
        scales = pyro.param("scales", torch.ones(3, 2, 2), constraint=dist.constraints.positive)
        logits = pyro.param("logits", torch.zeros(3, 2))
        pyro.sample("z", dist.MixtureOfDiagNormals(locs, scales, logits))


def _mixture_exact_loss_gradient():
    """The negative ELBO's gradient by quadrature on a 601 x 601 grid over
    [-9, 9]^2 per data point (the guide's mass on it is 1 to 1e-13)."""
    grid = torch.linspace(-9.0, 9.0, 601, dtype=torch.float64)
    z = torch.stack(torch.meshgrid(grid, grid, indexing="ij"), -1).reshape(-1, 1, 2)
    locs = torch.tensor(MIXTURE_LOCS, dtype=torch.float64).expand(3, 2, 2).clone().requires_grad_()
    log_scales = torch.zeros(3, 2, 2, dtype=torch.float64, requires_grad=True)
    logits = torch.zeros(3, 2, dtype=torch.float64, requires_grad=True)
    log_q = dist.MixtureOfDiagNormals(locs, log_scales.exp(), logits).log_prob(z)  # (grid, 3)
    log_p = dist.Normal(0.0, 2.0).log_prob(z).sum(-1) + dist.Normal(z.sum(-1), 1.0).log_prob(MIXTURE_DATA.double())
    elbo = (log_q.exp() * (log_p - log_q)).sum() * (grid[1] - grid[0]) ** 2
    grads = torch.autograd.grad(-elbo, (locs, log_scales, logits))
    return dict(zip(("locs", "scales", "logits"), grads))


@pytest.mark.parametrize("estimator", [ControlVariateELBO, RaoBlackwellELBO])
def test_unbiased_on_a_mixture_guide(estimator):
    """``MixtureOfDiagNormals`` stores a normalized ``categorical`` made from
    its ``component_logits``; the data plate expands each tensor on its own,
    so only their shared input tells them apart. Control variates on the
    normalized logits biased the logits' gradient by up to 2.7 (40 to 100
    standard errors here). Every site here gets a score: Pyro's pathwise
    derivative of this distribution's component logits is itself off (0.14
    against the exact 0.02 on one point, measured by this quadrature), so
    ``Trace_ELBO`` cannot be the reference."""
    elbo = estimator(num_particles=200, vectorize_particles=True, max_plate_nesting=1)
    found = _assert_unbiased(elbo, _mixture_model, _mixture_guide, MIXTURE_DATA, _mixture_exact_loss_gradient())
    # The old coordinates were off by 1.4 and 2.7 on the second and third points: 20 of these and more.
    assert (found["logits"].standard_error < 0.07).all()


def _families():
    """Guide distributions as a data plate builds them (expanded to a batch
    of 2): ``(name, distribution)``."""
    g = torch.Generator().manual_seed(0)

    def learned(*shape, low=0.5, high=1.5):
        return (low + (high - low) * torch.rand(shape, generator=g)).requires_grad_()

    lower = torch.tensor([[1.0, 0.0], [0.3, 0.8]], requires_grad=True)
    covariance = lower @ lower.T
    locs = learned(1, 2, 2)
    families = {
        "Normal": dist.Normal(learned(2), learned(2)),
        "LogNormal": dist.LogNormal(learned(2), learned(2)),
        "Gamma": dist.Gamma(learned(2), learned(2)),
        "Beta": dist.Beta(learned(2), learned(2)),
        "Dirichlet": dist.Dirichlet(learned(2, 3)),
        "Bernoulli(probs)": dist.Bernoulli(probs=learned(2, low=0.2, high=0.8)),
        "Bernoulli(logits)": dist.Bernoulli(logits=learned(2)),
        "Poisson": dist.Poisson(learned(2)),
        "Geometric": dist.Geometric(probs=learned(2, low=0.2, high=0.8)),
        "NegativeBinomial": dist.NegativeBinomial(learned(2), logits=learned(2)),
        "Binomial": dist.Binomial(5, probs=learned(2, low=0.2, high=0.8)),
        "VonMises": dist.VonMises(learned(2), learned(2)),
        "Laplace": dist.Laplace(learned(2), learned(2)),
        "StudentT": dist.StudentT(learned(2, low=3.0, high=5.0), learned(2), learned(2)),
        "Exponential": dist.Exponential(learned(2)),
        "HalfNormal": dist.HalfNormal(learned(2)),
        "ContinuousBernoulli": dist.ContinuousBernoulli(logits=learned(2)),
        "ZeroInflatedPoisson": dist.ZeroInflatedPoisson(learned(2), gate=learned(2, low=0.1, high=0.4)),
        "MultivariateNormal(scale_tril)": dist.MultivariateNormal(learned(2), scale_tril=lower * 1),
        "MultivariateNormal(covariance)": dist.MultivariateNormal(learned(2), covariance_matrix=covariance),
        "LowRankMultivariateNormal": dist.LowRankMultivariateNormal(learned(2), learned(2, 1), learned(2)),
        "MixtureOfDiagNormals": dist.MixtureOfDiagNormals(locs, locs.exp(), learned(1, 2)),
    }
    return [
        (name, fn.expand([2]) if fn.batch_shape == () else fn.expand(torch.Size([3]) + fn.batch_shape))
        for name, fn in families.items()
    ]


def _mean_partial_scores(fn, num_batches=20, batch=2000):
    """Per tensor of ``fn`` (as :func:`~pyro_vi.particles.distributions.functional`
    takes it apart), the mean over samples of the partial score
    :math:`\\partial \\log q / \\partial t` with the other tensors held fixed,
    and its standard error over ``num_batches`` batches."""
    tensors, rebuild = functional(fn)
    leaves = {path: t.detach().requires_grad_() for path, t in tensors.items()}
    means = []
    for _ in range(num_batches):
        rebuilt = rebuild(leaves)  # afresh: a lazily cached tensor belongs to one graph
        value = rebuilt.expand(torch.Size([batch]) + rebuilt.batch_shape).sample()
        grads = torch.autograd.grad(rebuilt.log_prob(value).sum(), list(leaves.values()), allow_unused=True)
        means.append([torch.zeros_like(t) if g is None else g.double() / batch for t, g in zip(leaves.values(), grads)])
    stacked = [torch.stack(column) for column in zip(*means)]
    return {path: (s.mean(0), s.std(0) / num_batches**0.5) for path, s in zip(leaves, stacked)}


@pytest.mark.parametrize("name,fn", _families(), ids=[name for name, _ in _families()])
def test_free_coordinates_have_scores_of_mean_zero(name, fn):
    """The property a control variate per distribution tensor needs: where
    ``_free_coordinates`` says so, every partial score has mean zero (40,000
    samples). A family it refuses must show a nonzero mean somewhere, or be
    one of the conservative refusals named here."""
    pyro.set_rng_seed(0)
    found = _mean_partial_scores(fn)
    biased = {path: (m, e) for path, (m, e) in found.items() if ((m.abs() - 5 * e) > 1e-6).any()}
    if scores._free_coordinates(fn):
        assert not biased, {path: m for path, (m, _) in biased.items()}
    elif name not in ("StudentT", "MultivariateNormal(covariance)"):
        assert biased, name


def _closed_form_cases():
    loc, scale = torch.randn(4, 3), torch.rand(4, 3) + 0.5
    shape, rate = torch.rand(4, 3) + 0.5, torch.rand(4, 3) + 0.5
    return {
        "Normal": (dist.Normal, (loc, scale), lambda d: d),
        "torch Normal": (torch.distributions.Normal, (loc, scale), lambda d: d),
        "Independent masked Normal": (dist.Normal, (loc, scale), lambda d: d.mask(torch.rand(4, 3) > 0.5).to_event(1)),
        "Gamma": (dist.Gamma, (shape, rate), lambda d: d),
        "Independent Gamma": (dist.Gamma, (shape, rate), lambda d: d.to_event(2)),
    }


@pytest.mark.parametrize("case", list(_closed_form_cases()))
def test_closed_form_scores_equal_autograd(case):
    """The closed-form scores of the broadcast copies equal autograd's
    gradient of the unmasked log-density at the sample."""
    torch.manual_seed(0)
    family, tensors, wrap = _closed_form_cases()[case]
    tensors = [t.clone().requires_grad_() for t in tensors]
    fn = wrap(family(*tensors))
    value = fn.sample()
    expected = torch.autograd.grad(scores.without_mask(fn).log_prob(value).sum(), tensors)
    got = scores.closed_form_scores(fn, value, [(None, t) for t in tensors])
    for g, e in zip(got, expected):
        assert torch.allclose(g, e, rtol=1e-5, atol=1e-6)


def test_closed_form_scores_only_for_the_densities_they_know():
    """Another family, a subclass with its own log-density, or a copy that
    is not one of the distribution's tensors: None (autograd is used)."""

    class Shifted(dist.Normal):
        def log_prob(self, value):
            return super().log_prob(value - 1.0)

    loc, scale = torch.zeros(3, requires_grad=True), torch.ones(3, requires_grad=True)
    value = torch.zeros(3)
    assert scores.closed_form_scores(dist.Normal(loc, scale), value, [(None, loc), (None, scale)]) is not None
    assert scores.closed_form_scores(Shifted(loc, scale), value, [(None, loc)]) is None
    assert scores.closed_form_scores(dist.Beta(scale, scale), value + 0.5, [(None, scale)]) is None
    assert scores.closed_form_scores(dist.Normal(loc, scale), value, [(None, loc.clone())]) is None


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_a_rare_draw_keeps_the_others_mean_signal_as_its_baseline(dtype):
    """A Bernoulli of probability 1e-4 drawn as 1 by one particle of four:
    the other three scores are all -p, so that particle's leave-one-out
    coefficient is the regression through the origin, their mean signal,
    and its term is h_0 (L_0 - mean of the others' L) / S, in either dtype.
    (The others' scores, about 1e-4, are far above their rounding error; the
    arithmetic's own rounding, scaled by particle 0's score of about 1, must
    not count them as 0.)"""
    p = 1e-4
    h = torch.tensor([[1 - p], [-p], [-p], [-p]], dtype=dtype)
    signal = torch.tensor([-100.0, -103.0, -98.0, -101.0], dtype=dtype)
    got = controlled_gradient(h, "leave_one_out", signal=signal, per_particle=True)
    expected = (1 - p) * (signal[0] - signal[1:].mean()) / 4
    assert float(got[0, 0]) == pytest.approx(float(expected), rel=1e-5)
