"""The importance-weighted bound L_K against K on the Normal-NormalGamma
model (questions 2.1.10 and 2.1.11): L_1 <= L_K <= L_{2K} <= log p(X).

For a fixed imperfect mean-field q, estimates L_K from independent draws of
ImportanceWeightedELBO's value, with standard errors, against the exact log
evidence and the closed-form ELBO (= L_1). Writes ``bounds.png`` and
``results.json``.

    python -m experiments.iwelbo_bounds --out results/iwelbo_bounds
"""

import argparse
import functools
import json
import math
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pyro  # noqa: E402
import torch  # noqa: E402

from experiments._figures import save_figure  # noqa: E402
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
    os.makedirs(args.out, exist_ok=True)
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
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ks", type=int, nargs="+", default=[1, 2, 5, 10, 20, 50, 100, 500, 1000])
    parser.add_argument("--draws", type=int, default=500)
    parser.add_argument("--m", type=float, default=0.8, help="q(mu) mean")
    parser.add_argument("--lam", type=float, default=20.0, help="q(mu) precision")
    parser.add_argument("--a", type=float, default=15.0, help="q(tau) shape")
    parser.add_argument("--b", type=float, default=40.0, help="q(tau) rate")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default="results/iwelbo_bounds")
    args = parser.parse_args(argv)
    if min(args.ks) < 1:
        parser.error("--ks: K must be at least 1")
    if args.draws < 2:
        parser.error("--draws must be at least 2 (a standard error needs two draws)")
    if args.device != "cpu" and not torch.cuda.is_available():
        parser.error("--device {}: CUDA is not available".format(args.device))
    return args


if __name__ == "__main__":
    main(parse_args())
