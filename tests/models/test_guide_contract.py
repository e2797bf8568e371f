"""The closed-form contract every closed-form guide module keeps (guides/_cavi.py):
a parameter dataclass, ``elbo(data, params, prior)``, ``elbo_gradient(data, params,
prior)``, ``cavi(data, prior, ...)`` returning the shared ``CaviResult`` and
``params_from_store()``."""

import dataclasses
import importlib

import pyro
import pytest
import torch

from guides._cavi import CaviResult

EPS = torch.finfo(torch.float64).eps


def _positive(gen, *shape):
    return (0.5 * torch.randn(*shape, generator=gen, dtype=torch.float64)).exp()


def _normal_gamma(gen):
    from guides.normal_gamma import NormalGammaParams, mean_field_guide
    from models.normal_gamma import COURSE_PRIOR, generate_data

    data = generate_data(20, seed=0).double()
    params = NormalGammaParams(float(torch.randn(1, generator=gen)), *(float(v) for v in _positive(gen, 3)))
    return data, params, COURSE_PRIOR, {"max_iters": 50}, lambda: mean_field_guide(data)


def _poisson_gamma(gen):
    from guides.poisson_gamma import PoissonGammaParams, exponential_guide
    from models.poisson_gamma import DEFAULT_PRIOR, generate_data

    data = generate_data(30, seed=0)
    return data, PoissonGammaParams(float(_positive(gen, 1))), DEFAULT_PRIOR, {}, lambda: exponential_guide(data)


def _gmm(gen):
    from guides.gmm import GMMParams, mean_field_guide
    from models.gmm import DEFAULT_PRIOR, generate_data

    pi = torch.tensor([0.3, 0.3, 0.4], dtype=torch.float64)
    x, _ = generate_data(40, pi, [-3.0, 0.0, 3.0], [1.0, 2.0, 1.0], seed=0)
    r = torch.softmax(torch.randn(40, 3, generator=gen, dtype=torch.float64), -1)
    m = torch.randn(3, generator=gen, dtype=torch.float64)
    params = GMMParams(r, m, *_positive(gen, 3, 3))
    return (x.double(), pi), params, DEFAULT_PRIOR, {"max_iters": 100}, lambda: mean_field_guide(x, pi)


def _earthquake(gen):
    from guides.earthquake import EarthquakeParams, mean_field_guide
    from models.earthquake import DEFAULT_HYPER, generate_data

    pi = torch.tensor([0.5, 0.5], dtype=torch.float64)
    x, s, _ = generate_data(30, pi, [[-4.0, 0.0], [4.0, 1.0]], [2.0, 8.0], seed=0)
    r = torch.softmax(torch.randn(30, 2, generator=gen, dtype=torch.float64), -1)
    m = torch.randn(2, 2, generator=gen, dtype=torch.float64)
    params = EarthquakeParams(r, m, *_positive(gen, 3, 2))
    return (x.double(), s.double(), pi), params, DEFAULT_HYPER, {"max_iters": 100}, lambda: mean_field_guide(x, s, pi)


def _lda(gen):
    from guides.lda import LDAParams, guide
    from models.lda import LDAPrior, generate_corpus

    counts, _ = generate_corpus(12, 10, 3, 20, 0.3, 0.2, seed=0)
    prior = LDAPrior(0.3, 0.2)
    phi = torch.softmax(torch.randn(12, 10, 3, generator=gen, dtype=torch.float64), -1)
    params = LDAParams(_positive(gen, 3, 10), _positive(gen, 12, 3), phi)
    # warm_start: every sub-step an exact block maximization (guides.lda.cavi)
    kwargs = {"num_topics": 3, "max_iters": 30, "tol": 0.0, "warm_start": True, "local_tol": 0.0}
    return counts, params, prior, kwargs, lambda: guide(counts, 3, 0.3, 0.2)


def _normal_chain(gen):
    from guides.normal_chain import NormalChainParams, mean_field_guide
    from models.normal_chain import generate_data

    data = generate_data(10, seed=0)
    loc = torch.randn(13, generator=gen, dtype=torch.float64).tolist()
    scale = _positive(gen, 15).tolist()
    params = NormalChainParams(
        loc[0], scale[0], 1 + scale[1], scale[2], loc[1], scale[3], loc[2], scale[4], loc[3:], scale[5:]
    )
    return data, params, None, {"max_iters": 200}, lambda: mean_field_guide(data)


MODULES = {
    "normal_gamma": ("NormalGammaParams", _normal_gamma),
    "poisson_gamma": ("PoissonGammaParams", _poisson_gamma),
    "gmm": ("GMMParams", _gmm),
    "earthquake": ("EarthquakeParams", _earthquake),
    "lda": ("LDAParams", _lda),
    "normal_chain": ("NormalChainParams", _normal_chain),
}


@pytest.fixture(params=sorted(MODULES))
def case(request):
    name = request.param
    class_name, make = MODULES[name]
    module = importlib.import_module(f"guides.{name}")
    return module, getattr(module, class_name), make(torch.Generator().manual_seed(0))


def test_module_exposes_the_contract(case):
    module, cls, _ = case
    assert dataclasses.is_dataclass(cls) and cls.__dataclass_params__.frozen
    for name in ("elbo", "elbo_gradient", "cavi", "params_from_store"):
        assert callable(getattr(module, name)), name
        assert name in module.__all__, name
    assert cls.__name__ in module.__all__
    assert getattr(module, "CaviResult", CaviResult) is CaviResult


def _as_tensor(value):
    return torch.as_tensor(value, dtype=torch.float64)


def test_elbo_gradient_matches_central_differences(case):
    """Directional central differences along a random direction per field (rows of the
    responsibilities along the simplex), step h relative to the field. Rounding error of
    the difference is about eps * (sum of |terms| of the ELBO) / h; the truncation error
    h^2 |L'''| is below that for h = 1e-5."""
    module, _, (data, params, prior, _, _) = case
    grads = module.elbo_gradient(data, params, prior)
    value = float(module.elbo(data, params, prior))
    gen = torch.Generator().manual_seed(1)
    for name, grad in grads.items():
        point = _as_tensor(getattr(params, name))
        assert grad.shape == point.shape and grad.dtype == torch.float64, name
        direction = torch.randn(point.shape, generator=gen, dtype=torch.float64)
        if name in ("r", "phi"):  # stay on the simplex
            direction = direction - direction.mean(-1, keepdim=True)
        h = 1e-5 * max(1.0, float(point.abs().max()))
        if name in ("r", "phi"):
            h = 1e-5 * float(point.min())
        moved = [
            float(
                module.elbo(
                    data,
                    dataclasses.replace(params, **{name: _shape_like(params, name, point + s * h * direction)}),
                    prior,
                )
            )
            for s in (1, -1)
        ]
        fd = (moved[0] - moved[1]) / (2 * h)
        exact = float((grad * direction).sum())
        tol = 1e3 * EPS * max(1.0, abs(value)) / h
        assert abs(fd - exact) <= tol, (name, fd, exact, tol)
        assert abs(exact) > 100 * tol, name  # a random point: the check has teeth


def _shape_like(params, name, tensor):
    old = getattr(params, name)
    if isinstance(old, float):
        return float(tensor)
    if isinstance(old, tuple):
        return tuple(tensor.tolist())
    return tensor


def test_cavi_never_decreases_the_elbo(case):
    """Each sweep is exact block coordinate ascent: the ELBO may drop only by rounding,
    a few eps of its magnitude per sweep."""
    module, cls, (data, _, prior, kwargs, _) = case
    result = module.cavi(data, prior, **kwargs)
    assert isinstance(result, CaviResult) and isinstance(result.params, cls)
    history = torch.tensor(result.elbo_history, dtype=torch.float64)
    assert len(history) == result.num_iters + 1
    drops = history[:-1] - history[1:]
    assert bool((drops <= 64 * EPS * history[1:].abs()).all()), float(drops.max())
    assert result.elbo == result.elbo_history[-1]
    params = dataclasses.replace(result.params, phi=None) if cls.__name__ == "LDAParams" else result.params
    assert float(module.elbo(data, params, prior)) == pytest.approx(result.elbo, rel=64 * EPS)


def test_params_from_store_reads_the_guide(case):
    module, cls, (_, _, _, _, run_guide) = case
    pyro.clear_param_store()
    run_guide()
    assert isinstance(module.params_from_store(), cls)
    pyro.clear_param_store()
