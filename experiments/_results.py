"""What every study's ``results.json`` shares: numbers over seeds as mean,
standard deviation and the per-seed values, a rule for "within the seed
spread", and a record of how and where the study ran (the command, seeds,
threads, machine and wall time), which the README's tables are rendered from
(:mod:`experiments.render_readme`); and the seeded fit the SVI studies repeat
per seed and estimator (:func:`seeded_fit`)."""

import json
import math
import os
import shlex
import sys
import time

import numpy as np


def spread(values):
    """``{"mean", "std", "n", "values"}`` of one number over seeds; ``std``
    is the sample standard deviation (``None`` for one seed). ``None``
    values (a run that never reached a target) are left out of the mean and
    counted in ``"missing"``."""
    values = [None if v is None else float(v) for v in values]
    present = [v for v in values if v is not None]
    result = {
        "mean": float(np.mean(present)) if present else None,
        "std": float(np.std(present, ddof=1)) if len(present) > 1 else None,
        "n": len(present),
        "values": values,
    }
    if len(present) < len(values):
        result["missing"] = len(values) - len(present)
    return result


def spreads(rows, keys=None):
    """Per-seed dicts (one per seed, same keys) -> ``key -> spread``; only
    the numeric ``keys`` (default: every key whose values are numbers)."""
    keys = keys or [k for k, v in rows[0].items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    return {k: spread([row[k] for row in rows]) for k in keys}


def seed_summary(per_seed, keys=None, within=()):
    """``{"summary": name -> key -> spread, "within_seed_spread": key ->
    pairs}`` of ``per_seed`` (name -> one row per seed): :func:`spreads` of
    each name's rows (``keys``), and for each key of ``within`` the pairs of
    names :func:`indistinguishable` in it."""
    summary = {name: spreads(rows, keys) for name, rows in per_seed.items()}
    pairs = {key: indistinguishable({name: s[key] for name, s in summary.items()}) for key in within}
    return {"summary": summary, "within_seed_spread": pairs}


def seeded_fit(seed, model, guide, elbo, optim, *args, **kwargs):
    """:func:`pyro_vi.training.fit` without a progress bar, from an empty
    param store and ``pyro.set_rng_seed(seed)``: every estimator of a seed
    starts alike."""
    import pyro

    from pyro_vi.training import fit

    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    return fit(model, guide, elbo, optim, *args, progress=False, **kwargs)


def seeded_variances(seed, elbo, model, guide, *args, num_draws, params=None):
    """Per parameter, the total variance of ``elbo``'s gradient over
    ``num_draws`` draws (:func:`pyro_vi.gradient_statistics`) from an empty
    param store and ``pyro.set_rng_seed(seed)``."""
    import pyro

    from pyro_vi import gradient_statistics

    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    stats = gradient_statistics(elbo, model, guide, *args, num_draws=num_draws, params=params)
    return {name: s.total_variance for name, s in stats.items()}


def within_spread(a, b):
    """Whether two estimators' means differ by less than the sum of their
    seed standard deviations (mean +- std intervals overlap): then the runs
    cannot tell them apart. ``None`` with fewer than two seeds."""
    if a["std"] is None or b["std"] is None:
        return None
    return abs(a["mean"] - b["mean"]) <= a["std"] + b["std"]


def indistinguishable(stats):
    """The pairs ``[a, b]`` of ``stats`` (name -> :func:`spread`, in order)
    that are :func:`within_spread` of each other."""
    names = list(stats)
    return [[a, b] for i, a in enumerate(names) for b in names[i + 1 :] if within_spread(stats[a], stats[b])]


def fmt(stat, spec=".3f"):
    """``"mean ± std"`` of a :func:`spread` (just the mean for one seed)."""
    if stat["mean"] is None:
        return "never"
    text = format(stat["mean"], spec)
    if stat["std"] is not None:
        text += " ± " + format(stat["std"], spec)
    if stat.get("missing"):
        text += " ({} of {} never)".format(stat["missing"], len(stat["values"]))
    return text


def _load_average():
    """The machine's 1-minute load average at the end of the run (how busy
    the shared cores were), or None where the OS does not say."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def command(study, argv=None):
    """The command line that ran ``study``: ``python -m experiments.STUDY``
    and its flags (``argv``, default ``sys.argv[1:]``), or under ``torchrun``
    the launch with its process count (from torchrun's environment)."""
    launch = ["python", "-m", "experiments." + study]
    local, world = int(os.environ.get("LOCAL_WORLD_SIZE", "1")), int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        nodes = [] if world == local else [f"--nnodes={world // local}"]
        launch = ["torchrun", f"--nproc_per_node={local}"] + nodes + ["-m", "experiments." + study]
    return " ".join(launch + [shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv)])


def record(study, args, start):
    """The run record: command (its flags ``args._argv`` where
    :meth:`experiments._study.Study.main` was given them), seeds, processes,
    machine, wall time since ``start`` (a ``time.perf_counter()``), the
    process's CPU time and the load average."""
    from pyro_vi.diagnostics import machine
    from pyro_vi.training.distributed import process

    return {
        "study": study,
        "command": command(study, getattr(args, "_argv", None)),
        "seeds": list(args.seeds),
        "processes": process()[1],
        "wall_seconds": time.perf_counter() - start,
        # CPU time of the whole process (imports included): on a shared
        # machine it varies far less between runs than the wall time
        "cpu_seconds": time.process_time(),
        "load_average": _load_average(),
        "machine": machine(),
    }


def finish(study, args, results, start, report=True):
    """Adds the run record (:func:`record`) and ``args`` to ``results``,
    writes it to ``args.out/results.json`` (the first process of a
    ``torchrun`` job) and returns it; ``report`` prints a line."""
    from pyro_vi.training.distributed import process

    results = dict(run=record(study, args, start), **results)
    results.setdefault("args", {k: v for k, v in vars(args).items() if not k.startswith("_")})
    if args.out and process()[0] == 0:
        write_json(os.path.join(args.out, "results.json"), _clean(results), indent=1, allow_nan=False)
    if report:
        run = results["run"]
        print(
            "{}: {} seed(s), {} process(es), {:.0f} s wall, {:.0f} s CPU, {} torch thread(s)".format(
                study,
                len(args.seeds),
                run["processes"],
                run["wall_seconds"],
                run["cpu_seconds"],
                run["machine"]["torch_threads"],
            )
        )
    return results


def write_json(path, value, **options):
    """Writes ``value`` to ``path`` as JSON (``options``: ``json.dump``'s),
    whole or not at all: to a temporary file first, then renamed."""
    with open(path + ".tmp", "w") as f:
        json.dump(value, f, **options)
        f.write("\n")
    os.replace(path + ".tmp", path)


def thin(curves, points=400):
    """Curves over steps, thinned for the figures: ``curves`` is ``name ->
    [one curve per seed]`` over steps 1, 2, ...; returns ``name -> {"step":
    [...], "values": [per seed, at those steps]}`` at about ``points``
    steps, evenly spaced on a linear and on a log axis (the first and last
    step kept)."""
    thinned = {}
    for name, runs in curves.items():
        length, half = len(runs[0]), max(2, points // 2)
        steps = np.unique(np.r_[np.linspace(1, length, half), np.geomspace(1, length, half)].round().astype(int))
        values = [np.asarray(c, float)[steps - 1].tolist() for c in runs]
        thinned[name] = {"step": steps.tolist(), "values": values}
    return thinned


def _clean(value):
    """JSON-safe: numpy scalars and arrays to Python, floats to 10
    significant digits, NaN and inf to None, keys to strings."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, np.ndarray):
        return _clean(value.tolist())
    if hasattr(value, "tolist"):  # a torch tensor
        return _clean(value.tolist())
    if isinstance(value, (np.floating, float)):
        value = float(value)  # 10 significant digits: exact enough, half the bytes
        return float(format(value, ".10g")) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value
