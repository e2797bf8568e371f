"""pyro_vi/training/ and pyro_vi/optim.py: fit, checkpoints, data-parallel runs, natural gradients."""
