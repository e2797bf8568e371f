"""Helpers shared by the model tests."""

from pyro.poutine.util import site_is_subsample


def per_draw_log_prob(trace, num_draws):
    """Sum of every sample site's log_prob, one value per draw of the particle plate."""
    trace.compute_log_prob()
    total = 0.0
    for site in trace.nodes.values():
        if site["type"] == "sample" and not site_is_subsample(site):
            total = total + site["log_prob"].reshape(num_draws, -1).sum(-1)
    return total


def normal_chain_pyro_gradient(data, params):
    """``guides.normal_chain.elbo_gradient`` (per field, in the constrained values) in
    Pyro's unconstrained coordinates and names: ``"q_" + field``, the gradient of a
    positive field (all but the locs) times its value (chain rule through the log)."""
    import torch

    from guides.normal_chain import elbo_gradient

    grads = elbo_gradient(data, params)
    return {
        "q_" + name: grad if name.endswith("_loc") else grad * torch.as_tensor(getattr(params, name), dtype=torch.float64)
        for name, grad in grads.items()
    }
