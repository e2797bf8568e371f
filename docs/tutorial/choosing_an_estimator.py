"""Choosing a gradient estimator: one model, every estimator.

The model is a two-component mixture with one component pinned at zero: a
continuous global latent mu (the other component's location) and a discrete
local latent z_n per data point (which component x_n came from)::

    mu  ~ Normal(0, 3)
    z_n ~ Bernoulli(1/2)                 n = 1..N
    x_n ~ Normal(z_n * mu, 1)

and the mean-field guide q(mu) q(z) = Normal(m, s) prod_n Bernoulli(sigmoid(theta_n)).
Its ELBO has a closed form, so every estimator's gradient can be compared with
the exact one (variance and bias), and every fit scored by the exact ELBO of
the guide it reaches. Each estimator is fitted from the same start with the
same optimizer, particle budget and seed; an estimator that cannot take the
guide's discrete site refuses it, and its message is reported.

    python docs/tutorial/choosing_an_estimator.py --out docs/tutorial/output

writes ``results.json``, ``table.rst`` (the table of the documentation page)
and ``choosing_an_estimator.png`` into ``--out``.
"""

import argparse
import io
import json
import math
import os
import sys
import time

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from pyro.infer import SVI, Trace_ELBO, TraceGraph_ELBO
from pyro.optim import Adam

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from pyro_vi import (  # noqa: E402
    ControlVariateELBO,
    DisARMELBO,
    ImportanceWeightedELBO,
    RaoBlackwellELBO,
    ReinforceLeaveOneOutELBO,
    ScoreFunctionELBO,
    StickingTheLandingELBO,
    gradient_statistics,
)

PRIOR_SCALE = 3.0
MIXING = 0.5
TRUE_MU = 2.5
INIT_LOC, INIT_SCALE = 0.0, 1.0
PARAMS = ("mu_loc", "mu_scale", "z_logits")
GLOBAL, LOCAL = ("mu_loc", "mu_scale"), ("z_logits",)


# ---------------------------------------------------------------- model and guide


def model(x):
    mu = pyro.sample("mu", dist.Normal(0.0, PRIOR_SCALE))
    with pyro.plate("data", len(x)):
        z = pyro.sample("z", dist.Bernoulli(MIXING))
        pyro.sample("x", dist.Normal(z * mu, 1.0), obs=x)


def guide(x):
    loc = pyro.param("mu_loc", torch.tensor(INIT_LOC))
    scale = pyro.param("mu_scale", torch.tensor(INIT_SCALE), constraint=constraints.positive)
    logits = pyro.param("z_logits", torch.zeros(len(x)))
    pyro.sample("mu", dist.Normal(loc, scale))
    with pyro.plate("data", len(x)):
        pyro.sample("z", dist.Bernoulli(logits=logits))


def make_data(num_data, seed):
    generator = torch.Generator().manual_seed(seed)
    z = (torch.rand(num_data, generator=generator) < MIXING).float()
    return z * TRUE_MU + torch.randn(num_data, generator=generator)


def exact_elbo(x, loc, scale, logits):
    """E_q[log p(x, mu, z) - log q(mu, z)] in closed form (z_n^2 = z_n)."""
    p = torch.sigmoid(logits)
    second_moment = loc**2 + scale**2
    log_prior_mu = -0.5 * math.log(2 * math.pi * PRIOR_SCALE**2) - second_moment / (2 * PRIOR_SCALE**2)
    log_prior_z = (p * math.log(MIXING) + (1 - p) * math.log(1 - MIXING)).sum()
    log_lik = (-0.5 * math.log(2 * math.pi) - 0.5 * (x**2 - 2 * x * p * loc + p * second_moment)).sum()
    entropy = dist.Normal(loc, scale).entropy() + dist.Bernoulli(logits=logits).entropy().sum()
    return log_prior_mu + log_prior_z + log_lik + entropy


def current_elbo(x):
    with torch.no_grad():
        return float(exact_elbo(x, *(pyro.param(name) for name in PARAMS)))


def exact_loss_gradient(x):
    """The exact gradient of the negative ELBO with respect to the unconstrained
    parameters (what SVI's optimizer sees), by name."""
    unconstrained = [pyro.param(name).unconstrained() for name in PARAMS]
    loss = -exact_elbo(x, *(pyro.param(name) for name in PARAMS))
    return dict(zip(PARAMS, torch.autograd.grad(loss, unconstrained)))


def reset_guide(x):
    pyro.clear_param_store()
    guide(x)


def optimum(x, steps=3000):
    """The maximum of the closed-form ELBO over the guide family (Adam on the
    exact gradient), and the parameters that reach it."""
    reset_guide(x)
    params = [pyro.param(name).unconstrained() for name in PARAMS]
    optimizer = torch.optim.Adam(params, lr=0.05)
    for _ in range(steps):
        optimizer.zero_grad()
        (-exact_elbo(x, *(pyro.param(name) for name in PARAMS))).backward()
        optimizer.step()
    return current_elbo(x), {name: pyro.param(name).detach().clone() for name in PARAMS}


# ---------------------------------------------------------------- the estimators

# label -> (factory of the ELBO for S particles, the objective it estimates)
ESTIMATORS = {
    "Trace_ELBO (Pyro)": (lambda s, **kw: Trace_ELBO(num_particles=s, **kw), "ELBO"),
    "TraceGraph_ELBO (Pyro)": (lambda s, **kw: TraceGraph_ELBO(num_particles=s, **kw), "ELBO"),
    "ScoreFunctionELBO": (lambda s, **kw: ScoreFunctionELBO(num_particles=s, **kw), "ELBO"),
    "ControlVariateELBO": (lambda s, **kw: ControlVariateELBO(num_particles=s, **kw), "ELBO"),
    "ControlVariateELBO(pathwise=True)": (
        lambda s, **kw: ControlVariateELBO(num_particles=s, **kw, pathwise=True),
        "ELBO",
    ),
    "RaoBlackwellELBO": (lambda s, **kw: RaoBlackwellELBO(num_particles=s, **kw), "ELBO"),
    "RaoBlackwellELBO(pathwise=True)": (lambda s, **kw: RaoBlackwellELBO(num_particles=s, **kw, pathwise=True), "ELBO"),
    "ReinforceLeaveOneOutELBO(pathwise=True)": (
        lambda s, **kw: ReinforceLeaveOneOutELBO(num_particles=s, **kw, pathwise=True),
        "ELBO",
    ),
    "DisARMELBO": (lambda s, **kw: DisARMELBO(num_particles=s // 2, **kw), "ELBO"),
    "StickingTheLandingELBO": (lambda s, **kw: StickingTheLandingELBO(num_particles=s, **kw), "ELBO"),
    "ImportanceWeightedELBO": (lambda s, **kw: ImportanceWeightedELBO(num_particles=s, **kw), "IW bound"),
    "ImportanceWeightedELBO(dreg)": (
        lambda s, **kw: ImportanceWeightedELBO(num_particles=s, **kw, gradient="dreg"),
        "IW bound",
    ),
    "ImportanceWeightedELBO(vimco)": (
        lambda s, **kw: ImportanceWeightedELBO(num_particles=s, **kw, gradient="vimco"),
        "IW bound",
    ),
    "ImportanceWeightedELBO(disarm)": (
        lambda s, **kw: ImportanceWeightedELBO(num_particles=s // 2, **kw, gradient="disarm"),
        "IW bound",
    ),
}


def make_elbo(label, particles):
    factory, _ = ESTIMATORS[label]
    return factory(particles, vectorize_particles=True, max_plate_nesting=1)


def refusal(elbo, x):
    """The ``ValueError`` message with which ``elbo`` refuses the guide, or ``None``."""
    reset_guide(x)
    try:
        elbo.loss(model, guide, x)
    except ValueError as error:
        return str(error)
    return None


def gradient_summary(elbo, x, draws, at):
    """Total variance of the estimator's gradient over the global and the local
    parameters, and its largest |mean - exact| / standard error, at the
    parameters ``at`` (``None``: the start)."""
    reset_guide(x)
    for name, value in (at or {}).items():
        pyro.get_param_store()[name] = value  # sets the constrained value
    stats = gradient_statistics(elbo, model, guide, x, num_draws=draws)
    exact = exact_loss_gradient(x)
    z_scores = torch.cat([((stats[n].mean - exact[n]) / stats[n].standard_error).abs().reshape(-1) for n in PARAMS])
    return {
        "variance_global": sum(stats[n].total_variance for n in GLOBAL),
        "variance_local": sum(stats[n].total_variance for n in LOCAL),
        "max_abs_z": float(z_scores.max()),
    }


def fit(elbo, x, steps, lr):
    """SVI from the start; the exact ELBO of the guide after every step."""
    reset_guide(x)
    svi = SVI(model, guide, Adam({"lr": lr}), elbo)
    history = []
    start = time.perf_counter()
    for _ in range(steps):
        svi.step(x)
        history.append(round(current_elbo(x), 5))
    return history, 1000 * (time.perf_counter() - start) / steps


def run(args):
    torch.set_num_threads(1)
    x = make_data(args.num_data, args.seed)
    best_elbo, best_params = optimum(x)
    results = {"args": vars(args), "max_elbo": best_elbo, "estimators": {}}
    for label, (_, objective) in ESTIMATORS.items():
        pyro.set_rng_seed(args.seed)
        elbo = make_elbo(label, args.particles)
        row = {"objective": objective, "refused": refusal(elbo, x)}
        if row["refused"] is None:
            pyro.set_rng_seed(args.seed)
            row["start"] = gradient_summary(elbo, x, args.draws, at=None)
            row["optimum"] = gradient_summary(elbo, x, args.draws, at=best_params)
            pyro.set_rng_seed(args.seed)
            history, ms = fit(elbo, x, args.steps, args.lr)
            tail = history[-max(1, len(history) // 10) :]
            row.update(elbo_history=history, final_gap=best_elbo - sum(tail) / len(tail), ms_per_step=ms)
        results["estimators"][label] = row
        print(
            "{:42s} {}".format(
                label,
                "refused"
                if row["refused"]
                else "final ELBO gap {:.3g}, {:.1f} ms/step".format(row["final_gap"], row["ms_per_step"]),
            ),
            flush=True,
        )
    return results


# ---------------------------------------------------------------- outputs


def table_rst(results):
    """The results as an rST list-table, then the refusals' messages."""
    header = [
        "estimator",
        "objective",
        "variance q(mu), start",
        "q(z), start",
        "q(mu), optimum",
        "q(z), optimum",
        "max abs(z), start",
        "ELBO gap, last 10%",
        "ms/step",
    ]
    lines = [".. list-table::", "   :header-rows: 1", "   :stub-columns: 1", ""]
    rows = [header]
    refused = []
    for label, row in results["estimators"].items():
        if row["refused"]:
            refused.append((label, row["refused"]))
            rows.append([label, row["objective"], f"refused [{len(refused)}]"] + ["\\"] * 6)
            continue
        bias = "{:.1f}".format(row["start"]["max_abs_z"]) if row["objective"] == "ELBO" else "(other objective)"
        rows.append(
            [label, row["objective"]]
            + [
                f"{row[where][group]:.3g}"
                for where in ("start", "optimum")
                for group in ("variance_global", "variance_local")
            ]
            + [bias, "{:.3g}".format(row["final_gap"]), "{:.1f}".format(row["ms_per_step"])]
        )
    for row in rows:
        lines.extend(("   * - " if i == 0 else "     - ") + cell for i, cell in enumerate(row))
    lines.append("")
    for number, (label, message) in enumerate(refused, 1):
        lines.append("[{}] ``{}``: *{}*".format(number, label, message.replace("*", "\\*")))
        lines.append("")
    return "\n".join(lines)


def figure(results, path):
    """Left: the gradient variances; right: one small panel of convergence per
    estimator, the others in grey behind it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fitted = {k: v for k, v in results["estimators"].items() if not v["refused"]}
    labels = list(fitted)
    columns = 3
    rows = -(-(len(labels) + 1) // columns)  # one more panel: the legend
    fig = plt.figure(figsize=(15, 2.2 * rows + 1.0))
    outer = fig.add_gridspec(1, 2, width_ratios=[1.25, 3], wspace=0.3, left=0.19, right=0.99, top=0.9, bottom=0.08)
    grid = outer[1].subgridspec(rows, columns, wspace=0.08, hspace=0.42)

    left = fig.add_subplot(outer[0])
    series = [
        ("start", "variance_global", "o", "tab:blue"),
        ("start", "variance_local", "o", "tab:orange"),
        ("optimum", "variance_global", "s", "tab:blue"),
        ("optimum", "variance_local", "s", "tab:orange"),
    ]
    handles = []
    for j, (where, group, marker, color) in enumerate(series):
        handles.append(
            left.scatter(
                [fitted[k][where][group] for k in labels],
                [i + (j - 1.5) * 0.18 for i in range(len(labels))],
                marker=marker,
                s=28,
                color=color,
                facecolors=color if where == "start" else "none",
                label="{} params, {}".format(
                    "q(mu)" if group == "variance_global" else "q(z)", "start" if where == "start" else "ELBO optimum"
                ),
            )
        )
    left.set_yticks(range(len(labels)))
    left.set_yticklabels(labels, fontsize=8.5)
    left.set_ylim(len(labels) - 0.5, -0.5)
    left.set_xscale("log")
    left.set_xlabel(
        "total gradient variance\n({} draws of {} particles each)".format(
            results["args"]["draws"], results["args"]["particles"]
        ),
        fontsize=9,
    )
    left.grid(axis="x", alpha=0.3)
    left.set_title("gradient variance (lower is better)", fontsize=10)

    gaps = {k: [max(results["max_elbo"] - v, 1e-3) for v in fitted[k]["elbo_history"]] for k in labels}
    steps = range(1, len(gaps[labels[0]]) + 1)
    low = min(min(g) for g in gaps.values())
    high = max(max(g) for g in gaps.values())
    first = None
    for i, label in enumerate(labels):
        ax = fig.add_subplot(grid[i // columns, i % columns], sharex=first, sharey=first)
        first = first or ax
        for other in labels:
            if other != label:
                ax.plot(steps, gaps[other], color="0.8", linewidth=0.7)
        ax.plot(steps, gaps[label], color="tab:red", linewidth=1.4)
        ax.set_yscale("log")
        ax.set_ylim(low / 1.5, high * 1.5)
        ax.set_title(label.replace("pathwise=True", "pathwise"), fontsize=8.5)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=7)
        if i % columns:
            ax.tick_params(labelleft=False)
        else:
            ax.set_ylabel("ELBO gap (nats)", fontsize=8)
        if i + columns < len(labels):  # a panel below it
            ax.tick_params(labelbottom=False)
        else:
            ax.set_xlabel("SVI step", fontsize=8)
    slot = fig.add_subplot(grid[len(labels) // columns, len(labels) % columns])
    slot.axis("off")
    slot.legend(
        handles=handles, loc="center", fontsize=8, frameon=False, title="gradient variance markers", title_fontsize=8
    )
    fig.text(
        0.6,
        0.955,
        "convergence: exact ELBO gap to the optimum of the family after each SVI step "
        "(Adam, lr {}); red: the estimator, grey: the others".format(results["args"]["lr"]),
        ha="center",
        fontsize=9.5,
    )
    buffer = io.BytesIO()
    fig.savefig(buffer, dpi=80)
    plt.close(fig)
    from PIL import Image

    buffer.seek(0)  # a 128-colour palette keeps the committed PNG small
    Image.open(buffer).convert("RGB").quantize(colors=128).save(path, optimize=True)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "output"))
    parser.add_argument("--steps", type=int, default=600, help="SVI steps per estimator")
    parser.add_argument("--draws", type=int, default=200, help="gradient draws for the variance")
    parser.add_argument("--particles", type=int, default=10, help="particles per step (DisARM: half as many pairs)")
    parser.add_argument("--num-data", type=int, default=20)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.particles < 4 or args.particles % 2:
        raise SystemExit("--particles must be even and at least 4")
    os.makedirs(args.out, exist_ok=True)
    start = time.perf_counter()
    results = run(args)
    results["wall_seconds"] = time.perf_counter() - start
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    with open(os.path.join(args.out, "table.rst"), "w") as f:
        f.write(table_rst(results))
    figure(results, os.path.join(args.out, "choosing_an_estimator.png"))
    print("wrote {} in {:.0f} s".format(args.out, results["wall_seconds"]))
    return results


if __name__ == "__main__":
    main()
