"""How the time and memory of an SVI step grow with the number of particles,
the data size (with and without subsampling) and the encoder's width, for
every estimator beside its Pyro counterpart (Trace_ELBO for the ELBO
estimators, RenyiELBO(alpha=0) for the importance-weighted ones).

Sweeps:

- ``particles``: the course's Normal-NormalGamma model, S particles;
- ``data``: a hierarchical model with one local latent per data point
  (z_n ~ N(mu, tau), x_n ~ N(z_n, 0.5), mu and tau model parameters), N points,
  10 particles, the whole data set each step;
- ``subsample``: the same with ``subsample_size=100``;
- ``encoder``: an amortized Gaussian encoder 784 -> H -> H -> 2 x 50 (tanh)
  with Burda's small decoder, batch 100, 10 particles; H sets the encoder's
  parameter count (H = 3250: 13.4M).
- ``gamma``: a sparse gamma deep exponential family (Ranganath et al.,
  2015), the shape of Pyro's ``sparse_gamma_def`` example, on 72 images of
  D Poisson counts: Gamma weight matrices 100 x 40, 40 x 15 and 15 x D,
  Gamma latents 72 x 100, 72 x 40 and 72 x 15, and a mean-field guide of
  LogNormal weights and Gamma latents, every matrix a parameter of its own,
  10 particles; the size is the number of latent scalars (D = 6616:
  115,720, as many as the example's 115,640).

Every configuration of a size is timed round-robin in one process (the
median of ``--rounds`` rounds of ``--steps`` steps, and of more rounds for a
size whose rounds take less than ``--seconds``), so the ratios share the
machine's noise; peak memory is measured in a subprocess per configuration
(the peak resident memory of three steps above the memory held between
steps, after a first step that creates the parameters).

    python -m experiments.benchmark_scaling --out results/benchmark_scaling
"""

import functools
import math
import os
import statistics
import subprocess
import sys

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from matplotlib.ticker import FuncFormatter
from pyro.distributions import constraints
from pyro.infer import RenyiELBO, Trace_ELBO

from experiments import _cli
from experiments._figures import plt, save_figure
from experiments._markdown import run_line
from experiments._runs import timing_arguments
from experiments._study import Study
from guides import normal_gamma
from guides.vae import Encoder
from guides.vae import guide as vae_guide
from models import normal_gamma as normal_gamma_model
from models.vae import BURDA_CONFIG, Decoder, VAEConfig
from models.vae import model as vae_model
from pyro_vi import (
    ControlVariateELBO,
    ImportanceWeightedELBO,
    RaoBlackwellELBO,
    ScoreFunctionELBO,
    StickingTheLandingELBO,
    fresh_svi_step,
    step_times,
)

ESTIMATORS = {
    # label -> (factory, the Pyro counterpart it is compared with)
    "Trace_ELBO": (Trace_ELBO, None),
    "RenyiELBO(alpha=0)": (lambda **kw: RenyiELBO(alpha=0.0, **kw), None),
    "ScoreFunctionELBO": (ScoreFunctionELBO, "Trace_ELBO"),
    "ControlVariateELBO": (ControlVariateELBO, "Trace_ELBO"),
    "ControlVariateELBO(parameters)": (lambda **kw: ControlVariateELBO(coordinates="parameters", **kw), "Trace_ELBO"),
    "RaoBlackwellELBO": (RaoBlackwellELBO, "Trace_ELBO"),
    "RaoBlackwellELBO(parameters)": (lambda **kw: RaoBlackwellELBO(coordinates="parameters", **kw), "Trace_ELBO"),
    "StickingTheLandingELBO": (StickingTheLandingELBO, "Trace_ELBO"),
    "ImportanceWeightedELBO": (ImportanceWeightedELBO, "RenyiELBO(alpha=0)"),
    "ImportanceWeightedELBO(stl)": (lambda **kw: ImportanceWeightedELBO(gradient="stl", **kw), "RenyiELBO(alpha=0)"),
    "ImportanceWeightedELBO(dreg)": (lambda **kw: ImportanceWeightedELBO(gradient="dreg", **kw), "RenyiELBO(alpha=0)"),
}
BATCH = 100
MAX_ROUNDS = 100


SEEDS = "one by default: a step's cost does not depend on the seed; several seeds pool their rounds"


def parser():
    parser = _cli.parser(__doc__, "results/benchmark_scaling", seeds=(0,), seeds_help=SEEDS)
    parser.add_argument("--sweeps", nargs="+", choices=sorted(SWEEPS), default=list(SWEEPS))
    parser.add_argument(
        "--sizes",
        type=_cli.positive_int,
        nargs="+",
        default=None,
        help="sizes of every chosen sweep: S, N, the encoder's width H, the gamma sweep's pixels D (default: each "
        "sweep's own)",
    )
    parser.add_argument("--estimators", nargs="+", choices=list(ESTIMATORS), default=list(ESTIMATORS))
    timing_arguments(parser, steps=5, rounds=5)
    parser.add_argument(
        "--seconds",
        type=_cli.real(minimum=0),
        default=2.0,
        help="a size whose --rounds time each estimator for less than this many seconds gets more rounds, up to "
        f"{MAX_ROUNDS} (the small sizes' ratios are then medians of many rounds; 0: exactly --rounds)",
    )
    parser.add_argument("--no-memory", action="store_true", help="skip the memory subprocesses")
    return parser


# ---------------------------------------------------------------- the problems
# each: size -> (model, guide, the model's arguments, particles)


def particles_problem(size):
    data = normal_gamma_model.generate_data()
    return normal_gamma_model.model, normal_gamma.mean_field_guide, (data,), size


def local_problem(size, subsample):
    data = torch.randn(size, generator=torch.Generator().manual_seed(0))
    batch = min(BATCH, size) if subsample else None

    def model(data):
        mu = pyro.param("mu", torch.tensor(0.0))
        tau = pyro.param("tau", torch.tensor(1.0), constraint=constraints.positive)
        with pyro.plate("data", len(data), subsample_size=batch) as idx:
            z = pyro.sample("z", dist.Normal(mu, tau))
            pyro.sample("x", dist.Normal(z, 0.5), obs=data[idx])

    def guide(data):
        with pyro.plate("data", len(data), subsample_size=batch):
            loc = pyro.param("z_loc", torch.zeros(len(data)), event_dim=0)
            scale = pyro.param("z_scale", torch.ones(len(data)), constraint=constraints.positive, event_dim=0)
            pyro.sample("z", dist.Normal(loc, scale))

    return model, guide, (data,), 10


def encoder_problem(width):
    torch.manual_seed(0)
    encoder = Encoder(VAEConfig(hidden_dims=(width, width)))
    decoder = Decoder(BURDA_CONFIG, mean_pixel=0.13)
    x = (torch.rand(BATCH, 784, generator=torch.Generator().manual_seed(0)) < 0.13).float()
    model, guide = functools.partial(vae_model, decoder=decoder), functools.partial(vae_guide, encoder=encoder)
    return model, guide, (x,), 10


def encoder_parameters(width):
    return sum(p.numel() for p in Encoder(VAEConfig(hidden_dims=(width, width))).parameters())


GAMMA_LAYERS = (100, 40, 15)  # units, top to bottom
GAMMA_IMAGES = 72


def gamma_problem(pixels):
    """The sparse gamma DEF on ``pixels`` Poisson counts per image."""
    counts = torch.poisson(torch.full((GAMMA_IMAGES, pixels), 3.0), generator=torch.Generator().manual_seed(0))
    widths = GAMMA_LAYERS + (pixels,)
    weights = [(f"w{i}", (widths[i], widths[i + 1])) for i in range(len(GAMMA_LAYERS))]
    latents = [(f"z{i}", width) for i, width in enumerate(GAMMA_LAYERS)]

    def model(x):
        w = [pyro.sample(name, dist.Gamma(0.3, 0.3).expand(shape).to_event(2)) for name, shape in weights]
        with pyro.plate("images", GAMMA_IMAGES):
            mean = None
            for i, (name, width) in enumerate(latents):
                # z0 ~ Gamma(0.1, 0.1); below, the mean of each unit is the layer above times its weights
                prior = dist.Gamma(0.1, 0.1).expand([width]) if mean is None else dist.Gamma(1.0, 1.0 / mean)
                mean = pyro.sample(name, prior.to_event(1)) @ w[i]
            pyro.sample("x", dist.Poisson(mean).to_event(1), obs=x)

    def guide(x):
        for name, shape in weights:
            loc = pyro.param(f"{name}_loc", torch.full(shape, -1.0))
            scale = pyro.param(f"{name}_scale", torch.full(shape, 0.1), constraint=constraints.positive)
            pyro.sample(name, dist.LogNormal(loc, scale).to_event(2))
        with pyro.plate("images", GAMMA_IMAGES):
            for name, width in latents:
                dims = (GAMMA_IMAGES, width)
                shape = pyro.param(f"{name}_shape", torch.full(dims, 5.0), constraint=constraints.positive)
                mean = pyro.param(f"{name}_mean", torch.full(dims, 0.5), constraint=constraints.positive)
                pyro.sample(name, dist.Gamma(shape, shape / mean).to_event(1))

    return model, guide, (counts,), 10


def gamma_latents(pixels):
    """The number of latent scalars of the sparse gamma DEF."""
    widths = GAMMA_LAYERS + (pixels,)
    return sum(a * b for a, b in zip(widths, widths[1:])) + GAMMA_IMAGES * sum(GAMMA_LAYERS)


SWEEPS = {
    # sweep -> (its size's name, default sizes, size -> the problem, size -> its x in the tables and figure)
    "particles": ("S", [10, 100, 1000, 10000], particles_problem, int),
    "data": ("N", [1000, 10000, 100000], functools.partial(local_problem, subsample=False), int),
    "subsample": ("N", [1000, 10000, 100000], functools.partial(local_problem, subsample=True), int),
    "encoder": ("encoder parameters", [200, 800, 1600, 3250], encoder_problem, encoder_parameters),
    "gamma": ("latent scalars", [512, 2048, 6616], gamma_problem, gamma_latents),
}


def fresh_step(sweep, size, estimator, seed=0):
    """A step of a fresh SVI of ``estimator`` on the problem
    (:func:`pyro_vi.diagnostics.fresh_svi_step`), taken once: that creates the
    parameters."""
    pyro.set_rng_seed(seed)
    model, guide, args, particles = SWEEPS[sweep][2](size)
    step = fresh_svi_step(model, guide, ESTIMATORS[estimator][0](num_particles=particles, **_cli.VECTORIZED), *args)
    step()
    return step


# ---------------------------------------------------------------- measuring


def time_size(sweep, size, estimators, rounds, steps, seeds=(0,), seconds=0.0):
    """Median milliseconds per step of each estimator, round-robin: for each
    seed, ``rounds`` rounds, then more (up to :data:`MAX_ROUNDS`) until the
    slowest estimator has been timed for ``seconds``; and the number of
    rounds of all the seeds."""
    times = {name: [] for name in estimators}
    for seed in seeds:  # each step built right before it is timed
        makers = {name: functools.partial(fresh_step, sweep, size, name, seed) for name in estimators}
        for name, timed in step_times(makers, rounds=rounds, num_steps=steps).items():
            times[name] += timed
        per_round = steps * max(statistics.median(t) for t in times.values())
        extra = min(MAX_ROUNDS - rounds, math.ceil(seconds / per_round) - rounds)
        if extra > 0:
            for name, timed in step_times(makers, rounds=extra, num_steps=steps).items():
                times[name] += timed
    return {name: 1000 * statistics.median(t) for name, t in times.items()}, len(times[estimators[0]])


def _resident_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_mb():
    """The peak resident memory since the last :func:`_reset_peak` (Linux's
    VmHWM), MB."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM")) / 1024


def _reset_peak():
    """Sets the peak resident memory to the current one (Linux >= 4.0)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def measure_memory(sweep, size, estimator, steps=3):
    """Peak resident memory of an SVI step above the memory held between
    steps, MB: one step first (it creates the parameters and loads what
    the first call loads), then the peak is reset and ``steps`` steps run."""
    step = fresh_step(sweep, size, estimator)
    before = _resident_mb()
    _reset_peak()
    for _ in range(steps):
        step()
    return _peak_mb() - before


def memory_size(sweep, size, estimators, threads):
    """:func:`measure_memory` of each estimator, each in a fresh process."""
    result = {}
    for name in estimators:
        code = (
            f"from experiments._cli import set_threads; set_threads({threads}); "
            "from experiments.benchmark_scaling import measure_memory; "
            f"print(measure_memory({sweep!r}, {size}, {name!r}))"
        )
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True).stdout
        result[name] = float(out.strip().splitlines()[-1])
    return result


# ---------------------------------------------------------------- results


def figures(results, out):
    """``scaling.png``. Top row: each estimator's time per step over its Pyro
    counterpart's (Trace_ELBO, or RenyiELBO(alpha=0) for the importance-weighted
    ones), at each size of each sweep; bottom row: the peak memory of a step.
    One legend for all panels."""
    sweeps = [s for s in SWEEPS if s in results["sweeps"]]
    kinds = ["ratios"] + (["peak_mb"] if results["memory"] else [])
    fig, axes = plt.subplots(len(kinds), len(sweeps), figsize=(4.6 * len(sweeps), 4.0 * len(kinds)), squeeze=False)
    styles = {
        name: dict(marker="os^vD<>ph*xP"[i], ls="-" if ESTIMATORS[name][1] else "--", color=f"C{i}")
        for i, name in enumerate(ESTIMATORS)
    }
    handles = {}
    for column, sweep in enumerate(sweeps):
        data = results["sweeps"][sweep]
        x = data["x"]
        for row, kind in enumerate(kinds):
            ax = axes[row][column]
            for name, values in data[kind].items():
                if min(values) <= 0:
                    continue
                (handles[name],) = ax.loglog(x, values, ms=5, lw=1.2, alpha=0.85, **styles[name])
            if kind == "ratios":
                ax.axhline(1.0, color="k", lw=0.8, ls=":")
                _plain_log_labels(ax)
                ax.set_ylabel("time per step / the Pyro counterpart's")
                ax.set_title(f"{sweep}: time, x Pyro (1 = as fast)", fontsize=10)
            else:
                ax.set_ylabel("peak memory of a step (MB)")
                ax.set_title(f"{sweep}: memory", fontsize=10)
            ax.set_xlabel(data["size_name"])
    names = [n for n in ESTIMATORS if n in handles]
    fig.legend([handles[n] for n in names], names, loc="lower center", ncol=4, fontsize=9, bbox_to_anchor=(0.5, -0.02))
    fig.suptitle(
        "How the cost of a step grows (1 torch thread; curves that overlap cost the same; the README's table has the "
        "numbers)",
        fontsize=11,
    )
    fig.set_layout_engine("tight", rect=(0, 0.1, 1, 0.96))
    save_figure(fig, os.path.join(out, "scaling.png"))


def _plain_log_labels(ax):
    """Labels 0.8, 1, 1.5 on a log y-axis rather than 8 x 10^-1: every tick
    where the axis spans less than a factor 3, else only 1, 2 and 5 times a
    power of ten."""
    low, high = ax.get_ylim()

    def label(value, _):
        leading = round(value / 10 ** np.floor(np.log10(value)), 6)
        return f"{value:g}" if high / low < 3 or leading in (1, 2, 5) else ""

    ax.yaxis.set_major_formatter(FuncFormatter(label))
    ax.yaxis.set_minor_formatter(FuncFormatter(label))


def run(args):
    results = {
        "threads": args.threads,
        "steps": args.steps,
        "rounds": args.rounds,
        "memory": not args.no_memory,
        "machine": f"{os.cpu_count()} CPU cores",
        "sweeps": {},
    }
    for sweep in args.sweeps:
        size_name, sizes, _, measure = SWEEPS[sweep]
        sizes = args.sizes or sizes
        x = [measure(s) for s in sizes]
        data = {"size_name": size_name, "sizes": sizes, "x": x, "rounds": [], "ms_per_step": {}, "peak_mb": {}}
        for size in sizes:
            times, rounds = time_size(sweep, size, args.estimators, args.rounds, args.steps, args.seeds, args.seconds)
            data["rounds"].append(rounds)
            memory = {} if args.no_memory else memory_size(sweep, size, args.estimators, args.threads)
            for name in args.estimators:
                data["ms_per_step"].setdefault(name, []).append(times[name])
                if memory:
                    data["peak_mb"].setdefault(name, []).append(memory[name])
            print(sweep, size, {n: round(t, 2) for n, t in times.items()}, flush=True)
        data["ratios"] = {
            name: [t / data["ms_per_step"][reference][i] for i, t in enumerate(times)]
            for name, times in data["ms_per_step"].items()
            for reference in [ESTIMATORS[name][1]]
            if reference in data["ms_per_step"]
        }
        results["sweeps"][sweep] = data
    return results


def readme_block(results):
    """The README's tables: time (ms per step, and the ratio to the Pyro
    counterpart) and peak extra memory at each sweep's sizes."""
    lines = []
    for sweep, data in results["sweeps"].items():
        x = data["x"]
        head = ["estimator"] + ["{} = {:,}".format(data["size_name"], v) for v in x]
        lines += [
            "",
            "**{}** (ms per step, x its Pyro counterpart{}; {} torch thread, {})".format(
                sweep, "; peak extra MB" if data.get("peak_mb") else "", results["threads"], results["machine"]
            ),
            "",
            "| " + " | ".join(head) + " |",
            "|---" + "|---:" * len(x) + "|",
        ]
        for name, times in data["ms_per_step"].items():
            cells = []
            for i, t in enumerate(times):
                cell = f"{t:.1f}"
                if name in data["ratios"]:
                    cell += " ({:.2f}x)".format(data["ratios"][name][i])
                if data.get("peak_mb"):
                    cell += "; {:.0f} MB".format(data["peak_mb"][name][i])
                cells.append(cell)
            lines.append("| {} | {} |".format(name, " | ".join(cells)))
    return "\n".join(lines[1:]) + "\n\n" + run_line(results)


STUDY = Study("benchmark_scaling", parser, run, figures, readme_block)

if __name__ == "__main__":
    STUDY.main()
