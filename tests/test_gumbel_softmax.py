import math

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from scipy import stats

from pyro_vi.gumbel_softmax import categorical_from_relaxed, gumbel_noise, gumbel_softmax_sample

PROBS = torch.tensor([0.1, 0.2, 0.5, 0.2])
LOGITS = PROBS.log()
C = torch.tensor([1.0, 2.0, 3.0, 4.0])
# d/dlogits sum_k c_k softmax(logits)_k = a_j (c_j - c.a), c.a = 2.8
EXACT_GRADIENT = PROBS * (C - (C * PROBS).sum())


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def argmax_counts(n, temperature, seed=0):
    y = gumbel_softmax_sample(LOGITS, temperature, (n,), generator=gen(seed))
    return torch.bincount(categorical_from_relaxed(y), minlength=4).numpy()


def chisquare_pvalue(counts, probs):
    probs = np.asarray(probs, dtype=np.float64)
    return stats.chisquare(counts, probs / probs.sum() * counts.sum()).pvalue


def relaxed_gradient_draws(temperature, n, seed=0, hard=False):
    """n one-sample estimates of d/dlogits E[sum_k c_k y_k]."""
    x = LOGITS.expand(n, -1).clone().requires_grad_(True)
    y = gumbel_softmax_sample(x, temperature, hard=hard, generator=gen(seed))
    (grads,) = torch.autograd.grad((y * C).sum(), x)
    return grads


def test_exact_gradient_formula():
    x = LOGITS.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad((C * torch.softmax(x, -1)).sum(), x)
    assert torch.allclose(grad, EXACT_GRADIENT, atol=1e-6)
    assert torch.allclose(EXACT_GRADIENT, torch.tensor([-0.18, -0.16, 0.1, 0.24]), atol=1e-6)


def test_shape_simplex_and_reproducible():
    batch_logits = torch.randn(3, 5)
    y = gumbel_softmax_sample(batch_logits, 0.7, (2, 4), generator=gen(1))
    assert y.shape == (2, 4, 3, 5)
    assert (y >= 0).all() and torch.allclose(y.sum(-1), torch.ones(2, 4, 3))
    assert torch.equal(y, gumbel_softmax_sample(batch_logits, 0.7, (2, 4), generator=gen(1)))
    assert not torch.equal(y, gumbel_softmax_sample(batch_logits, 0.7, (2, 4), generator=gen(2)))
    assert categorical_from_relaxed(y).shape == (2, 4, 3)
    assert categorical_from_relaxed(y).dtype == torch.long
    # logits need not be normalized: a shift gives the same sample
    shifted = gumbel_softmax_sample(batch_logits + 10.0, 0.7, (2, 4), generator=gen(1))
    assert torch.allclose(shifted, y, atol=1e-5)


def test_gumbel_noise_is_finite_and_standard_gumbel():
    g = gumbel_noise((200000,), generator=gen(3))
    assert torch.isfinite(g).all()
    # Gumbel(0, 1): mean = Euler-Mascheroni, variance = pi^2 / 6
    assert abs(g.mean().item() - 0.5772157) < 4 * math.sqrt(math.pi**2 / 6 / 200000)
    assert stats.kstest(g.numpy(), stats.gumbel_r.cdf).pvalue > 0.001
    # the clamp keeps -log(-log u) finite at u = 0
    finfo = torch.finfo(torch.float32)
    u = torch.tensor([0.0, 1.0 - finfo.eps / 2]).clamp(min=finfo.tiny, max=1.0 - finfo.eps / 2)
    assert torch.isfinite(-torch.log(-torch.log(u))).all()


@pytest.mark.parametrize("temperature", [0.1, 1.0, 5.0])
def test_argmax_is_categorical(temperature):
    # N = 20000: a wrong vector with a 0.02 shift in one probability is rejected.
    counts = argmax_counts(20000, temperature)
    assert chisquare_pvalue(counts, PROBS) > 0.001
    assert chisquare_pvalue(counts, [0.25, 0.25, 0.25, 0.25]) < 1e-6
    assert chisquare_pvalue(counts, [0.1, 0.2, 0.48, 0.22]) < 0.001


def test_argmax_does_not_depend_on_temperature():
    # Gumbel-max trick: argmax softmax((l + g)/T) = argmax (l + g) for every T.
    a = categorical_from_relaxed(gumbel_softmax_sample(LOGITS, 0.1, (5000,), generator=gen(4)))
    b = categorical_from_relaxed(gumbel_softmax_sample(LOGITS, 10.0, (5000,), generator=gen(4)))
    assert torch.equal(a, b)


def test_same_distribution_as_pyro():
    n, t = 40000, 0.5
    ours = gumbel_softmax_sample(LOGITS, t, (n,), generator=gen(5))
    pyro.set_rng_seed(5)
    theirs = dist.RelaxedOneHotCategorical(torch.tensor(t), logits=LOGITS).sample((n,))
    se = (ours.var(0) / n + theirs.var(0) / n).sqrt()
    assert ((ours.mean(0) - theirs.mean(0)).abs() < 4 * se).all()
    for k in range(4):
        assert stats.ks_2samp(ours[:, k].numpy(), theirs[:, k].numpy()).pvalue > 0.001
    # the same tests have the power to tell T = 0.5 from T = 0.7
    other = dist.RelaxedOneHotCategorical(torch.tensor(0.7), logits=LOGITS).sample((n,))
    assert stats.ks_2samp(ours[:, 2].numpy(), other[:, 2].numpy()).pvalue < 1e-6


@pytest.mark.parametrize("hard", [False, True])
@pytest.mark.parametrize("temperature", [0.01, 0.5, 5.0])
def test_gradients_flow_to_logits(hard, temperature):
    # (a logit far above the others saturates the softmax and its gradient underflows
    # to 0, correctly: see test_tiny_temperature_and_huge_logits_are_stable)
    x = torch.tensor([2.0, -1.0, 0.5, 1.5, -2.0], requires_grad=True)
    y = gumbel_softmax_sample(x, temperature, (500,), hard=hard, generator=gen(6))
    (grad,) = torch.autograd.grad((y * torch.arange(5.0)).sum(), x)
    assert torch.isfinite(y).all() and torch.isfinite(grad).all()
    assert grad.abs().sum() > 0


def test_temperature_as_tensor_gets_a_gradient():
    t = torch.tensor(0.5, requires_grad=True)
    y = gumbel_softmax_sample(LOGITS, t, (100,), generator=gen(7))
    (grad,) = torch.autograd.grad((y * C).sum(), t)
    assert torch.isfinite(grad) and grad != 0


def test_low_temperature_is_one_hot_high_is_uniform():
    n = 20000
    low = gumbel_softmax_sample(LOGITS, 0.01, (n,), generator=gen(8))
    assert (low.max(-1).values > 0.99).float().mean() > 0.95
    high = gumbel_softmax_sample(LOGITS, 1000.0, (n,), generator=gen(8))
    assert (high - 0.25).abs().max() < 0.01
    means = [
        gumbel_softmax_sample(LOGITS, t, (n,), generator=gen(8)).max(-1).values.mean().item()
        for t in (0.01, 0.1, 0.5, 1.0, 5.0, 100.0)
    ]
    assert all(a > b for a, b in zip(means, means[1:]))
    assert means[0] > 0.99 and means[-1] < 0.26
    # E[y] -> a as T -> 0
    assert (low.mean(0) - PROBS).abs().max() < 0.01


def test_tiny_temperature_and_huge_logits_are_stable():
    x = torch.tensor([500.0, -500.0, 0.0], requires_grad=True)
    y = gumbel_softmax_sample(x, 1e-4, (100,), generator=gen(9))
    assert torch.isfinite(y).all() and torch.allclose(y.sum(-1), torch.ones(100))
    (grad,) = torch.autograd.grad((y * torch.tensor([1.0, 2.0, 3.0])).sum(), x)
    assert torch.isfinite(grad).all()


@pytest.mark.parametrize("temperature", [0.1, 0.5, 2.0])
def test_hard_is_exactly_one_hot_with_the_soft_gradient(temperature):
    x = torch.randn(64, 6, generator=gen(10), requires_grad=True)
    w = torch.randn(32, 64, 6, generator=gen(11))
    soft = gumbel_softmax_sample(x, temperature, (32,), generator=gen(12))
    hard = gumbel_softmax_sample(x, temperature, (32,), hard=True, generator=gen(12))
    assert ((hard == 0) | (hard == 1)).all()
    assert (hard.sum(-1) == 1).all()
    assert torch.equal(categorical_from_relaxed(hard), categorical_from_relaxed(soft))
    (g_soft,) = torch.autograd.grad(soft, x, grad_outputs=w)
    (g_hard,) = torch.autograd.grad(hard, x, grad_outputs=w)
    assert torch.equal(g_hard, g_soft)
    assert g_hard.abs().sum() > 0


def test_pyro_straight_through_has_the_same_forward_and_gradient_law():
    # Pyro's straight-through variant draws from the same law: one-hot values
    # whose argmax is categorical, and its linear-objective gradient has our mean.
    n, t = 20000, 0.5
    pyro.set_rng_seed(13)
    x = LOGITS.expand(n, -1).clone().requires_grad_(True)
    y = dist.RelaxedOneHotCategoricalStraightThrough(torch.tensor(t), logits=x).rsample()
    assert ((y == 0) | (y == 1)).all()
    assert chisquare_pvalue(torch.bincount(y.argmax(-1), minlength=4).numpy(), PROBS) > 0.001
    (theirs,) = torch.autograd.grad((y * C).sum(), x)
    ours = relaxed_gradient_draws(t, n, seed=13, hard=True)
    se = (ours.var(0) / n + theirs.var(0) / n).sqrt()
    assert ((ours.mean(0) - theirs.mean(0)).abs() < 4 * se).all()


def test_relaxed_gradient_approaches_the_exact_gradient_at_small_temperature():
    # The relaxed estimate is unbiased for d/dlogits E[c.y_T], which differs from the
    # discrete gradient a_j (c_j - c.a) by a bias measured below 0.001 per component at
    # T = 0.1 (2e5 draws). Tolerance: 4 SE + 0.005.
    n = 20000
    grads = relaxed_gradient_draws(0.1, n, seed=14)
    se = grads.std(0) / math.sqrt(n)
    assert (se < 0.02).all()
    assert ((grads.mean(0) - EXACT_GRADIENT).abs() < 4 * se + 0.005).all()
    # the same check rejects T = 1, where the relaxation bias is ~0.05
    grads = relaxed_gradient_draws(1.0, n, seed=14)
    se = grads.std(0) / math.sqrt(n)
    assert not ((grads.mean(0) - EXACT_GRADIENT).abs() < 4 * se + 0.005).all()


def test_variance_grows_as_temperature_falls():
    variances = [relaxed_gradient_draws(t, 20000, seed=15).var(0).sum().item() for t in (0.1, 0.5, 2.0)]
    assert variances[0] > variances[1] > variances[2]


@pytest.mark.parametrize(
    "temperature", [0.0, -1.0, float("inf"), float("nan"), torch.tensor([0.5, -0.1]), "1.0", None, True]
)
def test_bad_temperature(temperature):
    with pytest.raises(ValueError, match="temperature"):
        gumbel_softmax_sample(LOGITS, temperature)


@pytest.mark.parametrize(
    "logits",
    [
        torch.tensor([0.0, float("nan")]),
        torch.tensor([0.0, float("-inf")]),
        torch.tensor([float("inf"), 1.0]),
        torch.tensor(1.0),
        torch.zeros(3, 0),
        torch.tensor([1, 2]),
        [0.0, 1.0],
    ],
)
def test_bad_logits(logits):
    with pytest.raises(ValueError, match="logits"):
        gumbel_softmax_sample(logits, 1.0)


@pytest.mark.parametrize("y", [torch.tensor(1.0), torch.zeros(2, 0), torch.tensor([0.2, float("nan")])])
def test_bad_relaxed_sample(y):
    with pytest.raises(ValueError, match="y "):
        categorical_from_relaxed(y)


@pytest.mark.parametrize(
    "sample_shape, match",
    [
        ((-1,), r"sample_shape\[0\] must be an integer >= 0, got -1"),
        ((2, -3), r"sample_shape\[1\] must be an integer >= 0, got -3"),
        ((2.5,), r"sample_shape\[0\] must be an integer >= 0, got 2\.5 \(float\)"),
        (5, r"sample_shape must be a sequence of non-negative integers .* got 5 \(int\)"),
        ("5", r"sample_shape must be a sequence .* got '5' \(str\)"),
    ],
)
def test_bad_sample_shape_is_refused_by_name(sample_shape, match):
    with pytest.raises(ValueError, match=match):
        gumbel_softmax_sample(LOGITS, 1.0, sample_shape=sample_shape)


def test_sample_shape_accepts_numpy_integers_and_zero():
    assert gumbel_softmax_sample(LOGITS, 1.0, sample_shape=(np.int64(2), 0)).shape == (2, 0) + LOGITS.shape
    assert gumbel_softmax_sample(LOGITS, 1.0, sample_shape=torch.Size([3])).shape == (3,) + LOGITS.shape


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"hard": "yes"}, r"hard must be True or False, got 'yes'"),
        ({"generator": 0}, r"generator must be a torch\.Generator or None, got 0"),
    ],
)
def test_bad_hard_and_generator(kwargs, match):
    with pytest.raises(ValueError, match=match):
        gumbel_softmax_sample(LOGITS, 1.0, **kwargs)
