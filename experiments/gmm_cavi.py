"""CAVI for the GMM with unknown precisions (question 1.D.4), against SVI
with the assignments enumerated (Pyro's TraceEnum_ELBO) or sampled
(RaoBlackwellELBO).

CAVI starts from the data quantiles (deterministic); the SVI runs repeat for
each seed of ``--seeds`` on the same data. Writes ``elbo.png`` (CAVI's ELBO
per sweep; SVI curves, mean and band over seeds, against the CAVI optimum),
``clusters.png`` (the data with the fitted mixture and its components) and
``results.json`` (gaps as mean ± std over seeds); prints ArviZ summaries of
the component parameters for the first seed.

    python -m experiments.gmm_cavi --out results/gmm_cavi
"""

import numpy as np
import torch

import guides.gmm
from experiments import _cli, _mixtures
from experiments._figures import legend_outside, plt, save_figure
from experiments._study import Study
from models.gmm import DEFAULT_PRIOR, generate_data, model


def plot_clusters(x, pi, means, mus, taus, path):
    """The data with CAVI's fitted mixture (thick grey) and its weighted
    components drawn over it, and the true means."""
    fig, ax = plt.subplots(figsize=(9, 4.5))
    x, pi, m, tau = (np.asarray(v) for v in (x, pi, means["E_mu"], means["E_tau"]))
    ax.hist(x, bins=60, density=True, color="0.85", label=f"data (N = {len(x)})")
    grid = np.linspace(x.min() - 1, x.max() + 1, 600)
    densities = [
        weight * np.sqrt(prec / (2 * np.pi)) * np.exp(-0.5 * prec * (grid - loc) ** 2)
        for weight, loc, prec in zip(pi, m, tau)
    ]
    ax.plot(
        grid, np.sum(densities, 0), color="0.35", lw=5, alpha=0.45, zorder=2, label="fitted mixture (CAVI), wide grey"
    )
    for k in np.argsort(m):
        nearest = int(np.argmin(np.abs(np.asarray(mus) - m[k])))
        label = f"component {k}: pi {pi[k]:.2f}, E[mu] {m[k]:.2f} (nearest true mean {mus[nearest]:.2f}), "
        label += f"E[tau] {tau[k]:.2f} (its true tau {taus[nearest]:.2f})"
        ax.plot(grid, densities[k], lw=1.4, ls="--", zorder=3, label=label)
    for i, mu in enumerate(mus):
        ax.axvline(mu, color="k", ls=":", lw=1, label="true means" if i == 0 else None)
    ax.set(xlabel="x", ylabel="density", title="GMM with unknown precisions: CAVI fit (weighted components dashed)")
    legend_outside(ax, where="below", ncol=1)
    save_figure(fig, path)


def run(args):
    pi = torch.tensor(args.pi, dtype=torch.float64)
    data, _ = generate_data(args.num_data, pi, args.mus, args.taus, seed=args.data_seed)
    fit_cavi = _mixtures.run_cavi(guides.gmm.cavi, (data, pi), DEFAULT_PRIOR, max_iters=args.cavi_iters)
    histories, rows, summaries = _mixtures.run_svi(model, guides.gmm, (data, pi), args, ["mu", "tau"])
    means = {"E_mu": fit_cavi.params.m.tolist(), "E_tau": (fit_cavi.params.a / fit_cavi.params.b).tolist()}
    return dict(_mixtures.svi_results(fit_cavi, means, histories, rows, summaries), data=data.tolist())


def figures(results, out):
    args = results["args"]
    _mixtures.plot_cavi_and_svi(results["cavi"], results["histories"], f"{out}/elbo.png", "GMM")
    plot_clusters(results["data"], args["pi"], results["cavi"], args["mus"], args["taus"], f"{out}/clusters.png")


def parser():
    parser = _mixtures.parser(__doc__, out="results/gmm_cavi")
    parser.add_argument(
        "--mus", type=_cli.finite_real, nargs="+", default=[-4.0, 0.0, 4.0], help="true component means, one per weight"
    )
    parser.add_argument(
        "--taus",
        type=_cli.positive_real,
        nargs="+",
        default=[1.0, 4.0, 0.5],
        help="true component precisions, one per weight",
    )
    return parser


def check_arguments(args):
    _mixtures.check_weights_argument(args)
    for flag, values in (("--mus", args.mus), ("--taus", args.taus)):
        if len(values) != len(args.pi):
            raise ValueError(f"argument {flag}: needs one value per weight of --pi ({len(args.pi)}), got {len(values)}")


# The README block "mixtures" shows this study and the earthquakes side by side.
STUDY = Study(
    "gmm_cavi",
    parser,
    run,
    figures,
    check=check_arguments,
    blocks={"mixtures": _mixtures.readme_block},
    reads=("earthquake",),
)

if __name__ == "__main__":
    STUDY.main()
