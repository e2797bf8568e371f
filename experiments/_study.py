"""The one protocol every study follows.

A study is a module ``experiments/NAME.py`` (or a package
``experiments/NAME/``, run through its ``__main__.py``) that ends with::

    STUDY = Study(
        name="NAME",                 # results/NAME/, the README block <!-- results:NAME -->
        parser=parser,               # () -> argparse.ArgumentParser, built with _cli.parser(...)
        run=run,                     # args -> results dict (numbers, lists, dicts)
        figures=figures,             # (results, out) -> None: PNGs from the results alone
        readme_block=readme_block,   # results -> Markdown of the README block
    )

    if __name__ == "__main__":
        STUDY.main()

and is run from the repository root as ``python -m experiments.NAME``.
:meth:`Study.main` parses (every bad flag is refused before any work, see
:mod:`experiments._cli`), runs, adds the run record and writes
``results.json`` (:func:`experiments._results.finish`), draws the figures
and prints the README blocks. ``--plot-only`` redraws the figures (and
reprints the blocks) from an earlier ``results.json`` without running
anything. ``python -m experiments.render_readme`` renders each block from
the committed ``results/NAME/results.json``.

A study may render more README blocks than its own (``blocks``: block name
-> renderer), and a block may read other studies' results too: the study
names them in ``reads``, and each of its renderers is called with its own
results followed by theirs, in that order.
"""

import argparse
import dataclasses
import json
import os
import time
from typing import Callable, Dict, Optional, Tuple

import torch.distributed

from experiments import _cli
from experiments._results import finish
from pyro_vi.training.distributed import in_process_group, process

__all__ = ["Study"]


@dataclasses.dataclass(frozen=True)
class Study:
    """One study: what it takes, what it computes, what it draws and how
    the README shows it."""

    name: str
    parser: Callable[[], argparse.ArgumentParser]
    run: Callable[[argparse.Namespace], dict]
    figures: Optional[Callable[[dict, str], None]] = None
    readme_block: Optional[Callable[..., str]] = None
    #: cross-flag checks, ``args -> None``; a ``ValueError`` is a flag error
    check: Optional[Callable[[argparse.Namespace], None]] = None
    #: more README blocks: block name -> renderer, called like ``readme_block``
    blocks: Dict[str, Callable[..., str]] = dataclasses.field(default_factory=dict)
    #: the other studies whose ``results.json`` the renderers read, after this one's
    reads: Tuple[str, ...] = ()

    def renderers(self) -> Dict[str, Callable[..., str]]:
        """Every README block of this study: block name -> renderer."""
        own = {self.name: self.readme_block} if self.readme_block is not None else {}
        return dict(own, **self.blocks)

    def parse(self, argv=None) -> argparse.Namespace:
        """The checked arguments (see :func:`experiments._cli.parse`)."""
        return _cli.parse(self.parser(), argv, self.check)

    def load(self, out) -> dict:
        """The ``results.json`` an earlier run wrote to ``out``."""
        path = os.path.join(out, "results.json")
        try:
            with open(path) as f:
                return json.load(f)
        except (OSError, ValueError) as error:
            raise SystemExit(f"{self.name}: --plot-only needs {path} from an earlier run ({error})") from None

    def main(self, argv=None) -> dict:
        """Parses ``argv``, runs (or, with ``--plot-only``, reloads), draws
        and prints the blocks; returns the results with their run record.
        Under ``torchrun`` every process runs, the first writes and draws; a
        process group the run joined is destroyed before ``main`` returns
        (left to the interpreter's exit, gloo sometimes aborts the finished
        process there: :func:`pyro_vi.training.distributed.warn_if_group_outlives_destroy`)."""
        outside = not in_process_group()
        results = self._main(argv)
        if outside and in_process_group():
            torch.distributed.destroy_process_group()
        return results

    def _main(self, argv):
        args = self.parse(argv)
        args._argv = None if argv is None else list(argv)  # for the run record's command
        if args.plot_only:
            if args.out is None:
                raise SystemExit(f"{self.name}: --plot-only needs --out, the folder of an earlier run")
            results = self.load(args.out)
        else:
            start = time.perf_counter()
            results = finish(self.name, args, self.run(args), start)
        if process()[0] > 0:
            return results
        if self.figures is not None and args.out is not None:
            self.figures(results, args.out)
        if not self.reads:
            for render in self.renderers().values():
                print("\n" + render(results))
        return results
