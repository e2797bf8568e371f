"""Tests for models/lda.py and guides/lda.py (Hoffman et al. 2013, LDA).

References are independent of the code under test: scipy.stats Dirichlet densities for
the Pyro program, torch's Dirichlet KL divergence and log densities, Monte Carlo over
q(theta) q(beta) q(z) with torch.distributions for the closed-form ELBO, Pyro traces of
model/guide for the collapsed bound, and the generating topics for recovery.
"""

import functools
import gzip
import math

import numpy as np
import pyro
import pytest
import torch
from pyro import poutine
from pyro.infer import SVI, Trace_ELBO
from pyro.optim import Adam
from scipy import stats
from torch.distributions import Categorical, Dirichlet, kl_divergence

from guides.lda import (
    GAMMA,
    LDAParams,
    LDAPrior,
    cavi,
    cavi_step,
    check_schedule,
    corpus_elbo,
    elbo,
    guide,
    initial_gamma,
    initial_lambda,
    local_step,
    optimal_phi,
    params_from_store,
    step_size,
    stochastic_vi,
    svi_update,
)
from models.lda import check_counts, generate_corpus, load_docword, match_topics, model, save_docword

ALPHA, ETA, K = 0.3, 0.2, 3
PRIOR = LDAPrior(ALPHA, ETA)


def small_corpus(seed=0):
    """300 documents of 50 tokens over 30 words from 3 topics: (counts, true topics)."""
    return generate_corpus(300, 30, K, 50, ALPHA, ETA, seed=seed)


def tiny_corpus():
    return generate_corpus(4, 6, K, 15, ALPHA, ETA, seed=3)[0].double()


def random_q(num_docs, vocab_size, seed=0):
    """Concentrations in [0.5, 3.5]: away from any fixed point, every term matters."""
    gen = torch.Generator().manual_seed(seed)
    lam = 0.5 + 3 * torch.rand(K, vocab_size, generator=gen, dtype=torch.float64)
    gamma = 0.5 + 3 * torch.rand(num_docs, K, generator=gen, dtype=torch.float64)
    return lam, gamma


# ---------------------------------------------------------------- data and model


def test_generate_corpus_is_seeded_and_leaves_global_rng_alone():
    state = torch.get_rng_state()
    counts, topics = generate_corpus(50, 12, 4, 30, 0.5, 0.3, seed=1)
    assert torch.equal(torch.get_rng_state(), state)
    assert counts.shape == (50, 12) and counts.dtype == torch.int64 and topics.shape == (4, 12)
    assert bool((counts.sum(-1) == 30).all()) and torch.allclose(topics.sum(-1), torch.ones(4, dtype=torch.float64))
    again, _ = generate_corpus(50, 12, 4, 30, 0.5, 0.3, seed=1)
    assert torch.equal(counts, again)
    assert not torch.equal(counts, generate_corpus(50, 12, 4, 30, 0.5, 0.3, seed=2)[0])


def test_model_log_joint_matches_scipy():
    counts = tiny_corpus()
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    theta = torch.distributions.Dirichlet(torch.ones(4, K, dtype=torch.float64)).sample()
    beta = torch.softmax(torch.randn(K, 6, generator=gen, dtype=torch.float64), -1)
    conditioned = poutine.condition(model, data={"theta": theta, "beta": beta})
    trace = poutine.trace(conditioned).get_trace(counts, K, ALPHA, ETA)
    expected = sum(stats.dirichlet.logpdf(t.numpy(), np.full(K, ALPHA)) for t in theta)
    expected += sum(stats.dirichlet.logpdf(b.numpy(), np.full(6, ETA)) for b in beta)
    expected += float((counts * (theta @ beta).log()).sum())  # z summed out, no multinomial coefficient
    assert float(trace.log_prob_sum()) == pytest.approx(expected, rel=1e-10)


def test_docword_round_trip(tmp_path):
    counts, _ = generate_corpus(7, 9, 2, 5, 0.5, 0.5, seed=0)
    words = [f"w{i}" for i in range(9)]
    save_docword(tmp_path / "docword.txt", counts, words, tmp_path / "vocab.txt")
    loaded, vocabulary = load_docword(tmp_path / "docword.txt", tmp_path / "vocab.txt")
    assert torch.equal(loaded, counts) and vocabulary == words
    with open(tmp_path / "docword.txt", "rb") as f, gzip.open(tmp_path / "docword.txt.gz", "wb") as g:
        g.write(f.read())
    assert torch.equal(load_docword(tmp_path / "docword.txt.gz")[0], counts)


def test_match_topics_undoes_a_permutation():
    _, topics = small_corpus()
    order, distances = match_topics(topics, topics[[2, 0, 1]] * 5.0)  # unnormalized rows are fine
    assert order.tolist() == [1, 2, 0] and np.allclose(distances, 0, atol=1e-7)


# ---------------------------------------------------------------- closed-form ELBO


def test_elbo_without_words_is_minus_the_dirichlet_kls():
    counts = tiny_corpus()
    lam, gamma = random_q(*counts.shape)
    expected = -kl_divergence(Dirichlet(gamma), Dirichlet(torch.full_like(gamma, ALPHA))).sum()
    expected -= kl_divergence(Dirichlet(lam), Dirichlet(torch.full_like(lam, ETA))).sum()
    got = elbo(torch.zeros_like(counts), LDAParams(lam, gamma), PRIOR)
    assert float(got) == pytest.approx(float(expected), rel=1e-12)


def test_elbo_with_given_phi_matches_monte_carlo():
    """E_q[log p(w, z, theta, beta) - log q(z, theta, beta)] by sampling theta, beta and one
    z per (document, word) cell (scaled by its count: the tokens of a cell share phi)."""
    counts = tiny_corpus()
    lam, gamma = random_q(*counts.shape)
    torch.manual_seed(0)
    phi = Dirichlet(torch.ones(*counts.shape, K, dtype=torch.float64)).sample()
    num_draws = 40000
    theta = Dirichlet(gamma).sample((num_draws,))  # (S, D, K)
    beta = Dirichlet(lam).sample((num_draws,))  # (S, K, V)
    z = Categorical(phi).sample((num_draws,))  # (S, D, V)
    log_theta_z = theta.log().gather(-1, z)  # log theta_{d, z_dv}
    log_beta_z = beta.log().transpose(-1, -2).unsqueeze(1).expand(-1, counts.shape[0], -1, -1)
    log_beta_z = log_beta_z.gather(-1, z.unsqueeze(-1)).squeeze(-1)  # log beta_{z_dv, v}
    log_p = Dirichlet(torch.full((K,), ALPHA, dtype=torch.float64)).log_prob(theta).sum(-1)
    log_p = log_p + Dirichlet(torch.full((6,), ETA, dtype=torch.float64)).log_prob(beta).sum(-1)
    log_p = log_p + (counts * (log_theta_z + log_beta_z)).sum((-1, -2))
    log_q = Dirichlet(gamma).log_prob(theta).sum(-1) + Dirichlet(lam).log_prob(beta).sum(-1)
    log_q = log_q + (counts * Categorical(phi).log_prob(z)).sum((-1, -2))
    log_w = log_p - log_q
    std_err = float(log_w.std()) / math.sqrt(num_draws)
    exact = float(elbo(counts, LDAParams(lam, gamma, phi), PRIOR))
    # measured: SE 0.13 nats, |mean - exact| = 0.2 SE. Any error above 0.53 nats fails;
    # e.g. a dropped prior normalizer of theta is 12.9 nats, of q(theta) 17.1 nats
    assert 0.03 < std_err < 0.3
    assert abs(float(log_w.mean()) - exact) < 4 * std_err


def test_optimal_phi_gives_the_shortcut_and_the_maximum():
    counts = tiny_corpus()
    lam, gamma = random_q(*counts.shape)
    torch.manual_seed(0)
    best = float(elbo(counts, LDAParams(lam, gamma), PRIOR))
    assert float(elbo(counts, LDAParams(lam, gamma, optimal_phi(lam, gamma)), PRIOR)) == pytest.approx(best, rel=1e-12)
    other = Dirichlet(torch.ones(*counts.shape, K, dtype=torch.float64)).sample()
    assert float(elbo(counts, LDAParams(lam, gamma, other), PRIOR)) < best - 1.0


def per_draw(trace, sites, num_draws):
    trace.compute_log_prob()
    return sum(trace.nodes[name]["log_prob"].reshape(num_draws, -1).sum(-1) for name in sites)


def test_pyro_collapsed_bound_against_the_closed_form():
    """Through Pyro traces of model/guide: the theta/beta part of log p - log q averages
    to minus the closed-form KLs (two-sided), and the collapsed word term lies between the
    mean-field word term at the best phi (Jensen over z) and n log(E theta E beta)
    (Jensen over theta, beta)."""
    counts = tiny_corpus()
    lam, gamma = random_q(*counts.shape)
    pyro.param(GAMMA, gamma, constraint=torch.distributions.constraints.positive)
    bound_guide = functools.partial(guide, init_lambda=lam)
    pyro.set_rng_seed(0)
    num_draws = 40000
    with pyro.plate("particles", num_draws, dim=-2):
        guide_trace = poutine.trace(bound_guide).get_trace(counts, K, ALPHA, ETA)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(counts, K, ALPHA, ETA)
    sites = ["theta", "beta"]
    globals_part = (per_draw(model_trace, sites, num_draws) - per_draw(guide_trace, sites, num_draws)).detach()
    words_part = per_draw(model_trace, ["words"], num_draws).detach()
    closed_globals = float(elbo(torch.zeros_like(counts), LDAParams(lam, gamma), PRIOR))
    closed_words = float(elbo(counts, LDAParams(lam, gamma), PRIOR)) - closed_globals
    plug_in = float((counts * ((gamma / gamma.sum(-1, keepdim=True)) @ (lam / lam.sum(-1, keepdim=True))).log()).sum())
    std_err = float(globals_part.std()) / math.sqrt(num_draws)
    assert abs(float(globals_part.mean()) - closed_globals) < 4 * std_err  # measured SE 0.016, off by 0.7 SE
    std_err = float(words_part.std()) / math.sqrt(num_draws)
    # measured: gaps of 20.9 and 6.4 nats on either side, SE 0.05
    assert closed_words + 1.0 < float(words_part.mean()) < plug_in - 1.0
    assert std_err < 0.2
    # Trace_ELBO itself (a fresh estimate) is above the mean-field ELBO
    estimate = -Trace_ELBO(num_particles=4000, vectorize_particles=True, max_plate_nesting=1).loss(
        model, bound_guide, counts, K, ALPHA, ETA
    )
    assert estimate > float(elbo(counts, LDAParams(lam, gamma), PRIOR)) + 1.0


# ---------------------------------------------------------------- local step, CAVI, SVI


def test_local_step_is_a_fixed_point_with_matching_statistics():
    counts = small_corpus()[0].double()[:40]
    lam = initial_lambda(K, 30, seed=1) * 20
    local = local_step(counts, lam, ALPHA, tol=1e-12, max_iters=5000)
    phi = optimal_phi(lam, local.gamma)
    assert torch.allclose(local.gamma, ALPHA + (counts[..., None] * phi).sum(1), rtol=1e-9)
    assert torch.allclose(local.sufficient_stats, (counts[..., None] * phi).sum(0).T, rtol=1e-10)
    assert local_step(counts, lam, ALPHA, tol=0.0, max_iters=3).num_iters == 3


def test_svi_update_with_the_whole_corpus_and_rho_one_is_a_cavi_step():
    counts = small_corpus()[0].double()[:60]
    lam = initial_lambda(K, 30, seed=2) * 30  # not the prior: the update must replace it
    cavi_lam, _ = cavi_step(counts, lam, initial_gamma(counts, K, ALPHA), ALPHA, ETA)
    assert torch.allclose(svi_update(counts, lam, 60, 1.0, ALPHA, ETA), cavi_lam, rtol=1e-12, atol=0)
    # the D/|B| scaling: the corpus twice over is a batch of 120 standing for 60 documents
    doubled = torch.cat([counts, counts])
    assert torch.allclose(svi_update(doubled, lam, 60, 1.0, ALPHA, ETA), cavi_lam, rtol=1e-12, atol=0)
    # rho interpolates between the old lambda and the CAVI target
    assert torch.allclose(svi_update(counts, lam, 60, 0.3, ALPHA, ETA), 0.7 * lam + 0.3 * cavi_lam, rtol=1e-12)
    # the loop: tau0 = 0, kappa = 1 gives rho_1 = 1, and a batch of D is the whole corpus
    first = stochastic_vi(counts, K, ALPHA, ETA, batch_size=60, tau0=0.0, kappa=1.0, num_updates=1, init_lambda=lam)
    assert torch.allclose(first.lam, cavi(counts, PRIOR, K, max_iters=1, init_lambda=lam).params.lam, rtol=1e-10)
    assert step_size(1, 0.0, 1.0) == 1.0 and step_size(3, 1.0, 0.5 + 1e-12) == pytest.approx(0.5)


@pytest.mark.parametrize("warm_start", [False, True])
def test_cavi_elbo_never_decreases(warm_start):
    counts, _ = small_corpus(seed=1)
    result = cavi(counts, PRIOR, K, max_iters=60, tol=0.0, warm_start=warm_start)
    history = torch.tensor(result.elbo_history, dtype=torch.float64)
    # float64 sums of ~1e4 terms of size ~1e4: rounding is far below 1e-9 relative
    assert bool((history.diff() >= -1e-9 * history.abs()[1:]).all())
    assert history[-1] > history[0] + 1000
    final = float(elbo(counts, result.params, PRIOR))
    assert result.elbo_history[-1] == pytest.approx(final, rel=1e-12)


def test_cavi_and_svi_recover_the_true_topics():
    counts, topics = small_corpus()
    fitted = {
        "cavi": cavi(counts, PRIOR, K, max_iters=100, tol=1e-9).params.lam,
        "svi": stochastic_vi(counts, K, ALPHA, ETA, batch_size=30, tau0=1.0, kappa=0.7, num_updates=300).lam,
    }
    # the random start is far from the topics: recovery is the algorithms' doing
    assert match_topics(topics, initial_lambda(K, 30))[1].mean() > 0.4
    for name, lam in fitted.items():
        _, distances = match_topics(topics, lam)
        # measured max Hellinger distance 0.065 (CAVI) and 0.060 (SVI) on this corpus, and
        # <= 0.069 over corpus seeds 0-2; the true topics are 0.72-0.79 apart, and replacing
        # one topic by the average of the other two gives 0.73. Threshold 0.12.
        assert distances.max() < 0.12, name
    cavi_value, svi_value = (corpus_elbo(counts, lam, ALPHA, ETA)[0] for lam in fitted.values())
    assert svi_value == pytest.approx(cavi_value, rel=2e-3)  # same optimum up to SVI's noise: measured 8e-4


def test_pyro_svi_with_subsampling_improves_the_elbo():
    counts, _ = small_corpus()
    counts = counts.double()
    init = initial_lambda(K, 30)
    svi_guide = functools.partial(guide, init_lambda=init)
    with poutine.trace() as tracer:
        svi_guide(counts, K, ALPHA, ETA, 50)
    assert tracer.trace.nodes["theta"]["fn"].batch_shape == (50,)
    pyro.set_rng_seed(0)
    svi = SVI(model, svi_guide, Adam({"lr": 0.2}), Trace_ELBO())
    for _ in range(150):
        assert math.isfinite(svi.step(counts, K, ALPHA, ETA, 50))
    fitted = params_from_store()
    lam, gamma = fitted.lam, fitted.gamma
    assert lam.shape == (K, 30) and gamma.shape == (300, K)
    before = corpus_elbo(counts, init, ALPHA, ETA)[0]
    assert corpus_elbo(counts, lam, ALPHA, ETA)[0] > before + 1000


# ---------------------------------------------------------------- bad input


def write(path, text):
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    "body, vocab_words, match",
    [
        ("2\n3\n2\n1 1 4\n2 4 1\n", 3, r"line 5: vocabulary mismatch: wordID 4 is outside 1..3"),
        ("2\n3\n1\n1 1 4\n", 4, r"vocabulary mismatch: .* has 4 words but the docword header says W = 3"),
        ("2\n3\n1\n1 2 -2\n", None, r"line 4: count must be a positive integer, got -2"),
        ("2\n3\n1\n1 2 2.5\n", None, r"line 4: count '2.5' is not an integer"),
        ("2\n3\n1\n1 2 two\n", None, r"line 4: count 'two' is not a number"),
        ("2\n3\n1\n3 2 1\n", None, r"line 4: docID 3 is outside 1..2"),
        ("2\n3\n2\n1 2 1\n1 2 3\n", None, r"line 5: \(docID 1, wordID 2\) is listed twice"),
        ("2\n3\n3\n1 2 1\n", None, r"header says NNZ = 3 but the file has 1 entries"),
        ("2 3\n1\n", None, r"expected a header of three lines D, W, NNZ"),
    ],
)
def test_load_docword_refuses_bad_files(tmp_path, body, vocab_words, match):
    path = write(tmp_path / "docword.txt", body)
    vocab = None
    if vocab_words is not None:
        vocab = write(tmp_path / "vocab.txt", "".join(f"w{i}\n" for i in range(vocab_words)))
    with pytest.raises(ValueError, match=match):
        load_docword(path, vocab)


@pytest.mark.parametrize(
    "counts, match",
    [
        ([[1, 2], [-1, 0]], r"counts must be non-negative integers, got -1 at index \(1, 0\)"),
        ([[1, 2.5]], r"counts must be non-negative integers, got 2.5 at index \(0, 1\)"),
        ([[1, float("nan")]], r"counts must be non-negative integers, got nan at index \(0, 1\)"),
        ([1, 2], r"counts must be 2-D"),
        (torch.zeros(0, 3), "counts is empty"),
    ],
)
def test_bad_counts_are_refused_everywhere(counts, match):
    with pytest.raises(ValueError, match=match):
        check_counts(counts)
    for entry_point in (model, guide, cavi, stochastic_vi):
        with pytest.raises(ValueError, match=match):
            entry_point(counts, K, ALPHA, ETA)


@pytest.mark.parametrize(
    "tau0, kappa, match",
    [
        (1.0, 0.5, r"kappa must be in \(0.5, 1\] \(Robbins-Monro\), got 0.5"),
        (1.0, 1.2, r"kappa must be in \(0.5, 1\]"),
        (1.0, float("nan"), r"kappa must be in \(0.5, 1\]"),
        (1.0, True, r"kappa must be in \(0.5, 1\]"),
        (-1.0, 0.7, r"tau0 must be a finite non-negative number, got -1.0"),
        (float("inf"), 0.7, r"tau0 must be a finite non-negative number"),
    ],
)
def test_bad_step_size_schedules_are_refused(tau0, kappa, match, capsys):
    from experiments.lda_svi import STUDY

    with pytest.raises(ValueError, match=match):
        check_schedule(tau0, kappa)
    with pytest.raises(ValueError, match=match):
        step_size(1, tau0, kappa)
    counts = tiny_corpus()
    with pytest.raises(ValueError, match=match):
        stochastic_vi(counts, K, ALPHA, ETA, batch_size=2, tau0=tau0, kappa=kappa)
    if not isinstance(kappa, bool):
        with pytest.raises(SystemExit):
            STUDY.parse(["--tau0", str(tau0), "--kappa", str(kappa)])
        assert "must be" in capsys.readouterr().err


def test_other_bad_settings_are_refused():
    counts = tiny_corpus()
    with pytest.raises(ValueError, match="batch_size must be at most the number of documents 4, got 5"):
        stochastic_vi(counts, K, ALPHA, ETA, batch_size=5)
    with pytest.raises(ValueError, match=r"rho must be in \(0, 1\], got 1.5"):
        svi_update(counts, initial_lambda(K, 6), 4, 1.5, ALPHA, ETA)
    with pytest.raises(ValueError, match="alpha must be positive and finite, got 0.0"):
        model(counts, K, 0.0, ETA)
    with pytest.raises(ValueError, match="eta must be positive and finite, got -1.0"):
        generate_corpus(5, 5, 2, 5, 0.5, -1.0)
    with pytest.raises(ValueError, match="num_topics must be a positive integer, got 0"):
        cavi(counts, PRIOR, 0)
    with pytest.raises(ValueError, match=r"lam must have shape \(K, 6\), got \(3, 5\)"):
        elbo(counts, LDAParams(initial_lambda(K, 5), initial_gamma(counts, K, ALPHA)), PRIOR)
