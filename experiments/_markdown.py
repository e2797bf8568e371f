"""The pieces of Markdown the studies' README blocks share, so that the
blocks read alike: tables, ``mean ± std``, factors and times in words, and
the line that says how a study ran."""


def table(header, rows, align=None):
    """A Markdown table; the first column left-aligned, the others right
    (or ``align``, a string of ``l``/``r`` per column)."""
    align = align or "l" + "r" * (len(header) - 1)
    rule = ["---" if a == "l" else "---:" for a in align]
    lines = [header, rule] + [[str(cell) for cell in row] for row in rows]
    return "\n".join("| " + " | ".join(line) + " |" for line in lines) + "\n"


def times(value):
    """A factor in words: 37, 1.4 million."""
    if value >= 1e6:
        return f"{value / 1e6:.2g} million"
    return "{:,.0f}".format(float(f"{value:.2g}")) if value >= 10 else f"{value:.2g}"


def seconds(value):
    """A wall time in words: 45 s, 3.5 min."""
    return f"{value:.0f} s" if value < 90 else f"{value / 60:.1f} min"


def machine_text(run):
    """``2 CPU cores (AMD EPYC), 1 torch thread``."""
    m = run["machine"]
    threads = m["torch_threads"]
    return "{} CPU cores ({}), {} torch thread{}".format(m["cpu_cores"], m["cpu"], threads, "" if threads == 1 else "s")


def run_line(results):
    """The command, seeds, wall and CPU time and machine of a run, as one line."""
    run = results["run"]
    seeds = run["seeds"]
    load = "" if run.get("load_average") is None else ", load average {:.1f} at the end".format(run["load_average"])
    return "Command: `{}`; seed{} {}; {} wall, {} CPU, on {}{}.\n".format(
        run["command"],
        "" if len(seeds) == 1 else "s",
        ", ".join(map(str, seeds)),
        seconds(run["wall_seconds"]),
        seconds(run["cpu_seconds"]),
        machine_text(run),
        load,
    )


def spread_sentence(pairs, what):
    """A sentence naming the pairs whose difference in ``what`` is within the
    seed spread (|difference of means| <= sum of the standard deviations)."""
    if not pairs:
        return f"Every difference in {what} is larger than the seed spread.\n"
    return (
        "Within the seed spread of each other in {} (|difference of means| <= sum of the standard "
        "deviations): {}.\n".format(what, "; ".join(f"{a} and {b}" for a, b in pairs))
    )


def ratio_cell(row, key="ratio"):
    """``1.23 (1.10-1.40)``: a median ratio and its rounds' range."""
    return "{:.2f} ({:.2f}-{:.2f})".format(row[key], row[key + "_low"], row[key + "_high"])
