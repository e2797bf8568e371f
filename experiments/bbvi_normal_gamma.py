"""BBVI on the Normal-NormalGamma model (assignment 1.D.3 and 1.C.3), side by
side with Pyro's own estimators.

Runs ScoreFunctionELBO (Algorithm 1), ControlVariateELBO (Algorithm 2 without
Rao-Blackwellization), Trace_ELBO, TraceGraph_ELBO with score-function
gradients, and RenyiELBO (alpha = 0 and 0.5) from the same poor start, with
the same data, seed, optimizer and step count; measures each estimator's
gradient variance at the start and at the CAVI optimum; and writes

- ``elbo.png``: the ELBO of q_t (closed form) over iterations, with the CAVI
  optimum and the exact log p(X), and the gap to the CAVI optimum (log scale);
- ``posterior_means.png``: E_q[mu] and E_q[tau] over iterations, with the exact
  posterior means and CAVI's;
- ``results.json``: the table below, the references and the ArviZ summaries.

    python -m experiments.bbvi_normal_gamma --out results/bbvi_normal_gamma
"""

import functools
import json
import os
import time

import arviz as az
import numpy as np
import pyro
import torch
from pyro.infer import RenyiELBO, Trace_ELBO, TraceGraph_ELBO
from pyro.optim import ClippedAdam

if not __package__:  # run as ``python experiments/bbvi_normal_gamma.py``
    import _repo_root  # noqa: F401

from experiments import _cli  # noqa: E402
from experiments._figures import plt, save_figure  # noqa: E402
from guides.normal_gamma import DEFAULT_INIT, cavi, elbo as closed_form_elbo  # noqa: E402
from guides.normal_gamma import mean_field_guide, params_from_store  # noqa: E402
from models.normal_gamma import COURSE_PRIOR, generate_data, log_evidence, model  # noqa: E402
from models.normal_gamma import posterior_means  # noqa: E402
from pyro_vi import ControlVariateELBO, ScoreFunctionELBO, score_function_guide  # noqa: E402
from pyro_vi.diagnostics import gradient_statistics  # noqa: E402
from pyro_vi.inference_data import to_inference_data  # noqa: E402
from pyro_vi.training import fit  # noqa: E402

BASELINE = "Trace_ELBO"


def estimators(num_particles):
    """The study's :data:`~experiments._cli.Registry`: every estimator it compares."""
    kw = dict(num_particles=num_particles, vectorize_particles=True, max_plate_nesting=1)
    return {
        "ScoreFunctionELBO (1.D.3)": _cli.Estimator(lambda: ScoreFunctionELBO(**kw)),
        "ControlVariateELBO (1.C.3)": _cli.Estimator(lambda: ControlVariateELBO(**kw)),
        "Trace_ELBO": _cli.Estimator(lambda: Trace_ELBO(**kw)),
        "TraceGraph_ELBO (score function)": _cli.Estimator(
            lambda: TraceGraph_ELBO(**kw), guide=score_function_guide
        ),
        "RenyiELBO(alpha=0)": _cli.Estimator(lambda: RenyiELBO(alpha=0.0, **kw)),
        "RenyiELBO(alpha=0.5)": _cli.Estimator(lambda: RenyiELBO(alpha=0.5, **kw)),
    }


def current_elbo(data):
    """The closed-form ELBO of the guide's current parameters."""
    q = params_from_store()
    return closed_form_elbo(data, q.m, q.lam, q.a, q.b).item()


def total_gradient_variance(elbo, guide, data, num_draws):
    stats = gradient_statistics(elbo, model, guide, data, COURSE_PRIOR, num_draws=num_draws)
    return {name: float(s.variance.sum()) for name, s in stats.items()}


def run_estimator(name, elbo, wrap, data, args, optimum):
    """Fits one estimator from the poor start; returns its history and row."""
    pyro.clear_param_store()
    pyro.set_rng_seed(args.seed)
    start_guide = wrap(functools.partial(mean_field_guide, init=DEFAULT_INIT))
    variance_start = total_gradient_variance(elbo, start_guide, data, args.variance_draws)
    pyro.clear_param_store()
    pyro.set_rng_seed(args.seed)
    result = fit(
        model,
        start_guide,
        elbo,
        ClippedAdam({"lr": args.lr, "lrd": args.lrd}),
        data,
        COURSE_PRIOR,
        num_steps=args.steps,
        track={
            "elbo": lambda: current_elbo(data),
            "E[mu]": lambda: params_from_store().m,
            "E[tau]": lambda: params_from_store().a / params_from_store().b,
        },
        progress=False,
    )
    idata = to_inference_data(
        model, start_guide, data, COURSE_PRIOR, num_samples=2000, seed=args.seed
    )
    summary = az.summary(idata, var_names=["mu", "tau"], kind="stats")
    pyro.clear_param_store()
    pyro.set_rng_seed(args.seed)
    optimum_guide = wrap(functools.partial(mean_field_guide, init=optimum.params))
    variance_optimum = total_gradient_variance(elbo, optimum_guide, data, args.variance_draws)
    final = float(result.tracked["elbo"][-1])
    row = {
        "final_elbo": final,
        "gap_to_cavi": optimum.elbo - final,
        "grad_variance_start": sum(variance_start.values()),
        "grad_variance_cavi": sum(variance_optimum.values()),
        "grad_variance_start_per_param": variance_start,
        "grad_variance_cavi_per_param": variance_optimum,
        "seconds_per_step": result.seconds_per_step,
        "arviz_summary": summary.to_dict(orient="index"),
    }
    print("\n{}: ArviZ summary of the final q\n{}".format(name, summary.to_string()))
    return result, row


def plot_elbo(histories, optimum, log_px, path):
    fig, (ax, gap_ax) = plt.subplots(1, 2, figsize=(12, 4.5))
    steps = None
    for name, result in histories.items():
        elbo = result.tracked["elbo"]
        steps = np.arange(1, len(elbo) + 1)
        ax.plot(steps, elbo, label=name, lw=1.2)
        gap_ax.plot(steps, np.maximum(optimum.elbo - elbo, 1e-6), label=name, lw=1.2)
    for axis in (ax,):
        axis.axhline(optimum.elbo, color="k", ls="--", lw=1, label="CAVI optimum (mean field)")
        axis.axhline(log_px, color="k", ls=":", lw=1, label="exact log p(X)")
    ax.set_ylim(optimum.elbo - 40, log_px + 4)
    ax.set_xlabel("iteration")
    ax.set_ylabel("ELBO of q_t (closed form, nats)")
    ax.set_title("ELBO over iterations")
    ax.legend(fontsize=8, loc="lower right")
    gap_ax.set_yscale("log")
    gap_ax.set_xlabel("iteration")
    gap_ax.set_ylabel("CAVI ELBO - ELBO of q_t (nats)")
    gap_ax.set_title("Gap to the CAVI optimum")
    save_figure(fig, path)


def plot_means(histories, optimum, exact, path):
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    cavi_means = optimum.params.means
    for ax, key, label in zip(axes, ("mu", "tau"), ("E_q[mu]", "E_q[tau]")):
        for name, result in histories.items():
            values = result.tracked["E[{}]".format(key)]
            ax.plot(np.arange(1, len(values) + 1), values, label=name, lw=1.2)
        ax.axhline(exact[key], color="k", ls=":", lw=1.5, label="exact posterior mean")
        ax.axhline(cavi_means[key], color="k", ls="--", lw=1, label="CAVI")
        ax.set_xlabel("iteration")
        ax.set_ylabel(label)
        ax.set_title("{} over iterations".format(label))
    axes[0].legend(fontsize=8)
    save_figure(fig, path)


def format_table(rows):
    header = "{:<34} {:>11} {:>10} {:>13} {:>13} {:>10}".format(
        "estimator", "final ELBO", "gap CAVI", "var(start)", "var(CAVI)", "time/step"
    )
    lines = [header, "-" * len(header)]
    for name, r in rows.items():
        lines.append(
            "{:<34} {:>11.3f} {:>10.3f} {:>13.4g} {:>13.4g} {:>9.2f}x".format(
                name,
                r["final_elbo"],
                r["gap_to_cavi"],
                r["grad_variance_start"],
                r["grad_variance_cavi"],
                r["time_vs_trace_elbo"],
            )
        )
    return "\n".join(lines)


def main(args):
    torch.set_default_device(args.device)
    data = generate_data(num_data=args.num_data, seed=args.seed)
    optimum = cavi(data)
    log_px = log_evidence(data)
    exact = posterior_means(data)
    histories, rows = {}, {}
    start = time.perf_counter()
    for name, estimator in estimators(args.particles).items():
        histories[name], rows[name] = run_estimator(
            name, estimator.make(), estimator.guide, data, args, optimum
        )
    for row in rows.values():
        row["time_vs_trace_elbo"] = row["seconds_per_step"] / rows[BASELINE]["seconds_per_step"]
    plot_elbo(histories, optimum, log_px, os.path.join(args.out, "elbo.png"))
    plot_means(histories, optimum, exact, os.path.join(args.out, "posterior_means.png"))
    table = format_table(rows)
    print("\nNormal-NormalGamma, N = {}, {} particles, {} steps of Adam(lr={}, lrd={})".format(
        args.num_data, args.particles, args.steps, args.lr, args.lrd))
    print("log p(X) = {:.4f}, CAVI ELBO = {:.4f}; gradient variance summed over the 4 "
          "parameters, {} draws".format(log_px, optimum.elbo, args.variance_draws))
    print(table)
    results = {
        "args": vars(args),
        "references": {
            "log_evidence": log_px,
            "cavi_elbo": optimum.elbo,
            "cavi_params": optimum.params.__dict__,
            "exact_posterior_means": exact,
        },
        "estimators": rows,
        "wall_seconds": time.perf_counter() - start,
    }
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(results, f, indent=2, default=float)
    return results


def parse_args(argv=None):
    parser = _cli.parser(__doc__, out="results/bbvi_normal_gamma", device=True)
    # ControlVariateELBO's pooled coefficient needs two particles.
    _cli.add_svi_arguments(parser, steps=3000, particles=10, lr=0.05, lrd=0.9995, min_particles=2)
    parser.add_argument("--variance-draws", type=_cli.integer(minimum=2), default=200,
                        help="gradient draws per variance (at least 2)")
    parser.add_argument("--num-data", type=_cli.positive_int, default=100)
    return _cli.parse(parser, argv)


if __name__ == "__main__":
    main(parse_args())
