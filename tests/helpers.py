"""Helpers shared by the test modules (the toy programs are in
tests/programs.py)."""

import math
import os

import numpy as np
import pyro
import torch
from pyro import poutine
from pyro.infer import SVI, Trace_ELBO, TraceEnum_ELBO
from pyro.optim import Adam
from pyro.poutine.util import site_is_subsample

import pyro_vi
from guides.normal_gamma import NormalGammaParams

# The estimators by the short names of the tests' tables and ids.
SF = pyro_vi.ScoreFunctionELBO
CV = pyro_vi.ControlVariateELBO
RB = pyro_vi.RaoBlackwellELBO
RLOO = pyro_vi.ReinforceLeaveOneOutELBO
DisARM = pyro_vi.DisARMELBO
Auto = pyro_vi.AutoELBO
STL = pyro_vi.StickingTheLandingELBO
IW = pyro_vi.ImportanceWeightedELBO

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
"""The repository's root folder."""

NORMAL_GAMMA_NAMES = ("q_mu_loc", "q_mu_precision", "q_tau_concentration", "q_tau_rate")
"""The params of ``guides.normal_gamma.mean_field_guide``, in the order of its fields (m, lam, a, b)."""
NORMAL_GAMMA_AWAY = NormalGammaParams(m=0.5, lam=2.0, a=20.0, b=30.0)
"""Mean-field Normal-Gamma params away from the optimum, where every param's gradient is far from zero."""


def per_draw_log_prob(trace, num_draws):
    """Sum of every sample site's log_prob, one value per draw of the particle plate."""
    trace.compute_log_prob()
    total = 0.0
    for site in trace.nodes.values():
        if site["type"] == "sample" and not site_is_subsample(site):
            total = total + site["log_prob"].reshape(num_draws, -1).sum(-1)
    return total


def write_tiny_mnist(directory, num_images=40, seed=0, gz=True, train=False):
    """Writes ``num_images`` random 28x28 uint8 images with labels as MNIST IDX
    files (``t10k-*``, and ``train-*`` with ``train=True``) into ``directory``;
    returns ``str(directory)``."""
    from models.mnist import write_idx

    os.makedirs(directory, exist_ok=True)
    rng = np.random.default_rng(seed)
    suffix = ".gz" if gz else ""
    for prefix in ("t10k", "train") if train else ("t10k",):
        images = (rng.random((num_images, 28, 28)) ** 3 * 255).astype(np.uint8)
        write_idx(os.path.join(directory, prefix + "-images-idx3-ubyte" + suffix), images)
        write_idx(os.path.join(directory, prefix + "-labels-idx1-ubyte" + suffix), rng.integers(0, 10, num_images))
    return str(directory)


def assert_cavi_optimum_is_stationary(elbo_gradient, optimum, moved, positive):
    """The closed-form ELBO's gradient vanishes at CAVI's optimum (below 1e-6 in
    every block) and is clearly non-zero (above 1e-2 in every block) at
    ``moved``, near it. Taken in the directions that keep the params valid:
    ``r`` along the simplex (minus its row mean), the ``positive`` fields per
    unit of their logarithm. ``elbo_gradient(q)`` is the gradient by field."""

    def gradients(q):
        grads = elbo_gradient(q)
        grads["r"] = grads["r"] - grads["r"].mean(-1, keepdim=True)
        for name in positive:
            grads[name] = grads[name] * getattr(q, name)
        return grads

    for name, grad in gradients(optimum).items():
        assert float(grad.abs().max()) < 1e-6, name
    for name, grad in gradients(moved).items():
        assert float(grad.abs().max()) > 1e-2, name


def losses_and_grads_on_the_same_draws(elbos, model, guide, *args, seed):
    """Each ELBO's ``(loss, grads)`` from the same random stream: in a fresh param
    store, a first ``loss`` call (structure, plate nesting), then
    ``loss_and_grads`` at ``pyro.set_rng_seed(seed)``; ``grads`` maps each param's
    name to the gradient of its unconstrained value."""
    results = []
    for elbo in elbos:
        pyro.clear_param_store()
        elbo.loss(model, guide, *args)
        pyro.set_rng_seed(seed)
        loss = elbo.loss_and_grads(model, guide, *args)
        results.append((loss, {name: p.grad.clone() for name, p in pyro.get_param_store().named_parameters()}))
    return results


def assert_enumerated_svi_improves(model, global_guide, data, prior, init, elbo, fitted_params):
    """100 SVI steps of ``TraceEnum_ELBO`` (z summed out) with a mixture's
    ``global_guide(*data, prior, init)`` raise the enumerated ELBO (1000 particles)
    by more than 5, and the closed-form ``elbo(data, fitted_params(), prior)`` by
    more than 20 over ``init``'s."""

    def guide(*args):
        return global_guide(*args, init)

    args = (*data, prior)
    evaluate = TraceEnum_ELBO(max_plate_nesting=1, num_particles=1000, vectorize_particles=True)
    pyro.set_rng_seed(0)
    before = -evaluate.loss(model, guide, *args)
    svi = SVI(model, guide, Adam({"lr": 0.1}), TraceEnum_ELBO(max_plate_nesting=1))
    for _ in range(100):
        assert math.isfinite(svi.step(*args))
    after = -evaluate.loss(model, guide, *args)
    assert after > before + 5
    assert float(elbo(data, fitted_params(), prior)) > float(elbo(data, init, prior)) + 20


def assert_sampled_z_svi_improves(model, mean_field_guide, data, prior, init, elbo, params_from_store):
    """A mixture's ``mean_field_guide(*data, prior, init)`` draws z (one row per
    particle, no ``rsample``), and 50 SVI steps of vectorized ``Trace_ELBO`` (4
    particles) move z's params ``r`` (the score-function part works) and raise the
    closed-form ``elbo(data, params_from_store(), prior)`` by more than 20 over ``init``'s."""

    def guide(*args):
        return mean_field_guide(*args, init)

    args = (*data, prior)
    with pyro.plate("particles", 4, dim=-2):
        trace = poutine.trace(guide).get_trace(*args)
    assert trace.nodes["z"]["value"].shape == (4, len(init.r))
    assert not trace.nodes["z"]["fn"].has_rsample

    pyro.set_rng_seed(0)
    loss_fn = Trace_ELBO(num_particles=4, vectorize_particles=True, max_plate_nesting=1)
    svi = SVI(model, guide, Adam({"lr": 0.1}), loss_fn)
    for _ in range(50):
        assert math.isfinite(svi.step(*args))
    fitted = params_from_store()
    assert not torch.allclose(fitted.r, init.r)
    assert float(elbo(data, fitted, prior)) > float(elbo(data, init, prior)) + 20


def normal_chain_pyro_gradient(data, params):
    """``guides.normal_chain.elbo_gradient`` (per field, in the constrained values) in
    Pyro's unconstrained coordinates and names: ``"q_" + field``, the gradient of a
    positive field (all but the locs) times its value (chain rule through the log)."""

    from guides.normal_chain import elbo_gradient

    grads = elbo_gradient(data, params)
    return {
        "q_" + name: grad
        if name.endswith("_loc")
        else grad * torch.as_tensor(getattr(params, name), dtype=torch.float64)
        for name, grad in grads.items()
    }
