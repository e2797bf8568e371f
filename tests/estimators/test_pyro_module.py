"""PyroModule models and guides through the ``torch.nn.Module`` that Pyro's
``ELBO.__call__(model, guide)`` returns (an ``ELBOModule``, the way Lightning
and plain torch optimizers train Pyro), with Pyro's global param store and
with module-local parameters (``pyro.settings.set(module_local_params=True)``,
where a plain ``nn.Parameter`` reaches its param site with no
``unconstrained`` attribute): every estimator of the catalogue gives the same
loss and the same gradients to the same parameters in both modes on the same
seed, and ``gradient_statistics`` sees module-local parameters and leaves
their ``.grad`` as it found them."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.distributions import constraints
from pyro.nn import PyroModule, PyroParam, PyroSample
from torch import nn

from models.catalogue import ESTIMATORS
from pyro_vi import RaoBlackwellELBO, gradient_statistics

X = torch.tensor([0.3, -1.2, 2.1, 0.7, 1.5])
Y = torch.tensor([0.5, -2.0, 4.5, 1.0, -3.0])


class Model(PyroModule):
    """``y_n ~ Normal(c x_n, sigma (1 + 4 o_n))`` with ``o_n ~ Bernoulli(0.2)``
    (``discrete``) or ``y_n ~ Normal(c x_n + u_n, sigma)`` with
    ``u_n ~ Normal(0, 1)``; ``c ~ Normal(0, 1)``, ``sigma`` a parameter."""

    def __init__(self, discrete):
        super().__init__()
        self.discrete = discrete
        self.coeff = PyroSample(dist.Normal(0.0, 1.0))
        self.noise = PyroParam(torch.tensor(0.5), constraint=constraints.positive)

    def forward(self, x, y):
        coeff, noise = self.coeff, self.noise
        with pyro.plate("data", len(x)):
            if self.discrete:
                outlier = pyro.sample("local", dist.Bernoulli(0.2))
                pyro.sample("y", dist.Normal(coeff * x, noise * (1.0 + 4.0 * outlier)), obs=y)
            else:
                shift = pyro.sample("local", dist.Normal(0.0, 1.0))
                pyro.sample("y", dist.Normal(coeff * x + shift, noise), obs=y)


class Guide(PyroModule):
    """A mean-field Normal for ``c`` (``PyroParam``\\ s) and an encoder
    (``nn.Linear``, plain parameters) of ``(x_n, y_n)`` for the local site."""

    def __init__(self, discrete):
        super().__init__()
        self.discrete = discrete
        self.loc = PyroParam(torch.tensor(0.0))
        self.scale = PyroParam(torch.tensor(1.0), constraint=constraints.positive)
        self.encoder = nn.Linear(2, 1)

    def forward(self, x, y):
        pyro.sample("coeff", dist.Normal(self.loc, self.scale))
        with pyro.plate("data", len(x)):
            out = self.encoder(torch.stack([x, y], -1)).squeeze(-1)
            pyro.sample("local", dist.Bernoulli(logits=out) if self.discrete else dist.Normal(out, 0.5))


def _programs(discrete, module_local):
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    with pyro.settings.context(module_local_params=module_local):
        return Model(discrete), Guide(discrete)


def _loss_and_grads(estimator, module_local):
    """The loss and the gradients of one call of the estimator's ELBOModule."""
    spec = ESTIMATORS[estimator]
    model, guide = _programs(not spec.pathwise, module_local)
    loss_fn = spec.make(num_particles=3, vectorize_particles=True, max_plate_nesting=1)(model, guide)
    with pyro.settings.context(module_local_params=module_local):
        pyro.set_rng_seed(1)
        loss = loss_fn(X, Y)
        loss.backward()
    return loss.item(), {name: p.grad for name, p in loss_fn.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("estimator", list(ESTIMATORS))
def test_module_local_params_give_the_global_store_gradients(estimator):
    loss, grads = _loss_and_grads(estimator, module_local=True)
    expected_loss, expected = _loss_and_grads(estimator, module_local=False)
    # every parameter of model and guide is registered with the module and moved
    assert set(expected) == {
        "model.noise_unconstrained",
        "guide.loc_unconstrained",
        "guide.scale_unconstrained",
        "guide.encoder.weight",
        "guide.encoder.bias",
    }
    assert loss == pytest.approx(expected_loss, rel=1e-6)
    assert set(grads) == set(expected)
    for name in expected:
        assert torch.allclose(grads[name], expected[name], rtol=1e-5, atol=1e-6), name


def test_gradient_statistics_of_module_local_params():
    statistics = {}
    for module_local in (False, True):
        model, guide = _programs(True, module_local)
        weight = guide.encoder.weight
        weight.grad = torch.full_like(weight, 7.0)
        with pyro.settings.context(module_local_params=module_local):
            pyro.set_rng_seed(1)
            statistics[module_local] = gradient_statistics(
                RaoBlackwellELBO(num_particles=3, max_plate_nesting=1), model, guide, X, Y, num_draws=4
            )
        assert torch.equal(weight.grad, torch.full_like(weight, 7.0))
        assert guide.encoder.bias.grad is None and guide.loc_unconstrained.grad is None
    names = {"noise", "loc", "scale", "encoder$$$weight", "encoder$$$bias"}
    assert set(statistics[True]) == set(statistics[False]) == names
    for name in names:
        local, store = statistics[True][name], statistics[False][name]
        assert (store.variance > 0).all(), name
        assert torch.allclose(local.mean, store.mean, rtol=1e-5, atol=1e-6), name
        assert torch.allclose(local.variance, store.variance, rtol=1e-5, atol=1e-6), name
