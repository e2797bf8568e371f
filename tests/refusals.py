"""The parts the bad-input tests share (``test_bad_inputs.py`` in tests/ and
in its folders): the check every case goes through, and the small programs
that the bad calls run.

Each case is ``(entry point, what is wrong, call, expected error, pattern)``
(:func:`refusals` builds those of one entry point from shorter rows);
``call(tmp_path)`` makes the bad call, and ``pattern`` (a regex) must be found
in the message. Argument refusals come before any work: :func:`assert_refused`
checks that the Pyro param store is still empty afterwards (no program ran),
except for the cases marked :data:`RUNS` (bad programs, which are found by
running them, and optimizer calls on existing params).
"""

import os
import re

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch.distributions import constraints

RUNS = "runs"
"""The mark of a case that runs the programs before it refuses."""

X = torch.tensor([0.3, -1.2, 2.0, 0.7, 1.5])


def model(x):
    z = pyro.sample("z", dist.Normal(0.0, 1.0))
    with pyro.plate("data", len(x)):
        pyro.sample("x", dist.Normal(z, 1.0), obs=x)


def guide(x):
    loc = pyro.param("loc", torch.tensor(0.0))
    scale = pyro.param("scale", torch.tensor(1.0), constraint=constraints.positive)
    pyro.sample("z", dist.Normal(loc, scale))


def gamma_model(x):
    pyro.sample("rate", dist.Gamma(2.0, 2.0))


def negative_guide(x):  # a Normal guide for a Gamma latent: negative draws
    pyro.sample("rate", dist.Normal(pyro.param("loc", torch.tensor(-3.0)), 0.1))


def assert_each_refused(*checks):
    """Each ``(call, pattern)``: ``call()`` raises a ``ValueError`` whose message
    matches ``pattern``."""
    for call, pattern in checks:
        with pytest.raises(ValueError, match=pattern):
            call()


def in_tmp(tmp_name):
    """The pattern of a path under the test's tmp_path (filled in by :func:`assert_refused`)."""
    return "{tmp}" + os.sep + re.escape(tmp_name)


def refusals(entry, *rows, error=ValueError):
    """The cases of one entry point that raise ``error``, from compact rows
    ``(what is wrong, call, pattern[, RUNS])``."""
    return [(entry, what, call, error, pattern, *marks) for what, call, pattern, *marks in rows]


def case_ids(cases):
    """``"entry point: what is wrong"``, one per case."""
    return [f"{case[0]}: {case[1]}" for case in cases]


def assert_refused(case, tmp_path):
    """The case's call raises its error, of a documented kind, whose message
    matches its pattern; before running the programs unless marked :data:`RUNS`."""
    entry, what, call, error, pattern = case[:5]
    runs = RUNS in case[5:]
    pattern = pattern.replace("{tmp}", re.escape(str(tmp_path)))
    with pytest.raises(Exception) as raised:
        call(tmp_path)
    assert isinstance(raised.value, error), f"{entry} raised {type(raised.value).__name__}: {raised.value}"
    assert isinstance(raised.value, (ValueError, FileNotFoundError))  # a documented kind of error
    assert re.search(pattern, str(raised.value)), f"{pattern!r} not found in:\n{raised.value}"
    if not runs:
        assert len(pyro.get_param_store()) == 0, f"{entry} ran the programs before refusing"
