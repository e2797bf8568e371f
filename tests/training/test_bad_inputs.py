"""Bad inputs to fit, load_checkpoint and the natural-gradient optimizers:
each is refused with a ``ValueError`` (or a documented subclass) whose message
names the argument or file and the value (issue 10; the runner and the case
format are in tests/refusals.py)."""

import math
import os

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import Trace_ELBO
from pyro.optim import Adam
from torch.distributions import constraints

from pyro_vi import (
    NaturalGradient,
    NaturalParameterDomainError,
    OutOfSupportError,
    descent_step,
    fit,
    load_checkpoint,
    natural_gradient,
    natural_parameter_step,
)
from tests.refusals import (
    RUNS,
    X,
    assert_refused,
    case_ids,
    gamma_model,
    guide,
    in_tmp,
    model,
    negative_guide,
    refusals,
)


def narrow_model(x):
    pyro.sample("z", dist.Normal(0.0, 0.001))


def negative_scale_guide(x):  # no constraint on scale: the KL to N(0, 0.001^2) drives it down
    pyro.sample("z", dist.Normal(0.0, pyro.param("scale", torch.tensor(0.05))))


def _fit(**options):
    def call(tmp):
        options.setdefault("num_steps", 2)
        return fit(
            options.pop("model", model),
            options.pop("guide", guide),
            options.pop("elbo", Trace_ELBO()),
            options.pop("optim", Adam({"lr": 0.01})),
            X,
            **options,
        )

    return call


def _fit_into(name, **options):
    """fit with checkpoint=tmp/name."""

    def call(tmp):
        return _fit(checkpoint=str(tmp / name), **options)(tmp)

    return call


def _fit_existing(**options):
    """fit with a checkpoint file that already exists (and holds a finished run)."""

    def call(tmp):
        path = str(tmp / "existing.pt")
        fit(model, guide, Trace_ELBO(), Adam({"lr": 0.01}), X, num_steps=1, checkpoint=path)
        pyro.clear_param_store()
        return _fit(checkpoint=path, **options)(tmp)

    return call


def _fit_out_of_support(tmp):
    return fit(gamma_model, negative_guide, Trace_ELBO(), Adam({"lr": 0.01}), X, num_steps=2)


def _fit_scale_driven_negative(tmp):
    # Adam's first step moves the scale by -lr = -0.1: negative at step 2
    return fit(narrow_model, negative_scale_guide, Trace_ELBO(), Adam({"lr": 0.1}), X, num_steps=3)


def _checkpoint_file(content):
    def call(tmp):
        path = tmp / "ckpt.pt"
        path.write_bytes(content)
        return load_checkpoint(str(path))

    return call


def _checkpoint_not_a_run(tmp):
    path = tmp / "weights.pt"
    torch.save({"weights": torch.zeros(3)}, str(path))
    return load_checkpoint(str(path))


def _natural_gradient_call(factors, grads=None, **options):
    """NaturalGradient(factors)(params) on a Normal guide's params and a model
    param "theta", all with gradients."""

    def call(tmp):
        pyro.param("q_loc", torch.tensor(0.5))
        pyro.param("q_scale", torch.tensor(1.0), constraint=constraints.positive)
        pyro.param("theta", torch.tensor(0.0))
        store = pyro.get_param_store()
        params = [store[name].unconstrained() for name in ("q_loc", "q_scale", "theta")]
        for p, g in zip(params, grads or (0.1, 0.2, 0.3)):
            p.grad = torch.full_like(p, g)
        return NaturalGradient(factors, **options)(params)

    return call


CASES = [
    # --- fit (pyro_vi/training/)
    *refusals(
        "fit",
        ("float num_steps", _fit(num_steps=2.5), r"num_steps must be an integer >= 1, got 2\.5"),
        ("string num_steps", _fit(num_steps="3"), r"num_steps must be an integer >= 1, got '3'"),
        (
            "ELBO class instead of instance",
            _fit(elbo=Trace_ELBO),
            r"elbo must be an ELBO instance, got the class Trace_ELBO",
        ),
        ("torch optimizer", _fit(optim=torch.optim.Adam), r"optim must be a pyro\.optim optimizer instance"),
        ("callback not callable", _fit(callback=3), r"callback must be callable or None, got 3"),
        (
            "string resume",
            _fit_into("c.pt", resume="yes"),
            r"resume must be one of False, True, 'allow_fresh', got 'yes'",
        ),
        (
            "float checkpoint_every",
            _fit_into("c.pt", checkpoint_every=0.5),
            r"checkpoint_every must be an integer >= 1, got 0\.5",
        ),
        (
            "checkpoint in a missing directory",
            _fit_into(os.path.join("missing", "c.pt")),
            in_tmp(os.path.join("missing", "c.pt")),
        ),
        (
            "resume=True without a checkpoint file",
            _fit_into("none.pt", resume=True),
            r"resume=True, but there is no checkpoint " + in_tmp("none.pt"),
        ),
        (
            "existing checkpoint without overwrite",
            _fit_existing(),
            r"checkpoint " + in_tmp("existing.pt") + r" exists: pass resume=True",
        ),
        (
            "resume with another ELBO",
            _fit_existing(resume=True, elbo=Trace_ELBO(num_particles=2)),
            r"belongs to another run:\n  elbo: 'Trace_ELBO\(num_particles=1\)' in the checkpoint, "
            r"'Trace_ELBO\(num_particles=2\)' here",
        ),
    ),
    *refusals(
        "fit",
        (
            "guide draws outside the model's support",
            _fit_out_of_support,
            r"step 1: the model's latent site 'rate' got the value = -[0-9.]+ from the guide",
            RUNS,
        ),
        (
            "guide scale driven negative",
            _fit_scale_driven_negative,
            r"step 2: the guide's site 'z' got Normal\(scale=\.\.\.\) with scale = -[0-9.]+ outside its support.*param "
            r"'scale'",
            RUNS,
        ),
        error=OutOfSupportError,
    ),
    # --- checkpoints
    *refusals(
        "load_checkpoint",
        ("empty file", _checkpoint_file(b""), r"checkpoint " + in_tmp("ckpt.pt") + r" is empty \(0 bytes\)"),
        (
            "random bytes",
            _checkpoint_file(b"\x00\x01not a checkpoint" * 3),
            r"checkpoint " + in_tmp("ckpt.pt") + r" is not a readable torch file",
        ),
        (
            "a torch file that is not a checkpoint",
            _checkpoint_not_a_run,
            r"checkpoint " + in_tmp("weights.pt") + r" is not a pyro_vi\.fit checkpoint v1 file",
        ),
        (
            "missing file",
            lambda tmp: load_checkpoint(str(tmp / "gone.pt")),
            r"checkpoint " + in_tmp("gone.pt") + r" cannot be read",
        ),
    ),
    # --- natural gradients
    *refusals(
        "natural_gradient",
        (
            "NaN gradient",
            lambda tmp: natural_gradient("normal", [0.0, 1.0], [math.nan, 0.0]),
            r"grad_theta for normal parameter loc is not finite \(nan\)",
        ),
        (
            "singular Fisher information",
            lambda tmp: natural_gradient("gamma", [1e30, 1.0], [1.0, 0.0]),
            r"gamma: the Fisher information at concentration=1e\+30, rate=1 is singular",
        ),
        (
            "wrong gradient length",
            lambda tmp: natural_gradient("normal", [0.0, 1.0], [1.0]),
            r"grad_theta must have last dimension 2, got shape \(1,\)",
        ),
        (
            "unknown family",
            lambda tmp: natural_gradient("beta", [1.0, 1.0], [1.0, 1.0]),
            r"family must be an ExponentialFamily or one of .*got 'beta'",
        ),
    ),
    *refusals(
        "natural_parameter_step",
        (
            "negative lr",
            lambda tmp: natural_parameter_step("normal", [0.0, 1.0], [1.0, 1.0], lr=-0.1),
            r"lr must be > 0, got -0\.1",
        ),
        (
            "infinite gradient",
            lambda tmp: natural_parameter_step("gamma", [2.0, 1.0], [0.0, math.inf], lr=0.1),
            r"grad_theta for gamma parameter rate is not finite \(inf\)",
        ),
    ),
    *refusals(
        "descent_step",
        (
            "float max_halvings",
            lambda tmp: descent_step("normal", [0.0, 1.0], [1.0, 1.0], lr=0.1, max_halvings=1.5),
            r"max_halvings must be an integer >= 0, got 1\.5",
        ),
    ),
    *refusals(
        "descent_step",
        (
            "a step out of the domain",
            lambda tmp: descent_step("gamma", [1.0, 1.0], [3.0, 0.0], lr=1.0),
            r"a step of size 1\.0 \(halved 0 times\) leaves the domain of gamma: it gives parameter concentration",
        ),
        error=NaturalParameterDomainError,
    ),
    *refusals(
        "NaturalGradient",
        (
            "factor names that match no param",
            _natural_gradient_call({"z": ("normal", ["q_locc", "q_scale"])}, fallback=Adam({"lr": 0.1})),
            r"factors name param\(s\) \['q_locc'\] that are not in the Pyro param store",
            RUNS,
        ),
        (
            "NaN gradient",
            _natural_gradient_call(
                {"z": ("normal", ["q_loc", "q_scale"])}, grads=(math.nan, 0.0, 0.0), fallback=Adam({"lr": 0.1})
            ),
            r"factor 'z': the gradient of param 'q_loc' is not finite \(nan\)",
            RUNS,
        ),
        (
            "param in no factor and no fallback",
            _natural_gradient_call({"z": ("normal", ["q_loc", "q_scale"])}),
            r"NaturalGradient has no factor for param\(s\) \['theta'\]; add them to factors or pass fallback=",
            RUNS,
        ),
        (
            "torch optimizer as fallback",
            lambda tmp: NaturalGradient({"z": ("normal", ["a", "b"])}, fallback=torch.optim.Adam),
            r"fallback must be a pyro\.optim optimizer instance .*got the class Adam",
        ),
        ("zero lr", lambda tmp: NaturalGradient({"z": ("normal", ["a", "b"])}, lr=0), r"lr must be > 0, got 0"),
        (
            "one name for a two-parameter family",
            lambda tmp: NaturalGradient({"z": ("normal", ["a"])}),
            r"factors\['z'\]: normal needs 2 param names \('loc', 'scale'\), got \['a'\]",
        ),
    ),
]


@pytest.mark.parametrize("case", CASES, ids=case_ids(CASES))
def test_bad_input_is_refused_naming_the_problem(case, tmp_path):
    assert_refused(case, tmp_path)
