"""Time per SVI step of each estimator, as a ratio to Pyro's Trace_ELBO (and,
on the 1.C.2 model, of RaoBlackwellELBO to Pyro's TraceGraph_ELBO; for the
discrete-latent estimators, to TraceGraph_ELBO and RenyiELBO at the same number
of model evaluations, on the Bernoulli VAE and on the GMM).

All estimators are timed side by side in one run, round-robin, so that the
ratios share the machine's noise; the median over rounds is reported, with the
lowest and highest per-round ratio (two estimators whose ranges overlap cannot
be told apart by this run). Writes ``results.json`` to ``--out`` if given.

    python -m experiments.benchmark --out results/benchmark
"""

import functools
import time

import numpy as np
import pyro
import torch
from pyro.infer import SVI, RenyiELBO, Trace_ELBO, TraceGraph_ELBO
from pyro.optim import Adam

if not __package__:  # run as ``python experiments/benchmark.py``
    import _repo_root  # noqa: F401

from experiments import _cli
from experiments._mixtures import DiscreteSiteBaselines
from experiments._results import finish
from guides import bernoulli_vae as bernoulli_vae_guides
from guides import gmm as gmm_guides
from guides import normal_chain, normal_gamma
from models import bernoulli_vae, gmm
from models import normal_chain as normal_chain_model
from models.normal_gamma import COURSE_PRIOR, generate_data, model
from pyro_vi import (
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
        "ControlVariateELBO (pooled)": _cli.Estimator(lambda: ControlVariateELBO(coefficient="pooled", **kw)),
        "ControlVariateELBO (leave-one-out)": _cli.Estimator(
            lambda: ControlVariateELBO(coefficient="leave_one_out", **kw)
        ),
        "TraceGraph_ELBO (score function)": _cli.Estimator(lambda: TraceGraph_ELBO(**kw), guide=score_function_guide),
        "RenyiELBO(alpha=0)": _cli.Estimator(lambda: RenyiELBO(alpha=0.0, **kw)),
    }


def rao_blackwell_estimators(num_particles):
    """The :data:`~experiments._cli.Registry` of the 1.C.2 benchmark: ours
    against Pyro's TraceGraph_ELBO, both in score-function mode; the guides
    wrap :func:`guides.normal_chain.mean_field_guide`."""
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
            guide=functools.partial(score_function_guide, baseline=baseline),
        ),
        "RenyiELBO(alpha=0)": _cli.Estimator(lambda: RenyiELBO(alpha=0.0, num_particles=evaluations, **kw)),
        "RaoBlackwellELBO": _cli.Estimator(lambda: RaoBlackwellELBO(num_particles=evaluations, **kw)),
        "ReinforceLeaveOneOutELBO": _cli.Estimator(lambda: ReinforceLeaveOneOutELBO(num_particles=evaluations, **kw)),
        f"DisARMELBO ({pairs} pairs)": _cli.Estimator(lambda: DisARMELBO(num_particles=pairs, **kw)),
        "ImportanceWeightedELBO vimco": _cli.Estimator(
            lambda: ImportanceWeightedELBO(evaluations, gradient="vimco", **kw)
        ),
        f"ImportanceWeightedELBO disarm ({pairs} pairs)": _cli.Estimator(
            lambda: ImportanceWeightedELBO(pairs, gradient="disarm", **kw)
        ),
    }


def pathwise_estimators(num_particles):
    """The pathwise option on the GMM (continuous components, sampled z),
    against TraceGraph_ELBO with the same split (pathwise components,
    decaying-average baseline on z) and RenyiELBO(alpha=0)."""
    kw = dict(num_particles=num_particles, vectorize_particles=True, max_plate_nesting=1)
    return {
        "TraceGraph_ELBO + baseline": _cli.Estimator(
            lambda: TraceGraph_ELBO(**kw), guide=lambda guide: DiscreteSiteBaselines()(guide)
        ),
        "RenyiELBO(alpha=0)": _cli.Estimator(lambda: RenyiELBO(alpha=0.0, **kw)),
        "RaoBlackwellELBO": _cli.Estimator(lambda: RaoBlackwellELBO(**kw)),
        "RaoBlackwellELBO pathwise": _cli.Estimator(lambda: RaoBlackwellELBO(pathwise=True, **kw)),
        "ControlVariateELBO pathwise": _cli.Estimator(lambda: ControlVariateELBO(pathwise=True, **kw)),
        "ReinforceLeaveOneOutELBO pathwise": _cli.Estimator(lambda: ReinforceLeaveOneOutELBO(pathwise=True, **kw)),
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
    """Every estimator (running its wrap of ``guide``) timed ``rounds`` times,
    round-robin; per round its seconds per step and its ratio to
    ``baseline`` in that round (which shares the round's machine noise)."""
    runs = {name: (estimator.make(), estimator.guide(guide)) for name, estimator in estimators.items()}
    times = {name: [] for name in runs}
    for _ in range(rounds):
        for name, (elbo, wrapped) in runs.items():
            times[name].append(time_steps(model, wrapped, elbo, args, num_steps))
    return {
        name: {
            "ms_per_step_rounds": [1e3 * t for t in times[name]],
            "ratio_rounds": [t / b for t, b in zip(times[name], times[baseline])],
        }
        for name in runs
    }


def summarize(rounds, baseline):
    """Median ms/step and median per-round ratio, with the per-round ratios'
    lowest and highest; which estimators are within the rounds' spread of
    each other (their ratio ranges overlap)."""
    table = {}
    for name, r in rounds.items():
        table[name] = {
            "ms_per_step": float(np.median(r["ms_per_step_rounds"])),
            "ratio": float(np.median(r["ratio_rounds"])),
            "ratio_low": float(np.min(r["ratio_rounds"])),
            "ratio_high": float(np.max(r["ratio_rounds"])),
            **r,
        }
    names = [n for n in table if n != baseline]
    overlapping = [
        [a, b]
        for i, a in enumerate(names)
        for b in names[i + 1 :]
        if table[a]["ratio_low"] <= table[b]["ratio_high"] and table[b]["ratio_low"] <= table[a]["ratio_high"]
    ]
    like_baseline = [n for n in names if table[n]["ratio_low"] <= 1.0 <= table[n]["ratio_high"]]
    return {"baseline": baseline, "estimators": table, "overlapping": overlapping, "like_baseline": like_baseline}


def add_ratio(result, reference):
    """Adds each estimator's median per-round ratio to ``reference`` too
    (``ratio_<reference>``)."""
    rounds = result["estimators"][reference]["ms_per_step_rounds"]
    for row in result["estimators"].values():
        row["ratio_" + reference] = float(np.median([t / r for t, r in zip(row["ms_per_step_rounds"], rounds)]))
    result["also"] = reference


def format_table(result, title):
    baseline = result["baseline"]
    lines = [title, "{:<36} {:>10} {:>16} {:>18}".format("estimator", "ms/step", "x " + baseline, "rounds' range")]
    also = result.get("also")
    if also:
        lines[1] += " {:>10}".format("x " + also.split("(")[0])
    for name, row in result["estimators"].items():
        lines.append(
            "{:<36} {:>10.3f} {:>16.2f} {:>18}".format(
                name, row["ms_per_step"], row["ratio"], "{:.2f}-{:.2f}".format(row["ratio_low"], row["ratio_high"])
            )
        )
        if also:
            lines[-1] += " {:>10.2f}".format(row["ratio_" + also])
    if result["like_baseline"]:
        lines.append("within the rounds' spread of {}: {}".format(baseline, ", ".join(result["like_baseline"])))
    return "\n".join(lines)


def pooled(per_seed):
    """Rounds of several seeds, concatenated."""
    return {
        name: {key: [v for rounds in per_seed for v in rounds[name][key]] for key in per_seed[0][name]}
        for name in per_seed[0]
    }


def main(args):
    start = time.perf_counter()
    normal_gamma_rounds, rb_rounds, discrete_rounds, gmm_rounds = [], [], [], []
    rb_baseline = "TraceGraph_ELBO (score function)"
    tg = "TraceGraph_ELBO + baseline"
    config = bernoulli_vae.BernoulliVAEConfig(kind="linear")
    for seed in args.seeds:
        pyro.set_rng_seed(seed)
        data = generate_data(seed=seed)
        normal_gamma_rounds.append(
            benchmark(
                normal_gamma_estimators(args.particles),
                model,
                normal_gamma.mean_field_guide,
                (data, COURSE_PRIOR),
                args.steps,
                args.rounds,
            )
        )
        rb_rounds.append(
            benchmark(
                rao_blackwell_estimators(args.particles),
                normal_chain_model.model,
                normal_chain.mean_field_guide,
                (normal_chain_model.generate_data(seed=seed),),
                args.steps,
                args.rounds,
                baseline=rb_baseline,
            )
        )
        decoder, encoder = bernoulli_vae.Decoder(config), bernoulli_vae_guides.Encoder(config)
        images = torch.bernoulli(torch.full((args.batch_size, 784), 0.2), generator=torch.Generator().manual_seed(seed))
        discrete_rounds.append(
            benchmark(
                discrete_estimators(args.evaluations),
                functools.partial(bernoulli_vae.model, decoder=decoder),
                functools.partial(bernoulli_vae_guides.guide, encoder=encoder),
                (images,),
                args.steps,
                args.rounds,
                baseline=tg,
            )
        )
        pi = torch.tensor([0.3, 0.4, 0.3])
        gmm_data = gmm.generate_data(300, pi, [-4.0, 0.0, 4.0], [1.0, 4.0, 0.5], seed=seed)[0].float()
        gmm_rounds.append(
            benchmark(
                pathwise_estimators(args.particles),
                gmm.model,
                gmm_guides.mean_field_guide,
                (gmm_data, pi),
                args.steps,
                args.rounds,
                baseline=tg,
            )
        )
    results = summarize(pooled(normal_gamma_rounds), "Trace_ELBO")
    rb_results = summarize(pooled(rb_rounds), rb_baseline)
    discrete_results = summarize(pooled(discrete_rounds), tg)
    gmm_results = summarize(pooled(gmm_rounds), tg)
    for result in (discrete_results, gmm_results):
        add_ratio(result, "RenyiELBO(alpha=0)")
    rounds = args.rounds * len(args.seeds)
    print(
        format_table(
            results,
            f"Normal-NormalGamma, {args.particles} vectorized particles, median of {rounds} rounds of "
            f"{args.steps} steps",
        )
    )
    print()
    print(
        format_table(
            rb_results, f"1.C.2 model (N = 20), {args.particles} vectorized particles, median of {rounds} rounds"
        )
    )
    print()
    print(
        format_table(
            discrete_results,
            f"Bernoulli VAE (linear, 200 latents, batch {args.batch_size}), {args.evaluations} model evaluations per "
            "image",
        )
    )
    print()
    print(format_table(gmm_results, f"GMM (N = 300, K = 3), {args.particles} vectorized particles"))
    return finish(
        "benchmark",
        args,
        {
            "args": vars(args),
            "normal_gamma": results,
            "rao_blackwell": rb_results,
            "discrete": discrete_results,
            "gmm_pathwise": gmm_results,
        },
        start,
    )


def parse_args(argv=None):
    parser = _cli.parser(
        __doc__,
        out=None,
        multi_seed=True,
        default_seeds=(0,),
        seeds_help="one by default: a step's cost does not depend on the seed, and the spread "
        "reported is over --rounds; several seeds pool their rounds",
    )
    # ControlVariateELBO's pooled coefficient needs 2 particles, RaoBlackwellELBO's leave-one-out 3.
    parser.add_argument("--particles", type=_cli.integer(minimum=3), default=10)
    parser.add_argument("--steps", type=_cli.positive_int, default=200, help="steps per timing")
    parser.add_argument("--rounds", type=_cli.positive_int, default=5)
    parser.add_argument(
        "--evaluations",
        type=_cli.integer(minimum=4),
        default=10,
        help="model evaluations per image of the discrete estimators (DisARM: half as many pairs)",
    )
    parser.add_argument("--batch-size", type=_cli.positive_int, default=50, help="Bernoulli VAE batch")
    return _cli.parse(parser, argv)


if __name__ == "__main__":
    main(parse_args())
