"""Lets a study run as ``python experiments/NAME.py`` as well as ``python -m experiments.NAME``.

Run as a file, a script has its own folder, not the repository root, first on
``sys.path``, so ``experiments``, ``models``, ``guides`` and this checkout's
``pyro_vi`` cannot be imported (or an installed ``pyro_vi`` is found
instead). Every study starts with::

    if not __package__:  # run as ``python experiments/NAME.py``
        import _repo_root  # noqa: F401

which imports this module from the script's folder; it puts the repository
root where ``python -m`` would have put the working directory.
"""

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

if sys.path and os.path.abspath(sys.path[0] or os.curdir) == HERE:
    sys.path[0] = ROOT
elif ROOT not in sys.path:
    sys.path.insert(0, ROOT)
