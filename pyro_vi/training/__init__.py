"""
A fit loop for any ELBO: loss history, tracked quantities, per-step and
per-epoch callbacks, epochs over batches, a progress bar, clear errors for
NaN/inf and for parameters that leave their support, checkpoints that hold
only plain data and resume bit for bit, and data-parallel steps under
:mod:`torch.distributed` (:mod:`pyro_vi.training.distributed`).
"""

from .checkpoint import load as load_checkpoint
from .loop import FitResult, NonFiniteError, OutOfSupportError, fit

__all__ = ["FitResult", "NonFiniteError", "OutOfSupportError", "fit", "load_checkpoint"]
