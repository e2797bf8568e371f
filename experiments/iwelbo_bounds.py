"""The importance-weighted bound L_K against K on the Normal-NormalGamma
model (questions 2.1.10 and 2.1.11): L_1 <= L_K <= L_{2K} <= log p(X).

For a fixed imperfect mean-field q, estimates L_K from independent draws of
ImportanceWeightedELBO's value, once per seed of ``--seeds``, with standard
errors, against the exact log evidence and the closed-form ELBO (= L_1).
L_K <= log p(X) holds for the expectation; an estimate of L_K can lie above
log p(X) when its Monte Carlo error is larger than the true gap, which at
large K is tiny. Writes ``bounds.png`` (L_K and the gap to log p(X)) and
``results.json``.

    python -m experiments.iwelbo_bounds --out results/iwelbo_bounds
"""

import functools
import math
import os

import numpy as np
import pyro
import torch

from experiments import _cli
from experiments._figures import legend_outside, plt, save_figure
from experiments._markdown import run_line, table
from experiments._results import fmt, spread
from experiments._study import Study
from guides.normal_gamma import NormalGammaParams, mean_field_guide
from guides.normal_gamma import elbo as closed_form_elbo
from models.normal_gamma import generate_data, log_evidence, model
from pyro_vi import ImportanceWeightedELBO


def estimate_bound(data, q, num_particles, num_draws):
    """Mean and standard error of L_K over ``num_draws`` independent draws."""
    elbo = ImportanceWeightedELBO(num_particles, **_cli.VECTORIZED)
    guide = functools.partial(mean_field_guide, init=q)
    pyro.clear_param_store()
    with torch.no_grad():
        values = torch.tensor([-elbo.loss(model, guide, data) for _ in range(num_draws)], dtype=torch.float64)
    return values.mean().item(), values.std().item() / math.sqrt(num_draws)


def plot_bounds(rows, log_px, exact_elbo, num_draws, num_seeds, path):
    """Left: L_K against K with the references; right: log p(X) - L_K on a
    symmetric-log scale, so that estimates above log p(X) (Monte Carlo error)
    stay on the axes. Error bars: 2 standard errors of the mean over all
    seeds' draws; dots, shifted right of their K to stay visible: each
    seed's mean."""
    ks = np.array([r["K"] for r in rows])
    means = np.array([r["bound"]["mean"] for r in rows])
    se2 = 2 * np.array([r["pooled_standard_error"] for r in rows])
    per_seed = np.array([r["bound"]["values"] for r in rows])  # (K, seeds)
    fig, (ax, gap_ax) = plt.subplots(1, 2, figsize=(13, 5))
    label = f"L_K: mean of {num_seeds} seeds x {num_draws} draws, 2 SE bars"
    for axis, values, shown in ((ax, means, per_seed), (gap_ax, log_px - means, log_px - per_seed)):
        axis.errorbar(ks, values, yerr=se2, marker="o", capsize=3, color="C0", label=label, zorder=3)
        if num_seeds > 1:
            one = f"one seed's mean ({num_draws} draws), drawn right of its K"
            for j in range(num_seeds):
                axis.plot(ks * 1.12, shown[:, j], "o", color="C1", ms=3.5, zorder=4, label=one if j == 0 else None)
        axis.set(xscale="log", xlabel="K (importance samples, log scale)")
    ax.axhline(log_px, color="k", ls=":", lw=1.2, label=f"exact log p(X) = {log_px:.4f}")
    ax.axhline(exact_elbo, color="k", ls="--", lw=1, label=f"closed-form ELBO of q = L_1 = {exact_elbo:.3f}")
    ax.set_ylabel("bound (nats)")
    ax.set_title("Importance-weighted bound L_K against K", fontsize=10)
    legend_outside(ax, where="below", ncol=1)
    gap_ax.axhline(0.0, color="k", ls=":", lw=1.2, label="0: the bound equals log p(X)")
    gap_ax.set_yscale("symlog", linthresh=1e-3)
    top = float(np.max(log_px - means + se2))
    gap_ax.set_ylim(top=top * 1.6)  # room above the K = 1 point's error bar on the log part of the axis
    gap_ax.set_ylabel("log p(X) - L_K (nats; symmetric log, linear within 1e-3)")
    gap_ax.set_title("gap to log p(X): below 0 only by Monte Carlo error", fontsize=10)
    legend_outside(gap_ax, where="below", ncol=1)
    save_figure(fig, path)


def run(args):
    data = generate_data(seed=args.data_seed)
    q = NormalGammaParams(m=args.m, lam=args.lam, a=args.a, b=args.b)
    log_px = log_evidence(data)
    exact_elbo = closed_form_elbo(data, q).item()
    per_seed = {k: [] for k in args.ks}
    for seed in args.seeds:
        pyro.set_rng_seed(seed)
        for k in args.ks:
            mean, se = estimate_bound(data, q, k, args.draws)
            per_seed[k].append({"bound": mean, "standard_error": se})
    rows = []
    for k, seed_rows in per_seed.items():
        bound = spread([r["bound"] for r in seed_rows])
        # the mean over every seed's draws and its standard error
        pooled_se = math.sqrt(sum(r["standard_error"] ** 2 for r in seed_rows)) / len(seed_rows)
        rows.append(
            {
                "K": k,
                "bound": bound,
                "pooled_standard_error": pooled_se,
                "standard_error_per_seed": [r["standard_error"] for r in seed_rows],
                "gap_to_log_evidence": log_px - bound["mean"],
                "seeds_above_log_evidence": sum(r["bound"] > log_px for r in seed_rows),
            }
        )
    means = [r["bound"]["mean"] for r in rows]
    ses = [r["pooled_standard_error"] for r in rows]
    increasing = all(b >= a - 4 * math.hypot(sa, sb) for a, b, sa, sb in zip(means, means[1:], ses, ses[1:]))
    below = all(m <= log_px + 4 * se for m, se in zip(means, ses))
    return {
        "log_evidence": log_px,
        "closed_form_elbo": exact_elbo,
        "bounds": rows,
        "non_decreasing": increasing,
        "below_log_evidence": below,
    }


def figures(results, out):
    plot_bounds(
        results["bounds"],
        results["log_evidence"],
        results["closed_form_elbo"],
        results["args"]["draws"],
        len(results["run"]["seeds"]),
        os.path.join(out, "bounds.png"),
    )


def readme_block(results):
    rows = results["bounds"]
    seeds = results["run"]["seeds"]
    header = ["K"] + [str(r["K"]) for r in rows] + ["exact log p(X)"]
    body = [
        ["L_K (mean ± std over seeds)"] + [fmt(r["bound"]) for r in rows] + [f"{results['log_evidence']:.3f}"],
        ["log p(X) - L_K"] + ["{:.4f}".format(r["gap_to_log_evidence"]) for r in rows] + [""],
        ["standard error (all draws)"] + ["{:.4f}".format(r["pooled_standard_error"]) for r in rows] + [""],
    ]
    lines = [table(header, body)]
    for previous, r in zip(rows, rows[1:]):
        if not r["seeds_above_log_evidence"]:
            continue
        # log p(X) - L_K shrinks like 1/K: the previous K's gap, scaled
        k, k0 = r["K"], previous["K"]
        expected = previous["gap_to_log_evidence"] * k0 / k
        bounds = ", ".join(f"{v:.4f}" for v in r["bound"]["values"])
        errors = ", ".join(f"{v:.4f}" for v in r["standard_error_per_seed"])
        lines.append(
            f"L_{k} lies above log p(X) in {r['seeds_above_log_evidence']} of {len(seeds)} seeds (per seed {bounds}; "
            f"standard error of one seed's mean {errors}). L_K <= log p(X) holds for the expectation, not for an "
            f"estimate: the gap shrinks like 1/K, so at K = {k} it is about {expected:.4f} nats (L_{k0}'s gap "
            f"{previous['gap_to_log_evidence']:.4f} times {k0}/{k}), of the order of one seed's standard error, and "
            f"estimates of {results['args']['draws']} draws fall on either side of log p(X).\n"
        )
    lines.append(
        "Non-decreasing in K and below log p(X), each within 4 standard errors: {} and {}.\n".format(
            "yes" if results["non_decreasing"] else "no", "yes" if results["below_log_evidence"] else "no"
        )
    )
    lines.append(run_line(results))
    return "\n".join(lines)


SEEDS = "a seed sets the importance samples; the data are fixed by --data-seed"


def parser():
    parser = _cli.parser(__doc__, "results/iwelbo_bounds", seeds=(0, 1, 2), seeds_help=SEEDS, data_seed=True)
    flag = parser.add_argument
    flag("--ks", type=_cli.positive_int, nargs="+", default=[1, 2, 5, 10, 20, 50, 100, 500, 1000], help="K values")
    flag("--draws", type=_cli.integer(minimum=2), default=500, help="draws per K (a standard error needs two)")
    flag("--m", type=_cli.finite_real, default=0.8, help="q(mu) mean")
    flag("--lam", type=_cli.positive_real, default=20.0, help="q(mu) precision")
    flag("--a", type=_cli.positive_real, default=15.0, help="q(tau) shape")
    flag("--b", type=_cli.positive_real, default=40.0, help="q(tau) rate")
    return parser


STUDY = Study("iwelbo_bounds", parser, run, figures, readme_block)

if __name__ == "__main__":
    STUDY.main()
