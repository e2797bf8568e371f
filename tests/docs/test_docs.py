"""The documentation: the Sphinx build with warnings as errors, its math
rendered by a bundled MathJax (no CDN), the API page listing every public
name, the tutorial
"Choosing a gradient estimator" run with small settings, the committed
tutorial outputs made by the current script, and the code shown on the pages
(docs/quickstart.py, docs/examples/custom_estimator.py) run."""

import importlib.util
import json
import math
import os
import pkgutil
import re
import runpy
import subprocess
import sys

import pytest
import torch

from tests.helpers import ROOT

DOCS = os.path.join(ROOT, "docs")
TUTORIAL = os.path.join(DOCS, "tutorial", "choosing_an_estimator.py")
COMMITTED = os.path.join(DOCS, "tutorial", "output")


def _load(path, name):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tutorial():
    return _load(TUTORIAL, "choosing_an_estimator")


def _check_outputs(out, labels):
    with open(os.path.join(out, "results.json")) as f:
        results = json.load(f)
    assert list(results["estimators"]) == labels
    assert math.isfinite(results["max_elbo"])
    with open(os.path.join(out, "table.rst")) as f:
        table = f.read()
    for label, row in results["estimators"].items():
        assert f"   * - {label}\n" in table, label
        if row["refused"]:
            # a refusal names the site and the reason, and the table shows the message
            assert "site 'z'" in row["refused"] and row["refused"] in table, (label, row["refused"])
            continue
        numbers = [row[where][key] for where in ("start", "optimum") for key in ("variance_global", "variance_local")]
        assert not math.isnan(row["start"]["max_abs_z"]), label
        numbers += row["elbo_history"] + [row["final_gap"], row["ms_per_step"]]
        assert all(math.isfinite(v) for v in numbers), label
        assert row["start"]["variance_global"] > 0 and row["start"]["variance_local"] > 0, label
    assert os.path.getsize(os.path.join(out, "choosing_an_estimator.png")) > 10_000
    return results


def test_tutorial_runs_with_small_settings(tutorial, tmp_path, fork_server):
    """``python docs/tutorial/choosing_an_estimator.py``, as a new process would."""
    out = str(tmp_path / "tutorial")
    proc = fork_server.run([TUTORIAL, "--out", out, "--steps", "10", "--draws", "3", "--particles", "4"])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    results = _check_outputs(out, list(tutorial.ESTIMATORS))
    refused = {label for label, row in results["estimators"].items() if row["refused"]}
    # the guide's discrete site: refused by the estimators that need a path derivative
    assert refused == {"StickingTheLandingELBO", "ImportanceWeightedELBO", "ImportanceWeightedELBO(dreg)"}


def test_committed_tutorial_outputs_come_from_the_current_script(tutorial):
    """docs/tutorial/output/ was written by the script's current list of
    estimators and default settings; rerun the script when either changes."""
    results = _check_outputs(COMMITTED, list(tutorial.ESTIMATORS))
    defaults = vars(tutorial.parse_args([]))
    for key in ("steps", "draws", "particles", "num_data", "lr", "seed"):
        assert results["args"][key] == defaults[key], key


def test_tutorial_exact_elbo_matches_monte_carlo(tutorial):
    """The closed-form ELBO the tutorial scores every fit with."""
    from pyro_vi import ScoreFunctionELBO

    x = tutorial.make_data(20, 0)
    tutorial.reset_guide(x)
    elbo = ScoreFunctionELBO(num_particles=4000, vectorize_particles=True, max_plate_nesting=1)
    estimates = torch.tensor([-elbo.loss(tutorial.model, tutorial.guide, x) for _ in range(5)])
    error = abs(estimates.mean().item() - tutorial.current_elbo(x))
    assert error < 5 * estimates.std().item() / math.sqrt(5) + 1e-3


@pytest.fixture(scope="module")
def built_docs(tmp_path_factory):
    """The HTML folder of one Sphinx build with warnings as errors."""
    tmp = tmp_path_factory.mktemp("docs")
    out = tmp / "html"
    proc = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html", "-d", str(tmp / "doctrees"), DOCS]
        + [str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, "sphinx build failed:\n" + proc.stdout + proc.stderr
    return out


# the tests of the build share one worker, so that it is built once
docs_build = pytest.mark.xdist_group("docs_build")


@docs_build
def test_docs_build_without_warnings(built_docs):
    out = built_docs
    with open(os.path.join(ROOT, "results", "compatibility", "results.json")) as f:
        compatibility = json.load(f)
    page = (out / "compatibility.html").read_text()
    for estimator in compatibility["estimators"]:
        assert f">{estimator}<" in page, estimator
    for page in (
        "estimators/score_function",
        "estimators/rao_blackwell",
        "estimators/sticking_the_landing",
        "estimators/importance_weighted",
        "estimators/discrete",
        "contract",
        "training",
        "diagnostics",
        "distributed",
        "natural_gradients",
        "gumbel_softmax",
        "tutorial/choosing_an_estimator",
        "which_estimator",
        "api",
    ):
        assert (out / (page + ".html")).is_file(), page
    assert "Algorithm" in (out / "estimators" / "discrete.html").read_text()
    assert '<span class="nc">VariationalInference</span>' in (out / "training.html").read_text()


SCRIPT_SOURCE = re.compile(r"<script\b[^>]*\bsrc=\"([^\"]+)\"")


@docs_build
def test_math_is_rendered_by_a_bundled_mathjax(built_docs):
    """No page loads a script from the network, and the pages with math load
    MathJax from a file of the build, next to the fonts it loads."""
    out = built_docs
    loaded = {}
    for page in sorted(out.rglob("*.html")):
        for source in SCRIPT_SOURCE.findall(page.read_text()):
            assert "://" not in source and not source.startswith("//"), (page, source)
            if "mathjax" in source.lower():
                loaded[page.relative_to(out).as_posix()] = (page.parent / source.split("?")[0]).resolve()
    for page in ("index.html", "estimators/score_function.html", "estimators/importance_weighted.html"):
        assert page in loaded, page
    for mathjax in set(loaded.values()):
        assert mathjax.is_file() and mathjax.is_relative_to(out.resolve()), mathjax
        assert "MathJax" in mathjax.read_text(errors="replace")
        assert any((mathjax.parent / "output" / "chtml" / "fonts").rglob("*.woff")), mathjax


API_LINK = re.compile(
    r'<a class="reference internal" href="([^"#]*)#([^"]+)"[^>]*><code class="xref py py-obj[^"]*">'
    r'<span class="pre">(\w+)</span></code></a>'
)


@docs_build
def test_api_page_links_every_public_name(built_docs):
    """Every name of ``pyro_vi.__all__`` is on the API reference page, linked
    to its documentation on a topic page: an export added without a line on
    the page, or without documentation, fails here."""
    import pyro_vi

    out = built_docs
    links = {name: (page, anchor) for page, anchor, name in API_LINK.findall((out / "api.html").read_text())}
    assert set(pyro_vi.__all__) <= set(links), sorted(set(pyro_vi.__all__) - set(links))
    for name in pyro_vi.__all__:
        page, anchor = links[name]
        assert page and f'id="{anchor}"' in (out / page).read_text(), (name, page, anchor)


@docs_build
def test_public_submodules_names_are_on_the_api_page(built_docs):
    """What the API page says: every name a public submodule of ``pyro_vi``
    exports is a package name or a building block listed on the page."""
    import pyro_vi

    linked = {name for _, _, name in API_LINK.findall((built_docs / "api.html").read_text())}
    for info in pkgutil.iter_modules(pyro_vi.__path__, "pyro_vi."):
        if not info.name.rsplit(".", 1)[1].startswith("_"):
            module = importlib.import_module(info.name)
            assert set(module.__all__) <= set(pyro_vi.__all__) | linked, (info.name, set(module.__all__) - linked)


def test_compatibility_markdown_to_rst():
    sys.path.insert(0, os.path.join(DOCS, "_ext"))
    try:
        from compatibility_table import markdown_to_rst
    finally:
        sys.path.remove(os.path.join(DOCS, "_ext"))
    lines = markdown_to_rst(
        "| estimator | a | b |\n|---|---|---|\n| E | yes | 2 of 4<sup>3</sup><sup>4</sup> "
        "(subsampled) |\n\n1. refused: why"
    )
    assert "     - 2 of 4\\ :sup:`3,4` (subsampled)" in lines
    assert lines[-1] == "1. refused: why"
    with pytest.raises(ValueError, match="unexpected line"):
        markdown_to_rst("| a |\n|---|\n| b |\nstray text")


def test_quick_example_runs():
    """The code of the index page."""
    namespace = runpy.run_path(os.path.join(DOCS, "quickstart.py"))
    import pyro

    x = namespace["x"]
    exact = (x.sum() / (len(x) + 0.01)).item()
    assert abs(pyro.param("loc").item() - exact) < 0.1
    assert set(namespace["stats"]) == {"loc", "scale"}


def test_custom_estimator_example_runs():
    """The example of the contract page: its gradient matches the exact one."""
    runpy.run_path(os.path.join(DOCS, "examples", "custom_estimator.py"))
    import pyro

    assert abs(pyro.param("loc").grad.item() - 0.5) < 0.15
