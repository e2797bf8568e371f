"""The README's result tables are what experiments/render_readme.py renders
from the committed results/*/results.json (no study is run here)."""

import difflib
import json

import pytest

from experiments import render_readme
from experiments._study import Study
from experiments.render_readme import README, blocks_in, main, render, renderers, rewrite


def readme():
    with open(README) as f:
        return f.read()


def test_readme_blocks_equal_what_the_committed_results_render():
    text = readme()
    rendered = rewrite(text)
    diff = "".join(difflib.unified_diff(text.splitlines(True), rendered.splitlines(True), "README.md", "rendered"))
    assert rendered == text, "README.md is stale; run python -m experiments.render_readme\n" + diff


def test_every_block_is_in_the_readme_once():
    names = blocks_in(readme())
    assert len(names) == len(set(names)), "a block is marked twice"
    assert renderers() == set(names), "registered blocks without markers (or markers without a renderer)"


@pytest.fixture
def demo_block(monkeypatch, tmp_path):
    """A block ``demo`` reading ``tmp_path/results/demo/results.json``."""
    (tmp_path / "results" / "demo").mkdir(parents=True)
    (tmp_path / "results" / "demo" / "results.json").write_text(json.dumps({"value": 1.5}))
    demo = Study("demo", parser=None, run=None, readme_block=lambda r: "value {}".format(r["value"]))
    monkeypatch.setattr(render_readme, "studies", lambda: {"demo": demo})
    return tmp_path


def test_rewrite_replaces_only_the_marked_block(demo_block):
    text = "before\n<!-- results:demo -->\nold text\n<!-- /results:demo -->\nafter\n"
    assert rewrite(text, root=demo_block) == "before\n<!-- results:demo -->\nvalue 1.5\n<!-- /results:demo -->\nafter\n"
    assert rewrite(rewrite(text, root=demo_block), root=demo_block) == rewrite(text, root=demo_block)


def test_unknown_block_and_missing_results_are_named(demo_block):
    with pytest.raises(KeyError, match="'nothing' has no renderer"):
        rewrite("<!-- results:nothing -->\n<!-- /results:nothing -->\n", root=demo_block)
    (demo_block / "results" / "demo" / "results.json").unlink()
    with pytest.raises(FileNotFoundError, match="results/demo/results.json is missing: run"):
        render("demo", root=demo_block)


def test_check_only_compares(demo_block, monkeypatch):
    path = demo_block / "README.md"
    path.write_text("<!-- results:demo -->\nstale\n<!-- /results:demo -->\n")
    monkeypatch.setattr(render_readme, "rewrite", lambda text: rewrite(text, root=demo_block))
    assert main(["--check", "--readme", str(path)]) == 1
    assert "stale" in path.read_text()  # --check writes nothing
    assert main(["--readme", str(path)]) == 0
    assert main(["--check", "--readme", str(path)]) == 0
    assert "value 1.5" in path.read_text()


def test_a_block_gets_the_results_of_the_studies_it_reads(demo_block, monkeypatch):
    (demo_block / "results" / "other").mkdir()
    (demo_block / "results" / "other" / "results.json").write_text(json.dumps({"value": 2.5}))
    both = Study(
        "demo",
        parser=None,
        run=None,
        blocks={"pair": lambda mine, theirs: "{} and {}".format(mine["value"], theirs["value"])},
        reads=("other",),
    )
    monkeypatch.setattr(render_readme, "studies", lambda: {"demo": both})
    assert renderers() == {"pair"}
    assert render("pair", root=demo_block) == "1.5 and 2.5\n"
