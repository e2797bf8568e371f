"""CAVI for the earthquake mixture (2-D locations, Poisson counts), against
SVI with the assignments enumerated (Pyro's TraceEnum_ELBO) or sampled
(RaoBlackwellELBO).

Writes ``elbo.png`` (CAVI's ELBO per sweep; SVI curves against the CAVI
optimum), ``clusters.png`` (the catalogue coloured by its most likely
cluster, with the fitted centres and rates) and ``results.json``; prints
ArviZ summaries of the cluster centres and rates.

    python -m experiments.earthquake --out results/earthquake
"""

import os

import torch

if not __package__:  # run as ``python experiments/earthquake.py``
    import _repo_root  # noqa: F401

from experiments import _cli  # noqa: E402
from experiments._figures import plt, save_figure  # noqa: E402
from experiments._mixtures import add_arguments, check_weights_argument  # noqa: E402
from experiments._mixtures import plot_cavi_and_svi, run_cavi, run_svi, write_results  # noqa: E402
from guides.earthquake import cavi, elbo, global_guide, mean_field_guide, params_from_store  # noqa: E402
from models.earthquake import DEFAULT_HYPER, generate_data, model  # noqa: E402

TRUE_CENTRES = [[-6.0, -4.0], [5.0, 5.0], [6.0, -6.0]]
TRUE_RATES = [2.0, 10.0, 30.0]


def plot_clusters(locations, counts, params, path):
    fig, ax = plt.subplots(figsize=(7, 6))
    assignment = params.r.argmax(-1).numpy()
    points = ax.scatter(
        locations[:, 0].numpy(), locations[:, 1].numpy(), c=assignment, cmap="viridis",
        s=8 + 2 * counts.numpy(), alpha=0.6, edgecolors="none",
    )
    rates = (params.a / params.b).numpy()
    for k, (centre, rate) in enumerate(zip(params.m.numpy(), rates)):
        ax.plot(*centre, marker="X", color="r", markersize=12, markeredgecolor="k")
        ax.annotate("E[lambda]={:.1f}".format(rate), centre, textcoords="offset points", xytext=(8, 8))
    for centre in TRUE_CENTRES:
        ax.plot(*centre, marker="+", color="k", markersize=14)
    ax.set_xlabel("location x1")
    ax.set_ylabel("location x2")
    ax.set_title("Earthquakes: CAVI clusters (X: E[mu_k], +: true centres; size ~ count)")
    fig.colorbar(points, ax=ax, label="most likely cluster")
    save_figure(fig, path)


def main(args):
    pi = torch.tensor(args.pi, dtype=torch.float64)
    locations, counts, _ = generate_data(args.num_data, pi, TRUE_CENTRES, TRUE_RATES, seed=args.seed)
    fit_cavi = run_cavi(cavi, locations, counts, pi, DEFAULT_HYPER, max_iters=args.cavi_iters)
    histories, summaries = run_svi(
        model,
        {"global": global_guide, "mean_field": mean_field_guide},
        (locations, counts, pi),
        lambda: elbo(locations, counts, pi, params_from_store(locations, counts, pi)).item(),
        args,
        ["mu", "lambda"],
    )
    plot_cavi_and_svi(fit_cavi.elbo_history, histories, os.path.join(args.out, "elbo.png"), "Earthquakes")
    plot_clusters(locations, counts, fit_cavi.params, os.path.join(args.out, "clusters.png"))
    means = {
        "E_mu": fit_cavi.params.m.tolist(),
        "E_lambda": (fit_cavi.params.a / fit_cavi.params.b).tolist(),
    }
    return write_results(args, fit_cavi, means, histories, summaries)


def parse_args(argv=None):
    parser = _cli.parser(__doc__, out="results/earthquake")
    add_arguments(parser)
    return _cli.parse(parser, argv, check=check_arguments)


def check_arguments(args):
    if len(args.pi) != len(TRUE_CENTRES):
        raise ValueError("argument --pi: needs {} weights, one per true cluster, got {}".format(
            len(TRUE_CENTRES), len(args.pi)))
    check_weights_argument(args)


if __name__ == "__main__":
    main(parse_args())
