"""The ``compatibility-table`` directive: the estimator x guide-kind table
that ``python -m experiments.render_readme`` renders into README.md (between
``<!-- results:compatibility -->`` and ``<!-- /results:compatibility -->``)
from ``results/compatibility/results.json``, taken from README.md at build
time, so that the documentation holds no copy of it and the build imports
nothing from ``experiments``.

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
BLOCK = re.compile(r"<!-- results:compatibility -->\n(.*?)<!-- /results:compatibility -->", re.S)
SUPERSCRIPTS = re.compile(r"((?:<sup>\d+</sup>)+)")


def _superscripts(cell):
    """``no<sup>1</sup><sup>4</sup>`` -> ``no\\ :sup:`1,4```."""

    def replace(match):
        numbers = re.findall(r"\d+", match.group(1))
        return "\\ :sup:`{}`".format(",".join(numbers))

    return SUPERSCRIPTS.sub(replace, cell)


def markdown_to_rst(markdown):
    """The rST of the README's compatibility block: one pipe table, then
    footnote lines ``n. text``."""
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
        root = os.path.dirname(self.env.srcdir)
        readme, results = os.path.join(root, "README.md"), os.path.join(root, RESULTS)
        with open(readme) as f:
            block = BLOCK.search(f.read())
        if block is None:
            raise self.error("README.md has no compatibility block: run `python -m experiments.render_readme`")
        self.env.note_dependency(readme)
        lines = markdown_to_rst(block.group(1))
        if os.path.isfile(results):
            with open(results) as f:
                written = json.load(f)
            command, pairs = written.get("run", {}).get("command"), written.get("pairs", "?")
            lines += ["", f"Rendered from ``{RESULTS}`` (written by ``{command}``; {pairs} model/guide pairs)."]
        container = nodes.container()
        self.state.nested_parse(StringList(lines, source=readme), self.content_offset, container)
        return container.children


def setup(app):
    app.add_directive("compatibility-table", CompatibilityTable)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
