"""BBVI on the Normal-NormalGamma model (assignment 1.D.3 and 1.C.3), side by
side with Pyro's own estimators.

Runs ScoreFunctionELBO (Algorithm 1), ControlVariateELBO (Algorithm 2 without
Rao-Blackwellization) with the published pooled coefficient a* that question
1.C.3 asks for and with the library's unbiased leave-one-out default,
Trace_ELBO, TraceGraph_ELBO with score-function gradients, and RenyiELBO
(alpha = 0 and 0.5) from the same poor start, with the same data, optimizer
and step count, once per seed of ``--seeds`` (a seed sets the particles; the
course data are fixed by ``--data-seed``); measures each estimator's gradient
variance at the start and at the CAVI optimum; and writes

- ``elbo.png``: the ELBO of q_t (closed form) over iterations, mean and band
  over seeds, with the CAVI optimum, and KL(q_t || p) = log p(X) - ELBO on a
  log scale, where the CAVI optimum (0.005 nats below log p(X)) has a line of
  its own;
- ``posterior_means.png``: E_q[mu] and E_q[tau] over iterations, with the
  exact posterior means and CAVI's, and a zoom on the last two thirds;
- ``results.json``: mean ± std over seeds and per-seed rows, the references,
  the ArviZ summaries of the first seed, the command, machine and wall time.

    python -m experiments.bbvi_normal_gamma --out results/bbvi_normal_gamma
"""

import functools
import os

import arviz as az
import numpy as np
import torch
from pyro.infer import RenyiELBO, Trace_ELBO, TraceGraph_ELBO
from pyro.optim import ClippedAdam

from experiments import _cli
from experiments._figures import band_note, legend_outside, plt, save_figure, seed_band
from experiments._markdown import run_line, spread_sentence, table, times
from experiments._results import fmt, seed_summary, seeded_fit, seeded_variances, thin
from experiments._study import Study
from guides.normal_gamma import DEFAULT_INIT, cavi, mean_field_guide, params_from_store
from guides.normal_gamma import elbo as closed_form_elbo
from models.normal_gamma import COURSE_PRIOR, generate_data, log_evidence, model, posterior_means
from pyro_vi import ControlVariateELBO, ScoreFunctionELBO, score_function_guide
from pyro_vi.inference_data import to_inference_data

BASELINE = "Trace_ELBO"
POOLED = "ControlVariateELBO, pooled a* (1.C.3, as published)"


def estimators(num_particles):
    """The study's :data:`~experiments._cli.Registry`: every estimator it compares.

    Question 1.C.3 asks for BBVI's Algorithm 2 as published: the control-variate
    coefficient a* pooled over the S samples (biased by O(1/S)). The library's
    default is the unbiased leave-one-out coefficient; both run here."""
    kw = dict(num_particles=num_particles, **_cli.VECTORIZED)
    return {
        "ScoreFunctionELBO (1.D.3)": _cli.Estimator(lambda: ScoreFunctionELBO(**kw), style=dict(color="C0")),
        POOLED: _cli.Estimator(lambda: ControlVariateELBO(coefficient="pooled", **kw), style=dict(color="C1")),
        "ControlVariateELBO, leave-one-out (default)": _cli.Estimator(
            lambda: ControlVariateELBO(coefficient="leave_one_out", **kw), style=dict(color="C5", ls="--")
        ),
        BASELINE: _cli.Estimator(lambda: Trace_ELBO(**kw), style=dict(color="C2")),
        "TraceGraph_ELBO (score function)": _cli.Estimator(
            lambda: TraceGraph_ELBO(**kw), guide=score_function_guide, style=dict(color="C3", ls="--")
        ),
        "RenyiELBO(alpha=0)": _cli.Estimator(lambda: RenyiELBO(alpha=0.0, **kw), style=dict(color="C4")),
        "RenyiELBO(alpha=0.5)": _cli.Estimator(lambda: RenyiELBO(alpha=0.5, **kw), style=dict(color="C9")),
    }


def run_estimator(name, estimator, data, args, seed, optimum, summarize):
    """Fits one estimator from the poor start with ``seed``; returns its
    tracked history and its row (with the ArviZ summary if ``summarize``)."""
    elbo, wrap = estimator.make(), estimator.guide
    start_guide = wrap(functools.partial(mean_field_guide, init=DEFAULT_INIT))
    draws = args.variance_draws
    variance_start = seeded_variances(seed, elbo, model, start_guide, data, COURSE_PRIOR, num_draws=draws)
    result = seeded_fit(
        seed,
        model,
        start_guide,
        elbo,
        ClippedAdam({"lr": args.lr, "lrd": args.lrd}),
        data,
        COURSE_PRIOR,
        num_steps=args.steps,
        track={
            "elbo": lambda: closed_form_elbo(data, params_from_store()).item(),  # of the current q
            "E[mu]": lambda: params_from_store().m,
            "E[tau]": lambda: params_from_store().a / params_from_store().b,
        },
    )
    final_q = params_from_store()
    row = {
        "final_elbo": float(result.tracked["elbo"][-1]),
        "final_q": {"m": final_q.m, "lam": final_q.lam, "a": final_q.a, "b": final_q.b},
    }
    if summarize:
        idata = to_inference_data(model, start_guide, data, COURSE_PRIOR, num_samples=args.summary_draws, seed=seed)
        summary = az.summary(idata, var_names=["mu", "tau"], kind="stats")
        row["arviz_summary"] = summary.to_dict(orient="index")
        print(f"\n{name}: ArviZ summary of the final q (seed {seed})\n{summary.to_string()}")
    optimum_guide = wrap(functools.partial(mean_field_guide, init=optimum.params))
    variance_optimum = seeded_variances(seed, elbo, model, optimum_guide, data, COURSE_PRIOR, num_draws=draws)
    row.update(
        gap_to_cavi=optimum.elbo - row["final_elbo"],
        grad_variance_start=sum(variance_start.values()),
        grad_variance_cavi=sum(variance_optimum.values()),
        grad_variance_start_per_param=variance_start,
        grad_variance_cavi_per_param=variance_optimum,
        seconds_per_step=result.seconds_per_step,
    )
    return result.tracked, row


def plot_elbo(histories, styles, optimum, log_px, path):
    """``elbo.png`` of the module docstring. ``histories``: key -> name -> thinned curves."""
    histories = histories["elbo"]
    num_seeds = len(next(iter(histories.values()))["values"])
    fig, (ax, kl_ax) = plt.subplots(2, 1, figsize=(11, 8.5))
    for name, curve in histories.items():
        elbo, steps = np.asarray(curve["values"]), np.asarray(curve["step"])
        seed_band(ax, steps, elbo, label=name, lw=1.2, **styles[name])
        seed_band(kl_ax, steps, np.maximum(log_px - elbo, 1e-6), label=name, lw=1.2, **styles[name])
    label = f"CAVI optimum {optimum:.4f} and exact log p(X) {log_px:.4f}\n"
    label += "(0.005 nats apart: one line at this scale; see lower panel)"
    ax.axhline(optimum, color="k", ls=":", lw=1.2, zorder=1, label=label)
    # from the lowest final ELBO (every run's end is in view) to log p(X)
    last = steps > 2 * steps[-1] // 3
    lowest = min(np.asarray(curve["values"])[:, last].min() for curve in histories.values())
    ax.set_ylim(lowest - 3, log_px + 3)
    ax.set(xlabel="iteration", ylabel="ELBO of q_t (closed form, nats)")
    ax.set_title(f"Normal-NormalGamma: ELBO over iterations ({band_note(num_seeds)})")
    legend_outside(ax)
    label = f"CAVI optimum: KL(q* || p) = {log_px - optimum:.4f}\n(the best of the mean-field family)"
    kl_ax.axhline(log_px - optimum, color="k", ls=":", lw=1.2, zorder=1, label=label)
    kl_ax.set(yscale="log", xlabel="iteration", ylabel="log p(X) - ELBO(q_t) = KL(q_t || p) (nats)")
    kl_ax.set_title("Distance to the exact posterior (log scale; exact log p(X) is 0)")
    legend_outside(kl_ax)
    save_figure(fig, path)


def plot_means(histories, styles, optimum, cavi_means, exact, path, zoom=0.04, converged=1.0):
    """Top: E_q[mu], E_q[tau] over iterations; bottom: the runs that end
    within ``converged`` nats of the CAVI optimum, over the last third,
    zoomed to the exact posterior mean +- ``zoom`` (relative), drawn over the
    reference lines."""
    num_seeds = len(next(iter(histories["elbo"].values()))["values"])
    steps = next(iter(histories["elbo"].values()))["step"][-1]
    close = [
        name
        for name, curve in histories["elbo"].items()
        if optimum - np.mean(np.asarray(curve["values"])[:, -1]) < converged
    ]
    fig, axes = plt.subplots(2, 2, figsize=(13, 9.5))
    for column, (key, label) in enumerate((("mu", "E_q[mu]"), ("tau", "E_q[tau]"))):
        equal = abs(cavi_means[key] - exact[key]) < 1e-6 * abs(exact[key])
        exact_label = f"exact posterior mean {exact[key]:.4f} (wide grey)"
        cavi_label = "CAVI {:.4f} (dashed){}".format(cavi_means[key], ", equal to the exact mean" if equal else "")
        for row, ax in enumerate(axes[:, column]):
            ax.axhline(exact[key], color="0.6", lw=6, alpha=0.5, zorder=1, label=exact_label)
            ax.axhline(cavi_means[key], color="k", ls="--", lw=1, zorder=4, label=cavi_label)
            for name, curve in histories[f"E[{key}]"].items():
                if row == 1 and name not in close:
                    continue
                seed_band(ax, curve["step"], curve["values"], label=name, lw=1, zorder=3, **styles[name])
            ax.set(xlabel="iteration", ylabel=label)
        top, bottom = axes[0, column], axes[1, column]
        top.set_title(f"{label} over iterations ({band_note(num_seeds)})", fontsize=10)
        bottom.set_xlim(2 * steps // 3, steps)
        bottom.set_ylim(exact[key] * (1 - zoom), exact[key] * (1 + zoom))
        bottom.set_title(
            f"zoom: the runs within {converged:g} nat of the CAVI optimum at the end,\n"
            f"iterations {2 * steps // 3}-{steps}, exact mean +- {zoom:.0%}",
            fontsize=10,
        )
        for ax in (top, bottom):
            legend_outside(ax, where="below")
    save_figure(fig, path)


SUMMARY_KEYS = ("final_elbo", "gap_to_cavi", "grad_variance_start", "grad_variance_cavi", "time_vs_trace_elbo")


def run(args):
    torch.set_default_device(args.device)
    data = generate_data(num_data=args.num_data, seed=args.data_seed)
    optimum = cavi(data)
    registry = estimators(args.particles)
    histories = {key: {name: [] for name in registry} for key in ("elbo", "E[mu]", "E[tau]")}
    per_seed = {name: [] for name in registry}
    for index, seed in enumerate(args.seeds):
        for name, estimator in registry.items():
            tracked, row = run_estimator(name, estimator, data, args, seed, optimum, summarize=index == 0)
            for key in histories:
                histories[key][name].append(tracked[key])
            per_seed[name].append(row)
        baseline = per_seed[BASELINE][-1]["seconds_per_step"]
        for name in registry:
            per_seed[name][-1]["time_vs_trace_elbo"] = per_seed[name][-1]["seconds_per_step"] / baseline
    return {
        "references": {
            "log_evidence": log_evidence(data),
            "cavi_elbo": optimum.elbo,
            "cavi_params": optimum.params.__dict__,
            "exact_posterior_means": posterior_means(data),
        },
        **seed_summary(per_seed, SUMMARY_KEYS, within=("final_elbo", "grad_variance_cavi")),
        "per_seed": per_seed,
        "histories": {key: thin(curves) for key, curves in histories.items()},
    }


def figures(results, out):
    ref, histories = results["references"], results["histories"]
    styles = {name: estimator.style for name, estimator in estimators(2).items()}
    plot_elbo(histories, styles, ref["cavi_elbo"], ref["log_evidence"], os.path.join(out, "elbo.png"))
    q = ref["cavi_params"]
    cavi_means = {"mu": q["m"], "tau": q["a"] / q["b"]}
    exact = ref["exact_posterior_means"]
    plot_means(histories, styles, ref["cavi_elbo"], cavi_means, exact, os.path.join(out, "posterior_means.png"))


def readme_block(results):
    summary = results["summary"]
    log_px, optimum = results["references"]["log_evidence"], results["references"]["cavi_elbo"]
    columns = {"final_elbo": ".3f", "gap_to_cavi": ".3f", "grad_variance_start": ".3g", "grad_variance_cavi": ".3g"}
    rows = [[name] + [fmt(s[key], spec) for key, spec in columns.items()] for name, s in summary.items()]
    score, pooled, loo = list(summary)[:3]
    cut = summary[score]["grad_variance_cavi"]["mean"] / summary[pooled]["grad_variance_cavi"]["mean"]
    cut_loo = summary[score]["grad_variance_cavi"]["mean"] / summary[loo]["grad_variance_cavi"]["mean"]
    return "\n".join(
        [
            f"Exact references: log p(X) = {log_px:.4f}; CAVI optimum of the mean-field ELBO = {optimum:.4f} (so "
            f"KL(q* || p) = {log_px - optimum:.4f} nats).\n",
            table(["estimator", "final ELBO", "gap to CAVI", "grad. variance at start", "at CAVI optimum"], rows),
            "Mean ± standard deviation over seeds; gradient variance summed over the four unconstrained parameters, "
            f"{results['args']['variance_draws']} draws. At the CAVI optimum the pooled control variate has "
            f"{times(cut)} times and leave-one-out {times(cut_loo)} times lower variance than the plain score "
            "function. " + spread_sentence(results["within_seed_spread"]["final_elbo"], "final ELBO"),
            run_line(results),
        ]
    )


SEEDS = "a seed sets the particles and the gradient-variance draws; the data are fixed by --data-seed"


def parser():
    parser = _cli.parser(
        __doc__, "results/bbvi_normal_gamma", device=True, seeds=(0, 1, 2), seeds_help=SEEDS, data_seed=True
    )
    # ControlVariateELBO's pooled coefficient needs two particles.
    _cli.add_svi_arguments(parser, steps=3000, particles=10, lr=0.05, lrd=0.9995, min_particles=2)
    parser.add_argument(
        "--variance-draws", type=_cli.integer(minimum=2), default=200, help="gradient draws per variance (at least 2)"
    )
    parser.add_argument(
        "--summary-draws",
        type=_cli.integer(minimum=4),
        default=2000,
        help="draws of each final q for its ArviZ summary (first seed)",
    )
    parser.add_argument("--num-data", type=_cli.positive_int, default=100)
    return parser


STUDY = Study("bbvi_normal_gamma", parser, run, figures, readme_block)

if __name__ == "__main__":
    STUDY.main()
