"""What the mixture studies (``gmm_cavi``, ``earthquake``) share: SVI runs
tracked by the closed-form mean-field ELBO, the CAVI-against-SVI figure, and
the README block of both (rendered by ``gmm_cavi``, which reads
``earthquake``'s results)."""

import operator

import arviz as az
import numpy as np
from matplotlib.ticker import MaxNLocator
from pyro.infer import TraceEnum_ELBO, TraceGraph_ELBO
from pyro.optim import ClippedAdam
from pyro.poutine.messenger import Messenger

from experiments import _cli
from experiments._figures import band_note, coinciding, legend_outside, plt, save_figure, seed_band
from experiments._markdown import run_line, spread_sentence, table
from experiments._results import fmt, indistinguishable, seeded_fit, spreads, thin
from models.gmm import check_weights
from pyro_vi import AutoELBO, RaoBlackwellELBO, ReinforceLeaveOneOutELBO
from pyro_vi.inference_data import to_inference_data

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
    pathwise option), REINFORCE leave-one-out with the pathwise option,
    AutoELBO (on these guides, without a Bernoulli site, the same estimator
    as REINFORCE leave-one-out with the pathwise option: the curves
    coincide), and Pyro's TraceGraph_ELBO (pathwise for the components, decaying-average
    baseline for z). Each picks its guide from the study's guides module
    (:mod:`guides.gmm` or :mod:`guides.earthquake`)."""
    kw = dict(num_particles=particles, **_cli.VECTORIZED)
    mean_field = operator.attrgetter("mean_field_guide")
    return {
        "TraceEnum_ELBO (z enumerated)": _cli.Estimator(
            lambda: TraceEnum_ELBO(max_plate_nesting=1), guide=operator.attrgetter("global_guide")
        ),
        "RaoBlackwellELBO (z sampled)": _cli.Estimator(lambda: RaoBlackwellELBO(**kw), guide=mean_field),
        "RaoBlackwellELBO, pathwise (z sampled)": _cli.Estimator(
            lambda: RaoBlackwellELBO(pathwise=True, **kw), guide=mean_field
        ),
        "ReinforceLeaveOneOutELBO, pathwise (z sampled)": _cli.Estimator(
            lambda: ReinforceLeaveOneOutELBO(pathwise=True, **kw), guide=mean_field
        ),
        "AutoELBO (z sampled)": _cli.Estimator(lambda: AutoELBO(**kw), guide=mean_field),
        "TraceGraph_ELBO + baseline (z sampled)": _cli.Estimator(
            lambda: TraceGraph_ELBO(**kw), guide=lambda guides: DiscreteSiteBaselines()(guides.mean_field_guide)
        ),
    }


def run_svi(model, guides, data_args, args, summary_sites):
    """Fits every estimator from the same start once per seed of ``args.seeds``,
    tracked by the closed-form mean-field ELBO of ``guides`` (the study's guides
    module); returns ``name -> [ELBO history per seed]``, ``name -> [row per
    seed]`` and the ArviZ summaries of the components under each final q of
    the first seed."""

    def closed_form_elbo():
        return guides.elbo(data_args, guides.params_from_store(data_args)).item()

    histories, rows, summaries = {}, {}, {}
    for index, seed in enumerate(args.seeds):
        for name, estimator in svi_estimators(args.particles).items():
            result = seeded_fit(
                seed,
                model,
                estimator.guide(guides),
                estimator.make(),
                ClippedAdam({"lr": args.lr, "lrd": args.lrd}),
                *data_args,
                num_steps=args.steps,
                track={"elbo": closed_form_elbo},
            )
            histories.setdefault(name, []).append(result.tracked["elbo"])
            rows.setdefault(name, []).append(
                {"final_elbo": float(result.tracked["elbo"][-1]), "seconds_per_step": result.seconds_per_step}
            )
            if index == 0:
                idata = to_inference_data(
                    model,
                    guides.global_guide,
                    *data_args,
                    num_samples=args.summary_draws,
                    seed=seed,
                    posterior_predictive=False,
                    log_likelihood=False,
                )
                summaries[name] = az.summary(idata, var_names=summary_sites, kind="stats")
                print(f"\n{name}: ArviZ summary of the components (seed {seed})\n{summaries[name].to_string()}")
    return histories, rows, summaries


def run_cavi(cavi, *args, **kwargs):
    """Runs CAVI and reports its ELBO history (which must never decrease)."""
    fit_cavi = cavi(*args, **kwargs)
    history = fit_cavi.elbo_history
    drops = [b - a for a, b in zip(history, history[1:]) if b < a]
    print(
        f"CAVI: {fit_cavi.num_iters} sweeps, ELBO {history[0]:.4f} -> {history[-1]:.4f}, largest decrease "
        f"{-min(drops, default=0.0):.2e}"
    )
    return fit_cavi


def svi_results(fit_cavi, cavi_means, histories, rows, summaries):
    """The results both studies share: CAVI's optimum and history, the SVI
    gaps (mean ± std over seeds) and curves; prints the gaps."""
    history = fit_cavi.elbo_history
    svi = {}
    for name, seed_rows in rows.items():
        for row in seed_rows:
            row["gap_to_cavi"] = fit_cavi.elbo - row["final_elbo"]
        svi[name] = dict(
            spreads(seed_rows, ["final_elbo", "gap_to_cavi", "seconds_per_step"]),
            arviz_summary_first_seed=summaries[name].to_dict(orient="index"),
        )
        print("{:<48} gap to CAVI {}".format(name, fmt(svi[name]["gap_to_cavi"])))
    return {
        "cavi": dict(
            elbo=fit_cavi.elbo,
            elbo_history=history,
            # at full precision (the history itself is stored to 10 digits)
            below_final=[history[-1] - value for value in history],
            num_iters=fit_cavi.num_iters,
            largest_decrease=max([a - b for a, b in zip(history, history[1:])] + [0.0]),
            **cavi_means,
        ),
        "svi": svi,
        "within_seed_spread": {
            "gap_to_cavi": indistinguishable({name: row["gap_to_cavi"] for name, row in svi.items()})
        },
        "per_seed": rows,
        "histories": thin(histories),
    }


def readme_block(gmm, earthquake):
    """The block ``mixtures``: both studies' gaps to CAVI, one row each."""
    studies = {"GMM with unknown precisions (1.D.4)": gmm, "Earthquakes (2-D locations, Poisson counts)": earthquake}
    rows = [
        [label, "{:.3f}".format(results["cavi"]["elbo"]), str(results["cavi"]["num_iters"])]
        + [fmt(row["gap_to_cavi"]) for row in results["svi"].values()]
        for label, results in studies.items()
    ]
    header = ["model (N = {}, K = {})".format(gmm["args"]["num_data"], len(gmm["args"]["pi"])), "CAVI optimum"]
    lines = [table(header + ["CAVI sweeps"] + [f"{n} gap" for n in gmm["svi"]], rows)]
    for label, results in (("GMM", gmm), ("Earthquakes", earthquake)):
        lines.append(f"{label}: " + spread_sentence(results["within_seed_spread"]["gap_to_cavi"], "the gap to CAVI"))
    return "\n".join(lines + [run_line(gmm), run_line(earthquake)])


def plot_cavi_and_svi(cavi, histories, path, title):
    """Left: CAVI's distance to its final ELBO per sweep (log scale: each
    sweep's gain stays visible when the first is thousands of nats); right:
    the SVI runs (thinned curves: mean and band over seeds) against the CAVI
    optimum; ``cavi`` is the results' ``"cavi"`` entry."""
    num_seeds = len(next(iter(histories.values()))["values"])
    history = np.asarray(cavi["elbo_history"], float)
    fig, (cavi_ax, svi_ax) = plt.subplots(1, 2, figsize=(13, 5))
    label = f"CAVI (deterministic start), ELBO {history[0]:.1f} -> {history[-1]:.3f}"
    cavi_ax.plot(np.arange(len(history)), np.maximum(cavi["below_final"], 1e-12), marker="o", color="k", label=label)
    cavi_ax.set_yscale("log")
    cavi_ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    cavi_ax.set(xlabel="CAVI sweep", ylabel="final ELBO - ELBO after the sweep (nats, floored at 1e-12)")
    cavi_ax.set_title(
        f"{title}: CAVI, {len(history) - 1} sweeps; the ELBO never decreases beyond float\nrounding (largest "
        f"decrease between sweeps: {cavi['largest_decrease']:.1e} nats)",
        fontsize=10,
    )
    legend_outside(cavi_ax, where="below")
    optimum = history[-1]
    # the y-axis fits the mean curves from a tenth of the steps on, where they differ
    lows, last_step = [optimum - 2], max(max(curve["step"]) for curve in histories.values())
    styles = ["-", "--", "-.", ":", (0, (5, 1, 1, 1)), (0, (1, 1))]
    for i, (name, curve) in enumerate(histories.items()):
        runs = np.asarray(curve["values"])
        # each run narrower than the one before: where two nearly coincide,
        # the later is drawn inside the earlier and both show
        width = max(3.2 - 0.5 * i, 1.0)
        style = dict(lw=width, color=f"C{i}", ls=styles[i % len(styles)], alpha=0.85)
        seed_band(svi_ax, curve["step"], runs, label=name, **style)
        late = np.asarray(curve["step"]) >= last_step / 10
        lows.append(runs.mean(0)[late].min())
    svi_ax.axhline(optimum, color="k", ls="--", lw=1, label=f"CAVI optimum {optimum:.3f}")
    low = min(lows)
    svi_ax.set_ylim(low - 0.05 * (optimum - low), optimum + 0.15 * (optimum - low))
    svi_ax.set(xlabel="SVI step", ylabel="mean-field ELBO of q_t (closed form, nats)")
    # runs equal to the last digit (exact: near-equal runs are drawn apart by their widths)
    same = coinciding({name: curve["values"] for name, curve in histories.items()}, rtol=0, atol=0)
    svi_ax.set_title(
        f"SVI against the CAVI optimum ({band_note(num_seeds)});\ny-axis fitted to the means from step "
        f"{last_step // 10} on;\nwhere runs overlap, the earlier in the legend is drawn wider"
        + "".join(f"\nidentical runs: {later} = {earlier}" for later, earlier in same.items()),
        fontsize=9,
    )
    legend_outside(svi_ax, where="below")
    save_figure(fig, path)


SEEDS = "a seed sets the SVI runs' particles; the data (--data-seed) and CAVI's start are fixed"


def parser(doc, out):
    """The parser with the flags both mixture studies share."""
    parser = _cli.parser(doc, out, seeds=(0, 1, 2), seeds_help=SEEDS, data_seed=True)
    # RaoBlackwellELBO's leave-one-out control variates need three particles,
    # AutoELBO an even number.
    _cli.add_svi_arguments(parser, steps=1000, particles=10, lr=0.05, lrd=0.999, min_particles=4)
    parser.add_argument("--cavi-iters", type=_cli.positive_int, default=500, help="CAVI sweeps at most")
    parser.add_argument(
        "--summary-draws",
        type=_cli.integer(minimum=4),
        default=1000,
        help="draws of each final q for its ArviZ summary (first seed)",
    )
    parser.add_argument("--num-data", type=_cli.positive_int, default=300)
    parser.add_argument(
        "--pi", type=_cli.positive_real, nargs="+", default=[0.3, 0.4, 0.3], help="mixing weights (summing to one)"
    )
    return parser


def check_weights_argument(args):
    """``--pi`` must sum to one (:func:`models.gmm.check_weights`); AutoELBO
    draws ``--particles`` in pairs."""
    _cli.even(args, "particles", "AutoELBO draws pairs")
    try:
        check_weights(args.pi)
    except ValueError as e:
        raise ValueError(f"argument --pi: {e}") from None
