"""Time per SVI step of each estimator, as a ratio to Pyro's Trace_ELBO (and,
on the 1.C.2 model, of RaoBlackwellELBO to Pyro's TraceGraph_ELBO).

All estimators are timed side by side in one run, round-robin, so that the
ratios share the machine's noise; the median over rounds is reported.

    python -m experiments.benchmark --out results/benchmark
"""

import functools
import json
import os
import time

import numpy as np
import pyro
from pyro.infer import SVI, RenyiELBO, Trace_ELBO, TraceGraph_ELBO
from pyro.optim import Adam

if not __package__:  # run as ``python experiments/benchmark.py``
    import _repo_root  # noqa: F401

from experiments import _cli  # noqa: E402
from guides import normal_gamma, rao_blackwell  # noqa: E402
from models.normal_gamma import COURSE_PRIOR, generate_data, model  # noqa: E402
from models import rao_blackwell as rao_blackwell_model  # noqa: E402
from pyro_vi import ControlVariateELBO, RaoBlackwellELBO, ScoreFunctionELBO, score_function_guide  # noqa: E402


def normal_gamma_estimators(num_particles):
    """The :data:`~experiments._cli.Registry` of the Normal-NormalGamma
    benchmark; the guides wrap :func:`guides.normal_gamma.mean_field_guide`."""
    kw = dict(num_particles=num_particles, vectorize_particles=True, max_plate_nesting=1)
    return {
        "Trace_ELBO": _cli.Estimator(lambda: Trace_ELBO(**kw)),
        "ScoreFunctionELBO": _cli.Estimator(lambda: ScoreFunctionELBO(**kw)),
        "ControlVariateELBO": _cli.Estimator(lambda: ControlVariateELBO(**kw)),
        "TraceGraph_ELBO (score function)": _cli.Estimator(lambda: TraceGraph_ELBO(**kw), guide=score_function_guide),
        "RenyiELBO(alpha=0)": _cli.Estimator(lambda: RenyiELBO(alpha=0.0, **kw)),
    }


def rao_blackwell_estimators(num_particles):
    """The :data:`~experiments._cli.Registry` of the 1.C.2 benchmark: ours
    against Pyro's TraceGraph_ELBO, both in score-function mode; the guides
    wrap :func:`guides.rao_blackwell.mean_field_guide`."""
    kw = dict(num_particles=num_particles, vectorize_particles=True, max_plate_nesting=1)
    baseline = {"use_decaying_avg_baseline": True}
    return {
        "TraceGraph_ELBO (score function)": _cli.Estimator(lambda: TraceGraph_ELBO(**kw), guide=score_function_guide),
        "TraceGraph_ELBO + baseline": _cli.Estimator(
            lambda: TraceGraph_ELBO(**kw), guide=functools.partial(score_function_guide, baseline=baseline)
        ),
        "RaoBlackwellELBO (no CV)": _cli.Estimator(lambda: RaoBlackwellELBO(control_variate=False, **kw)),
        "RaoBlackwellELBO (CV)": _cli.Estimator(lambda: RaoBlackwellELBO(**kw)),
    }


def time_steps(model, guide, elbo, args, num_steps):
    """Seconds per ``SVI.step``, after one warm-up step."""
    pyro.clear_param_store()
    svi = SVI(model, guide, Adam({"lr": 1e-3}), elbo)
    svi.step(*args)
    start = time.perf_counter()
    for _ in range(num_steps):
        svi.step(*args)
    return (time.perf_counter() - start) / num_steps


def benchmark(estimators, model, guide, args, num_steps, rounds, baseline="Trace_ELBO"):
    """Median seconds per step of each estimator (running its wrap of
    ``guide``) and its ratio to ``baseline``."""
    runs = {name: (estimator.make(), estimator.guide(guide)) for name, estimator in estimators.items()}
    times = {name: [] for name in runs}
    for _ in range(rounds):
        for name, (elbo, wrapped) in runs.items():
            times[name].append(time_steps(model, wrapped, elbo, args, num_steps))
    median = {name: float(np.median(t)) for name, t in times.items()}
    return {
        name: {"ms_per_step": 1e3 * median[name], "ratio": median[name] / median[baseline]}
        for name in runs
    }


def format_table(results, title, baseline="Trace_ELBO"):
    lines = [title, "{:<36} {:>12} {:>14}".format("estimator", "ms/step", "x " + baseline)]
    for name, row in results.items():
        lines.append("{:<36} {:>12.3f} {:>14.2f}".format(name, row["ms_per_step"], row["ratio"]))
    return "\n".join(lines)


def main(args):
    pyro.set_rng_seed(args.seed)
    data = generate_data(seed=args.seed)
    results = benchmark(
        normal_gamma_estimators(args.particles),
        model,
        normal_gamma.mean_field_guide,
        (data, COURSE_PRIOR),
        args.steps,
        args.rounds,
    )
    print(
        format_table(
            results,
            "Normal-NormalGamma, {} vectorized particles, median of {} rounds of {} steps".format(
                args.particles, args.rounds, args.steps
            ),
        )
    )
    rb_baseline = "TraceGraph_ELBO (score function)"
    rb_results = benchmark(
        rao_blackwell_estimators(args.particles),
        rao_blackwell_model.model,
        rao_blackwell.mean_field_guide,
        (rao_blackwell_model.generate_data(seed=args.seed),),
        args.steps,
        args.rounds,
        baseline=rb_baseline,
    )
    print()
    print(
        format_table(
            rb_results,
            "1.C.2 model (N = 20), {} vectorized particles".format(args.particles),
            baseline=rb_baseline,
        )
    )
    if args.out:
        with open(os.path.join(args.out, "benchmark.json"), "w") as f:
            json.dump(
                {"normal_gamma": results, "rao_blackwell": rb_results, "args": vars(args)},
                f,
                indent=2,
            )
    return results


def parse_args(argv=None):
    parser = _cli.parser(__doc__, out=None)
    # ControlVariateELBO's pooled coefficient needs 2 particles, RaoBlackwellELBO's leave-one-out 3.
    parser.add_argument("--particles", type=_cli.integer(minimum=3), default=10)
    parser.add_argument("--steps", type=_cli.positive_int, default=200, help="steps per timing")
    parser.add_argument("--rounds", type=_cli.positive_int, default=5)
    return _cli.parse(parser, argv)


if __name__ == "__main__":
    main(parse_args())
