"""The code passes ``ruff check`` and ``ruff format --check`` with the
settings of pyproject.toml ([tool.ruff])."""

import os
import subprocess
import sys

from tests.helpers import ROOT

FOLDERS = [
    name
    for name in ("pyro_vi", "models", "guides", "experiments", "tests", "docs")
    if os.path.isdir(os.path.join(ROOT, name))
]


def ruff(*args):
    """Runs ``python -m ruff`` (in the ``test`` extra) on the folders."""
    return subprocess.run(
        [sys.executable, "-m", "ruff", *args, *FOLDERS], cwd=ROOT, capture_output=True, text=True, timeout=300
    )


def test_ruff_check():
    proc = ruff("check", "--no-cache", "--output-format", "concise")
    assert proc.returncode == 0, proc.stdout[-10000:] + proc.stderr[-2000:]


def test_ruff_format():
    proc = ruff("format", "--check", "--no-cache")
    assert proc.returncode == 0, proc.stdout[-10000:] + proc.stderr[-2000:]
