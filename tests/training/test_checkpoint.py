"""Checkpoints of fit: exact resume for every estimator, a format that cannot
run code, refusals that name the problem (issue 10)."""

import os
import pickle
import subprocess
import sys

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.distributions import constraints
from pyro.infer import Trace_ELBO, TraceGraph_ELBO
from pyro.optim import Adam, ClippedAdam

from pyro_vi import (
    ControlVariateELBO,
    ImportanceWeightedELBO,
    RaoBlackwellELBO,
    ScoreFunctionELBO,
    StickingTheLandingELBO,
    score_function_guide,
)
from pyro_vi.training import checkpoint, fit, load_checkpoint
from pyro_vi.training.random_states import rng_state, set_rng_state
from tests.programs import normal_guide, normal_model

X = torch.tensor([0.3, -1.2, 2.0, 0.7, 1.5, 0.9, 1.1, -0.4, 0.8, 1.9])


model, guide = normal_model, normal_guide


def other_guide(x):
    loc = pyro.param("loc", torch.zeros(2))
    width = pyro.param("width", torch.tensor(1.0), constraint=constraints.positive)
    pyro.sample("z", dist.Normal(loc.sum(), width))


def _params():
    return {name: p.detach().clone() for name, p in pyro.get_param_store().named_parameters()}


def _fit(path, num_steps, resume=False, make_elbo=Trace_ELBO, guide=guide, seed=0, **options):
    """One run as a new process would start it: empty store, new ELBO and optimizer."""
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    options.setdefault("overwrite", not resume and path is not None)
    return fit(
        model,
        guide,
        make_elbo(),
        ClippedAdam({"lr": 0.05, "lrd": 0.99}),
        X,
        num_steps=num_steps,
        checkpoint=path,
        checkpoint_every=3,
        resume=resume,
        **options,
    )


def _assert_resume_equals_uninterrupted_run(path, **options):
    """Runs 12 steps, then 7 (checkpoints at 3, 6, 7: an interrupted run), then
    resumes to 12 with another seed (the checkpoint's RNG wins): the same
    losses and params, to the bit. Returns the uninterrupted run's params."""
    full = _fit(path, 12, **options)
    full_params = _params()
    _fit(path, 7, **options)
    resumed = _fit(path, 12, resume=True, seed=123, **options)
    np.testing.assert_array_equal(resumed.losses, full.losses)
    params = _params()
    assert set(params) == set(full_params)
    for name in params:
        assert torch.equal(params[name], full_params[name]), name
    return full_params


ESTIMATORS = {
    "ScoreFunctionELBO": ScoreFunctionELBO,
    "ControlVariateELBO": ControlVariateELBO,
    "RaoBlackwellELBO": RaoBlackwellELBO,
    "StickingTheLandingELBO": StickingTheLandingELBO,
    "ImportanceWeightedELBO-reparam": lambda: ImportanceWeightedELBO(gradient="reparam"),
    "ImportanceWeightedELBO-stl": lambda: ImportanceWeightedELBO(gradient="stl"),
    "ImportanceWeightedELBO-dreg": lambda: ImportanceWeightedELBO(gradient="dreg"),
    "Trace_ELBO": Trace_ELBO,
    # the README's settings, and Pyro's own guess of max_plate_nesting, which
    # draws from the global RNG on the first step of every process
    "ControlVariateELBO-readme": lambda: ControlVariateELBO(num_particles=10, vectorize_particles=True),
    "ScoreFunctionELBO-3": lambda: ScoreFunctionELBO(3),
    "Trace_ELBO-vectorized": lambda: Trace_ELBO(num_particles=3, vectorize_particles=True),
}


@pytest.mark.parametrize("make_elbo", list(ESTIMATORS.values()), ids=list(ESTIMATORS))
def test_resume_equals_uninterrupted_run_for_every_estimator(tmp_path, make_elbo):
    _assert_resume_equals_uninterrupted_run(tmp_path / "ckpt.pt", make_elbo=make_elbo)


def test_resume_restores_pyro_decaying_average_baselines(tmp_path):
    """TraceGraph_ELBO puts a new tensor for its decaying-average baseline into
    the param store at every step (the throw-away step of a resume too): the
    resumed run continues from the saved average."""
    baseline_guide = score_function_guide(guide, baseline={"use_decaying_avg_baseline": True, "baseline_beta": 0.9})
    full_params = _assert_resume_equals_uninterrupted_run(
        tmp_path / "ckpt.pt", make_elbo=TraceGraph_ELBO, guide=baseline_guide
    )
    assert any(name.startswith("__baseline_avg") for name in full_params)


def test_checkpoint_is_plain_data_read_with_weights_only(tmp_path):
    path = tmp_path / "ckpt.pt"
    _fit(
        path,
        4,
        track={"loc": lambda: pyro.param("loc")},
        fingerprint={"seed": 0},
        state={"note": "kept", "evals": [1.5]},
    )
    saved = torch.load(path, weights_only=True)
    assert saved["format"] == checkpoint.FORMAT and saved["step"] == 4
    assert saved["params"]["scale"]["constraint"] == {"name": "positive", "args": []}
    assert saved["params"]["loc"]["constraint"] == {"name": "real", "args": []}
    assert isinstance(saved["rng"]["python"]["internal"], torch.Tensor)
    assert isinstance(saved["rng"]["numpy"]["keys"], torch.Tensor)
    assert saved["state"] == {"note": "kept", "evals": [1.5]}
    assert saved["fingerprint"]["params"]["scale"] == {"shape": [], "dtype": "float32", "constraint": "positive"}
    assert saved["fingerprint"]["track"] == ["loc"] and saved["fingerprint"]["user"] == {"seed": 0}
    loaded = load_checkpoint(path)
    assert loaded["params"]["scale"]["constraint"] is constraints.positive


@pytest.mark.parametrize(
    "constraint",
    [
        constraints.positive,
        constraints.simplex,
        constraints.unit_interval,
        constraints.greater_than(-2.0),
        constraints.interval(torch.tensor(-1.0), torch.tensor(3.0)),
        constraints.independent(constraints.positive, 1),
        constraints.softplus_positive,
        constraints.lower_cholesky,
    ],
)
def test_constraints_round_trip_by_name(constraint):
    encoded = checkpoint.encode_constraint(constraint, "param 'p'")
    checkpoint.check_plain(encoded, "encoded")
    decoded = checkpoint.decode_constraint(encoded, "param 'p'")
    assert type(decoded) is type(constraint)
    assert checkpoint.constraint_label(checkpoint.encode_constraint(decoded, "x")) == checkpoint.constraint_label(
        encoded
    )


def test_unknown_constraints_are_refused_by_name(tmp_path):
    class Odd(constraints.Constraint):
        def check(self, value):
            return value > 0

    with pytest.raises(ValueError, match=r"param 'p' has the constraint Odd .*cannot store"):
        checkpoint.encode_constraint(Odd(), "param 'p'")
    with pytest.raises(ValueError, match=r"unknown constraint 'odd'"):
        checkpoint.decode_constraint({"name": "odd", "args": []}, "param 'p'")

    def odd_guide(x):  # a constraint with a transform, outside the table
        odd = constraints.cat([constraints.positive, constraints.real], dim=0, lengths=[1, 1])
        pyro.sample("z", dist.Normal(pyro.param("loc", torch.ones(2), constraint=odd).sum(), 1.0))

    steps = []
    with pytest.raises(ValueError, match=r"param 'loc' has the constraint _Cat .*cannot store"):
        _fit(tmp_path / "ckpt.pt", 5, guide=odd_guide, callback=lambda step, loss: steps.append(step))
    assert steps == [1]  # found at the first step, not at the first checkpoint


def test_rng_states_round_trip():
    import random

    state = rng_state()
    checkpoint.check_plain(state, "rng")
    expected = torch.rand(3), random.random(), np.random.rand()
    random.gauss(0, 1)  # leaves a cached gaussian in Python's state
    set_rng_state(state)
    assert (
        torch.equal(torch.rand(3), expected[0]) and random.random() == expected[1] and np.random.rand() == expected[2]
    )


class Payload:
    """Unpickling this writes a marker file: a stand-in for any code."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('ran')",))


@pytest.mark.parametrize("how", ["torch.save", "pickle.dump", "inside a real checkpoint"])
def test_pickle_payload_is_refused_without_running_it(tmp_path, how):
    path, marker = tmp_path / "ckpt.pt", tmp_path / "marker"
    if how == "torch.save":
        torch.save({"format": checkpoint.FORMAT, "step": Payload(marker)}, path)
    elif how == "pickle.dump":
        with open(path, "wb") as f:
            pickle.dump(Payload(marker), f, protocol=2)
    else:
        _fit(path, 3)
        saved = torch.load(path, weights_only=True)
        saved["state"] = {"evil": Payload(marker)}
        torch.save(saved, path)
    with pytest.raises(
        ValueError, match=r"ckpt\.pt holds (builtins\.)?exec, not plain data; it was refused without running it"
    ):
        _fit(path, 6, resume=True)
    assert not marker.exists()
    # the payload is real: an unsafe load runs it (a bare pickle, before failing)
    try:
        torch.load(path, weights_only=False)
    except RuntimeError:
        assert how == "pickle.dump"
    assert marker.read_text() == "ran"


def _corrupt(kind, path, good):
    data = good.read_bytes()
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif kind == "random bytes":
        path.write_bytes(np.random.RandomState(0).bytes(2000))
    elif kind == "text":
        path.write_text("step: 3\n")
    elif kind == "a tensor":
        torch.save(torch.zeros(3), path)
    else:
        saved = torch.load(good, weights_only=True)
        if kind == "missing keys":
            del saved["optim"], saved["rng"]
        elif kind == "wrong step type":
            saved["step"] = "3"
        elif kind == "wrong rng":
            saved["rng"]["python"] = [1, 2, 3]
        elif kind == "unknown constraint":
            saved["params"]["scale"]["constraint"] = {"name": "os.system", "args": []}
        elif kind == "losses do not match step":
            saved["history"]["losses"] = saved["history"]["losses"][:1]
        elif kind == "optim layout":
            saved["optim"]["loc"] = 3
        elif kind == "torch rng size":
            saved["rng"]["torch"] = torch.zeros(3, dtype=torch.uint8)
        torch.save(saved, path)


@pytest.mark.parametrize(
    "kind, problem",
    [
        ("empty", "is empty"),
        ("truncated", "not a readable torch file"),
        ("random bytes", "not a readable torch file"),
        ("text", "not a readable torch file"),
        ("a tensor", "not a pyro_vi.fit checkpoint"),
        ("missing keys", "lacks optim, rng"),
        ("wrong step type", "step must be an integer"),
        ("wrong rng", r"rng\['python'\]"),
        ("unknown constraint", "unknown constraint 'os.system'"),
        ("losses do not match step", r"history\['losses'\]"),
        ("optim layout", r"optim\['loc'\] must be a dict with param_groups and state"),
        ("torch rng size", "cannot be restored: RuntimeError"),
    ],
)
def test_unreadable_checkpoint_is_a_value_error_naming_path_and_problem(tmp_path, kind, problem):
    good, path = tmp_path / "good.pt", tmp_path / "bad.pt"
    _fit(good, 3)
    _corrupt(kind, path, good)
    with pytest.raises(ValueError, match=r"checkpoint .*bad\.pt.*" + problem):
        _fit(path, 6, resume=True)


def test_checkpoint_of_another_model_is_refused_naming_differences(tmp_path):
    path = tmp_path / "ckpt.pt"
    _fit(path, 3)
    with pytest.raises(ValueError, match=r"belongs to another run") as info:
        _fit(path, 6, resume=True, guide=other_guide)
    text = str(info.value)
    assert "params['loc']['shape']: [] in the checkpoint, [2] here" in text
    assert "params['scale']: {" in text and "absent here" in text
    assert "params['width']: absent from the checkpoint" in text
    assert torch.load(path, weights_only=True)["step"] == 3  # and left the file alone


@pytest.mark.parametrize(
    "change, named",
    [
        (
            {"make_elbo": ControlVariateELBO},
            r"elbo: 'Trace_ELBO\(num_particles=1\)' in the checkpoint, "
            r"'ControlVariateELBO\(num_particles=10\)' here",
        ),
        ({"fingerprint": {"seed": 1}}, r"user\['seed'\]: 0 in the checkpoint, 1 here"),
        ({"track": {"loc": lambda: 0.0}}, r"track: \[\] in the checkpoint, \['loc'\] here"),
    ],
)
def test_fingerprint_mismatch_is_refused_naming_it(tmp_path, change, named):
    path = tmp_path / "ckpt.pt"
    _fit(path, 3, fingerprint={"seed": 0})
    options = dict({"fingerprint": {"seed": 0}}, **change)
    with pytest.raises(ValueError, match=named):
        _fit(path, 6, resume=True, **options)


def test_existing_checkpoint_is_never_overwritten_unless_asked(tmp_path):
    path = tmp_path / "ckpt.pt"
    _fit(path, 3)
    before = path.read_bytes()
    with pytest.raises(ValueError, match=r"ckpt\.pt exists: pass resume=True .* or overwrite=True"):
        _fit(path, 5, overwrite=False)
    assert path.read_bytes() == before
    _fit(path, 5, overwrite=True)
    assert torch.load(path, weights_only=True)["step"] == 5


def test_resume_true_refuses_a_missing_checkpoint_and_allow_fresh_starts_fresh(tmp_path):
    path = tmp_path / "typo.pt"
    with pytest.raises(ValueError, match=r"resume=True, but there is no checkpoint .*typo\.pt.*allow_fresh"):
        _fit(path, 3, resume=True)
    assert not path.exists() and len(pyro.get_param_store()) == 0
    fresh = _fit(None, 3)
    started = _fit(path, 3, resume="allow_fresh")
    np.testing.assert_array_equal(started.losses, fresh.losses)
    again = _fit(path, 5, resume="allow_fresh")  # now it exists: resumed
    assert again.num_steps == 5 and again.losses[2] == fresh.losses[2]


def test_missing_or_unwritable_location_is_refused_before_step_1(tmp_path):
    calls = []
    spy = {"calls": lambda: calls.append(1) or 0.0}
    (tmp_path / "file").write_text("")
    cases = [
        (tmp_path / "missing" / "ckpt.pt", "does not exist"),
        (tmp_path, "is a directory"),
        (tmp_path / "file" / "ckpt.pt", "does not exist"),
        ("/proc/ckpt.pt", "cannot be written"),
    ]
    for path, problem in cases:
        with pytest.raises(ValueError, match=problem):
            _fit(path, 3, track=spy)
    assert calls == [] and len(pyro.get_param_store()) == 0


def test_stale_temporary_files_of_dead_runs_are_removed(tmp_path):
    path = tmp_path / "ckpt.pt"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = [tmp_path / f"ckpt.pt.tmp{dead.pid}", tmp_path / f"ckpt.pt.tmp{os.getpid()}"]
    live = tmp_path / f"ckpt.pt.tmp{os.getppid()}"  # a running process may still write it
    other = tmp_path / f"other.pt.tmp{dead.pid}"
    for f in stale + [live, other]:
        f.write_bytes(b"half a checkpoint")
    _fit(path, 3)
    assert sorted(os.listdir(tmp_path)) == sorted(["ckpt.pt", live.name, other.name])


def test_save_is_atomic_with_fsync_of_file_and_directory(tmp_path, monkeypatch):
    synced, renamed = [], []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        synced.append(os.path.realpath(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    def replace(src, dst):
        renamed.append((synced[:], os.path.basename(src), os.path.basename(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    _fit(tmp_path / "ckpt.pt", 3)  # one checkpoint, at step 3
    tmp_name = f"ckpt.pt.tmp{os.getpid()}"
    assert renamed == [([str(tmp_path / tmp_name)], tmp_name, "ckpt.pt")]  # file synced before the rename
    assert synced == [str(tmp_path / tmp_name), str(tmp_path)]  # then the directory
    assert os.listdir(tmp_path) == ["ckpt.pt"]


def test_vectorized_pyro_elbo_first_step_draws_nothing_the_checkpoint_misses(tmp_path):
    """Pyro's Trace_ELBO guesses max_plate_nesting with the global RNG on its
    first call: the resume's throw-away step absorbs that draw."""
    path = tmp_path / "ckpt.pt"
    make = lambda: Trace_ELBO(num_particles=4, vectorize_particles=True)  # noqa: E731
    full = _fit(path, 6, make_elbo=make)
    _fit(path, 3, make_elbo=make)
    resumed = _fit(path, 6, resume=True, make_elbo=make)
    np.testing.assert_array_equal(resumed.losses, full.losses)


def test_optimizer_that_already_stepped_is_refused_on_resume(tmp_path):
    path = tmp_path / "ckpt.pt"
    optim = Adam({"lr": 0.1})
    fit(model, guide, Trace_ELBO(), optim, X, num_steps=2, checkpoint=path)
    with pytest.raises(ValueError, match="optim has already taken steps; pass a new optimizer"):
        fit(model, guide, Trace_ELBO(), optim, X, num_steps=4, checkpoint=path, resume=True)


def test_resume_of_a_finished_run_restores_it_without_steps(tmp_path):
    path = tmp_path / "ckpt.pt"
    state = {"evaluated": []}
    full = _fit(path, 5, state=state, callback=lambda step, loss: state["evaluated"].append(step))
    assert full.resumed_from == 0
    full_params = _params()
    steps = []
    state = {}
    again = _fit(path, 5, resume="allow_fresh", state=state, seed=3, callback=lambda step, loss: steps.append(step))
    assert steps == [] and again.resumed_from == 5 and state == {"evaluated": [1, 2, 3, 4, 5]}
    np.testing.assert_array_equal(again.losses, full.losses)
    assert all(torch.equal(p, full_params[n]) for n, p in _params().items())


def test_a_checkpoint_of_full_batch_steps_is_not_resumed_with_data(tmp_path):
    path = tmp_path / "ckpt.pt"
    _fit(path, 3)
    pyro.clear_param_store()
    with pytest.raises(ValueError, match=r"data: None in the checkpoint, \{'batches_per_epoch': 1"):
        fit(
            model,
            guide,
            Trace_ELBO(),
            ClippedAdam({"lr": 0.05, "lrd": 0.99}),
            data=[(X,)],
            epochs=5,
            checkpoint=path,
            resume=True,
        )
