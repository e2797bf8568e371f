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
