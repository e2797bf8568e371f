"""The importance-weighted bound L_K against K on the Normal-NormalGamma
model (questions 2.1.10 and 2.1.11): L_1 <= L_K <= L_{2K} <= log p(X).

For a fixed imperfect mean-field q, estimates L_K from independent draws of
ImportanceWeightedELBO's value, with standard errors, against the exact log
evidence and the closed-form ELBO (= L_1). Writes ``bounds.png`` and
``results.json``.

    python -m experiments.iwelbo_bounds --out results/iwelbo_bounds
"""

import functools
import json
import math
import os

import pyro
import torch

if not __package__:  # run as ``python experiments/iwelbo_bounds.py``
    import _repo_root  # noqa: F401

from experiments import _cli  # noqa: E402
from experiments._figures import plt, save_figure  # noqa: E402
from guides.normal_gamma import MeanFieldParams, elbo as closed_form_elbo, mean_field_guide  # noqa: E402
from models.normal_gamma import generate_data, log_evidence, model  # noqa: E402
from pyro_vi import ImportanceWeightedELBO  # noqa: E402


def estimate_bound(data, q, num_particles, num_draws):
    """Mean and standard error of L_K over ``num_draws`` independent draws."""
    elbo = ImportanceWeightedELBO(num_particles, vectorize_particles=True, max_plate_nesting=1)
    guide = functools.partial(mean_field_guide, init=q)
    pyro.clear_param_store()
    with torch.no_grad():
        values = torch.tensor(
            [-elbo.loss(model, guide, data) for _ in range(num_draws)], dtype=torch.float64
        )
    return values.mean().item(), values.std().item() / math.sqrt(num_draws)


def main(args):
    pyro.set_rng_seed(args.seed)
    data = generate_data(seed=args.seed)
    q = MeanFieldParams(m=args.m, lam=args.lam, a=args.a, b=args.b)
    log_px = log_evidence(data)
    exact_elbo = closed_form_elbo(data, q.m, q.lam, q.a, q.b).item()
    rows = []
    for k in args.ks:
        mean, se = estimate_bound(data, q, k, args.draws)
        rows.append({"K": k, "bound": mean, "standard_error": se})
    print("q = {}; log p(X) = {:.4f}, closed-form ELBO of q = {:.4f}".format(q, log_px, exact_elbo))
    print("{:>6} {:>12} {:>10} {:>14}".format("K", "L_K", "SE", "log p(X) - L_K"))
    for row in rows:
        print("{:>6} {:>12.4f} {:>10.4f} {:>14.4f}".format(
            row["K"], row["bound"], row["standard_error"], log_px - row["bound"]))
    increasing = all(b["bound"] >= a["bound"] - 4 * math.hypot(a["standard_error"], b["standard_error"])
                     for a, b in zip(rows, rows[1:]))
    below = all(r["bound"] <= log_px + 4 * r["standard_error"] for r in rows)
    print("non-decreasing in K: {}; below log p(X): {} (within 4 standard errors)".format(increasing, below))

    fig, ax = plt.subplots(figsize=(7, 4.5))
    ks = [r["K"] for r in rows]
    ax.errorbar(ks, [r["bound"] for r in rows], yerr=[2 * r["standard_error"] for r in rows],
                marker="o", capsize=3, label="L_K (mean of {} draws, 2 SE bars)".format(args.draws))
    ax.axhline(log_px, color="k", ls=":", label="exact log p(X)")
    ax.axhline(exact_elbo, color="k", ls="--", lw=1, label="closed-form ELBO of q (= L_1)")
    ax.set_xscale("log")
    ax.set_xlabel("K (importance samples)")
    ax.set_ylabel("bound (nats)")
    ax.set_title("Importance-weighted bound against K")
    ax.legend(fontsize=8, loc="lower right")
    save_figure(fig, os.path.join(args.out, "bounds.png"))
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump({"args": vars(args), "log_evidence": log_px, "closed_form_elbo": exact_elbo,
                   "bounds": rows, "non_decreasing": increasing, "below_log_evidence": below}, f, indent=2)
    return rows


def parse_args(argv=None):
    parser = _cli.parser(__doc__, out="results/iwelbo_bounds")
    parser.add_argument("--ks", type=_cli.positive_int, nargs="+", default=[1, 2, 5, 10, 20, 50, 100, 500, 1000],
                        help="numbers of importance samples K")
    parser.add_argument("--draws", type=_cli.integer(minimum=2), default=500,
                        help="draws per K (at least 2: a standard error needs two)")
    parser.add_argument("--m", type=_cli.finite_real, default=0.8, help="q(mu) mean")
    parser.add_argument("--lam", type=_cli.positive_real, default=20.0, help="q(mu) precision")
    parser.add_argument("--a", type=_cli.positive_real, default=15.0, help="q(tau) shape")
    parser.add_argument("--b", type=_cli.positive_real, default=40.0, help="q(tau) rate")
    return _cli.parse(parser, argv)


if __name__ == "__main__":
    main(parse_args())
