"""CAVI for the GMM with unknown precisions (question 1.D.4), against SVI
with the assignments enumerated (Pyro's TraceEnum_ELBO) or sampled
(RaoBlackwellELBO).

Writes ``elbo.png`` (CAVI's ELBO per sweep; SVI curves against the CAVI
optimum), ``clusters.png`` (the data with the fitted mixture) and
``results.json``; prints ArviZ summaries of the component parameters.

    python -m experiments.gmm_cavi --out results/gmm_cavi
"""

import os

import numpy as np
import torch

if not __package__:  # run as ``python experiments/gmm_cavi.py``
    import _repo_root  # noqa: F401

from experiments import _cli  # noqa: E402
from experiments._figures import plt, save_figure  # noqa: E402
from experiments._mixtures import add_arguments, check_weights_argument  # noqa: E402
from experiments._mixtures import plot_cavi_and_svi, run_cavi, run_svi, write_results  # noqa: E402
from guides.gmm import cavi, elbo, global_guide, mean_field_guide, params_from_store  # noqa: E402
from models.gmm import DEFAULT_PRIOR, generate_data, model  # noqa: E402


def plot_clusters(data, z, pi, params, mus, path):
    fig, ax = plt.subplots(figsize=(8, 4.5))
    x = data.numpy()
    ax.hist(x, bins=60, density=True, color="0.8", label="data")
    grid = np.linspace(x.min() - 1, x.max() + 1, 600)
    tau = (params.a / params.b).numpy()
    total = np.zeros_like(grid)
    for k, (weight, loc, prec) in enumerate(zip(pi.numpy(), params.m.numpy(), tau)):
        density = weight * np.sqrt(prec / (2 * np.pi)) * np.exp(-0.5 * prec * (grid - loc) ** 2)
        total += density
        ax.plot(grid, density, lw=1, label="component {} (E[mu]={:.2f}, E[tau]={:.2f})".format(k, loc, prec))
    ax.plot(grid, total, color="k", lw=1.5, label="fitted mixture (CAVI)")
    for mu in mus:
        ax.axvline(mu, color="k", ls=":", lw=1)
    ax.set_xlabel("x (dotted: true means)")
    ax.set_ylabel("density")
    ax.set_title("GMM with unknown precisions: CAVI fit")
    ax.legend(fontsize=8)
    save_figure(fig, path)


def main(args):
    pi = torch.tensor(args.pi, dtype=torch.float64)
    data, z = generate_data(args.num_data, pi, args.mus, args.taus, seed=args.seed)
    fit_cavi = run_cavi(cavi, data, pi, DEFAULT_PRIOR, max_iters=args.cavi_iters)
    guides = {"global": global_guide, "mean_field": mean_field_guide}
    histories, summaries = run_svi(
        model,
        guides,
        (data, pi),
        lambda: elbo(data, pi, params_from_store(data, pi)).item(),
        args,
        ["mu", "tau"],
    )
    plot_cavi_and_svi(fit_cavi.elbo_history, histories, os.path.join(args.out, "elbo.png"), "GMM")
    plot_clusters(data, z, pi, fit_cavi.params, args.mus, os.path.join(args.out, "clusters.png"))
    means = {
        "E_mu": fit_cavi.params.m.tolist(),
        "E_tau": (fit_cavi.params.a / fit_cavi.params.b).tolist(),
    }
    return write_results(args, fit_cavi, means, histories, summaries)


def parse_args(argv=None):
    parser = _cli.parser(__doc__, out="results/gmm_cavi")
    add_arguments(parser)
    parser.add_argument("--mus", type=_cli.finite_real, nargs="+", default=[-4.0, 0.0, 4.0],
                        help="true component means, one per weight")
    parser.add_argument("--taus", type=_cli.positive_real, nargs="+", default=[1.0, 4.0, 0.5],
                        help="true component precisions, one per weight")
    return _cli.parse(parser, argv, check=check_arguments)


def check_arguments(args):
    check_weights_argument(args)
    for flag, values in (("--mus", args.mus), ("--taus", args.taus)):
        if len(values) != len(args.pi):
            raise ValueError("argument {}: needs one value per weight of --pi ({}), got {}".format(
                flag, len(args.pi), len(values)))


if __name__ == "__main__":
    main(parse_args())
