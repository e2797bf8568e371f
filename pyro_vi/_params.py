"""The tensor an optimizer steps for a Pyro param site."""

__all__ = ["unconstrained"]


def unconstrained(value):
    """The unconstrained leaf behind the value of a param site:
    ``value.unconstrained()`` for Pyro's param store and for a
    :class:`~pyro.nn.PyroParam`; the value itself for a plain
    :class:`torch.nn.Parameter` of a :class:`~pyro.nn.PyroModule` under
    ``pyro.settings.set(module_local_params=True)``, which Pyro hands over as
    it is (it is its own unconstrained leaf, with no ``unconstrained``
    attribute)."""
    leaf = getattr(value, "unconstrained", None)
    return value if leaf is None else leaf()
