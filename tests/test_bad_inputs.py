"""Bad inputs across the public surface (issue 10): each is refused with a
``ValueError`` (or a documented subclass), and the message names the problem:
the argument or file, and the value.

Each case is ``(entry point, what is wrong, call, expected error, pattern)``;
``call(tmp_path)`` makes the bad call, and ``pattern`` (a regex) must be found
in the message. Argument refusals come before any work: the test checks that
the Pyro param store is still empty afterwards (no program ran), except for the
cases marked ``runs`` (bad programs, which are found by running them, and
optimizer calls on existing params).
"""

import gzip
import math
import os
import re
import struct

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import Trace_ELBO
from pyro.optim import Adam
from torch.distributions import constraints

from guides.vae import Encoder
from guides.vae import guide as vae_guide
from models.mnist import MnistNotFoundError, binarize, load_mnist, read_idx, split_test_only
from models.vae import Decoder, VAEConfig
from models.vae import model as vae_model
from pyro_vi import (
    FAMILIES,
    ControlVariateELBO,
    DisARMELBO,
    ImportanceWeightedELBO,
    NaturalGradient,
    NaturalParameterDomainError,
    OutOfSupportError,
    RaoBlackwellELBO,
    ReinforceLeaveOneOutELBO,
    ScoreFunctionELBO,
    StickingTheLandingELBO,
    categorical_from_relaxed,
    descent_step,
    fit,
    get_family,
    gradient_statistics,
    gradient_variance_table,
    gumbel_softmax_sample,
    load_checkpoint,
    log_importance_weights,
    natural_gradient,
    natural_parameter_step,
    psis_khat,
    to_inference_data,
)

X = torch.tensor([0.3, -1.2, 2.0, 0.7, 1.5])


def model(x):
    z = pyro.sample("z", dist.Normal(0.0, 1.0))
    with pyro.plate("data", len(x)):
        pyro.sample("x", dist.Normal(z, 1.0), obs=x)


def guide(x):
    loc = pyro.param("loc", torch.tensor(0.0))
    scale = pyro.param("scale", torch.tensor(1.0), constraint=constraints.positive)
    pyro.sample("z", dist.Normal(loc, scale))


def two_latents(x):
    pyro.sample("w", dist.Normal(0.0, 1.0))
    model(x)


def guide_batched_z(x):  # z in a plate the model does not have
    with pyro.plate("data", len(x)):
        pyro.sample("z", dist.Normal(pyro.param("loc", torch.zeros(len(x))), 1.0))


def subsampled(x):
    z = pyro.sample("z", dist.Normal(0.0, 1.0))
    with pyro.plate("data", len(x), subsample_size=2) as idx:
        pyro.sample("x", dist.Normal(z, 1.0), obs=x[idx])


def gamma_model(x):
    pyro.sample("rate", dist.Gamma(2.0, 2.0))


def negative_guide(x):  # a Normal guide for a Gamma latent: negative draws
    pyro.sample("rate", dist.Normal(pyro.param("loc", torch.tensor(-3.0)), 0.1))


def gamma_exponential_model(x):  # the child's argument is the latent: a negative draw must be named first
    rate = pyro.sample("rate", dist.Gamma(2.0, 2.0))
    with pyro.plate("data", len(x)):
        pyro.sample("x", dist.Exponential(rate), obs=x.abs())


def nested_plates_model(x):
    with pyro.plate("rows", 2, dim=-2), pyro.plate("data", len(x), dim=-1):
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        pyro.sample("x", dist.Normal(z, 1.0), obs=x.expand(2, len(x)))


def nested_plates_guide(x):
    with pyro.plate("rows", 2, dim=-2), pyro.plate("data", len(x), dim=-1):
        pyro.sample("z", dist.Normal(pyro.param("loc", torch.zeros(2, len(x))), 1.0))


def _out_of_support_loss(elbo, validation):
    def call(tmp):
        with pyro.validation_enabled(validation):
            return elbo.loss_and_grads(gamma_exponential_model, negative_guide, X)

    return call


OUT_OF_SUPPORT = (
    r"site 'rate': the guide drew (a value|[0-9]+ of [0-9]+ values) outside the support "
    r"GreaterThanEq\(lower_bound=0\.0\) of the model's Gamma \(-[0-9.]+\), from the guide's Normal\(loc="
)


def narrow_model(x):
    pyro.sample("z", dist.Normal(0.0, 0.001))


def negative_scale_guide(x):  # no constraint on scale: the KL to N(0, 0.001^2) drives it down
    pyro.sample("z", dist.Normal(0.0, pyro.param("scale", torch.tensor(0.05))))


def _loss(elbo, m, g):
    return lambda tmp: elbo.loss(m, g, X)


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


def _to_idata(m=model, g=guide, **kwargs):
    kwargs.setdefault("num_samples", 4)
    kwargs.setdefault("num_chains", 2)
    return lambda tmp: to_inference_data(m, g, X, **kwargs)


def _stats(**kwargs):
    kwargs.setdefault("num_draws", 3)
    elbo = kwargs.pop("elbo", Trace_ELBO())
    return lambda tmp: gradient_statistics(elbo, model, guide, X, **kwargs)


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


def _vae(x_of, config=VAEConfig(hidden_dims=(8,), latent_dim=2), which="model"):
    def call(tmp):
        x = x_of(torch.bernoulli(torch.full((4, config.data_dim), 0.3)))
        if which == "model":
            return vae_model(x, Decoder(config, 0.3))
        return vae_guide(x, Encoder(config))

    return call


def _idx(array, type_code=0x08):
    array = np.ascontiguousarray(array)
    return bytes([0, 0, type_code, array.ndim]) + struct.pack(">" + "I" * array.ndim, *array.shape) + array.tobytes()


IMAGES = _idx(np.zeros((3, 28, 28), np.uint8))
LABELS = _idx(np.array([1, 2, 3], np.uint8))


def _mnist(images=IMAGES, labels=LABELS, images_name="t10k-images-idx3-ubyte"):
    def call(tmp):
        (tmp / images_name).write_bytes(images)
        if labels is not None:
            (tmp / "t10k-labels-idx1-ubyte").write_bytes(labels)
        return load_mnist(str(tmp), download=False)

    return call


def _in(tmp_name):
    """The pattern of a path under the test's tmp_path (filled in by the test)."""
    return "{tmp}" + os.sep + re.escape(tmp_name)


SF, CV, RB, STL, IW = (
    ScoreFunctionELBO,
    ControlVariateELBO,
    RaoBlackwellELBO,
    StickingTheLandingELBO,
    ImportanceWeightedELBO,
)
RUNS = "runs"

CASES = [
    # --- estimators: constructors (validated in pyro_vi/elbo) and loss with bad programs
    (
        "ScoreFunctionELBO",
        "float num_particles",
        lambda tmp: SF(num_particles=2.5),
        ValueError,
        r"num_particles must be an integer >= 1, got 2\.5",
    ),
    (
        "ScoreFunctionELBO",
        "string num_particles",
        lambda tmp: SF(num_particles="3"),
        ValueError,
        r"num_particles must be an integer >= 1, got '3'",
    ),
    (
        "ScoreFunctionELBO",
        "float max_plate_nesting",
        lambda tmp: SF(max_plate_nesting=1.5),
        ValueError,
        r"max_plate_nesting must be an integer >= 0, got 1\.5",
    ),
    (
        "ControlVariateELBO",
        "two particles",
        lambda tmp: CV(num_particles=2),
        ValueError,
        r"num_particles must be an integer >= 3, got 2",
    ),
    (
        "ControlVariateELBO",
        "infinite coefficient",
        lambda tmp: CV(coefficient=math.inf),
        ValueError,
        r"coefficient must be a finite number, got inf",
    ),
    (
        "ControlVariateELBO",
        "boolean coefficient",
        lambda tmp: CV(coefficient=True),
        ValueError,
        r"coefficient must be a real number, got True",
    ),
    (
        "ControlVariateELBO",
        "unknown coefficient name",
        lambda tmp: CV(coefficient="optimal"),
        ValueError,
        r"coefficient must be one of .*got 'optimal'",
    ),
    (
        "RaoBlackwellELBO",
        "coefficient ignored without control variate",
        lambda tmp: RB(control_variate=False, coefficient=0.5),
        ValueError,
        r"coefficient=0\.5 has no effect with control_variate=False",
    ),
    (
        "RaoBlackwellELBO",
        "string control_variate",
        lambda tmp: RB(control_variate="yes"),
        ValueError,
        r"control_variate must be True or False, got 'yes'",
    ),
    (
        "StickingTheLandingELBO",
        "string vectorize_particles",
        lambda tmp: STL(vectorize_particles="yes"),
        ValueError,
        r"vectorize_particles must be True or False, got 'yes'",
    ),
    (
        "ImportanceWeightedELBO",
        "unknown gradient",
        lambda tmp: IW(gradient="foo"),
        ValueError,
        r"gradient must be one of 'reparam', 'stl', 'dreg', 'vimco', 'disarm', got 'foo'",
    ),
    (
        "ImportanceWeightedELBO",
        "zero particles",
        lambda tmp: IW(num_particles=0),
        ValueError,
        r"num_particles must be an integer >= 1, got 0",
    ),
    (
        "ImportanceWeightedELBO",
        "VIMCO with one particle",
        lambda tmp: IW(num_particles=1, gradient="vimco"),
        ValueError,
        r"num_particles must be an integer >= 2, got 1",
    ),
    (
        "RaoBlackwellELBO",
        "string pathwise",
        lambda tmp: RB(pathwise="yes"),
        ValueError,
        r"pathwise must be True or False, got 'yes'",
    ),
    (
        "ControlVariateELBO",
        "integer pathwise",
        lambda tmp: CV(pathwise=1),
        ValueError,
        r"pathwise must be True or False, got 1",
    ),
    (
        "ReinforceLeaveOneOutELBO",
        "one particle",
        lambda tmp: ReinforceLeaveOneOutELBO(num_particles=1),
        ValueError,
        r"num_particles must be an integer >= 2, got 1",
    ),
    (
        "DisARMELBO",
        "float number of pairs",
        lambda tmp: DisARMELBO(num_particles=1.5),
        ValueError,
        r"num_particles must be an integer >= 1, got 1\.5",
    ),
    (
        "ImportanceWeightedELBO.loss",
        "latent outside a subsampled plate",
        _loss(IW(num_particles=2), subsampled, guide),
        ValueError,
        r"site 'z' lies outside the subsampled plate 'data'",
        RUNS,
    ),
    (
        "ScoreFunctionELBO.loss",
        "model not callable",
        _loss(SF(), "model", guide),
        ValueError,
        r"'model' is not callable",
        RUNS,
    ),
    (
        "ScoreFunctionELBO.loss",
        "guide shape differs from the model's",
        _loss(SF(num_particles=2), model, guide_batched_z),
        ValueError,
        r"""site ["']z["']""",
        RUNS,
    ),
    (
        "StickingTheLandingELBO.loss",
        "guide draws outside the model's support",
        _loss(STL(), gamma_model, negative_guide),
        ValueError,
        r"site 'rate'",
        RUNS,
    ),
    *[
        (
            f"{cls.__name__}.loss_and_grads",
            f"guide draws outside the model's support ({'vectorized' if vectorize else 'sequential'}, "
            f"validation {'on' if validation else 'off'})",
            _out_of_support_loss(cls(num_particles=4, vectorize_particles=vectorize), validation),
            ValueError,
            OUT_OF_SUPPORT,
            RUNS,
        )
        for cls in (SF, CV, RB, ReinforceLeaveOneOutELBO, DisARMELBO, STL, IW)
        for vectorize in (True, False)
        for validation in (True, False)
    ],
    *[
        (
            f"{cls.__name__}.loss",
            f"max_plate_nesting below the programs' plates ({'vectorized' if vectorize else 'sequential'})",
            _loss(
                cls(num_particles=4, max_plate_nesting=1, vectorize_particles=vectorize),
                nested_plates_model,
                nested_plates_guide,
            ),
            ValueError,
            r"max_plate_nesting=1 is less than the 2 plate dims the programs use.*pass max_plate_nesting=2",
            RUNS,
        )
        for cls in (CV, STL, IW)
        for vectorize in (True, False)
    ],
    # --- fit (pyro_vi/training/)
    ("fit", "float num_steps", _fit(num_steps=2.5), ValueError, r"num_steps must be an integer >= 1, got 2\.5"),
    ("fit", "string num_steps", _fit(num_steps="3"), ValueError, r"num_steps must be an integer >= 1, got '3'"),
    (
        "fit",
        "ELBO class instead of instance",
        _fit(elbo=Trace_ELBO),
        ValueError,
        r"elbo must be an ELBO instance, got the class Trace_ELBO",
    ),
    (
        "fit",
        "torch optimizer",
        _fit(optim=torch.optim.Adam),
        ValueError,
        r"optim must be a pyro\.optim optimizer instance",
    ),
    ("fit", "callback not callable", _fit(callback=3), ValueError, r"callback must be callable or None, got 3"),
    (
        "fit",
        "string resume",
        _fit_into("c.pt", resume="yes"),
        ValueError,
        r"resume must be one of False, True, 'allow_fresh', got 'yes'",
    ),
    (
        "fit",
        "float checkpoint_every",
        _fit_into("c.pt", checkpoint_every=0.5),
        ValueError,
        r"checkpoint_every must be an integer >= 1, got 0\.5",
    ),
    (
        "fit",
        "checkpoint in a missing directory",
        _fit_into(os.path.join("missing", "c.pt")),
        ValueError,
        _in(os.path.join("missing", "c.pt")),
    ),
    (
        "fit",
        "resume=True without a checkpoint file",
        _fit_into("none.pt", resume=True),
        ValueError,
        r"resume=True, but there is no checkpoint " + _in("none.pt"),
    ),
    (
        "fit",
        "existing checkpoint without overwrite",
        _fit_existing(),
        ValueError,
        r"checkpoint " + _in("existing.pt") + r" exists: pass resume=True",
    ),
    (
        "fit",
        "resume with another ELBO",
        _fit_existing(resume=True, elbo=Trace_ELBO(num_particles=2)),
        ValueError,
        r"belongs to another run:\n  elbo: 'Trace_ELBO\(num_particles=1\)' in the checkpoint, "
        r"'Trace_ELBO\(num_particles=2\)' here",
    ),
    (
        "fit",
        "guide draws outside the model's support",
        _fit_out_of_support,
        OutOfSupportError,
        r"step 1: the model's latent site 'rate' got the value = -[0-9.]+ from the guide",
        RUNS,
    ),
    (
        "fit",
        "guide scale driven negative",
        _fit_scale_driven_negative,
        OutOfSupportError,
        r"step 2: the guide's site 'z' got Normal\(scale=\.\.\.\) with scale = -[0-9.]+ outside its support.*param "
        r"'scale'",
        RUNS,
    ),
    # --- checkpoints
    (
        "load_checkpoint",
        "empty file",
        _checkpoint_file(b""),
        ValueError,
        r"checkpoint " + _in("ckpt.pt") + r" is empty \(0 bytes\)",
    ),
    (
        "load_checkpoint",
        "random bytes",
        _checkpoint_file(b"\x00\x01not a checkpoint" * 3),
        ValueError,
        r"checkpoint " + _in("ckpt.pt") + r" is not a readable torch file",
    ),
    (
        "load_checkpoint",
        "a torch file that is not a checkpoint",
        _checkpoint_not_a_run,
        ValueError,
        r"checkpoint " + _in("weights.pt") + r" is not a pyro_vi\.fit checkpoint v1 file",
    ),
    (
        "load_checkpoint",
        "missing file",
        lambda tmp: load_checkpoint(str(tmp / "gone.pt")),
        ValueError,
        r"checkpoint " + _in("gone.pt") + r" cannot be read",
    ),
    # --- to_inference_data
    (
        "to_inference_data",
        "float num_samples",
        _to_idata(num_samples=8.0),
        ValueError,
        r"num_samples must be an integer >= 1, got 8\.0 \(float\)",
    ),
    (
        "to_inference_data",
        "zero num_chains",
        _to_idata(num_chains=0),
        ValueError,
        r"num_chains must be an integer >= 1, got 0",
    ),
    (
        "to_inference_data",
        "num_samples not divisible",
        _to_idata(num_samples=5, num_chains=2),
        ValueError,
        r"num_samples=5 is not divisible by num_chains=2",
    ),
    ("to_inference_data", "string seed", _to_idata(seed="1"), ValueError, r"seed must be an integer .*got '1'"),
    (
        "to_inference_data",
        "string log_likelihood",
        _to_idata(log_likelihood="yes"),
        ValueError,
        r"log_likelihood must be True or False, got 'yes'",
    ),
    (
        "to_inference_data",
        "observed is a list",
        _to_idata(observed=[X]),
        ValueError,
        r"observed must be a dict site name -> value",
    ),
    (
        "to_inference_data",
        "guide class",
        _to_idata(g=dict),
        ValueError,
        r"guide must be a function or an instance, got the class dict",
    ),
    (
        "to_inference_data",
        "guide lacks a model latent",
        _to_idata(m=two_latents),
        ValueError,
        r"the guide has no sample site for the model's latent site\(s\) 'w'",
        RUNS,
    ),
    (
        "to_inference_data",
        "observed name not in the model",
        _to_idata(observed={"nope": X}),
        ValueError,
        r"observed names \['nope'\] are not sample sites",
        RUNS,
    ),
    (
        "to_inference_data",
        "subsampled plate",
        _to_idata(m=subsampled),
        ValueError,
        r"site 'x' is in the subsampled plate 'data' \(2 of 5\)",
        RUNS,
    ),
    # --- diagnostics
    (
        "gradient_statistics",
        "float num_draws",
        _stats(num_draws=3.0),
        ValueError,
        r"num_draws must be an integer >= 2, got 3\.0 \(float\)",
    ),
    ("gradient_statistics", "one draw", _stats(num_draws=1), ValueError, r"num_draws must be an integer >= 2, got 1"),
    (
        "gradient_statistics",
        "ELBO class",
        _stats(elbo=Trace_ELBO),
        ValueError,
        r"elbo must be an ELBO instance .*got the class Trace_ELBO",
    ),
    (
        "gradient_statistics",
        "params as one string",
        _stats(params="loc"),
        ValueError,
        r"params must be a list of param names, got 'loc'",
    ),
    (
        "gradient_statistics",
        "param never touched",
        _stats(params=["nope"]),
        ValueError,
        r"params \['nope'\] were not touched",
        RUNS,
    ),
    (
        "gradient_variance_table",
        "unknown reference",
        lambda tmp: gradient_variance_table({"a": {}}, "b"),
        ValueError,
        r"reference='b' is not one of the estimators \['a'\]",
    ),
    (
        "gradient_variance_table",
        "not gradient statistics",
        lambda tmp: gradient_variance_table({"a": {"p": 1.0}}, "a"),
        ValueError,
        r"stats_by_estimator must be a dict estimator name -> gradient_statistics",
    ),
    (
        "psis_khat",
        "2-D weights",
        lambda tmp: psis_khat(np.zeros((5, 10))),
        ValueError,
        r"log_weights must be 1-D, got shape \(5, 10\)",
    ),
    (
        "psis_khat",
        "too few weights",
        lambda tmp: psis_khat(np.zeros(10) + np.arange(10)),
        ValueError,
        r"log_weights has 10 values; PSIS needs at least 21",
    ),
    (
        "psis_khat",
        "NaN weight",
        lambda tmp: psis_khat(np.r_[np.zeros(29), np.nan]),
        ValueError,
        r"log_weights must be finite",
    ),
    (
        "psis_khat",
        "strings",
        lambda tmp: psis_khat(["a"] * 30),
        ValueError,
        r"log_weights must be a 1-D tensor or array of numbers, got list",
    ),
    (
        "log_importance_weights",
        "float num_samples",
        lambda tmp: log_importance_weights(model, guide, X, num_samples=2.5),
        ValueError,
        r"num_samples must be an integer >= 1, got 2\.5",
    ),
    (
        "log_importance_weights",
        "guide lacks a model latent",
        lambda tmp: log_importance_weights(two_latents, guide, X, num_samples=3),
        ValueError,
        r"latent site\(s\) 'w'",
        RUNS,
    ),
    # --- natural gradients
    (
        "natural_gradient",
        "NaN gradient",
        lambda tmp: natural_gradient("normal", [0.0, 1.0], [math.nan, 0.0]),
        ValueError,
        r"grad_theta for normal parameter loc is not finite \(nan\)",
    ),
    (
        "natural_gradient",
        "singular Fisher information",
        lambda tmp: natural_gradient("gamma", [1e30, 1.0], [1.0, 0.0]),
        ValueError,
        r"gamma: the Fisher information at concentration=1e\+30, rate=1 is singular",
    ),
    (
        "natural_gradient",
        "wrong gradient length",
        lambda tmp: natural_gradient("normal", [0.0, 1.0], [1.0]),
        ValueError,
        r"grad_theta must have last dimension 2, got shape \(1,\)",
    ),
    (
        "natural_gradient",
        "unknown family",
        lambda tmp: natural_gradient("beta", [1.0, 1.0], [1.0, 1.0]),
        ValueError,
        r"family must be an ExponentialFamily or one of .*got 'beta'",
    ),
    (
        "natural_parameter_step",
        "negative lr",
        lambda tmp: natural_parameter_step("normal", [0.0, 1.0], [1.0, 1.0], lr=-0.1),
        ValueError,
        r"lr must be > 0, got -0\.1",
    ),
    (
        "natural_parameter_step",
        "infinite gradient",
        lambda tmp: natural_parameter_step("gamma", [2.0, 1.0], [0.0, math.inf], lr=0.1),
        ValueError,
        r"grad_theta for gamma parameter rate is not finite \(inf\)",
    ),
    (
        "descent_step",
        "float max_halvings",
        lambda tmp: descent_step("normal", [0.0, 1.0], [1.0, 1.0], lr=0.1, max_halvings=1.5),
        ValueError,
        r"max_halvings must be an integer >= 0, got 1\.5",
    ),
    (
        "descent_step",
        "a step out of the domain",
        lambda tmp: descent_step("gamma", [1.0, 1.0], [3.0, 0.0], lr=1.0),
        NaturalParameterDomainError,
        r"a step of size 1\.0 \(halved 0 times\) leaves the domain of gamma: it gives parameter concentration",
    ),
    (
        "NaturalGradient",
        "factor names that match no param",
        _natural_gradient_call({"z": ("normal", ["q_locc", "q_scale"])}, fallback=Adam({"lr": 0.1})),
        ValueError,
        r"factors name param\(s\) \['q_locc'\] that are not in the Pyro param store",
        RUNS,
    ),
    (
        "NaturalGradient",
        "NaN gradient",
        _natural_gradient_call(
            {"z": ("normal", ["q_loc", "q_scale"])}, grads=(math.nan, 0.0, 0.0), fallback=Adam({"lr": 0.1})
        ),
        ValueError,
        r"factor 'z': the gradient of param 'q_loc' is not finite \(nan\)",
        RUNS,
    ),
    (
        "NaturalGradient",
        "param in no factor and no fallback",
        _natural_gradient_call({"z": ("normal", ["q_loc", "q_scale"])}),
        ValueError,
        r"NaturalGradient has no factor for param\(s\) \['theta'\]; add them to factors or pass fallback=",
        RUNS,
    ),
    (
        "NaturalGradient",
        "torch optimizer as fallback",
        lambda tmp: NaturalGradient({"z": ("normal", ["a", "b"])}, fallback=torch.optim.Adam),
        ValueError,
        r"fallback must be a pyro\.optim optimizer instance .*got the class Adam",
    ),
    (
        "NaturalGradient",
        "zero lr",
        lambda tmp: NaturalGradient({"z": ("normal", ["a", "b"])}, lr=0),
        ValueError,
        r"lr must be > 0, got 0",
    ),
    (
        "NaturalGradient",
        "one name for a two-parameter family",
        lambda tmp: NaturalGradient({"z": ("normal", ["a"])}),
        ValueError,
        r"factors\['z'\]: normal needs 2 param names \('loc', 'scale'\), got \['a'\]",
    ),
    # --- exponential families
    (
        "ExponentialFamily",
        "boolean parameter",
        lambda tmp: FAMILIES["normal"].log_prob([True, 1.0], 0.5),
        ValueError,
        r"normal: parameter loc must be a number, got the boolean True",
    ),
    (
        "ExponentialFamily",
        "boolean tensor",
        lambda tmp: FAMILIES["gamma"].check_params(torch.tensor([True, True])),
        ValueError,
        r"gamma: parameter theta must be a number, got the boolean",
    ),
    (
        "ExponentialFamily",
        "string parameter",
        lambda tmp: FAMILIES["poisson"].fisher(["2.0"]),
        ValueError,
        r"poisson: parameter rate must be a number or a tensor, got '2\.0' \(str\)",
    ),
    (
        "ExponentialFamily",
        "negative scale",
        lambda tmp: FAMILIES["normal"].fisher([0.0, -1.0]),
        ValueError,
        r"normal: parameter scale must be finite and positive, got -1\.0",
    ),
    (
        "ExponentialFamily",
        "data outside the support",
        lambda tmp: FAMILIES["poisson"].log_prob([2.0], torch.tensor([1.5])),
        ValueError,
        r"poisson: data must be a non-negative integer, got 1\.5",
    ),
    (
        "ExponentialFamily",
        "natural parameters outside the domain",
        lambda tmp: FAMILIES["gamma"].mean_params(torch.tensor([-1.5, -1.0])),
        NaturalParameterDomainError,
        r"eta = \[-1\.5, -1\.0\] lie outside the domain of gamma: they map to a parameter concentration",
    ),
    ("get_family", "unknown name", lambda tmp: get_family("weibull"), ValueError, r"got 'weibull'"),
    # --- Gumbel-softmax
    (
        "gumbel_softmax_sample",
        "negative sample_shape",
        lambda tmp: gumbel_softmax_sample(torch.zeros(3), 1.0, sample_shape=(-1,)),
        ValueError,
        r"sample_shape\[0\] must be an integer >= 0, got -1",
    ),
    (
        "gumbel_softmax_sample",
        "sample_shape an int",
        lambda tmp: gumbel_softmax_sample(torch.zeros(3), 1.0, sample_shape=5),
        ValueError,
        r"sample_shape must be a sequence of non-negative integers .*got 5 \(int\)",
    ),
    (
        "gumbel_softmax_sample",
        "zero temperature",
        lambda tmp: gumbel_softmax_sample(torch.zeros(3), 0.0),
        ValueError,
        r"temperature must be > 0, got 0\.0",
    ),
    (
        "gumbel_softmax_sample",
        "-inf logit",
        lambda tmp: gumbel_softmax_sample(torch.tensor([0.0, -math.inf]), 1.0),
        ValueError,
        r"logits must be finite \(NaN or inf found\)",
    ),
    (
        "gumbel_softmax_sample",
        "string hard",
        lambda tmp: gumbel_softmax_sample(torch.zeros(3), 1.0, hard="yes"),
        ValueError,
        r"hard must be True or False, got 'yes'",
    ),
    (
        "categorical_from_relaxed",
        "NaN sample",
        lambda tmp: categorical_from_relaxed(torch.tensor([0.2, math.nan])),
        ValueError,
        r"y contains NaN",
    ),
    # --- the VAE
    (
        "models.vae.model",
        "uint8 images",
        _vae(lambda x: (x * 255).to(torch.uint8)),
        ValueError,
        r"x has dtype torch\.uint8; .*binarize\(x\.float\(\) / 255\)",
    ),
    (
        "guides.vae.guide",
        "float64 images for float32 nets",
        _vae(lambda x: x.double(), which="guide"),
        ValueError,
        r"x has dtype torch\.float64 but the encoder's weights are torch\.float32",
    ),
    (
        "guides.vae.guide",
        "(B, 28, 28) images",
        _vae(lambda x: x.reshape(4, 28, 28), config=VAEConfig(), which="guide"),
        ValueError,
        r"x must have shape \(batch, 784\), got \(4, 28, 28\): flatten",
    ),
    (
        "models.vae.model",
        "0-255 float pixels",
        _vae(lambda x: x * 255),
        ValueError,
        r"x has pixel values in \[0, 255\], outside \[0, 1\]",
    ),
    ("models.vae.model", "grey pixels", _vae(lambda x: x * 0.5), ValueError, r"needs binary pixels; binarize first"),
    (
        "VAEConfig",
        "float latent_dim",
        lambda tmp: VAEConfig(latent_dim=2.5),
        ValueError,
        r"VAEConfig\.latent_dim must be an integer >= 1, got 2\.5",
    ),
    (
        "VAEConfig",
        "hidden_dims='200'",
        lambda tmp: VAEConfig(hidden_dims="200"),
        ValueError,
        r"VAEConfig\.hidden_dims must be a tuple of layer widths .*got '200' \(str\)",
    ),
    (
        "VAEConfig",
        "hidden_dims=200",
        lambda tmp: VAEConfig(hidden_dims=200),
        ValueError,
        r"VAEConfig\.hidden_dims must be a tuple of layer widths .*got 200 \(int\)",
    ),
    (
        "Decoder",
        "config a dict",
        lambda tmp: Decoder({"latent_dim": 2}),
        ValueError,
        r"config must be a models\.vae\.VAEConfig .*got \{'latent_dim': 2\} \(dict\)",
    ),
    (
        "binarize",
        "uint8 images",
        lambda tmp: binarize(torch.zeros(2, 784, dtype=torch.uint8)),
        ValueError,
        r"images must be a floating-point tensor of intensities in \[0, 1\], got Tensor of dtype torch\.uint8",
    ),
    (
        "binarize",
        "0-255 intensities",
        lambda tmp: binarize(torch.full((2, 3), 255.0)),
        ValueError,
        r"images must have intensities in \[0, 1\], got values in \[255, 255\]",
    ),
    (
        "split_test_only",
        "float count",
        lambda tmp: split_test_only(10.5),
        ValueError,
        r"num_images must be an integer >= 2, got 10\.5",
    ),
    # --- load_mnist
    (
        "load_mnist",
        "empty images file",
        _mnist(images=b""),
        ValueError,
        _in("t10k-images-idx3-ubyte") + r" is empty \(0 bytes\)",
    ),
    (
        "load_mnist",
        "truncated images",
        _mnist(images=IMAGES[:-100]),
        ValueError,
        _in("t10k-images-idx3-ubyte") + r" is truncated: its header promises 3 images",
    ),
    (
        "load_mnist",
        "a .gz that is not gzip",
        _mnist(images_name="t10k-images-idx3-ubyte.gz"),
        ValueError,
        _in("t10k-images-idx3-ubyte.gz") + r" is not a gzip file",
    ),
    (
        "load_mnist",
        "truncated gzip",
        _mnist(images=gzip.compress(IMAGES)[:-30], images_name="t10k-images-idx3-ubyte.gz"),
        ValueError,
        _in("t10k-images-idx3-ubyte.gz") + r" is a truncated gzip file",
    ),
    (
        "load_mnist",
        "wrong magic",
        _mnist(images=b"PK\x03\x04" + IMAGES[4:]),
        ValueError,
        _in("t10k-images-idx3-ubyte") + r" is not an IDX file: it starts with 0x504b0304",
    ),
    (
        "load_mnist",
        "float32 pixels",
        _mnist(images=_idx(np.zeros((3, 28, 28), np.float32), 0x0D)),
        ValueError,
        _in("t10k-images-idx3-ubyte") + r" holds IDX data of type float32 \(0x0d\)",
    ),
    (
        "load_mnist",
        "10x10 images",
        _mnist(images=_idx(np.zeros((3, 10, 10), np.uint8))),
        ValueError,
        _in("t10k-images-idx3-ubyte") + r" holds 10x10 images; MNIST images are 28x28",
    ),
    (
        "load_mnist",
        "truncated labels",
        _mnist(labels=LABELS[:-1]),
        ValueError,
        _in("t10k-labels-idx1-ubyte") + r" is truncated: its header promises 3 labels",
    ),
    (
        "load_mnist",
        "image and label counts differ",
        _mnist(labels=_idx(np.array([1, 2], np.uint8))),
        ValueError,
        _in("t10k-images-idx3-ubyte") + r" has 3 images but " + _in("t10k-labels-idx1-ubyte") + r" has 2 labels",
    ),
    (
        "load_mnist",
        "no files and no download",
        lambda tmp: load_mnist(str(tmp / "nowhere"), download=False),
        MnistNotFoundError,
        r"MNIST not found in " + _in("nowhere") + r" and not downloaded",
    ),
    (
        "load_mnist",
        "string download",
        lambda tmp: load_mnist(str(tmp), download="no"),
        ValueError,
        r"download must be True or False, got 'no'",
    ),
    (
        "read_idx",
        "unknown kind",
        lambda tmp: read_idx(str(tmp / "f"), "pixels"),
        ValueError,
        r"kind must be 'images' or 'labels', got 'pixels'",
    ),
]

_IDS = [f"{case[0]}: {case[1]}" for case in CASES]


def test_the_catalogue_is_large_and_its_cases_distinct():
    assert len(CASES) >= 60
    assert len(set(_IDS)) == len(_IDS)


@pytest.mark.parametrize("case", CASES, ids=_IDS)
def test_bad_input_is_refused_naming_the_problem(case, tmp_path):
    entry, what, call, error, pattern = case[:5]
    runs = RUNS in case[5:]
    pattern = pattern.replace("{tmp}", re.escape(str(tmp_path)))
    with pytest.raises(Exception) as raised:
        call(tmp_path)
    assert isinstance(raised.value, error), f"{entry} raised {type(raised.value).__name__}: {raised.value}"
    assert isinstance(raised.value, (ValueError, FileNotFoundError))  # a documented kind of error
    assert re.search(pattern, str(raised.value)), f"{pattern!r} not found in:\n{raised.value}"
    if not runs:
        assert len(pyro.get_param_store()) == 0, f"{entry} ran the programs before refusing"
