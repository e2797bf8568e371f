"""The one protocol every study follows.

A study is a module ``experiments/NAME.py`` (or a package
``experiments/NAME/``) that ends with::

    STUDY = Study(
        name="NAME",                 # results/NAME/, the README block <!-- results:NAME -->
        parser=parser,               # () -> argparse.ArgumentParser, built with _cli.parser
        run=run,                     # args -> results dict (numbers, lists, dicts)
        figures=figures,             # (results, out) -> None: PNGs from the results alone
        readme_block=readme_block,   # results -> Markdown of the README block
    )

    if __name__ == "__main__":
        STUDY.main()

and is run from the repository root as ``python -m experiments.NAME``.
:meth:`Study.main` parses (every bad flag is refused before any work, see
:mod:`experiments._cli`), runs, adds the run record and writes
``results.json`` (:func:`experiments._results.finish`), then draws the
figures. ``--plot-only`` redraws the figures from an earlier
``results.json`` without running anything. ``python -m
experiments.render_readme`` renders each study's block from its committed
``results/NAME/results.json``.
"""

import argparse
import dataclasses
import json
import os
import time
from typing import Callable, Optional

from experiments import _cli
from experiments._results import finish

__all__ = ["Study"]


@dataclasses.dataclass(frozen=True)
class Study:
    """One study: what it takes, what it computes, what it draws and how
    the README shows it."""

    name: str
    parser: Callable[[], argparse.ArgumentParser]
    run: Callable[[argparse.Namespace], dict]
    figures: Optional[Callable[[dict, str], None]] = None
    readme_block: Optional[Callable[[dict], str]] = None
    #: cross-flag checks, ``args -> None``; a ``ValueError`` is a flag error
    check: Optional[Callable[[argparse.Namespace], None]] = None

    def parse(self, argv=None) -> argparse.Namespace:
        """The checked arguments (see :func:`experiments._cli.parse`)."""
        return _cli.parse(self.parser(), argv, self.check)

    def results_path(self, out) -> str:
        return os.path.join(out, "results.json")

    def load(self, out) -> dict:
        """The ``results.json`` an earlier run wrote to ``out``."""
        path = self.results_path(out)
        try:
            with open(path) as f:
                return json.load(f)
        except (OSError, ValueError) as error:
            raise SystemExit(f"{self.name}: --plot-only needs {path} from an earlier run ({error})") from None

    def main(self, argv=None) -> dict:
        """Parses ``argv``, runs (or, with ``--plot-only``, reloads) and
        draws; returns the results with their run record."""
        args = self.parse(argv)
        if getattr(args, "plot_only", False):
            if args.out is None:
                raise SystemExit(f"{self.name}: --plot-only needs --out, the folder of an earlier run")
            results = self.load(args.out)
        else:
            start = time.perf_counter()
            results = finish(self.name, args, self.run(args), start)
        if self.figures is not None and args.out is not None:
            self.figures(results, args.out)
        return results
