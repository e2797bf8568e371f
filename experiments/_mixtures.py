"""What the mixture studies (``gmm_cavi``, ``earthquake``) share: SVI runs
tracked by the closed-form mean-field ELBO, and the CAVI-against-SVI figure."""

import json
import operator
import os

import arviz as az
import numpy as np
import pyro
from pyro.infer import TraceEnum_ELBO, TraceGraph_ELBO
from pyro.optim import ClippedAdam
from pyro.poutine.messenger import Messenger

from experiments import _cli
from experiments._figures import plt, save_figure
from models.gmm import check_weights
from pyro_vi import RaoBlackwellELBO, ReinforceLeaveOneOutELBO
from pyro_vi.inference_data import to_inference_data
from pyro_vi.training import fit


BASELINE = {"use_decaying_avg_baseline": True, "baseline_beta": 0.9}


class DiscreteSiteBaselines(Messenger):
    """Gives the guide sites that cannot ``rsample`` Pyro's decaying-average
    baseline: TraceGraph_ELBO then differentiates the continuous sites
    through their paths and the discrete ones by the score with a baseline."""

    def _pyro_sample(self, msg):
        if not msg["is_observed"] and not msg["fn"].has_rsample:
            msg["infer"] = dict(msg["infer"], baseline=dict(BASELINE))


def svi_estimators(particles):
    """The :data:`~experiments._cli.Registry` of the SVI runs: Pyro's exact
    enumeration of the assignments against the assignments sampled, by our
    Rao-Blackwellized score function (everywhere, or only for z with the
    pathwise option), REINFORCE leave-one-out with the pathwise option, and
    Pyro's TraceGraph_ELBO (pathwise for the components, decaying-average
    baseline for z). Each picks its guide from the study's
    ``{"global": ..., "mean_field": ...}``."""
    kw = dict(num_particles=particles, vectorize_particles=True, max_plate_nesting=1)
    mean_field = operator.itemgetter("mean_field")
    return {
        "TraceEnum_ELBO (z enumerated)": _cli.Estimator(
            lambda: TraceEnum_ELBO(max_plate_nesting=1), guide=operator.itemgetter("global")
        ),
        "RaoBlackwellELBO (z sampled)": _cli.Estimator(lambda: RaoBlackwellELBO(**kw), guide=mean_field),
        "RaoBlackwellELBO, pathwise (z sampled)": _cli.Estimator(
            lambda: RaoBlackwellELBO(pathwise=True, **kw), guide=mean_field
        ),
        "ReinforceLeaveOneOutELBO, pathwise (z sampled)": _cli.Estimator(
            lambda: ReinforceLeaveOneOutELBO(pathwise=True, **kw), guide=mean_field
        ),
        "TraceGraph_ELBO + baseline (z sampled)": _cli.Estimator(
            lambda: TraceGraph_ELBO(**kw), guide=lambda guides: DiscreteSiteBaselines()(guides["mean_field"])
        ),
    }


def run_svi(model, guides, data_args, closed_form_elbo, args, summary_sites):
    """Fits every estimator from the same start; returns the histories and
    the ArviZ summary of the components under each final q."""
    histories, summaries = {}, {}
    for name, estimator in svi_estimators(args.particles).items():
        guide = estimator.guide(guides)
        pyro.clear_param_store()
        pyro.set_rng_seed(args.seed)
        histories[name] = fit(
            model,
            guide,
            estimator.make(),
            ClippedAdam({"lr": args.lr, "lrd": args.lrd}),
            *data_args,
            num_steps=args.steps,
            track={"elbo": closed_form_elbo},
            progress=False,
        )
        idata = to_inference_data(
            model, guides["global"], *data_args, num_samples=1000, seed=args.seed,
            posterior_predictive=False, log_likelihood=False,
        )
        summaries[name] = az.summary(idata, var_names=summary_sites, kind="stats")
        print("\n{}: ArviZ summary of the components\n{}".format(name, summaries[name].to_string()))
    return histories, summaries


def run_cavi(cavi, *args, **kwargs):
    """Runs CAVI and reports its ELBO history (which must never decrease)."""
    fit_cavi = cavi(*args, **kwargs)
    history = fit_cavi.elbo_history
    drops = [b - a for a, b in zip(history, history[1:]) if b < a]
    print("CAVI: {} sweeps, ELBO {:.4f} -> {:.4f}, largest decrease {:.2e}".format(
        fit_cavi.num_iters, history[0], history[-1], -min(drops, default=0.0)))
    return fit_cavi


def write_results(args, fit_cavi, cavi_means, histories, summaries):
    """Prints the SVI gaps and writes ``results.json``."""
    results = {
        "args": vars(args),
        "cavi": dict(
            elbo=fit_cavi.elbo,
            elbo_history=fit_cavi.elbo_history,
            num_iters=fit_cavi.num_iters,
            **cavi_means,
        ),
        "svi": {
            name: {
                "final_elbo": float(h.tracked["elbo"][-1]),
                "gap_to_cavi": fit_cavi.elbo - float(h.tracked["elbo"][-1]),
                "seconds_per_step": h.seconds_per_step,
                "arviz_summary": summaries[name].to_dict(orient="index"),
            }
            for name, h in histories.items()
        },
    }
    for name, row in results["svi"].items():
        print("{:<32} final ELBO {:.3f}, gap to CAVI {:.3f}, {:.1f} ms/step".format(
            name, row["final_elbo"], row["gap_to_cavi"], 1e3 * row["seconds_per_step"]))
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(results, f, indent=2, default=float)
    return results


def plot_cavi_and_svi(cavi_history, histories, path, title):
    fig, (cavi_ax, svi_ax) = plt.subplots(1, 2, figsize=(12, 4.5))
    cavi_ax.plot(np.arange(len(cavi_history)), cavi_history, marker=".", color="k", label="CAVI")
    cavi_ax.set_xlabel("CAVI sweep")
    cavi_ax.set_ylabel("ELBO (closed form, nats)")
    cavi_ax.set_title("{}: CAVI (never decreases)".format(title))
    cavi_ax.legend()
    optimum = cavi_history[-1]
    lows = [optimum - 50]
    for name, result in histories.items():
        elbo = result.tracked["elbo"]
        svi_ax.plot(np.arange(1, len(elbo) + 1), elbo, label=name, lw=1.2)
        lows.append(np.percentile(elbo, 10))
    svi_ax.axhline(optimum, color="k", ls="--", lw=1, label="CAVI optimum")
    svi_ax.set_ylim(max(min(lows), optimum - 400), optimum + 0.05 * (optimum - min(lows)) + 1)
    svi_ax.set_xlabel("SVI step")
    svi_ax.set_ylabel("mean-field ELBO of q_t (closed form, nats)")
    svi_ax.set_title("SVI against the CAVI optimum")
    svi_ax.legend(fontsize=8, loc="lower right")
    save_figure(fig, path)


def add_arguments(parser):
    """The flags both mixture studies share."""
    # RaoBlackwellELBO's leave-one-out control variates need three particles.
    _cli.add_svi_arguments(parser, steps=1000, particles=10, lr=0.05, lrd=0.999, min_particles=3)
    parser.add_argument("--cavi-iters", type=_cli.positive_int, default=500, help="CAVI sweeps at most")
    parser.add_argument("--num-data", type=_cli.positive_int, default=300)
    parser.add_argument("--pi", type=_cli.positive_real, nargs="+", default=[0.3, 0.4, 0.3],
                        help="mixing weights (summing to one)")


def check_weights_argument(args):
    """``--pi`` must sum to one (:func:`models.gmm.check_weights`)."""
    try:
        check_weights(args.pi)
    except ValueError as e:
        raise ValueError("argument --pi: {}".format(e)) from None
