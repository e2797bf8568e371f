"""BBVI on the Poisson-Gamma model with a misspecified Exponential(theta)
family: theta over iterations against the numerically found optimum theta*.

Estimators: ScoreFunctionELBO, ControlVariateELBO (pooled and leave-one-out
coefficients) and Pyro's reparameterized Trace_ELBO, same data, start and
optimizer, once per seed of ``--seeds``. Writes ``theta.png`` (theta_t against
theta*, and its relative error on a log scale), ``elbo.png`` (closed-form ELBO
of q_t against ELBO(theta*), and the gap on a log scale; the exact log p(X)
is far above, as the family is misspecified) and ``results.json`` (mean ±
std over seeds and per seed).

    python -m experiments.poisson_gamma --out results/poisson_gamma
"""

import functools
import os

import numpy as np
from pyro.infer import Trace_ELBO
from pyro.optim import ClippedAdam

from experiments import _cli
from experiments._figures import band_note, legend_outside, plt, save_figure, seed_band, zoom_ylim
from experiments._markdown import run_line, spread_sentence, table
from experiments._results import fmt, seed_summary, seeded_fit, thin
from experiments._study import Study
from guides.poisson_gamma import PoissonGammaParams, exponential_guide, optimal_theta, params_from_store
from guides.poisson_gamma import elbo as closed_form_elbo
from models.poisson_gamma import DEFAULT_PRIOR, generate_data, log_evidence, model
from pyro_vi import ControlVariateELBO, ScoreFunctionELBO


def estimators(num_particles):
    """The study's :data:`~experiments._cli.Registry`."""
    kw = dict(num_particles=num_particles, **_cli.VECTORIZED)
    return {
        "ScoreFunctionELBO": _cli.Estimator(lambda: ScoreFunctionELBO(**kw), style=dict(color="C0")),
        "ControlVariateELBO (pooled a*, as published)": _cli.Estimator(
            lambda: ControlVariateELBO(coefficient="pooled", **kw), style=dict(color="C1")
        ),
        "ControlVariateELBO (leave-one-out, default)": _cli.Estimator(
            lambda: ControlVariateELBO(coefficient="leave_one_out", **kw), style=dict(color="C3", ls="--")
        ),
        "Trace_ELBO (reparameterized)": _cli.Estimator(lambda: Trace_ELBO(**kw), style=dict(color="C2")),
    }


def fit_one(estimator, data, args, seed):
    return seeded_fit(
        seed,
        model,
        estimator.guide(functools.partial(exponential_guide, init_theta=args.init_theta)),
        estimator.make(),
        ClippedAdam({"lr": args.lr, "lrd": args.lrd}),
        data,
        DEFAULT_PRIOR,
        num_steps=args.steps,
        track={
            "theta": lambda: params_from_store().theta,
            "elbo": lambda: closed_form_elbo(data, params_from_store()).item(),
        },
    )


def plot_against_reference(curves, styles, reference, error, path, top, bottom):
    """Top: every run after the first 10% of steps (linear; the start would
    flatten the rest) against ``reference``; bottom: ``error(values)`` over
    every step on a log scale. ``top`` and ``bottom``: (y label, title);
    ``top``'s title may use ``{first}`` and ``{band}``."""
    fig, (ax, err_ax) = plt.subplots(2, 1, figsize=(10, 8))
    tails = []
    for name, curve in curves.items():
        steps, runs = np.asarray(curve["step"]), np.asarray(curve["values"])
        late = steps > steps[-1] // 10
        seed_band(ax, steps[late], runs[:, late], label=name, lw=1.2, **styles[name])
        seed_band(err_ax, steps, error(runs), label=name, lw=1, **styles[name])
        tails.append(runs[:, late])
    ax.axhline(reference[0], color="k", ls=":", lw=1.2, label=reference[1])
    zoom_ylim(ax, tails, include=[reference[0]])
    for axis, (ylabel, title) in ((ax, top), (err_ax, bottom)):
        axis.set(xlabel="iteration", ylabel=ylabel)
        axis.set_title(title.format(first=steps[-1] // 10 + 1, band=band_note(len(runs))), fontsize=10)
        legend_outside(axis)
    err_ax.set_yscale("log")
    save_figure(fig, path)


def figures(results, out):
    styles = {name: estimator.style for name, estimator in estimators(1).items()}
    theta_star, best, log_px = results["theta_star"], results["elbo_theta_star"], results["log_evidence"]
    coincide = (
        "over the first steps, where the start dominates, the curves coincide and the last drawn covers the others"
    )
    plot_against_reference(
        results["curves"]["theta"],
        styles,
        (theta_star, f"theta* = {theta_star:.5f} (numerical optimum)"),
        lambda runs: np.abs(runs - theta_star) / theta_star,
        os.path.join(out, "theta.png"),
        (
            "theta (rate of q)",
            "Exponential(theta) family: theta from iteration {first} on ({band}; the start is in the lower panel)",
        ),
        ("|theta_t - theta*| / theta*", f"relative error of theta_t (log scale; {coincide})"),
    )
    plot_against_reference(
        results["curves"]["elbo"],
        styles,
        (best, f"ELBO(theta*) = {best:.3f}"),
        lambda runs: np.maximum(best - runs, 1e-9),
        os.path.join(out, "elbo.png"),
        (
            "ELBO of q_t (closed form, nats)",
            "ELBO from iteration {first} on ({band}; the start is in the lower panel)\nexact "
            f"log p(X) = {log_px:.2f} lies {log_px - best:.1f} nats above ELBO(theta*): the family is misspecified",
        ),
        ("ELBO(theta*) - ELBO of q_t (nats)", f"gap to the best ELBO of the family (log scale; {coincide})"),
    )


def run(args):
    data = generate_data(num_data=args.num_data, rate=args.rate, seed=args.data_seed)
    theta_star = optimal_theta(data)
    best = closed_form_elbo(data, PoissonGammaParams(theta_star)).item()
    registry = estimators(args.particles)
    curves, per_seed = {"theta": {}, "elbo": {}}, {}
    for seed in args.seeds:
        for name, estimator in registry.items():
            result = fit_one(estimator, data, args, seed)
            for key in curves:
                curves[key].setdefault(name, []).append(result.tracked[key])
            # The last 10% of the steps, averaged: the stationary noise of Adam.
            theta = float(np.mean(result.tracked["theta"][-max(1, args.steps // 10) :]))
            per_seed.setdefault(name, []).append(
                {
                    "final_theta": float(result.tracked["theta"][-1]),
                    "mean_theta_last_10pct": theta,
                    "relative_error": abs(theta - theta_star) / theta_star,
                    "elbo_gap": best - float(result.tracked["elbo"][-1]),
                    "seconds_per_step": result.seconds_per_step,
                }
            )
    return {
        "theta_star": theta_star,
        "elbo_theta_star": best,
        "log_evidence": log_evidence(data),
        **seed_summary(per_seed, within=("relative_error",)),
        "per_seed": per_seed,
        "curves": {key: thin(values) for key, values in curves.items()},
    }


def readme_block(results):
    def percent(stat):
        return {k: None if stat[k] is None else 100 * stat[k] for k in ("mean", "std")}

    rows = [
        [name, fmt(s["mean_theta_last_10pct"], ".4f"), fmt(percent(s["relative_error"]), ".1f"), fmt(s["elbo_gap"])]
        for name, s in results["summary"].items()
    ]
    args = results["args"]
    return "\n".join(
        [
            f"theta* = {results['theta_star']:.5f}; ELBO(theta*) = {results['elbo_theta_star']:.2f} against log p(X) "
            f"= {results['log_evidence']:.2f} (the family is misspecified). Mean theta over the last 10% of "
            f"{args['steps']} steps with {args['particles']} particles:\n",
            table(["estimator", "theta", "error (%)", "final ELBO gap"], rows),
            "Mean ± standard deviation over seeds. "
            + spread_sentence(results["within_seed_spread"]["relative_error"], "the error in theta"),
            run_line(results),
        ]
    )


SEEDS = "a seed sets the particles; the data are fixed by --data-seed"


def parser():
    parser = _cli.parser(__doc__, "results/poisson_gamma", seeds=(0, 1, 2), seeds_help=SEEDS, data_seed=True)
    # With 10 particles the score-function runs end 15-25% away from theta*
    # after 2000 steps (the family is misspecified: log q is far from log p and
    # the learning signal varies by tens of nats); 100 particles converge.
    # The leave-one-out control variate needs 3 particles.
    _cli.add_svi_arguments(parser, steps=2000, particles=100, lr=0.05, lrd=0.999, min_particles=3)
    parser.add_argument("--init-theta", type=_cli.positive_real, default=5.0, help="start of q's rate theta")
    parser.add_argument("--num-data", type=_cli.positive_int, default=50)
    parser.add_argument("--rate", type=_cli.positive_real, default=3.0, help="true Poisson rate of the data")
    return parser


STUDY = Study("poisson_gamma", parser, run, figures, readme_block)

if __name__ == "__main__":
    STUDY.main()
