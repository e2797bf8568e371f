"""Data-parallel SVI: pyro_vi.fit in one process and in R gloo processes on a
Normal mean, the gradient's variance and where it comes from, and the fitted
posterior against the exact one.

Model (:mod:`models.normal_mean`): x_n ~ Normal(loc, 2) for n = 1..N,
loc ~ Normal(0, 10); the exact posterior of loc is Normal, in closed form.
The R processes (started here, spawned, one torch thread each, gloo on
localhost; each seeded by its rank) hold shards of N / R points, scaled to
the full data with ``pyro.plate("data", N, subsample=indices)``.

Part 1, the gradient at the exact posterior (the optimum) and off it (mean
+3 posterior sds, sd x2), with respect to the (loc, log scale) of a
Normal(m, s) guide, S particles per process, ``--draws`` draws of each
estimator: one process on all the data; R processes with independent
particles (ControlVariateELBO's default) and with shared particles
(``pool_processes=True``); Trace_ELBO for reference. Then the decomposition,
on the control-variate estimator itself (``controlled_gradient``, linear in
the learning signal at fixed particles): of the independent particles'
gradient, the part of the global signal L and the part of each shard's
deviation D^r = L^r - L; the coefficient statistics pooled over the
processes (what ``pool_processes=True`` did before); 2S independent
particles per process; shared particles.

Part 2, fits: a hand-written guide (Normal(m, s) from m = 0, s = 1) and an
AutoDiagonalNormal, with Trace_ELBO and ControlVariateELBO, in one process
and in R (ControlVariateELBO with and without shared particles): time per
step, and the final error of the posterior mean and sd in posterior sds.
Writes ``results.json`` and ``variance.png``.

    python -m experiments.distributed_svi --out results/distributed_svi
"""

import os
import resource
import tempfile
import time
import warnings

import numpy as np
import pyro
import pyro.distributions as dist
import torch
import torch.distributed
import torch.multiprocessing as mp
from pyro.distributions import constraints
from pyro.infer import Trace_ELBO
from pyro.infer.autoguide import AutoDiagonalNormal
from pyro.optim import ClippedAdam

from experiments import _cli
from experiments._figures import plt, save_figure
from experiments._markdown import run_line, seconds, table, times
from experiments._results import fmt, spread
from experiments._study import Study
from guides.normal_mean import exact_gradient
from guides.normal_mean import guide as hand_guide
from models.normal_mean import PRIOR, SIGMA, exact_posterior, generate_data, make_model
from pyro_vi import ControlVariateELBO, fit
from pyro_vi.math.control_variates import controlled_gradient
from pyro_vi.training.distributed import average_gradients, process, shared_random_stream, sum_over_processes

LAUNCH_TIMEOUT = 4 * 3600  # seconds, for one launch of the processes


# ---- the data of each process -----------------------------------------------------


def shard(data, rank, size):
    """This process's data and their indices in all of it (every size-th point)."""
    indices = torch.arange(rank, len(data), size)
    return data[indices], indices


# ---- launching the processes --------------------------------------------------------


def _worker(rank, size, init, out, task, args):
    torch.set_num_threads(args.threads)
    torch.distributed.init_process_group("gloo", init_method="file://" + init, rank=rank, world_size=size)
    try:
        result = task(args)
        if rank == 0:
            torch.save(result, os.path.join(out, "result.pt"))
    finally:
        torch.distributed.destroy_process_group()


def launch(task, size, args):
    """``task(args)`` in this process (``size == 1``) or in ``size``
    spawned gloo processes; rank 0's result."""
    if size == 1:
        return task(args)
    with tempfile.TemporaryDirectory() as out:
        worker_args = (size, os.path.join(out, "init"), out, task, args)
        context = mp.start_processes(_worker, worker_args, nprocs=size, join=False, start_method="spawn")
        deadline = time.monotonic() + LAUNCH_TIMEOUT
        while not context.join(timeout=1):
            if time.monotonic() > deadline:
                for worker in context.processes:
                    worker.kill()
                raise RuntimeError(f"the {size} processes of {task.__name__} did not finish in {LAUNCH_TIMEOUT} s")
        return torch.load(os.path.join(out, "result.pt"), weights_only=False)


# ---- part 1: the gradient's variance ------------------------------------------------


def _scores(z, m, s):
    """Per particle, the gradient of log Normal(z; m, s) in (m, log s)."""
    return torch.stack([(z - m) / s**2, ((z - m) / s) ** 2 - 1], -1)


def _signal(z, x, scale, m, s):
    """scale * log p(x | z) + log p(z) - log q(z), per particle (float64)."""
    log_lik = dist.Normal(z[:, None], SIGMA).log_prob(x[None]).sum(-1)
    return scale * log_lik + dist.Normal(0.0, PRIOR).log_prob(z) - dist.Normal(m, s).log_prob(z)


def _pooled_statistics_gradient(h, f, size):
    """The control-variate gradient of this process's particles with
    leave-one-out coefficients estimated from every process's particles
    but the one they multiply (pyro_vi's ``pool_processes=True`` before
    this study)."""
    everyone_h, everyone_f = [torch.empty_like(h) for _ in range(size)], [torch.empty_like(f) for _ in range(size)]
    torch.distributed.all_gather(everyone_h, h)
    torch.distributed.all_gather(everyone_f, f)
    all_h, all_f = torch.cat(everyone_h), torch.cat(everyone_f)
    sum_h, sum_f, sum_hh, sum_fh = all_h.sum(0), all_f.sum(0), all_h.square().sum(0), (all_f * all_h).sum(0)
    others = len(all_h) - 1
    mean_h, mean_f = (sum_h - h) / others, (sum_f - f) / others
    cov = (sum_fh - f * h) / others - mean_f * mean_h
    var = (sum_hh - h.square()) / others - mean_h.square()
    return (f - cov / var * h).mean(0)


def _gradient(z, x, scale, m, s):
    """The control-variate gradient (leave-one-out coefficients) of the
    particles ``z`` on the shard ``x``."""
    return controlled_gradient(_scores(z, m, s), "leave_one_out", signal=_signal(z, x, scale, m, s))


def _mean_over_processes(tensor):
    """``tensor`` averaged over the processes (summed in place first)."""
    return sum_over_processes(tensor) / process()[1]


def variance_task(args):
    """Per point, per estimator: the gradients of ``args.draws`` draws
    (rank 0's, averaged over the processes)."""
    rank, size = process()
    pyro.set_rng_seed(1000 * args.seed + rank)
    data = generate_data(args.num_data, args.seed)
    x, indices = shard(data, rank, size)
    model = make_model(args.num_data)
    exact_loc, exact_sd = exact_posterior(data)
    points = {"optimum": (exact_loc, exact_sd), "off": (exact_loc + 3 * exact_sd, 2 * exact_sd)}
    S = args.particles
    elbos = {"Trace_ELBO": Trace_ELBO(num_particles=S, **_cli.VECTORIZED)}
    if size == 1:
        elbos["ControlVariateELBO"] = ControlVariateELBO(S, **_cli.VECTORIZED)
    else:
        elbos["ControlVariateELBO, independent particles"] = ControlVariateELBO(S, **_cli.VECTORIZED)
        elbos["ControlVariateELBO, shared particles"] = ControlVariateELBO(S, pool_processes=True, **_cli.VECTORIZED)
    x64, data64 = x.double(), data.double()
    scale = len(data) / len(x)
    results = {}
    for point, (m, s) in points.items():
        pyro.clear_param_store()
        pyro.param("m", torch.tensor(m))
        pyro.param("s", torch.tensor(s), constraint=constraints.positive)
        params = [pyro.param("m").unconstrained(), pyro.param("s").unconstrained()]
        draws = {}
        for name, elbo in elbos.items():
            grads, start = [], time.perf_counter()
            for _ in range(args.draws):
                for p in params:
                    p.grad = None
                elbo.loss_and_grads(model, hand_guide, x, indices)
                average_gradients(params)
                grads.append([-p.grad.item() for p in params])
            per_draw = (time.perf_counter() - start) / args.draws
            draws[name] = dict(_summary(grads), seconds_per_draw=per_draw)
        # the decomposition, on the same estimator in float64
        parts = {k: [] for k in ("one", "independent", "global", "shard", "pooled", "mismatch", "double", "shared")}
        for _ in range(args.draws):
            z = m + s * torch.randn(S, dtype=torch.float64)
            h, local, whole = _scores(z, m, s), _signal(z, x64, scale, m, s), _signal(z, data64, 1.0, m, s)
            independent = controlled_gradient(h, "leave_one_out", signal=local)
            one = controlled_gradient(h, "leave_one_out", signal=whole)
            parts["one"].append(one)
            parts["independent"].append(_mean_over_processes(independent.clone()))
            parts["global"].append(_mean_over_processes(one.clone()))
            parts["shard"].append(_mean_over_processes(controlled_gradient(h, "leave_one_out", signal=local - whole)))
            if size > 1:
                pooled = _pooled_statistics_gradient(h, h * local[:, None], size)
                parts["pooled"].append(_mean_over_processes(pooled.clone()))
                parts["mismatch"].append(_mean_over_processes(pooled - independent))
            z2 = m + s * torch.randn(2 * S, dtype=torch.float64)
            parts["double"].append(_mean_over_processes(_gradient(z2, x64, scale, m, s)))
            with shared_random_stream():
                zs = m + s * torch.randn(S, dtype=torch.float64)
            parts["shared"].append(_mean_over_processes(_gradient(zs, x64, scale, m, s)))
        results[point] = {
            "m": m,
            "s": s,
            "exact_gradient": exact_gradient(data.double().sum().item(), len(data), m, s),
            "estimators": draws,
            "decomposition": {k: _summary(torch.stack(v).tolist()) for k, v in parts.items() if v},
            # the shards' objectives' gradients: each process's target
            "shard_gradients": _shard_gradients(data, size, m, s),
        }
    return results


def _summary(grads):
    grads = np.asarray(grads, dtype=np.float64)
    mean, var = grads.mean(0), grads.var(0, ddof=1)
    return {
        "mean": mean.tolist(),
        "standard_error": np.sqrt(var / len(grads)).tolist(),
        "variance": var.tolist(),
        "total_variance": float(var.sum()),
    }


def _shard_gradients(data, size, m, s):
    """The exact gradient in (m, log s) of each shard's objective (its
    likelihood scaled to the full data)."""
    shards = [shard(data, rank, size)[0] for rank in range(size)]
    return [exact_gradient(x.double().sum().item() * len(data) / len(x), len(data), m, s) for x in shards]


# ---- part 2: fits ------------------------------------------------------------------------


def fit_configs(size):
    """label -> (guide kind, ELBO factory: particles -> ELBO)."""
    elbos = {
        "Trace_ELBO": lambda particles: Trace_ELBO(num_particles=particles, **_cli.VECTORIZED),
        "ControlVariateELBO": lambda particles: ControlVariateELBO(particles, **_cli.VECTORIZED),
    }
    if size > 1:
        elbos["ControlVariateELBO(pool_processes=True)"] = lambda particles: ControlVariateELBO(
            particles, pool_processes=True, **_cli.VECTORIZED
        )
    guides = ("hand-written", "AutoDiagonalNormal")
    return {f"{guide}, {name}": (guide, make) for guide in guides for name, make in elbos.items()}


def fit_task(args):
    """Per seed, per configuration: rank 0's final (loc, sd), the largest
    difference between the processes' params, and the time per step."""
    rank, size = process()
    model = make_model(args.num_data)
    # a warm-up fit, not timed: the first optimizer imports torch._dynamo (seconds)
    data = generate_data(args.num_data, 0)
    pyro.clear_param_store()
    fit(model, hand_guide, Trace_ELBO(), ClippedAdam({"lr": 0.01}), *shard(data, rank, size), num_steps=2)
    rows = []
    for seed in args.seeds:
        data = generate_data(args.num_data, seed)
        x, indices = shard(data, rank, size)
        exact_loc, exact_sd = exact_posterior(data)
        for label, (guide_kind, make_elbo) in fit_configs(size).items():
            pyro.clear_param_store()
            pyro.set_rng_seed(1000 * seed + rank)  # each process its own seed, as the docs say
            elbo = make_elbo(args.particles)
            guide = hand_guide if guide_kind == "hand-written" else AutoDiagonalNormal(model)
            optim = ClippedAdam({"lr": args.lr, "lrd": (args.final_lr / args.lr) ** (1 / args.steps)})
            with warnings.catch_warnings():  # the one with independent particles is here on purpose
                warnings.filterwarnings("ignore", message="the processes hold different values")
                result = fit(model, guide, elbo, optim, x, indices, num_steps=args.steps)
            params = (pyro.param("m"), pyro.param("s")) if guide is hand_guide else (guide.loc, guide.scale)
            loc, sd = (p.item() for p in params)
            final = torch.tensor([loc, sd], dtype=torch.float64)
            gap = torch.zeros(2, dtype=torch.float64)
            if size > 1:
                reference = final.clone()
                torch.distributed.broadcast(reference, 0)
                gap = (final - reference).abs()
                torch.distributed.all_reduce(gap, op=torch.distributed.ReduceOp.MAX)
            row = {
                "config": label,
                "seed": seed,
                "loc": loc,
                "sd": sd,
                "loc_error_sds": (loc - exact_loc) / exact_sd,
                "sd_error_sds": (sd - exact_sd) / exact_sd,
                "process_gap": gap.max().item(),
                "ms_per_step": 1e3 * result.seconds_per_step,
            }
            rows.append(row)
            if rank == 0:
                print(
                    f"{size} processes, seed {seed}, {label}: loc error {row['loc_error_sds']:+.3f} sds, "
                    f"sd error {row['sd_error_sds']:+.3f} sds, {row['ms_per_step']:.2f} ms/step",
                    flush=True,
                )
    return rows


def variance_and_fits(args):
    return {"variance": variance_task(args), "fits": fit_task(args)}


# ---- the study --------------------------------------------------------------------------


SEEDS = "each seed draws its own data and runs every fit; part 1 uses the first"


def parser():
    p = _cli.parser(__doc__, "results/distributed_svi", seeds=(0, 1, 2), seeds_help=SEEDS)
    p.add_argument("--num-data", type=_cli.integer(minimum=4), default=10_000, help="data points N")
    p.add_argument("--processes", type=_cli.integer(minimum=2), default=2, help="R, the processes of the parallel runs")
    p.add_argument("--particles", type=_cli.integer(minimum=3), default=10, help="S, particles per process")
    p.add_argument("--draws", type=_cli.integer(minimum=3), default=1000, help="gradient draws per estimator in part 1")
    p.add_argument("--steps", type=_cli.positive_int, default=3000, help="SVI steps of each fit")
    p.add_argument("--lr", type=_cli.positive_real, default=0.05, help="ClippedAdam's first learning rate")
    p.add_argument("--final-lr", type=_cli.positive_real, default=0.0005, help="its learning rate at the last step")
    return p


def check(args):
    if args.num_data < 2 * args.processes:
        raise ValueError(
            f"argument --num-data: needs at least 2 points per process ({2 * args.processes}), got {args.num_data}"
        )
    _cli.at_most(args, "final_lr", "lr")


def run(args):
    # one spawn of R processes
    launches = {size: launch(variance_and_fits, size, args) for size in (1, args.processes)}
    variance = {size: results["variance"] for size, results in launches.items()}
    for point in ("optimum", "off"):
        print(f"gradient variance at the {point}, S = {args.particles} per process:")
        for size, results in variance.items():
            for name, summary in results[point]["estimators"].items():
                print(f"  {size} process(es), {name}: total variance {summary['total_variance']:.4g}")
            if size > 1:
                for name, summary in results[point]["decomposition"].items():
                    print(f"  decomposition, {name}: total variance {summary['total_variance']:.4g}")
    fits = [dict(row, processes=size) for size, results in launches.items() for row in results["fits"]]
    summary = []
    for size in (1, args.processes):
        for label in fit_configs(size):
            rows = [r for r in fits if r["processes"] == size and r["config"] == label]
            summary.append(
                {
                    "processes": size,
                    "config": label,
                    **{k: spread([r[k] for r in rows]) for k in ("loc_error_sds", "sd_error_sds", "ms_per_step")},
                    "largest_process_gap": max(r["process_gap"] for r in rows),
                }
            )
    return {
        "args": vars(args),
        "exact_posterior_first_seed": exact_posterior(generate_data(args.num_data, args.seeds[0])),
        "variance": {str(size): results for size, results in variance.items()},
        "fits": fits,
        "fit_summary": summary,
        # the spawned processes' CPU time (the run record counts this process's only)
        "worker_cpu_seconds": sum(
            getattr(resource.getrusage(resource.RUSAGE_CHILDREN), f) for f in ("ru_utime", "ru_stime")
        ),
    }


# ---- what the README and the figure show ----------------------------------------------

ROUNDING = 1e-6  # total variances below this are rounding error (the float64 decomposition at the optimum)


def variance_rows(results):
    """(label, what it is, {point: total variance}) in the order shown."""
    size = str(results["args"]["processes"])
    one, many = results["variance"]["1"], results["variance"][size]
    S = results["args"]["particles"]
    cv = f"{size} processes, ControlVariateELBO"
    rows = [  # label, the runs it is from, measured or the decomposition's, the name there
        ("1 process, Trace_ELBO", one, "measured", "Trace_ELBO"),
        ("1 process, ControlVariateELBO", one, "measured", "ControlVariateELBO"),
        (f"{size} processes, Trace_ELBO", many, "measured", "Trace_ELBO"),
        (f"{cv}, independent particles", many, "measured", "ControlVariateELBO, independent particles"),
        ("  its part from the global signal L", many, "decomposition", "global"),
        ("  its part from the shards' deviations D^r = L^r - L", many, "decomposition", "shard"),
        (f"{cv}, coefficient statistics pooled (the former pool_processes=True)", many, "decomposition", "pooled"),
        ("  its part from the pooled coefficients' mismatch", many, "decomposition", "mismatch"),
        (f"{cv}, {2 * S} independent particles each", many, "decomposition", "double"),
        (f"{cv}, shared particles (pool_processes=True)", many, "measured", "ControlVariateELBO, shared particles"),
    ]
    key = {"measured": "estimators", "decomposition": "decomposition"}
    return [
        (label, what, {point: runs[point][key[what]][name]["total_variance"] for point in ("optimum", "off")})
        for label, runs, what, name in rows
    ]


def _variance_cell(value):
    return f"< {ROUNDING:g} (rounding)" if value < ROUNDING else _variance_label(value)


def _signed(stat, digits=3):
    """``+mean ± std`` of a spread."""
    text = f"{stat['mean']:+.{digits}f}"
    return text if stat["std"] is None else text + f" ± {stat['std']:.{digits}f}"


def _variance_label(value):
    return f"{value:,.0f}" if value >= 10 else f"{value:.2g}"


def figures(results, out):
    from matplotlib.patches import Patch

    rows = variance_rows(results)
    fig, axes = plt.subplots(1, 2, figsize=(17, 6), sharey=True)
    positions = np.arange(len(rows))[::-1]
    for ax, point, title in zip(axes, ("optimum", "off"), ("at the exact posterior (the optimum)", "off it")):
        values = np.array([r[2][point] for r in rows])
        rounding = values < ROUNDING
        bars = ax.barh(
            positions, np.maximum(values, ROUNDING), color=["C0" if r[1] == "measured" else "C1" for r in rows]
        )
        for bar, value, below in zip(bars, values, rounding):
            if below:
                bar.set(hatch="//", facecolor="white", edgecolor="C1")
            label, xy = "~0" if below else _variance_label(value), (bar.get_width(), bar.get_y() + bar.get_height() / 2)
            ax.annotate(label, xy, xytext=(3, 0), textcoords="offset points", va="center", fontsize=7)
        ax.axvline(max(rows[1][2][point], ROUNDING), color="k", ls=":", lw=1.2)
        ax.set_xscale("log")
        ax.set_xlim(ROUNDING / 3 if rounding.any() else values.min() / 10, values.max() * 1e3)
        ax.set_xlabel("total variance of one draw (log scale)")
        ax.set_title(title, fontsize=10)
    axes[0].set_yticks(positions)
    axes[0].set_yticklabels([r[0].strip() for r in rows], fontsize=8)
    handles = [
        Patch(color="C0", label="measured with pyro_vi (float32)"),
        Patch(color="C1", label="decomposition of the same estimator (float64)"),
        Patch(facecolor="white", edgecolor="C1", hatch="//", label=f"below {ROUNDING:g}: rounding error"),
        plt.Line2D([], [], color="k", ls=":", label="1 process, ControlVariateELBO"),
    ]
    axes[1].legend(handles=handles, loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8)
    save_figure(fig, os.path.join(out, "variance.png"))


def readme_block(results):
    args = results["args"]
    many = results["variance"][str(args["processes"])]
    rows = [
        [label, _variance_cell(values["optimum"]), _variance_cell(values["off"])]
        for label, _, values in variance_rows(results)
    ]
    decomposition = many["optimum"]["decomposition"]
    shared = many["off"]["estimators"]["ControlVariateELBO, shared particles"]
    exact = many["off"]["exact_gradient"]
    z = [(m - e) / se for m, e, se in zip(shared["mean"], exact, shared["standard_error"])]
    text = (
        "**Where the variance comes from** (N = {num_data:,}, S = {particles} particles per process, {draws:,} "
        "draws per row; the gradient in (loc, log scale) of a Normal guide; the sum of the variances of its two "
        "entries, one draw)\n\n"
    ).format(**args)
    text += table(["estimator", "at the optimum", "off it (mean +3 sds, sd x2)"], rows)
    text += (
        "\nAt the optimum the shards' objectives have the gradients {} in loc (all the data's: 0). With "
        "independent particles, {} of the {} of the decomposition at the optimum comes from the shards' "
        "deviations; pooling the coefficient statistics multiplies it by {}. Off the optimum, shared particles' "
        "mean gradient is {} against the exact {} (z = {}).\n\n".format(
            " and ".join(f"{g[0]:+.1f}" for g in many["optimum"]["shard_gradients"]),
            _variance_label(decomposition["shard"]["total_variance"]),
            _variance_label(decomposition["independent"]["total_variance"]),
            times(decomposition["pooled"]["total_variance"] / decomposition["independent"]["total_variance"]),
            ", ".join(f"{m:.2f} ± {se:.2f}" for m, se in zip(shared["mean"], shared["standard_error"])),
            ", ".join(f"{e:.2f}" for e in exact),
            ", ".join(f"{v:+.2f}" for v in z),
        )
    )
    fit_rows = [
        [
            *row["config"].split(", ", 1),
            row["processes"],
            fmt(row["ms_per_step"], ".1f"),
            _signed(row["loc_error_sds"]),
            _signed(row["sd_error_sds"]),
            f"{row['largest_process_gap']:.3g}",
        ]
        for row in results["fit_summary"]
    ]
    text += (
        "**Fits** ({steps:,} steps, ClippedAdam with lr from {lr} to {final_lr}, S = {particles} particles per "
        "process, seeds {run_seeds}; the final posterior mean's and sd's errors in posterior sds, mean ± std over "
        "the seeds; the largest difference between the processes' final values)\n\n"
    ).format(**args, run_seeds=", ".join(map(str, results["run"]["seeds"])))
    header = ["guide", "estimator", "processes", "ms per step", "mean error (sds)", "sd error (sds)", "gap"]
    text += table(header, fit_rows, align="llrrrrr")
    text += "\n" + run_line(results)
    text += "The spawned processes took {} of CPU besides.\n".format(seconds(results["worker_cpu_seconds"]))
    return text


STUDY = Study("distributed_svi", parser, run, figures, readme_block, check)

if __name__ == "__main__":
    STUDY.main()
