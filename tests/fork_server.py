"""Runs programs as new processes would, without paying their imports each time.

``python -m tests.fork_server`` imports torch, Pyro, pyro_vi, matplotlib and
the other libraries the studies use, runs one SVI step (torch imports more
on the first optimizer step), and then reads requests from stdin, one JSON
object per line: ``{"argv": [...], "stdout": path, "stderr": path,
"kill_after": seconds or null, "timeout": seconds}``. For each it forks a
child that runs ``python ARGV`` as a new interpreter would: ``-m MODULE
ARGS`` with :func:`runpy.run_module` and a script with
:func:`runpy.run_path`, as ``__main__``, with ``sys.argv`` set, its output in
the two files and stdin empty. It sends the child SIGKILL after
``kill_after`` seconds (or ``timeout``) and answers ``<exit code> <seconds>``,
the exit code as :mod:`subprocess` gives it (minus the signal's number for
a killed child).

:class:`ForkServer` is the tests' side. The imports cost about 3 s of CPU
per run, a third of a study's smoke run.
"""

import json
import os
import runpy
import signal
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENVIRONMENT = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "MPLBACKEND": "Agg", "PYTHONPATH": ROOT}


class ForkServer:
    """A fork server in a subprocess (its stderr in ``log``); :meth:`run` is
    ``subprocess.run([sys.executable] + argv, capture_output=True,
    text=True)`` in a forked child."""

    def __init__(self, log):
        self.log, self._log_file = log, open(log, "w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.fork_server"],
            cwd=ROOT,
            env=dict(os.environ, **ENVIRONMENT),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log_file,
            text=True,
        )

    def run(self, argv, kill_after=None, timeout=600):
        """The :class:`subprocess.CompletedProcess` of ``python ARGV``, with
        its wall time as ``seconds``."""
        with tempfile.TemporaryDirectory() as folder:
            outputs = {name: os.path.join(folder, name) for name in ("stdout", "stderr")}
            for path in outputs.values():  # there even if the child is killed before it opens them
                open(path, "w").close()
            request = dict(argv=[str(arg) for arg in argv], kill_after=kill_after, timeout=timeout, **outputs)
            self.process.stdin.write(json.dumps(request) + "\n")
            self.process.stdin.flush()
            answer = self.process.stdout.readline()
            assert answer, "the fork server died:\n" + open(self.log).read()[-3000:]
            code, seconds = answer.split()
            texts = {name: open(path).read() for name, path in outputs.items()}
        proc = subprocess.CompletedProcess([sys.executable] + list(argv), int(code), **texts)
        proc.seconds = float(seconds)
        return proc

    def close(self):
        self.process.stdin.close()
        self.process.wait(timeout=60)
        self._log_file.close()


def _warm_up():
    """Imports what the studies import and runs one SVI step."""
    import arviz  # noqa: F401
    import matplotlib.pyplot  # noqa: F401
    import pyro
    import scipy.stats  # noqa: F401
    import torch
    import torchvision  # noqa: F401

    import experiments._study  # noqa: F401
    from pyro_vi import ControlVariateELBO
    from pyro_vi.training import fit
    from tests.programs import normal_guide, normal_model

    torch.set_num_threads(1)
    optim = pyro.optim.ClippedAdam({"lr": 0.05})
    fit(normal_model, normal_guide, ControlVariateELBO(), optim, torch.ones(3), num_steps=1)
    pyro.clear_param_store()


def _child(request):
    """Runs the request in this (forked) process; never returns."""
    os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
    for fd, path in ((1, request["stdout"]), (2, request["stderr"])):
        os.dup2(os.open(path, os.O_WRONLY | os.O_TRUNC), fd)
    code = 0
    try:
        argv = request["argv"]
        if argv[0] == "-m":
            sys.argv = argv[1:]
            runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
        else:
            sys.argv = list(argv)
            sys.path[0] = os.path.dirname(os.path.abspath(argv[0]))
            runpy.run_path(argv[0], run_name="__main__")
    except SystemExit as exit:
        if isinstance(exit.code, int) or exit.code is None:
            code = exit.code or 0
        else:
            print(exit.code, file=sys.stderr)
            code = 1
    except BaseException:
        import traceback

        traceback.print_exc()
        code = 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(code)


def main():
    _warm_up()
    for line in sys.stdin:
        request = json.loads(line)
        start = time.perf_counter()
        pid = os.fork()
        if pid == 0:
            _child(request)
        deadline = start + (request["timeout"] if request["kill_after"] is None else request["kill_after"])
        while True:
            finished, status = os.waitpid(pid, os.WNOHANG)
            if finished:
                break
            if time.perf_counter() >= deadline:
                os.kill(pid, signal.SIGKILL)
                _, status = os.waitpid(pid, 0)
                break
            time.sleep(0.001)
        print(os.waitstatus_to_exitcode(status), time.perf_counter() - start, flush=True)


if __name__ == "__main__":
    main()
