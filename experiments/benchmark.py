"""Time per SVI step of each estimator, as a ratio to Pyro's Trace_ELBO (and,
on the 1.C.2 model, of RaoBlackwellELBO to Pyro's TraceGraph_ELBO).

All estimators are timed side by side in one run, round-robin, so that the
ratios share the machine's noise; the median over rounds is reported.

    python -m experiments.benchmark --out results/benchmark
"""

import argparse
import json
import os
import time

import numpy as np
import pyro
import torch
from pyro.infer import SVI, RenyiELBO, Trace_ELBO, TraceGraph_ELBO
from pyro.optim import Adam

from guides import normal_gamma, rao_blackwell
from models.normal_gamma import COURSE_PRIOR, generate_data, model
from models import rao_blackwell as rao_blackwell_model
from pyro_vi import ControlVariateELBO, RaoBlackwellELBO, ScoreFunctionELBO, score_function_guide


def normal_gamma_estimators(num_particles):
    """``name -> (elbo, guide)`` for the Normal-NormalGamma benchmark."""
    kw = dict(num_particles=num_particles, vectorize_particles=True, max_plate_nesting=1)
    mean_field_guide = normal_gamma.mean_field_guide
    return {
        "Trace_ELBO": (Trace_ELBO(**kw), mean_field_guide),
        "ScoreFunctionELBO": (ScoreFunctionELBO(**kw), mean_field_guide),
        "ControlVariateELBO": (ControlVariateELBO(**kw), mean_field_guide),
        "TraceGraph_ELBO (score function)": (
            TraceGraph_ELBO(**kw),
            score_function_guide(mean_field_guide),
        ),
        "RenyiELBO(alpha=0)": (RenyiELBO(alpha=0.0, **kw), mean_field_guide),
    }


def rao_blackwell_estimators(num_particles):
    """``name -> (elbo, guide)`` for the 1.C.2 model: ours against Pyro's
    TraceGraph_ELBO, both in score-function mode."""
    kw = dict(num_particles=num_particles, vectorize_particles=True, max_plate_nesting=1)
    guide = rao_blackwell.mean_field_guide
    baseline = {"use_decaying_avg_baseline": True}
    return {
        "TraceGraph_ELBO (score function)": (TraceGraph_ELBO(**kw), score_function_guide(guide)),
        "TraceGraph_ELBO + baseline": (
            TraceGraph_ELBO(**kw),
            score_function_guide(guide, baseline=baseline),
        ),
        "RaoBlackwellELBO (no CV)": (RaoBlackwellELBO(control_variate=False, **kw), guide),
        "RaoBlackwellELBO (CV)": (RaoBlackwellELBO(**kw), guide),
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


def benchmark(estimators, model, args, num_steps, rounds, baseline="Trace_ELBO"):
    """Median seconds per step of each estimator and its ratio to ``baseline``."""
    times = {name: [] for name in estimators}
    for _ in range(rounds):
        for name, (elbo, guide) in estimators.items():
            times[name].append(time_steps(model, guide, elbo, args, num_steps))
    median = {name: float(np.median(t)) for name, t in times.items()}
    return {
        name: {"ms_per_step": 1e3 * median[name], "ratio": median[name] / median[baseline]}
        for name in estimators
    }


def format_table(results, title, baseline="Trace_ELBO"):
    lines = [title, "{:<36} {:>12} {:>14}".format("estimator", "ms/step", "x " + baseline)]
    for name, row in results.items():
        lines.append("{:<36} {:>12.3f} {:>14.2f}".format(name, row["ms_per_step"], row["ratio"]))
    return "\n".join(lines)


def main(args):
    pyro.set_rng_seed(args.seed)
    torch.set_num_threads(args.threads)
    data = generate_data(seed=args.seed)
    results = benchmark(
        normal_gamma_estimators(args.particles),
        model,
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
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "benchmark.json"), "w") as f:
            json.dump(
                {"normal_gamma": results, "rao_blackwell": rb_results, "args": vars(args)},
                f,
                indent=2,
            )
    return results


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--particles", type=int, default=10)
    parser.add_argument("--steps", type=int, default=200, help="steps per timing")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="folder for benchmark.json")
    return parser.parse_args(argv)


if __name__ == "__main__":
    main(parse_args())
