"""Time per SVI step of each estimator, as a ratio to Pyro's Trace_ELBO (and,
on the 1.C.2 model, of RaoBlackwellELBO to Pyro's TraceGraph_ELBO; for the
discrete-latent estimators, to TraceGraph_ELBO and RenyiELBO at the same number
of model evaluations, on the Bernoulli VAE and on the GMM).

All estimators are timed side by side in one run, round-robin, so that the
ratios share the machine's noise; the median over rounds is reported.

    python -m experiments.benchmark --out results/benchmark
"""

import functools
import json
import os
import time

import numpy as np
import pyro
import torch
from pyro.infer import SVI, RenyiELBO, Trace_ELBO, TraceGraph_ELBO
from pyro.optim import Adam

if not __package__:  # run as ``python experiments/benchmark.py``
    import _repo_root  # noqa: F401

from experiments import _cli  # noqa: E402
from guides import normal_gamma, rao_blackwell  # noqa: E402
from models.normal_gamma import COURSE_PRIOR, generate_data, model  # noqa: E402
from models import rao_blackwell as rao_blackwell_model  # noqa: E402
from experiments._mixtures import DiscreteSiteBaselines  # noqa: E402
from guides import bernoulli_vae as bernoulli_vae_guides, gmm as gmm_guides  # noqa: E402
from models import bernoulli_vae, gmm  # noqa: E402
from pyro_vi import (  # noqa: E402
    ControlVariateELBO,
    DisARMELBO,
    ImportanceWeightedELBO,
    RaoBlackwellELBO,
    ReinforceLeaveOneOutELBO,
    ScoreFunctionELBO,
    score_function_guide,
)


def normal_gamma_estimators(num_particles):
    """The :data:`~experiments._cli.Registry` of the Normal-NormalGamma
    benchmark; the guides wrap :func:`guides.normal_gamma.mean_field_guide`."""
    kw = dict(num_particles=num_particles, vectorize_particles=True, max_plate_nesting=1)
    return {
        "Trace_ELBO": _cli.Estimator(lambda: Trace_ELBO(**kw)),
        "ScoreFunctionELBO": _cli.Estimator(lambda: ScoreFunctionELBO(**kw)),
        "ControlVariateELBO": _cli.Estimator(lambda: ControlVariateELBO(**kw)),
        "TraceGraph_ELBO (score function)": _cli.Estimator(lambda: TraceGraph_ELBO(**kw), guide=score_function_guide),
        "RenyiELBO(alpha=0)": _cli.Estimator(lambda: RenyiELBO(alpha=0.0, **kw)),
    }


def rao_blackwell_estimators(num_particles):
    """The :data:`~experiments._cli.Registry` of the 1.C.2 benchmark: ours
    against Pyro's TraceGraph_ELBO, both in score-function mode; the guides
    wrap :func:`guides.rao_blackwell.mean_field_guide`."""
    kw = dict(num_particles=num_particles, vectorize_particles=True, max_plate_nesting=1)
    baseline = {"use_decaying_avg_baseline": True}
    return {
        "TraceGraph_ELBO (score function)": _cli.Estimator(lambda: TraceGraph_ELBO(**kw), guide=score_function_guide),
        "TraceGraph_ELBO + baseline": _cli.Estimator(
            lambda: TraceGraph_ELBO(**kw), guide=functools.partial(score_function_guide, baseline=baseline)
        ),
        "RaoBlackwellELBO (no CV)": _cli.Estimator(lambda: RaoBlackwellELBO(control_variate=False, **kw)),
        "RaoBlackwellELBO (CV)": _cli.Estimator(lambda: RaoBlackwellELBO(**kw)),
    }


def discrete_estimators(evaluations):
    """The discrete-latent estimators at ``evaluations`` model evaluations per
    step (DisARM: half as many pairs), against Pyro's TraceGraph_ELBO (score
    function with its decaying-average baseline) and RenyiELBO(alpha=0),
    which times the same work but gives a discrete guide no gradient."""
    kw = dict(vectorize_particles=True, max_plate_nesting=1)
    pairs = evaluations // 2
    baseline = {"use_decaying_avg_baseline": True}
    return {
        "TraceGraph_ELBO + baseline": _cli.Estimator(
            lambda: TraceGraph_ELBO(num_particles=evaluations, **kw),
            guide=functools.partial(score_function_guide, baseline=baseline)),
        "RenyiELBO(alpha=0)": _cli.Estimator(lambda: RenyiELBO(alpha=0.0, num_particles=evaluations, **kw)),
        "RaoBlackwellELBO": _cli.Estimator(lambda: RaoBlackwellELBO(num_particles=evaluations, **kw)),
        "ReinforceLeaveOneOutELBO": _cli.Estimator(
            lambda: ReinforceLeaveOneOutELBO(num_particles=evaluations, **kw)),
        "DisARMELBO ({} pairs)".format(pairs): _cli.Estimator(lambda: DisARMELBO(num_particles=pairs, **kw)),
        "ImportanceWeightedELBO vimco": _cli.Estimator(
            lambda: ImportanceWeightedELBO(evaluations, gradient="vimco", **kw)),
        "ImportanceWeightedELBO disarm ({} pairs)".format(pairs): _cli.Estimator(
            lambda: ImportanceWeightedELBO(pairs, gradient="disarm", **kw)),
    }


def pathwise_estimators(num_particles):
    """The pathwise option on the GMM (continuous components, sampled z),
    against TraceGraph_ELBO with the same split (pathwise components,
    decaying-average baseline on z) and RenyiELBO(alpha=0)."""
    kw = dict(num_particles=num_particles, vectorize_particles=True, max_plate_nesting=1)
    return {
        "TraceGraph_ELBO + baseline": _cli.Estimator(
            lambda: TraceGraph_ELBO(**kw), guide=lambda guide: DiscreteSiteBaselines()(guide)),
        "RenyiELBO(alpha=0)": _cli.Estimator(lambda: RenyiELBO(alpha=0.0, **kw)),
        "RaoBlackwellELBO": _cli.Estimator(lambda: RaoBlackwellELBO(**kw)),
        "RaoBlackwellELBO pathwise": _cli.Estimator(lambda: RaoBlackwellELBO(pathwise=True, **kw)),
        "ControlVariateELBO pathwise": _cli.Estimator(lambda: ControlVariateELBO(pathwise=True, **kw)),
        "ReinforceLeaveOneOutELBO pathwise": _cli.Estimator(
            lambda: ReinforceLeaveOneOutELBO(pathwise=True, **kw)),
    }


def time_steps(model, guide, elbo, args, num_steps):
    """Seconds per ``SVI.step``, after one warm-up step."""
    pyro.clear_param_store()
    svi = SVI(model, guide, Adam({"lr": 1e-3}), elbo)
    svi.step(*args)
    start = time.perf_counter()
    for _ in range(num_steps):
        svi.step(*args)
    return (time.perf_counter() - start) / num_steps


def benchmark(estimators, model, guide, args, num_steps, rounds, baseline="Trace_ELBO"):
    """Median seconds per step of each estimator (running its wrap of
    ``guide``) and its ratio to ``baseline``."""
    runs = {name: (estimator.make(), estimator.guide(guide)) for name, estimator in estimators.items()}
    times = {name: [] for name in runs}
    for _ in range(rounds):
        for name, (elbo, wrapped) in runs.items():
            times[name].append(time_steps(model, wrapped, elbo, args, num_steps))
    median = {name: float(np.median(t)) for name, t in times.items()}
    return {
        name: {"ms_per_step": 1e3 * median[name], "ratio": median[name] / median[baseline]}
        for name in runs
    }


def format_table(results, title, baseline="Trace_ELBO", second=None):
    header = "{:<40} {:>12} {:>14}".format("estimator", "ms/step", "x " + baseline)
    if second:
        header += " {:>14}".format("x " + second.split("(")[0])
    lines = [title, header]
    for name, row in results.items():
        line = "{:<40} {:>12.3f} {:>14.2f}".format(name, row["ms_per_step"], row["ratio"])
        if second:
            line += " {:>14.2f}".format(row["ratio_" + second])
        lines.append(line)
    return "\n".join(lines)


def main(args):
    pyro.set_rng_seed(args.seed)
    data = generate_data(seed=args.seed)
    results = benchmark(
        normal_gamma_estimators(args.particles),
        model,
        normal_gamma.mean_field_guide,
        (data, COURSE_PRIOR),
        args.steps,
        args.rounds,
    )
    print(
        format_table(
            results,
            "Normal-NormalGamma, {} vectorized particles, median of {} rounds of {} steps".format(
                args.particles, args.rounds, args.steps
            ),
        )
    )
    rb_baseline = "TraceGraph_ELBO (score function)"
    rb_results = benchmark(
        rao_blackwell_estimators(args.particles),
        rao_blackwell_model.model,
        rao_blackwell.mean_field_guide,
        (rao_blackwell_model.generate_data(seed=args.seed),),
        args.steps,
        args.rounds,
        baseline=rb_baseline,
    )
    print()
    print(
        format_table(
            rb_results,
            "1.C.2 model (N = 20), {} vectorized particles".format(args.particles),
            baseline=rb_baseline,
        )
    )
    tg = "TraceGraph_ELBO + baseline"
    config = bernoulli_vae.BernoulliVAEConfig(kind="linear")
    decoder, encoder = bernoulli_vae.Decoder(config), bernoulli_vae_guides.Encoder(config)
    generator = torch.Generator().manual_seed(args.seed)
    images = torch.bernoulli(torch.full((args.batch_size, 784), 0.2), generator=generator)
    discrete_results = benchmark(
        discrete_estimators(args.evaluations),
        functools.partial(bernoulli_vae.model, decoder=decoder),
        functools.partial(bernoulli_vae_guides.guide, encoder=encoder),
        (images,),
        args.steps,
        args.rounds,
        baseline=tg,
    )
    add_ratio(discrete_results, "RenyiELBO(alpha=0)")
    print()
    print(format_table(discrete_results, "Bernoulli VAE (linear, 200 latents, batch {}), {} model evaluations per "
                       "image".format(args.batch_size, args.evaluations), baseline=tg, second="RenyiELBO(alpha=0)"))
    pi = torch.tensor([0.3, 0.4, 0.3])
    gmm_data = gmm.generate_data(300, pi, [-4.0, 0.0, 4.0], [1.0, 4.0, 0.5], seed=args.seed)[0].float()
    gmm_results = benchmark(pathwise_estimators(args.particles), gmm.model, gmm_guides.mean_field_guide,
                            (gmm_data, pi), args.steps, args.rounds, baseline=tg)
    add_ratio(gmm_results, "RenyiELBO(alpha=0)")
    print()
    print(format_table(gmm_results, "GMM (N = 300, K = 3), {} vectorized particles".format(args.particles),
                       baseline=tg, second="RenyiELBO(alpha=0)"))
    if args.out:
        with open(os.path.join(args.out, "benchmark.json"), "w") as f:
            json.dump(
                {"normal_gamma": results, "rao_blackwell": rb_results, "discrete": discrete_results,
                 "gmm_pathwise": gmm_results, "args": vars(args)},
                f,
                indent=2,
            )
    return results


def add_ratio(results, reference):
    """Adds each row's ratio to ``reference`` (``ratio_<reference>``)."""
    for row in results.values():
        row["ratio_" + reference] = row["ms_per_step"] / results[reference]["ms_per_step"]


def parse_args(argv=None):
    parser = _cli.parser(__doc__, out=None)
    # ControlVariateELBO's pooled coefficient needs 2 particles, RaoBlackwellELBO's leave-one-out 3.
    parser.add_argument("--particles", type=_cli.integer(minimum=3), default=10)
    parser.add_argument("--steps", type=_cli.positive_int, default=200, help="steps per timing")
    parser.add_argument("--rounds", type=_cli.positive_int, default=5)
    parser.add_argument("--evaluations", type=_cli.integer(minimum=4), default=10,
                        help="model evaluations per image of the discrete estimators (DisARM: half as many pairs)")
    parser.add_argument("--batch-size", type=_cli.positive_int, default=50, help="Bernoulli VAE batch")
    return _cli.parse(parser, argv)


if __name__ == "__main__":
    main(parse_args())
