"""Rao-Blackwellization on the 1.C.2 model: per-parameter gradient variance and
ELBO curves of the score-function family, against Pyro's TraceGraph_ELBO.

Estimators: ScoreFunctionELBO, ControlVariateELBO, RaoBlackwellELBO without
and with control variates and with the pathwise option (here every site can
rsample, so it is sticking the landing), ReinforceLeaveOneOutELBO, and Pyro's
TraceGraph_ELBO in score-function mode
without and with its decaying-average baseline. Writes to ``--out``:

- ``variance.png``: per-parameter gradient variance (log scale) at a poor q
  and at the near-optimal q;
- ``elbo.png``: the closed-form ELBO of q_t over iterations, with the
  maximum over the mean-field family;
- ``results.json``: variances, ratios to ScoreFunctionELBO, final ELBOs.

    python -m experiments.rao_blackwell --out results/rao_blackwell
"""

import functools
import json
import os

import numpy as np
import pyro
from pyro.infer import TraceGraph_ELBO
from pyro.optim import ClippedAdam

if not __package__:  # run as ``python experiments/rao_blackwell.py``
    import _repo_root  # noqa: F401

from experiments import _cli  # noqa: E402
from experiments._figures import plt, save_figure  # noqa: E402
from guides.rao_blackwell import PARAM_NAMES, RaoBlackwellParams, elbo as closed_form_elbo  # noqa: E402
from guides.rao_blackwell import mean_field_guide, near_optimal_params, params_from_store  # noqa: E402
from models.rao_blackwell import generate_data, model  # noqa: E402
from pyro_vi import (  # noqa: E402
    ControlVariateELBO,
    RaoBlackwellELBO,
    ReinforceLeaveOneOutELBO,
    ScoreFunctionELBO,
    score_function_guide,
)
from pyro_vi.diagnostics import gradient_statistics, gradient_variance_table  # noqa: E402
from pyro_vi.training import fit  # noqa: E402

REFERENCE = "ScoreFunctionELBO"
BASELINE = {"use_decaying_avg_baseline": True, "baseline_beta": 0.9}


def estimators(num_particles):
    """The study's :data:`~experiments._cli.Registry`."""
    kw = dict(num_particles=num_particles, vectorize_particles=True, max_plate_nesting=1)
    return {
        REFERENCE: _cli.Estimator(lambda: ScoreFunctionELBO(**kw)),
        "ControlVariateELBO": _cli.Estimator(lambda: ControlVariateELBO(**kw)),
        "RaoBlackwellELBO (no CV)": _cli.Estimator(lambda: RaoBlackwellELBO(control_variate=False, **kw)),
        "RaoBlackwellELBO (CV)": _cli.Estimator(lambda: RaoBlackwellELBO(**kw)),
        "RaoBlackwellELBO (pathwise)": _cli.Estimator(lambda: RaoBlackwellELBO(pathwise=True, **kw)),
        "ReinforceLeaveOneOutELBO": _cli.Estimator(lambda: ReinforceLeaveOneOutELBO(**kw)),
        "TraceGraph_ELBO": _cli.Estimator(lambda: TraceGraph_ELBO(**kw), guide=score_function_guide),
        "TraceGraph_ELBO + baseline": _cli.Estimator(
            lambda: TraceGraph_ELBO(**kw), guide=functools.partial(score_function_guide, baseline=BASELINE)
        ),
    }


def variances(elbo, guide, data, num_draws, seed):
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    # Only the variational parameters: TraceGraph's baselines keep state params too.
    return gradient_statistics(elbo, model, guide, data, num_draws=num_draws, params=PARAM_NAMES)


def current_elbo(data):
    return closed_form_elbo(data, params_from_store()).item()


def plot_variance(tables, path):
    fig, axes = plt.subplots(1, len(tables), figsize=(7 * len(tables), 4.8), sharey=True)
    for ax, (where, stats) in zip(np.atleast_1d(axes), tables.items()):
        names = list(next(iter(stats.values())))
        width = 0.8 / len(stats)
        for i, (estimator, per_param) in enumerate(stats.items()):
            values = [per_param[n].total_variance for n in names]
            ax.bar(np.arange(len(names)) + i * width, values, width, label=estimator)
        ax.set_xticks(np.arange(len(names)) + 0.4 - width / 2)
        ax.set_xticklabels([n[2:] for n in names], rotation=45, ha="right")
        ax.set_yscale("log")
        ax.set_ylabel("gradient variance (summed over elements)")
        ax.set_title("at the {} q".format(where))
    np.atleast_1d(axes)[0].legend(fontsize=8)
    save_figure(fig, path)


def plot_elbo(histories, optimum, path):
    fig, (ax, gap_ax) = plt.subplots(1, 2, figsize=(12, 4.5))
    for name, result in histories.items():
        elbo = result.tracked["elbo"]
        steps = np.arange(1, len(elbo) + 1)
        ax.plot(steps, elbo, label=name, lw=1.2)
        gap_ax.plot(steps, np.maximum(optimum - elbo, 1e-6), label=name, lw=1.2)
    ax.axhline(optimum, color="k", ls="--", lw=1, label="maximum over the mean-field family")
    ax.set_xlabel("iteration")
    ax.set_ylabel("ELBO of q_t (closed form, nats)")
    ax.set_title("1.C.2 model: ELBO over iterations")
    ax.legend(fontsize=8, loc="lower left")
    gap_ax.set_yscale("log")
    gap_ax.set_xlabel("iteration")
    gap_ax.set_ylabel("maximum ELBO - ELBO of q_t (nats)")
    gap_ax.set_title("Gap to the maximum")
    save_figure(fig, path)


def main(args):
    data = generate_data(num_data=args.num_data, seed=args.seed)
    poor = RaoBlackwellParams.poor_init(len(data))
    best = near_optimal_params(data)
    optimum = closed_form_elbo(data, best).item()
    tables, histories, results = {"poor": {}, "near-optimal": {}}, {}, {}
    for name, estimator in estimators(args.particles).items():
        elbo, wrap = estimator.make(), estimator.guide
        for where, params in (("poor", poor), ("near-optimal", best)):
            guide = wrap(functools.partial(mean_field_guide, init=params))
            tables[where][name] = variances(elbo, guide, data, args.variance_draws, args.seed)
        pyro.clear_param_store()
        pyro.set_rng_seed(args.seed)
        histories[name] = fit(
            model,
            wrap(functools.partial(mean_field_guide, init=poor)),
            elbo,
            ClippedAdam({"lr": args.lr, "lrd": args.lrd}),
            data,
            num_steps=args.steps,
            track={"elbo": lambda: current_elbo(data)},
            progress=False,
        )
        results[name] = {
            "final_elbo": float(histories[name].tracked["elbo"][-1]),
            "seconds_per_step": histories[name].seconds_per_step,
        }
    for where, stats in tables.items():
        print("\nGradient variance at the {} q ({} particles, {} draws)".format(
            where, args.particles, args.variance_draws))
        print(gradient_variance_table(stats, REFERENCE))
        for name, per_param in stats.items():
            results[name]["variance_" + where] = {
                n: s.total_variance for n, s in per_param.items()
            }
            results[name]["variance_ratio_to_score_function_" + where] = {
                n: stats[REFERENCE][n].total_variance / s.total_variance
                for n, s in per_param.items()
            }
    print("\nFinal closed-form ELBO after {} steps (maximum {:.3f}):".format(args.steps, optimum))
    for name, row in results.items():
        print("  {:<28} {:>10.3f}".format(name, row["final_elbo"]))
    plot_variance(tables, os.path.join(args.out, "variance.png"))
    plot_elbo(histories, optimum, os.path.join(args.out, "elbo.png"))
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump({"args": vars(args), "max_elbo": optimum, "estimators": results}, f, indent=2)
    return results


def parse_args(argv=None):
    parser = _cli.parser(__doc__, out="results/rao_blackwell")
    # RaoBlackwellELBO's leave-one-out control variates need three particles.
    _cli.add_svi_arguments(parser, steps=2000, particles=10, lr=0.05, lrd=0.999, min_particles=3)
    parser.add_argument("--variance-draws", type=_cli.integer(minimum=2), default=200,
                        help="gradient draws per variance (at least 2)")
    parser.add_argument("--num-data", type=_cli.positive_int, default=20)
    return _cli.parse(parser, argv)


if __name__ == "__main__":
    main(parse_args())
