"""Renders the README's result blocks from the committed ``results/*/results.json``.

    python -m experiments.render_readme          # rewrites the blocks in README.md
    python -m experiments.render_readme --check  # only compares; exit 1 if they differ

A block in README.md is everything between two markers::

    <!-- results:NAME -->
    ... rendered, never edited by hand ...
    <!-- /results:NAME -->

and its content is what the study that renders block ``NAME`` returns from
its ``results/STUDY/results.json`` (see :class:`experiments._study.Study`).
To add a block, give a study a renderer and put the two markers where it
goes. The Markdown helpers are in :mod:`experiments._markdown`.
``tests/experiments/test_render_readme.py`` checks that README.md equals
what this script renders from the committed JSON.
"""

import argparse
import difflib
import importlib
import json
import os
import pkgutil
import re
import sys

import experiments

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")
MARKERS = re.compile(r"(<!-- results:([\w.-]+) -->\n)(.*?)(<!-- /results:\2 -->)", re.S)


def studies():
    """Every study of ``experiments``: module name -> its ``STUDY``."""
    found = {}
    for module in pkgutil.iter_modules(experiments.__path__):
        if not module.name.startswith("_") and module.name != "render_readme":
            study = getattr(importlib.import_module("experiments." + module.name), "STUDY", None)
            if study is not None:
                found[module.name] = study
    return found


def owners():
    """Block name -> the study that renders it."""
    blocks = {}
    for study in studies().values():
        for name in study.renderers():
            if name in blocks:
                raise ValueError(f"README block {name!r} is rendered by both {blocks[name].name} and {study.name}")
            blocks[name] = study
    return blocks


def renderers():
    """The names of every block that can be rendered."""
    return set(owners())


def load(path, root=ROOT):
    """The JSON at ``root/path``; a missing file says which study writes it."""
    full = os.path.join(root, path)
    if not os.path.isfile(full):
        study = path.split("/")[1] if path.startswith("results/") else path
        raise FileNotFoundError(
            f"{path} is missing: run `python -m experiments.{study} --out results/{study}` and commit "
            "the results.json it writes"
        )
    with open(full) as f:
        return json.load(f)


def render(name, root=ROOT):
    """The Markdown of block ``name`` (ending in a newline), from the
    committed results of the study that renders it and of those it reads."""
    study = owners().get(name)
    if study is None:
        raise KeyError(f"README block {name!r} has no renderer: give a study's STUDY a renderer of that name")
    results = [load(f"results/{other}/results.json", root) for other in (study.name,) + tuple(study.reads)]
    return study.renderers()[name](*results).rstrip("\n") + "\n"


def rewrite(text, root=ROOT):
    """``text`` with every marked block replaced by its rendering."""
    return MARKERS.sub(lambda m: m.group(1) + render(m.group(2), root) + m.group(4), text)


def blocks_in(text):
    """The block names marked in ``text``, in order."""
    return [m.group(2) for m in MARKERS.finditer(text)]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 if README.md differs")
    parser.add_argument("--readme", default=README, help="the file to render (default: README.md)")
    args = parser.parse_args(argv)
    with open(args.readme) as f:
        text = f.read()
    new = rewrite(text)
    if args.check:
        if new != text:
            sys.stdout.writelines(
                difflib.unified_diff(text.splitlines(True), new.splitlines(True), args.readme, "rendered")
            )
            print(f"\n{args.readme} differs from its results; run python -m experiments.render_readme")
            return 1
        print(f"{args.readme}: {len(blocks_in(text))} blocks up to date")
        return 0
    if new != text:
        with open(args.readme, "w") as f:
            f.write(new)
    print(f"{args.readme}: rendered {len(blocks_in(text))} blocks")
    return 0


if __name__ == "__main__":
    sys.exit(main())
