"""
The global random states (torch's and CUDA's, Python's, NumPy's) as plain
data, as a checkpoint holds them, and a block that puts them back when it
ends.
"""

import contextlib
import random

import numpy as np
import torch

__all__ = ["check_rng_state", "random_states_kept", "rng_state", "set_rng_state"]


def rng_state() -> dict:
    """The torch (and CUDA), Python and NumPy random states, as plain data."""
    cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if cuda else None,
        "python": {"version": version, "internal": torch.tensor(internal, dtype=torch.int64), "gauss_next": gauss},
        "numpy": {
            "name": name,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
    }


def set_rng_state(state: dict) -> None:
    """Restores random states saved by :func:`rng_state`."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None:
        torch.cuda.set_rng_state_all(state["cuda"])
    python = state["python"]
    random.setstate((python["version"], tuple(python["internal"].tolist()), python["gauss_next"]))
    numpy = state["numpy"]
    np.random.set_state(
        (
            numpy["name"],
            numpy["keys"].numpy().astype(np.uint32),
            numpy["pos"],
            numpy["has_gauss"],
            numpy["cached_gaussian"],
        )
    )


def check_rng_state(state, where):
    """Raises ``ValueError`` unless ``state`` has the layout of :func:`rng_state`."""

    def bad(what):
        raise ValueError(f"{where}{what}")

    if not isinstance(state, dict) or not {"torch", "cuda", "python", "numpy"} <= set(state):
        bad(" needs the keys torch, cuda, python and numpy")
    if not isinstance(state["torch"], torch.Tensor) or state["torch"].dtype != torch.uint8:
        bad("['torch'] must be a uint8 tensor")
    if state["cuda"] is not None and not (
        isinstance(state["cuda"], list) and all(isinstance(t, torch.Tensor) for t in state["cuda"])
    ):
        bad("['cuda'] must be None or a list of tensors")
    python, numpy = state["python"], state["numpy"]
    if not (
        isinstance(python, dict)
        and type(python.get("version")) is int
        and isinstance(python.get("internal"), torch.Tensor)
        and python["internal"].dim() == 1
        and type(python.get("gauss_next", 0)) in (float, type(None))
    ):
        bad("['python'] must hold version, internal (a 1-D tensor) and gauss_next")
    if not (
        isinstance(numpy, dict)
        and type(numpy.get("name")) is str
        and isinstance(numpy.get("keys"), torch.Tensor)
        and numpy["keys"].dim() == 1
        and type(numpy.get("pos")) is int
        and type(numpy.get("has_gauss")) is int
        and type(numpy.get("cached_gaussian")) is float
    ):
        bad("['numpy'] must hold name, keys (a 1-D tensor), pos, has_gauss and cached_gaussian")


@contextlib.contextmanager
def random_states_kept(generators=()):
    """Runs the block, then puts back the global random states and those of
    ``generators`` (:class:`torch.Generator`), however the block ends."""
    saved = rng_state(), [generator.get_state() for generator in generators]
    try:
        yield
    finally:
        set_rng_state(saved[0])
        for generator, state in zip(generators, saved[1]):
            generator.set_state(state)
