"""The ``compatibility-table`` directive: the estimator x guide-kind table of
``results/compatibility/results.json`` (written by
``python -m experiments.compatibility``), rendered at build time by the same
function that renders it into README.md (:func:`experiments.compatibility.render`),
so that the documentation holds no copy of it.

::

    .. compatibility-table::

The Markdown table and its numbered footnotes become a ``list-table`` and an
enumerated list; ``<sup>n</sup>`` markers become ``:sup:`` roles.
"""

import json
import os
import re

from docutils import nodes
from docutils.statemachine import StringList
from sphinx.util.docutils import SphinxDirective

RESULTS = os.path.join("results", "compatibility", "results.json")
SUPERSCRIPTS = re.compile(r"((?:<sup>\d+</sup>)+)")


def _superscripts(cell):
    """``no<sup>1</sup><sup>4</sup>`` -> ``no\\ :sup:`1,4```."""

    def replace(match):
        numbers = re.findall(r"\d+", match.group(1))
        return "\\ :sup:`{}`".format(",".join(numbers))

    return SUPERSCRIPTS.sub(replace, cell)


def markdown_to_rst(markdown):
    """The rST of the Markdown that :func:`experiments.compatibility.render`
    returns: one pipe table, then footnote lines ``n. text``."""
    rows, notes = [], []
    for line in markdown.splitlines():
        line = line.strip()
        if line.startswith("|"):
            cells = [cell.strip() for cell in line.strip("|").split("|")]
            if all(set(cell) <= set("-:") for cell in cells):
                continue  # the rule under the header
            rows.append(cells)
        elif re.match(r"\d+\. ", line):
            notes.append(line)
        elif line:
            raise ValueError(f"compatibility table: unexpected line {line!r}")
    if len(rows) < 2 or len({len(row) for row in rows}) != 1:
        raise ValueError("compatibility table: no rectangular table in the rendering")
    lines = [".. list-table::", "   :header-rows: 1", "   :stub-columns: 1", "   :class: compatibility", ""]
    for row in rows:
        for i, cell in enumerate(row):
            lines.append(("   * - " if i == 0 else "     - ") + (_superscripts(cell) or "\\"))
    lines.append("")
    lines.extend(notes)
    return lines


class CompatibilityTable(SphinxDirective):
    has_content = False

    def run(self):
        from experiments.compatibility import render

        root = os.path.dirname(self.env.srcdir)
        path = os.path.join(root, RESULTS)
        if not os.path.isfile(path):
            raise self.error(
                f"{RESULTS} is missing: run `python -m experiments.compatibility --out results/compatibility`"
            )
        self.env.note_dependency(path)
        with open(path) as f:
            results = json.load(f)
        lines = markdown_to_rst(render(results["records"]))
        run = results.get("run", {})
        if run.get("command"):
            lines += [
                "",
                "Rendered from ``{}`` (written by ``{}``; {} model/guide pairs).".format(
                    RESULTS, run["command"], results.get("pairs", "?")
                ),
            ]
        container = nodes.container()
        self.state.nested_parse(StringList(lines, source=path), self.content_offset, container)
        return container.children


def setup(app):
    app.add_directive("compatibility-table", CompatibilityTable)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
