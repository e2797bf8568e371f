"""Time per SVI step of each estimator, as a ratio to Pyro's Trace_ELBO (and,
on the 1.C.2 model, of RaoBlackwellELBO to Pyro's TraceGraph_ELBO; for the
discrete-latent estimators, to TraceGraph_ELBO and RenyiELBO at the same number
of model evaluations, on the Bernoulli VAE and on the GMM).

All estimators are timed side by side in one run, round-robin, so that the
ratios share the machine's noise; the median over rounds is reported, with the
lowest and highest per-round ratio (two estimators whose ranges overlap cannot
be told apart by this run). Writes ``results.json`` to ``--out`` if given and
prints the README's tables.

    python -m experiments.benchmark --out results/benchmark
"""

import functools

import pyro
import torch
from pyro.infer import RenyiELBO, Trace_ELBO, TraceGraph_ELBO

from experiments import _cli
from experiments._markdown import ratio_cell, run_line, table
from experiments._mixtures import DiscreteSiteBaselines
from experiments._runs import timing_arguments
from experiments._study import Study
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
    fresh_svi_step,
    score_function_guide,
    step_time_ratios,
    step_times,
)

#: TraceGraph_ELBO's guide in score-function mode, with its decaying-average baseline
BASELINE_GUIDE = functools.partial(score_function_guide, baseline={"use_decaying_avg_baseline": True})


def normal_gamma_estimators(num_particles):
    """The :data:`~experiments._cli.Registry` of the Normal-NormalGamma
    benchmark; the guides wrap :func:`guides.normal_gamma.mean_field_guide`."""
    kw = dict(num_particles=num_particles, **_cli.VECTORIZED)
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
    kw = dict(num_particles=num_particles, **_cli.VECTORIZED)
    return {
        "TraceGraph_ELBO (score function)": _cli.Estimator(lambda: TraceGraph_ELBO(**kw), guide=score_function_guide),
        "TraceGraph_ELBO + baseline": _cli.Estimator(lambda: TraceGraph_ELBO(**kw), guide=BASELINE_GUIDE),
        "RaoBlackwellELBO (no CV)": _cli.Estimator(lambda: RaoBlackwellELBO(control_variate=False, **kw)),
        "RaoBlackwellELBO (CV)": _cli.Estimator(lambda: RaoBlackwellELBO(**kw)),
    }


def discrete_estimators(evaluations):
    """The discrete-latent estimators at ``evaluations`` model evaluations per
    step (DisARM: half as many pairs), against Pyro's TraceGraph_ELBO (score
    function with its decaying-average baseline) and RenyiELBO(alpha=0),
    which times the same work but gives a discrete guide no gradient."""
    kw, pairs = _cli.VECTORIZED, evaluations // 2
    return {
        "TraceGraph_ELBO + baseline": _cli.Estimator(
            lambda: TraceGraph_ELBO(num_particles=evaluations, **kw), guide=BASELINE_GUIDE
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
    kw = dict(num_particles=num_particles, **_cli.VECTORIZED)
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


def benchmark(estimators, model, guide, args, num_steps, rounds):
    """``name -> [seconds per step in each round]`` of every estimator (running
    its wrap of ``guide``), timed round-robin, each in a fresh ``SVI``."""
    steps = {
        name: functools.partial(fresh_svi_step, model, estimator.guide(guide), estimator.make(), *args)
        for name, estimator in estimators.items()
    }
    return step_times(steps, rounds=rounds, num_steps=num_steps)


def summarize(per_seed, baseline, also=None):
    """The seeds' rounds pooled: median ms/step and per-round ratio to
    ``baseline`` with its lowest and highest (:func:`pyro_vi.diagnostics.step_time_ratios`),
    which estimators are within the rounds' spread of each other (their
    ratio ranges overlap) and of the baseline, and with ``also`` the median
    ratio to that estimator too (``ratio_<also>``)."""
    times = {name: [t for seed in per_seed for t in seed[name]] for name in per_seed[0]}
    table = step_time_ratios(times, baseline)
    names = [n for n in table if n != baseline]
    overlapping = [
        [a, b]
        for i, a in enumerate(names)
        for b in names[i + 1 :]
        if table[a]["ratio_low"] <= table[b]["ratio_high"] and table[b]["ratio_low"] <= table[a]["ratio_high"]
    ]
    like_baseline = [n for n in names if table[n]["ratio_low"] <= 1.0 <= table[n]["ratio_high"]]
    result = {"baseline": baseline, "estimators": table, "overlapping": overlapping, "like_baseline": like_baseline}
    if also is not None:
        for name, row in step_time_ratios(times, also).items():
            table[name]["ratio_" + also] = row["ratio"]
        result["also"] = also
    return result


def run(args):
    rounds = {"normal_gamma": [], "rao_blackwell": [], "discrete": [], "gmm_pathwise": []}
    config = bernoulli_vae.BernoulliVAEConfig(kind="linear")
    for seed in args.seeds:
        pyro.set_rng_seed(seed)
        decoder, encoder = bernoulli_vae.Decoder(config), bernoulli_vae_guides.Encoder(config)
        images = torch.bernoulli(torch.full((args.batch_size, 784), 0.2), generator=torch.Generator().manual_seed(seed))
        pi = torch.tensor([0.3, 0.4, 0.3])
        gmm_data = gmm.generate_data(300, pi, [-4.0, 0.0, 4.0], [1.0, 4.0, 0.5], seed=seed)[0].float()
        problems = {  # estimators, model, guide, the model's arguments
            "normal_gamma": (
                normal_gamma_estimators(args.particles),
                model,
                normal_gamma.mean_field_guide,
                (generate_data(seed=seed), COURSE_PRIOR),
            ),
            "rao_blackwell": (
                rao_blackwell_estimators(args.particles),
                normal_chain_model.model,
                normal_chain.mean_field_guide,
                (normal_chain_model.generate_data(seed=seed),),
            ),
            "discrete": (
                discrete_estimators(args.evaluations),
                functools.partial(bernoulli_vae.model, decoder=decoder),
                functools.partial(bernoulli_vae_guides.guide, encoder=encoder),
                (images,),
            ),
            "gmm_pathwise": (
                pathwise_estimators(args.particles),
                gmm.model,
                gmm_guides.mean_field_guide,
                (gmm_data, pi),
            ),
        }
        for part, problem in problems.items():
            rounds[part].append(benchmark(*problem, args.steps, args.rounds))
    tg, renyi = "TraceGraph_ELBO + baseline", "RenyiELBO(alpha=0)"
    return {
        "normal_gamma": summarize(rounds["normal_gamma"], "Trace_ELBO"),
        "rao_blackwell": summarize(rounds["rao_blackwell"], "TraceGraph_ELBO (score function)"),
        "discrete": summarize(rounds["discrete"], tg, also=renyi),
        "gmm_pathwise": summarize(rounds["gmm_pathwise"], tg, also=renyi),
    }


def ratio_table(part, last, column):
    """Each estimator's ms/step, its ratio to the part's baseline (in brackets
    the rounds' range) and its cell of the last column, headed ``last``:
    ``column[name]``, or empty."""
    rows = [
        [name, "{:.2f}".format(row["ms_per_step"]), ratio_cell(row), column.get(name, "")]
        for name, row in part["estimators"].items()
    ]
    return table(["estimator", "ms/step", "x {} (rounds' range)".format(part["baseline"]), last], rows)


def target_table(part, target):
    """:func:`ratio_table` with a target per estimator, and which estimators
    this run cannot tell from the baseline."""
    text = ratio_table(part, "target", target)
    like = part["like_baseline"]
    if like:
        text += "\nThe per-round ratio range contains 1 for {}: this run cannot tell {} from {}.\n".format(
            " and ".join(like), "it" if len(like) == 1 else "them", part["baseline"]
        )
    return text


def readme_block(results):
    args = results["args"]
    targets = {
        "ScoreFunctionELBO": "<= 1.1",
        "ControlVariateELBO (pooled)": "<= 2",
        "ControlVariateELBO (leave-one-out)": "<= 2",
    }
    intro = (
        "Time per SVI step with {} vectorized particles, all estimators timed round-robin in one run (median of "
        "{} rounds of {} steps), as a ratio to Trace_ELBO within each round; in brackets the lowest and highest "
        "round:\n".format(args["particles"], args["rounds"] * len(results["run"]["seeds"]), args["steps"])
    )
    return "\n".join([intro, target_table(results["normal_gamma"], targets), run_line(results)])


def rao_blackwell_block(results):
    intro = "On the 1.C.2 model (N = 20, {particles} vectorized particles), from the same run:\n".format(
        **results["args"]
    )
    return intro + "\n" + target_table(results["rao_blackwell"], {"RaoBlackwellELBO (CV)": "<= 1.5"})


def discrete_block(results):
    titles = {
        "discrete": "On the Bernoulli VAE (linear, 200 binary latents, batch {batch_size}), {evaluations} model "
        "evaluations per image",
        "gmm_pathwise": "On the GMM (N = 300, K = 3) with sampled assignments, {particles} vectorized particles",
    }
    lines = []
    for key, title in titles.items():
        part, also = results[key], results[key]["also"]
        column = {name: "{:.2f}".format(row["ratio_" + also]) for name, row in part["estimators"].items()}
        lines += [title.format(**results["args"]) + ", from the same run:\n", ratio_table(part, f"x {also}", column)]
    return "\n".join(lines)


SEEDS = (
    "one by default: a step's cost does not depend on the seed, and the spread reported is over --rounds; "
    "several seeds pool their rounds"
)


def parser():
    parser = _cli.parser(__doc__, None, seeds=(0,), seeds_help=SEEDS)
    # ControlVariateELBO's pooled coefficient needs 2 particles, RaoBlackwellELBO's leave-one-out 3.
    parser.add_argument("--particles", type=_cli.integer(minimum=3), default=10)
    timing_arguments(parser, steps=200, rounds=5)
    parser.add_argument(
        "--evaluations",
        type=_cli.integer(minimum=4),
        default=10,
        help="model evaluations per image of the discrete estimators (DisARM: half as many pairs)",
    )
    parser.add_argument("--batch-size", type=_cli.positive_int, default=50, help="Bernoulli VAE batch")
    return parser


BLOCKS = {"benchmark_rao_blackwell": rao_blackwell_block, "benchmark_discrete": discrete_block}
STUDY = Study("benchmark", parser, run, readme_block=readme_block, blocks=BLOCKS)

if __name__ == "__main__":
    STUDY.main()
