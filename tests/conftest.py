"""Every test starts from the same state: an empty Pyro param store, the
global RNGs seeded with 0, and one torch thread.

One thread because the default (one per core) makes the suite several times
slower on a shared machine, where the threads fight each other. The
environment variables below reach the subprocesses that tests start (the
experiment scripts also get ``--threads 1``); they are set before torch is
imported so that this process's OpenMP pool starts with one thread too.
"""

import os

os.environ["OMP_NUM_THREADS"] = "1"
os.environ["MKL_NUM_THREADS"] = "1"

import pyro
import pytest
import torch

torch.set_num_threads(1)
try:  # possible only before torch's inter-op pool has started
    torch.set_num_interop_threads(1)
except RuntimeError:
    pass


@pytest.fixture(autouse=True)
def fresh_pyro_state():
    """Clears the param store, seeds Pyro (``random``, NumPy and torch) with
    0 and sets one torch thread before each test; clears the store again
    after it."""
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    torch.set_num_threads(1)
    yield
    # so that a module- or session-scoped fixture set up next finds an empty store too
    pyro.clear_param_store()


@pytest.fixture(scope="session")
def fork_server(tmp_path_factory):
    """tests/fork_server.py: runs ``python ARGV`` in a child forked from a
    process that has imported the libraries already."""
    from tests.fork_server import ForkServer

    server = ForkServer(tmp_path_factory.mktemp("fork_server") / "server.log")
    yield server
    server.close()
