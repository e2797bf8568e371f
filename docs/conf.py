"""Sphinx configuration of the pyro_vi documentation.

Build (warnings are errors, as in ``tests/test_docs.py``)::

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
    "sphinx.ext.mathjax",
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
    """Docstrings refer to the public names (``:class:`~pyro_vi.ScoreFunctionELBO```);
    the pages document each object in its module. Resolve the first to the second."""
    target = node.get("reftarget", "")
    if node.get("refdomain") != "py" or not target.startswith("pyro_vi.") or target.count(".") != 1:
        return None
    import pyro_vi

    name = target.split(".", 1)[1]
    module = getattr(getattr(pyro_vi, name, None), "__module__", None)
    if not module or module == "pyro_vi":
        return None
    return env.get_domain("py").resolve_xref(
        env, node["refdoc"], app.builder, node["reftype"], f"{module}.{name}", node, contnode
    )


def setup(app):
    app.connect("missing-reference", _resolve_public_name)
