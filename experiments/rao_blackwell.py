"""Rao-Blackwellization on the 1.C.2 model: per-parameter gradient variance and
ELBO curves of the score-function family, against Pyro's TraceGraph_ELBO.

Estimators: ScoreFunctionELBO, ControlVariateELBO, RaoBlackwellELBO without
and with control variates and with the pathwise option (here every site can
rsample, so it is sticking the landing), ReinforceLeaveOneOutELBO, and Pyro's
TraceGraph_ELBO in score-function mode without and with its decaying-average
baseline, each over ``--seeds`` (the data fixed). The variance reduction of
an estimator is variance(ScoreFunctionELBO) / variance(estimator) (higher is
better), per parameter and summed per latent. Writes to ``--out``:

- ``variance.png``: per-parameter gradient variance (log scale) at a poor q
  and at the near-optimal q, bars the mean over seeds and dots each seed;
- ``elbo.png``: the closed-form ELBO of q_t over iterations (mean and band
  over seeds) of the runs that converge, with the maximum over the mean-field
  family, and every run's gap to that maximum on a log scale;
- ``results.json``: variances and reductions (mean ± std over seeds and per
  seed), final ELBOs, the run's command, machine and wall time.

    python -m experiments.rao_blackwell --out results/rao_blackwell
"""

import functools
import os

import numpy as np
from pyro.infer import TraceGraph_ELBO
from pyro.optim import ClippedAdam

from experiments import _cli
from experiments._figures import (
    band_note,
    coinciding,
    legend_outside,
    off_scale,
    plt,
    save_figure,
    seed_band,
    zoom_ylim,
)
from experiments._markdown import run_line, spread_sentence, table
from experiments._results import fmt, indistinguishable, seeded_fit, seeded_variances, spreads, thin, within_spread
from experiments._study import Study
from guides.normal_chain import PARAM_NAMES, NormalChainParams, cavi, mean_field_guide, params_from_store
from guides.normal_chain import elbo as closed_form_elbo
from models.normal_chain import generate_data, model
from pyro_vi import (
    ControlVariateELBO,
    RaoBlackwellELBO,
    ReinforceLeaveOneOutELBO,
    ScoreFunctionELBO,
    score_function_guide,
)

REFERENCE = "ScoreFunctionELBO"
BASELINE = {"use_decaying_avg_baseline": True, "baseline_beta": 0.9}
#: Parameter groups of the table: the variances of a latent's parameters, summed.
GROUPS = {
    latent: tuple(n for n in PARAM_NAMES if n.startswith(f"q_{latent}_")) for latent in ("w1", "w2", "v", "z", "y")
}
WHERE = ("poor", "near-optimal")


def estimators(num_particles):
    """The study's :data:`~experiments._cli.Registry`. RaoBlackwellELBO without
    control variates computes exactly TraceGraph_ELBO's gradient on this
    mean-field guide, so those two are drawn with different line styles."""
    kw = dict(num_particles=num_particles, **_cli.VECTORIZED)
    return {
        REFERENCE: _cli.Estimator(lambda: ScoreFunctionELBO(**kw), style=dict(color="C0")),
        "ControlVariateELBO (leave-one-out)": _cli.Estimator(lambda: ControlVariateELBO(**kw), style=dict(color="C1")),
        "RaoBlackwellELBO (no CV)": _cli.Estimator(
            lambda: RaoBlackwellELBO(control_variate=False, **kw), style=dict(color="C2", lw=3, alpha=0.6)
        ),
        "RaoBlackwellELBO (leave-one-out CV)": _cli.Estimator(lambda: RaoBlackwellELBO(**kw), style=dict(color="C3")),
        "RaoBlackwellELBO (pathwise)": _cli.Estimator(
            lambda: RaoBlackwellELBO(pathwise=True, **kw), style=dict(color="C5")
        ),
        "ReinforceLeaveOneOutELBO": _cli.Estimator(lambda: ReinforceLeaveOneOutELBO(**kw), style=dict(color="C6")),
        "TraceGraph_ELBO": _cli.Estimator(
            lambda: TraceGraph_ELBO(**kw), guide=score_function_guide, style=dict(color="k", ls=(0, (2, 2)), lw=1)
        ),
        "TraceGraph_ELBO + baseline": _cli.Estimator(
            lambda: TraceGraph_ELBO(**kw),
            guide=functools.partial(score_function_guide, baseline=BASELINE),
            style=dict(color="C4"),
        ),
    }


def run_seed(registry, data, poor, best, args, seed):
    """One seed: every estimator's variances at both q and its ELBO history."""
    rows, histories = {}, {}
    for name, estimator in registry.items():
        elbo, wrap = estimator.make(), estimator.guide
        row = {}
        for where, params in zip(WHERE, (poor, best)):
            guide = wrap(functools.partial(mean_field_guide, init=params))
            # only the variational parameters: TraceGraph's baselines keep state params too
            row["variance_" + where] = seeded_variances(
                seed, elbo, model, guide, data, num_draws=args.variance_draws, params=PARAM_NAMES
            )
        result = seeded_fit(
            seed,
            model,
            wrap(functools.partial(mean_field_guide, init=poor)),
            elbo,
            ClippedAdam({"lr": args.lr, "lrd": args.lrd}),
            data,
            num_steps=args.steps,
            track={"elbo": lambda: closed_form_elbo(data, params_from_store()).item()},
        )
        histories[name] = result.tracked["elbo"]
        row.update(final_elbo=float(result.tracked["elbo"][-1]), seconds_per_step=result.seconds_per_step)
        rows[name] = row
    for where in WHERE:
        reference = rows[REFERENCE]["variance_" + where]
        for row in rows.values():
            variance = row["variance_" + where]
            # higher is better: how many times lower than the plain score function
            row["reduction_" + where] = {
                group: sum(reference[n] for n in names) / sum(variance[n] for n in names)
                for group, names in GROUPS.items()
            }
    return rows, histories


def summarize(per_seed):
    """Mean ± std over seeds of the final ELBO and of every variance and reduction."""
    keys = [f"{kind}_{where}" for kind in ("variance", "reduction") for where in WHERE]
    summary = {}
    for name in per_seed[0]:
        rows = [seed_rows[name] for seed_rows in per_seed]
        summary[name] = dict(spreads(rows, ["final_elbo"]), **{key: spreads([r[key] for r in rows]) for key in keys})
    return summary


def plot_variance(summary, per_seed, styles, path):
    """Per-parameter gradient variance (bars: mean over seeds; dots: each seed)."""
    names = list(PARAM_NAMES)
    same = coinciding({name: [r[name]["variance_poor"][n] for r in per_seed for n in names] for name in summary})
    fig, axes = plt.subplots(2, 1, figsize=(12, 9))
    width = 0.8 / len(summary)
    for ax, where in zip(axes, WHERE):
        for i, (estimator, entry) in enumerate(summary.items()):
            xs = np.arange(len(names)) + i * width
            label = estimator + (f"  (identical to {same[estimator]})" if estimator in same else "")
            means = [entry["variance_" + where][n]["mean"] for n in names]
            hatch = dict(hatch="//", edgecolor="k") if estimator in same else dict(hatch=None, edgecolor=None)
            ax.bar(xs, means, width, color=styles[estimator].get("color"), alpha=0.75, label=label, **hatch)
            for seed_rows in per_seed:
                ax.plot(xs, [seed_rows[estimator]["variance_" + where][n] for n in names], "k.", ms=3)
        ax.plot([], [], "k.", ms=3, label="one seed")
        ax.set_xticks(np.arange(len(names)) + 0.4 - width / 2)
        ax.set_xticklabels([n[2:] for n in names], rotation=30, ha="right")
        ax.set(yscale="log", xlabel="variational parameter", ylabel="gradient variance (summed over elements)")
        ax.set_title(f"1.C.2 model: gradient variance at the {where} q (bars: mean of {len(per_seed)} seeds)")
        legend_outside(ax)
    save_figure(fig, path)


def plot_elbo(histories, styles, optimum, same, path):
    """Top: the ELBO of the runs that converge, at a scale where they differ;
    bottom: every run's gap to the maximum on a log scale (diverging runs too).
    ``histories``: thinned curves; ``same``: the runs identical to an earlier one."""
    num_seeds = len(next(iter(histories.values()))["values"])
    gaps = {name: optimum - np.mean(h["values"], axis=0) for name, h in histories.items()}
    far = off_scale({name: g[-1] for name, g in gaps.items()})
    fig, (ax, gap_ax) = plt.subplots(2, 1, figsize=(11, 8.5))
    shown = []
    for name, curve in histories.items():
        h, steps = np.asarray(curve["values"]), np.asarray(curve["step"])
        label = name + (f"  (identical to {same[name]}: dotted over solid)" if name in same else "")
        if name not in far:
            seed_band(ax, steps, h, label=label, **styles[name])
            shown.append(h[:, steps > steps[-1] // 10])
        seed_band(gap_ax, steps, np.maximum(optimum - h, 1e-4), label=label, **styles[name])
    ax.axhline(optimum, color="k", ls="--", lw=1, label="maximum over the mean-field family")
    zoom_ylim(ax, shown, include=[optimum])
    ax.set(xlabel="iteration", ylabel="ELBO of q_t (closed form, nats)")
    ax.set_title(
        "1.C.2 model: ELBO over iterations ({}){}".format(
            band_note(num_seeds), "\noff this scale (lower panel): " + ", ".join(far) if far else ""
        ),
        fontsize=10,
    )
    legend_outside(ax)
    gap_ax.set(yscale="log", xlabel="iteration", ylabel="maximum ELBO - ELBO of q_t (nats)")
    gap_ax.set_title("Gap to the maximum, every run (log scale)", fontsize=10)
    legend_outside(gap_ax)
    save_figure(fig, path)


def run(args):
    data = generate_data(num_data=args.num_data, seed=args.data_seed)
    poor = NormalChainParams.poor_init(len(data))
    best = cavi(data).params
    optimum = closed_form_elbo(data, best).item()
    registry = estimators(args.particles)
    per_seed, histories = [], {name: [] for name in registry}
    for seed in args.seeds:
        rows, seed_histories = run_seed(registry, data, poor, best, args, seed)
        per_seed.append(rows)
        for name, h in seed_histories.items():
            histories[name].append(h)
    summary = summarize(per_seed)
    return {
        "max_elbo": optimum,
        "groups": GROUPS,
        "summary": summary,
        "within_seed_spread": {
            "final_elbo": indistinguishable({name: entry["final_elbo"] for name, entry in summary.items()})
        },
        "identical": coinciding({name: np.asarray(h) for name, h in histories.items()}),
        "per_seed": per_seed,
        "histories": thin(histories),
    }


def figures(results, out):
    styles = {name: estimator.style for name, estimator in estimators(3).items()}
    plot_variance(results["summary"], results["per_seed"], styles, os.path.join(out, "variance.png"))
    plot_elbo(results["histories"], styles, results["max_elbo"], results["identical"], os.path.join(out, "elbo.png"))


def readme_block(results):
    summary, groups, args = results["summary"], list(results["groups"]), results["args"]
    reference = next(iter(summary))
    rows = [
        [name] + [fmt(s["reduction_poor"][g], ".3g") for g in groups] + [fmt(s["final_elbo"])]
        for name, s in summary.items()
    ]
    lines = [
        f"Variance reduction at a poor q, var({reference}) / var(estimator) summed over each latent's parameters "
        f"(higher is better), {args['variance_draws']} draws, and the closed-form ELBO after {args['steps']} steps "
        f"(maximum over the mean-field family {results['max_elbo']:.3f}):\n",
        table(["estimator"] + groups + ["final ELBO"], rows),
        "Mean ± standard deviation over seeds. "
        + spread_sentence(results["within_seed_spread"]["final_elbo"], "final ELBO"),
    ]
    for a, b in results.get("identical", {}).items():
        lines.append(f"{a} and {b} give the same ELBO history to float32 rounding (and the same variances).\n")
    ours, pyro_baseline = "RaoBlackwellELBO (leave-one-out CV)", "TraceGraph_ELBO + baseline"
    if ours in summary and pyro_baseline in summary:
        for where in WHERE:
            mine, theirs = summary[ours]["reduction_" + where], summary[pyro_baseline]["reduction_" + where]
            close = [g for g in groups if within_spread(mine[g], theirs[g])]
            better = [g for g in groups if g not in close and mine[g]["mean"] > theirs[g]["mean"]]
            worse = [g for g in groups if g not in close and g not in better]
            lines.append(
                "At the {} q, {} reduces the variance more than {} for {}, less for {}, and within the "
                "seed spread for {}.\n".format(
                    where, ours, pyro_baseline, *(", ".join(g) or "no latent" for g in (better, worse, close))
                )
            )
    lines.append(run_line(results))
    return "\n".join(lines)


SEEDS = "a seed sets the particles and the gradient-variance draws; the data are fixed by --data-seed"


def parser():
    parser = _cli.parser(__doc__, "results/rao_blackwell", seeds=(0, 1, 2), seeds_help=SEEDS, data_seed=True)
    # RaoBlackwellELBO's leave-one-out control variates need three particles.
    _cli.add_svi_arguments(parser, steps=2000, particles=10, lr=0.05, lrd=0.999, min_particles=3)
    parser.add_argument(
        "--variance-draws", type=_cli.integer(minimum=2), default=200, help="gradient draws per variance (at least 2)"
    )
    parser.add_argument("--num-data", type=_cli.positive_int, default=20)
    return parser


STUDY = Study("rao_blackwell", parser, run, figures, readme_block)

if __name__ == "__main__":
    STUDY.main()
