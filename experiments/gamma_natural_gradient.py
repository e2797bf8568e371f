r"""Gradient descent against natural gradient descent for the maximum-likelihood fit
of a Gamma(shape alpha, scale beta) (assignment 1.C.4, questions 2.2.14-2.2.19).

Average negative log-likelihood and its gradient (question 2.2.17), with
:math:`\overline{\log x} = \frac1N \sum_n \log x_n` and :math:`\bar x = \frac1N \sum_n x_n`:

.. math::

    \mathcal{L}(\alpha, \beta) = \log\Gamma(\alpha) + \alpha \log\beta
        - (\alpha - 1)\, \overline{\log x} + \bar x / \beta, \qquad
    \nabla \mathcal{L} = \big(\psi(\alpha) + \log\beta - \overline{\log x},\;
        \alpha/\beta - \bar x/\beta^2\big).

Fisher information and its inverse (question 2.2.16), :math:`\psi_1` the trigamma function:

.. math::

    F = \begin{pmatrix} \psi_1(\alpha) & 1/\beta \\ 1/\beta & \alpha/\beta^2 \end{pmatrix},
    \qquad
    F^{-1} = \frac{1}{\alpha\psi_1(\alpha) - 1}
        \begin{pmatrix} \alpha & -\beta \\ -\beta & \beta^2 \psi_1(\alpha) \end{pmatrix}

(:math:`\alpha\psi_1(\alpha) > 1` for every :math:`\alpha > 0`). GD steps
:math:`\theta - \rho \nabla\mathcal{L}`, NGD steps :math:`\theta - \rho F^{-1} \nabla\mathcal{L}`
with the same :math:`\rho`; a step that would leave :math:`\alpha, \beta > 0` is halved
until it stays inside (the number of halved steps is reported). Writes
``trajectories.png`` (alpha_t, beta_t against the MLE), ``nll.png`` (NLL and its gap to
the MLE), ``path.png`` (both paths over NLL contours) and ``results.json``. The
descents are deterministic; each seed of ``--seeds`` draws another data set, and
the iteration counts are reported as mean ± std over the data sets (the
trajectories and paths are drawn for the first).

Why NGD is faster and steadier (question 2.2.19): the NLL is badly conditioned in
:math:`(\alpha, \beta)`: :math:`\alpha` and :math:`\beta` trade off along a long curved valley
(at the MLE :math:`F` has condition number about 30), so a step size that is safe across
the valley makes GD crawl along its flat floor. :math:`F^{-1}` rescales the gradient by
the model's local curvature, which at the MLE is the Hessian of the NLL, so NGD moves
like Newton's method, with the same speed in every direction, and (to first order in
the step size) independently of how the Gamma is parameterized.

    python -m experiments.gamma_natural_gradient --out results/gamma_natural_gradient
"""

import os
import time

import numpy as np
import torch

from experiments import _cli
from experiments._figures import band_note, legend_outside, plt, save_figure, seed_band
from experiments._markdown import run_line, table
from experiments._results import fmt, spreads, thin
from experiments._study import Study
from pyro_vi.exponential_family import FAMILIES
from pyro_vi.optim import descent_step, natural_gradient_step

FAMILY = FAMILIES["gamma_shape_scale"]
#: One step of each descent: ``(family, theta, gradient, lr, max_halvings) -> step``.
STEPS = {"GD": descent_step, "NGD": natural_gradient_step}
METHODS = tuple(STEPS)
GAP_FLOOR = 1e-15  # float64 rounding of an NLL of about 2.5


def sample_data(num_data, shape, scale, seed):
    """``num_data`` draws from Gamma(shape, scale) as float64 (numpy's seeded generator)."""
    return torch.as_tensor(np.random.default_rng(seed).gamma(shape, scale, size=num_data), dtype=torch.float64)


def data_statistics(x):
    r""":math:`(\overline{\log x}, \bar x)`, all the NLL depends on."""
    x = FAMILY.check_data(x)
    return x.log().mean(), x.mean()


def average_nll(theta, stats):
    """The average negative log-likelihood at ``theta = (alpha, beta)``."""
    alpha, beta = theta[..., 0], theta[..., 1]
    mean_log_x, mean_x = stats
    return torch.lgamma(alpha) + alpha * beta.log() - (alpha - 1) * mean_log_x + mean_x / beta


def nll_gradient(theta, stats):
    """The closed-form gradient of :func:`average_nll` (question 2.2.17)."""
    alpha, beta = theta[..., 0], theta[..., 1]
    mean_log_x, mean_x = stats
    return torch.stack([torch.digamma(alpha) + beta.log() - mean_log_x, alpha / beta - mean_x / beta**2], dim=-1)


def gamma_mle(stats, iters=50):
    r"""MLE: Newton on :math:`\log\alpha - \psi(\alpha) = \log\bar x - \overline{\log x}`, then
    :math:`\beta = \bar x / \alpha` (started from Minka's closed-form approximation)."""
    mean_log_x, mean_x = stats
    s = mean_x.log() - mean_log_x
    alpha = (3 - s + ((s - 3) ** 2 + 24 * s).sqrt()) / (12 * s)
    for _ in range(iters):
        alpha = alpha - (alpha.log() - torch.digamma(alpha) - s) / (1 / alpha - torch.polygamma(1, alpha))
    return torch.stack([alpha, mean_x / alpha])


def fisher_closed_form(theta):
    alpha, beta = theta[..., 0], theta[..., 1]
    row0 = torch.stack([torch.polygamma(1, alpha), 1 / beta], dim=-1)
    return torch.stack([row0, torch.stack([1 / beta, alpha / beta**2], dim=-1)], dim=-2)


def inverse_fisher_closed_form(theta):
    """The explicit :math:`F(\\alpha, \\beta)^{-1}` of question 2.2.16."""
    alpha, beta = theta[..., 0], theta[..., 1]
    trigamma = torch.polygamma(1, alpha)
    row0 = torch.stack([alpha, -beta], dim=-1)
    matrix = torch.stack([row0, torch.stack([-beta, beta**2 * trigamma], dim=-1)], dim=-2)
    return matrix / (alpha * trigamma - 1)[..., None, None]


def fisher_check(thetas):
    """Largest relative errors of the closed forms against autograd and ``torch.linalg.inv``."""
    closed, inverse = fisher_closed_form(thetas), inverse_fisher_closed_form(thetas)
    autograd = FAMILY.fisher(thetas)

    def rel(a, b):
        return float(((a - b).abs() / b.abs().clamp_min(1e-300)).max())

    return {
        "points": thetas.tolist(),
        "fisher_closed_vs_autograd_JtFJ": rel(closed, autograd),
        "inverse_closed_vs_linalg_inv": rel(inverse, torch.linalg.inv(closed)),
        "inverse_closed_vs_inv_of_autograd": rel(inverse, torch.linalg.inv(autograd)),
    }


def descend(method, init, stats, lr, steps, max_halvings):
    """``steps`` steps of GD or NGD from ``init``; the path, the NLL and the halved steps."""
    theta = torch.tensor(init, dtype=torch.float64)
    path, nll, halved = [theta], [float(average_nll(theta, stats))], 0
    for _ in range(steps):
        grad = nll_gradient(theta, stats)
        step = STEPS[method](FAMILY, theta, grad, lr, max_halvings)
        theta, halved = step.theta, halved + (step.step_size < lr)
        path.append(theta)
        nll.append(float(average_nll(theta, stats)))
    return {"path": torch.stack(path).numpy(), "nll": np.array(nll), "halved_steps": int(halved)}


def iterations_to_reach(nll, best, tol):
    """First iteration whose NLL is within ``tol`` of ``best`` (``None`` if never)."""
    hits = np.flatnonzero(nll - best <= tol)
    return int(hits[0]) if hits.size else None


def plot_trajectories(steps, paths, mle, truth, seed, path):
    """``paths``: method -> ``(alpha_t, beta_t)`` at ``steps`` (from 1)."""
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    for i, (ax, label) in enumerate(zip(axes, ("shape alpha", "scale beta"))):
        for name, values in paths.items():
            ax.plot(steps, values[i], label=name, lw=1.4)
        ax.axhline(mle[i], color="k", ls="--", lw=1, label=f"MLE {mle[i]:.4f}")
        true_label = f"true value {truth[i]:g} (dotted; MLE - true = {mle[i] - truth[i]:+.3f})"
        ax.axhline(truth[i], color="gray", ls=":", lw=1.5, label=true_label)
        ax.set(xscale="log", xlabel="iteration + 1 (log scale)", ylabel=label)
        ax.set_title(f"{label} over iterations (data seed {seed})", fontsize=10)
        legend_outside(ax, where="below", ncol=2)
    save_figure(fig, path)


def plot_nll(steps, nll, bests, tol, path):
    """Left: the NLL of the first data set; right: the gap to the MLE of
    every data set (mean and band over seeds, log scale). ``nll``: method ->
    per seed, at ``steps`` (iteration + 1)."""
    fig, (ax, gap_ax) = plt.subplots(1, 2, figsize=(12, 4.8))
    for i, name in enumerate(METHODS):
        ax.plot(steps, nll[name][0], label=name, lw=1.4, color=f"C{i}")
        gaps = [np.maximum(np.asarray(runs) - b, GAP_FLOOR) for runs, b in zip(nll[name], bests)]
        seed_band(gap_ax, steps - 1, np.log10(gaps), label=name, lw=1.4, color=f"C{i}")
    ax.axhline(bests[0], color="k", ls="--", lw=1, label=f"NLL at the MLE {bests[0]:.5f}")
    ax.set(xscale="log", xlabel="iteration + 1 (log scale)", ylabel="average NLL (nats)")
    ax.set_title("average negative log-likelihood (first data set)", fontsize=10)
    gap_ax.axhline(np.log10(tol), color="k", ls=":", lw=1, label=f"tolerance {tol:g} nats")
    gap_ax.set(xlabel="iteration", ylabel=f"log10(NLL - NLL(MLE)) (nats, floored at {GAP_FLOOR:g})")
    gap_ax.set_title(f"gap to the MLE ({band_note(len(bests))})", fontsize=10)
    for a in (ax, gap_ax):
        legend_outside(a, where="below", ncol=2)
    save_figure(fig, path)


def plot_paths(paths, stats, mle, seed, path):
    """Both paths in (alpha, beta) over the NLL's contours."""
    stats = torch.as_tensor(stats, dtype=torch.float64)
    points = np.concatenate([np.asarray(values).T for values in paths.values()])
    lo, hi = points.min(0) * 0.9, points.max(0) * 1.1
    alphas, betas = (torch.linspace(lo[i], hi[i], 200, dtype=torch.float64) for i in range(2))
    grid = torch.stack(torch.meshgrid(alphas, betas, indexing="xy"), -1)
    gap = (average_nll(grid, stats) - average_nll(torch.as_tensor(mle), stats)).clamp_min(1e-8)
    fig, ax = plt.subplots(figsize=(7, 5.5))
    contours = ax.contour(grid[..., 0], grid[..., 1], gap.log10(), levels=15, cmap="viridis", linewidths=0.7)
    fig.colorbar(contours, ax=ax, label="log10(NLL - NLL(MLE))")
    for name, (alpha, beta) in paths.items():
        ax.plot(alpha, beta, ".-", ms=2.5, lw=1, label=name)
    ax.plot(*mle, "k*", ms=12, label="MLE")
    ax.set(xlabel="shape alpha", ylabel="scale beta")
    ax.set_title(f"paths in (alpha, beta) over the NLL (data seed {seed})", fontsize=10)
    legend_outside(ax, where="below", ncol=3)
    save_figure(fig, path)


def fit_one(args, seed):
    """GD and NGD on the data set drawn with ``seed``."""
    stats = data_statistics(sample_data(args.num_data, args.true_shape, args.true_scale, seed))
    mle = gamma_mle(stats)
    best = float(average_nll(mle, stats))
    init = (args.init_shape, args.init_scale)
    runs, rows = {}, {}
    for name in METHODS:
        start = time.perf_counter()
        runs[name] = descend(name, init, stats, args.lr, args.steps, args.max_halvings)
        seconds = time.perf_counter() - start
        final = runs[name]["path"][-1]
        rows[name] = {
            "iterations_to_tolerance": iterations_to_reach(runs[name]["nll"], best, args.tol),
            "halved_steps": runs[name]["halved_steps"],
            "min_alpha": float(runs[name]["path"][:, 0].min()),
            "min_beta": float(runs[name]["path"][:, 1].min()),
            "final_alpha": float(final[0]),
            "final_beta": float(final[1]),
            "final_nll_gap": float(runs[name]["nll"][-1] - best),
            "seconds": seconds,
        }
    return stats, mle, best, runs, rows


def run(args):
    fits = [fit_one(args, seed) for seed in args.seeds]
    stats, mle, best, runs, _ = fits[0]
    mles = [f[1] for f in fits]
    points = torch.tensor(
        [[0.3, 0.5], [1.0, 10.0], [args.true_shape, args.true_scale], mle.tolist(), [40.0, 0.1]], dtype=torch.float64
    )
    check = fisher_check(points)
    theta = torch.tensor((args.init_shape, args.init_scale), dtype=torch.float64, requires_grad=True)
    autograd_grad = torch.autograd.grad(average_nll(theta, stats), theta)[0]
    check["gradient_closed_vs_autograd"] = float((autograd_grad - nll_gradient(theta.detach(), stats)).abs().max())
    per_seed = {name: [f[4][name] for f in fits] for name in METHODS}
    summary = {
        name: spreads(rows, ["iterations_to_tolerance", "halved_steps", "final_nll_gap"])
        for name, rows in per_seed.items()
    }
    curves = {f"{name} nll": [f[3][name]["nll"] for f in fits] for name in METHODS}
    for name in METHODS:
        curves[f"{name} path"] = list(runs[name]["path"].T)  # alpha, beta of the first data set
    return {
        "mle": [{"alpha": float(m[0]), "beta": float(m[1]), "nll": f[2]} for m, f in zip(mles, fits)],
        "tolerance_nats": args.tol,
        "summary": summary,
        "per_seed": per_seed,
        "checks": check,
        "statistics_first_seed": [float(v) for v in stats],
        "curves": thin(curves),
    }


def figures(results, out):
    args, curves = results["args"], results["curves"]
    steps = np.asarray(curves["GD nll"]["step"])
    paths = {name: curves[f"{name} path"]["values"] for name in METHODS}
    mle = [results["mle"][0]["alpha"], results["mle"][0]["beta"]]
    seed = results["run"]["seeds"][0]
    truth = (args["true_shape"], args["true_scale"])
    plot_trajectories(steps, paths, mle, truth, seed, os.path.join(out, "trajectories.png"))
    nll = {name: curves[f"{name} nll"]["values"] for name in METHODS}
    plot_nll(steps, nll, [m["nll"] for m in results["mle"]], args["tol"], os.path.join(out, "nll.png"))
    plot_paths(paths, results["statistics_first_seed"], mle, seed, os.path.join(out, "path.png"))


def readme_block(results):
    summary, args = results["summary"], results["args"]
    mles = results["mle"]
    rows = []
    for name, s in summary.items():
        each = ", ".join("never" if v is None else f"{v:.0f}" for v in s["iterations_to_tolerance"]["values"])
        rows.append([name, fmt(s["iterations_to_tolerance"], ".1f"), fmt(s["halved_steps"], ".0f"), each])
    estimates = "; ".join("{:.4f}, {:.4f}".format(m["alpha"], m["beta"]) for m in mles)
    return "\n".join(
        [
            f"Iterations until the average NLL is within {results['tolerance_nats']:g} nats of the MLE, over "
            f"{len(mles)} data sets of {args['num_data']} draws (MLE alpha, beta: {estimates}):\n",
            table(["method", "iterations (mean ± std)", "halved steps", "per data set"], rows),
            "The closed-form inverse Fisher matches `torch.linalg.inv` of the autograd J^T F(eta) J to {:.0e} "
            "(relative).\n".format(results["checks"]["inverse_closed_vs_inv_of_autograd"]),
            run_line(results),
        ]
    )


SEEDS = "a seed draws the data set; GD and NGD are deterministic given the data"


def parser():
    parser = _cli.parser(__doc__, "results/gamma_natural_gradient", seeds=(0, 1, 2), seeds_help=SEEDS)
    positive = _cli.positive_real
    parser.add_argument("--num-data", type=_cli.integer(minimum=2), default=1000)
    parser.add_argument("--true-shape", type=positive, default=3.0)
    parser.add_argument("--true-scale", type=positive, default=2.0)
    parser.add_argument("--init-shape", type=positive, default=1.0, help="poor start: an exponential ...")
    parser.add_argument("--init-scale", type=positive, default=10.0, help="... with mean 10 (the data's is 6)")
    parser.add_argument("--lr", type=positive, default=0.2, help="step size, the same for GD and NGD")
    parser.add_argument("--steps", type=_cli.positive_int, default=2000)
    parser.add_argument("--tol", type=positive, default=1e-6, help="NLL gap to the MLE counted as reached (nats)")
    parser.add_argument(
        "--max-halvings", type=_cli.nonnegative_int, default=30, help="halvings of a step that leaves the domain"
    )
    return parser


STUDY = Study("gamma_natural_gradient", parser, run, figures, readme_block)

if __name__ == "__main__":
    STUDY.main()
