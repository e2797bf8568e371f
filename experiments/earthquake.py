"""CAVI for the earthquake mixture (2-D locations, Poisson counts), against
SVI with the assignments enumerated (Pyro's TraceEnum_ELBO) or sampled
(RaoBlackwellELBO).

CAVI starts from a deterministic point; the SVI runs repeat for each seed of
``--seeds`` on the same data. Writes ``elbo.png`` (CAVI's ELBO per sweep; SVI
curves, mean and band over seeds, against the CAVI optimum), ``clusters.png``
(the catalogue coloured by its most likely cluster, with the fitted centres
and rates) and ``results.json`` (gaps as mean ± std over seeds); prints ArviZ
summaries of the cluster centres and rates for the first seed.

    python -m experiments.earthquake --out results/earthquake
"""

import numpy as np
import torch

import guides.earthquake
from experiments import _mixtures
from experiments._figures import legend_outside, plt, save_figure
from experiments._study import Study
from models.earthquake import DEFAULT_HYPER, generate_data, model

TRUE_CENTRES = [[-6.0, -4.0], [5.0, 5.0], [6.0, -6.0]]
TRUE_RATES = [2.0, 10.0, 30.0]


def plot_clusters(data, means, path):
    """Each event coloured by its most likely cluster (a categorical legend,
    no colour scale), sized by its count; fitted and true centres marked."""
    fig, ax = plt.subplots(figsize=(8, 6))
    locations, counts, assignment = (np.asarray(data[k]) for k in ("locations", "counts", "assignment"))
    for k, (centre, rate) in enumerate(zip(means["E_mu"], means["E_lambda"])):
        chosen = assignment == k
        events = f"cluster {k}: {int(chosen.sum())} events"
        label = f"{events}, E[mu] ({centre[0]:.2f}, {centre[1]:.2f}), E[lambda] {rate:.1f}"
        ax.scatter(
            *locations[chosen].T, color=f"C{k}", s=8 + 2 * counts[chosen], alpha=0.5, edgecolors="none", label=label
        )
        ax.plot(*centre, marker="X", color=f"C{k}", markersize=13, markeredgecolor="k", ls="none")
    ax.plot([], [], marker="X", color="w", markeredgecolor="k", markersize=11, ls="none", label="E[mu_k] (CAVI)")
    rates = ", ".join(f"{r:g}" for r in TRUE_RATES)
    for i, centre in enumerate(TRUE_CENTRES):
        label = f"true centres (rates {rates})" if i == 0 else None
        ax.plot(*centre, marker="+", color="k", markersize=16, mew=2, ls="none", label=label)
    ax.set(xlabel="location x1", ylabel="location x2")
    ax.set_title("Earthquakes: events by most likely CAVI cluster (marker area ~ count)", fontsize=10)
    legend_outside(ax, where="below", ncol=1)
    save_figure(fig, path)


def run(args):
    pi = torch.tensor(args.pi, dtype=torch.float64)
    locations, counts, _ = generate_data(args.num_data, pi, TRUE_CENTRES, TRUE_RATES, seed=args.data_seed)
    data_args = (locations, counts, pi)
    fit_cavi = _mixtures.run_cavi(guides.earthquake.cavi, data_args, DEFAULT_HYPER, max_iters=args.cavi_iters)
    histories, rows, summaries = _mixtures.run_svi(model, guides.earthquake, data_args, args, ["mu", "lambda"])
    params = fit_cavi.params
    means = {"E_mu": params.m.tolist(), "E_lambda": (params.a / params.b).tolist()}
    data = {"locations": locations.tolist(), "counts": counts.tolist(), "assignment": params.r.argmax(-1).tolist()}
    return dict(_mixtures.svi_results(fit_cavi, means, histories, rows, summaries), data=data)


def figures(results, out):
    _mixtures.plot_cavi_and_svi(results["cavi"], results["histories"], f"{out}/elbo.png", "Earthquakes")
    plot_clusters(results["data"], results["cavi"], f"{out}/clusters.png")


def parser():
    return _mixtures.parser(__doc__, out="results/earthquake")


def check_arguments(args):
    if len(args.pi) != len(TRUE_CENTRES):
        raise ValueError(f"argument --pi: needs {len(TRUE_CENTRES)} weights, one per true cluster, got {len(args.pi)}")
    _mixtures.check_weights_argument(args)


# Its README block is "mixtures", rendered by gmm_cavi.
STUDY = Study("earthquake", parser, run, figures, check=check_arguments)

if __name__ == "__main__":
    STUDY.main()
