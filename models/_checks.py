"""Argument checks shared by the models (and their guides)."""

import numbers

import torch


def as_real(name, value):
    """``value`` as a float, or a ``ValueError`` naming ``name``: a real
    number or a one-element tensor (not a bool)."""
    if isinstance(value, bool) or not isinstance(value, (numbers.Real, torch.Tensor)):
        raise ValueError(f"{name} must be a real number, got {value!r}")
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(f"{name} must be a scalar, got shape {tuple(value.shape)}")
        value = value.item()
    return float(value)
