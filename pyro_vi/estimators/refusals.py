"""What an estimator refuses, by name: each check raises a ``ValueError``
naming the site and the reason, before any arithmetic."""

from ..math.bounds import independent_plates

__all__ = ["check_antithetic", "check_importance_weighted", "check_reparameterized", "check_score_supports"]


def check_reparameterized(particles, estimator):
    """Refuses, by name, a guide site without a pathwise derivative."""
    for site in particles.guide.values():
        if not site.reparameterized:
            kind = "pyro.factor site" if site.is_observed else "site"
            raise ValueError(
                f"{estimator} needs reparameterized guide sites, but {kind} '{site.name}' has no pathwise "
                "derivative (it cannot rsample, or has_rsample=False); use "
                "RaoBlackwellELBO or ScoreFunctionELBO for it"
            )


def check_score_supports(particles, estimator):
    """Refuses, by name, a guide site with a score whose support moves with
    the parameters (a ``Uniform`` with learned bounds): its score does not
    average to zero, so no score-function gradient of it is unbiased."""
    for site in particles.score_sites():
        if site.support_moves:
            fix = (
                "keep its pathwise derivative (pathwise=True, AutoELBO, StickingTheLandingELBO or Trace_ELBO)"
                if site.has_rsample
                else "give it a support that does not depend on its parameters"
            )
            raise ValueError(
                f"{estimator}: the support of guide site '{site.name}' moves with its parameters (its bounds "
                "carry gradient, as a Uniform's learned low and high do), so its score does not average to zero "
                f"and a score-function gradient of it is biased; {fix}"
            )


def check_importance_weighted(particles, estimator):
    """Refuses, by name, what an importance-weighted bound cannot take:
    subsampled sequential plates, and a site outside a subsampled plate
    (the bound of latents shared across data points has no unbiased
    minibatch estimate)."""
    sites = list(particles.model.values()) + list(particles.guide.values())
    common = set(independent_plates(particles))
    for site in sites:
        sequential = site.subsampled_plates - set(site.plates)
        if sequential:
            raise ValueError(
                f"{estimator} does not support subsampled sequential plates: site '{site.name}' is in "
                f"the subsampled plate '{sorted(sequential)[0]}'; vectorize the plate"
            )
    subsampled = set()
    for site in sites:
        subsampled |= site.subsampled_plates
    for plate in subsampled:
        if plate not in common:
            outside = next(site for site in sites if plate not in site.plates)
            raise ValueError(
                f"{estimator}: site '{outside.name}' lies outside the subsampled plate '{plate}'; the "
                "importance-weighted bound of latents shared across data points has "
                "no unbiased minibatch estimate: do not subsample, or use an ELBO "
                "estimator"
            )


def check_antithetic(particles, estimator, pairs_follow_history=True):
    """Refuses, by name, a guide site that DisARM cannot take: a site with a
    score that is not a Bernoulli. Without ``pairs_follow_history`` (the
    local DisARM of the importance-weighted bound, whose swaps need every
    element paired), also a Bernoulli whose distribution depends on another
    random guide sample, and one that could not be drawn in complete pairs."""
    for site in particles.score_sites():
        bernoulli = particles.bernoulli.get(site.name) if not site.is_observed else None
        if bernoulli is None:
            kind = "pyro.factor site" if site.is_observed else "site"
            raise ValueError(
                f"{estimator}: {kind} '{site.name}' is not Bernoulli and has no pathwise derivative; DisARM's "
                "antithetic pairs are defined for binary sites only: use "
                "ReinforceLeaveOneOutELBO or RaoBlackwellELBO for this guide"
            )
        if pairs_follow_history:
            continue
        ancestors = particles.random_ancestors(site.name)
        if ancestors:
            raise ValueError(
                f"{estimator}: the distribution of Bernoulli site '{site.name}' depends on the random guide "
                f"site '{sorted(ancestors)[0]}'; the two particles of an antithetic pair must share it: use "
                "DisARMELBO, ReinforceLeaveOneOutELBO or gradient='vimco' for this guide"
            )
        if not bool(bernoulli.paired.all()):
            raise ValueError(
                f"{estimator}: Bernoulli site '{site.name}' could not be drawn in antithetic pairs (it is met in "
                "only one particle of a pair, or the particle plate does not broadcast it); "
                "give both particles of a pair the same sites"
            )
