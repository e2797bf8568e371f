"""Sphinx configuration of the pyro_vi documentation.

Build (warnings are errors, as in ``tests/docs/test_docs.py``)::

    python -m sphinx -W --keep-going -b html docs docs/_build/html
"""

import os
import sys

DOCS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(DOCS)
sys.path.insert(0, ROOT)  # this checkout's pyro_vi
sys.path.insert(0, os.path.join(DOCS, "_ext"))

project = "pyro_vi"
author = "the pyro_vi authors"
copyright = "pyro_vi authors"
release = "0.1.0"

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.mathjax",
    # MathJax (3.2) copied into the build (_static/mathjax/) and loaded from there,
    # not from a CDN: the math renders offline
    "sphinx-mathjax-offline",
    "compatibility_table",
]

exclude_patterns = ["_build", "tutorial/output", "Thumbs.db", ".DS_Store"]
templates_path = []
html_static_path = []
html_theme = "alabaster"
html_theme_options = {"page_width": "1180px", "sidebar_width": "230px"}
html_title = "pyro_vi"

autodoc_member_order = "bysource"
autodoc_typehints = "none"  # the docstrings give the types in :param:
autodoc_default_options = {"members": True}
add_module_names = False
nitpicky = False


def _resolve_public_name(app, env, node, contnode):
    """Docstrings and the API page refer to the public names
    (``:class:`~pyro_vi.ScoreFunctionELBO```); the pages document each object
    in a module. Resolve the first to the second: the object's own module,
    else a module that exports it (``load_checkpoint`` is defined as ``load``
    in ``pyro_vi.training.checkpoint`` and documented in ``pyro_vi.training``)."""
    target = node.get("reftarget", "")
    if node.get("refdomain") != "py" or not target.startswith("pyro_vi.") or target.count(".") != 1:
        return None
    import pyro_vi

    name = target.split(".", 1)[1]
    if name not in pyro_vi.__all__:
        return None
    obj = getattr(pyro_vi, name)
    exporters = [
        module.__name__
        for module in list(sys.modules.values())
        if getattr(module, "__name__", "").startswith("pyro_vi.")
        and getattr(module, "__dict__", {}).get(name) is obj
        and name in getattr(module, "__all__", ())
    ]
    for module in [getattr(obj, "__module__", None)] + sorted(exporters):
        if module and module != "pyro_vi":
            found = env.get_domain("py").resolve_xref(
                env, node["refdoc"], app.builder, node["reftype"], f"{module}.{name}", node, contnode
            )
            if found is not None:
                return found
    return None


def _end_summaries_with_a_period(app, doctree):
    """The API page's summaries are the first sentences of the docstrings,
    some of which lead into a formula with a colon or a comma; end them with
    a period."""
    from docutils import nodes
    from sphinx.ext.autosummary import autosummary_table

    for table in doctree.findall(autosummary_table):
        for entry in table.findall(nodes.entry):
            texts = list(entry.findall(nodes.Text))
            end = texts[-1] if texts else None
            if end is not None and end.rstrip().rstrip(".").endswith((":", ",")):
                end.parent.replace(end, nodes.Text(end.rstrip().rstrip(".").rstrip(":,") + "."))


def setup(app):
    app.connect("missing-reference", _resolve_public_name)
    app.connect("doctree-read", _end_summaries_with_a_period)
