"""Optional dependencies, imported on use with an error that says how to get
them."""

__all__ = ["import_arviz"]


def import_arviz(user):
    """ArviZ (the ``arviz`` extra), imported on use: it is optional and takes
    seconds to import. ``user`` names the function that needs it."""
    try:
        import arviz
    except ImportError as error:
        raise ImportError(
            f'{user} needs ArviZ, an optional dependency of pyro_vi: pip install "pyro_vi[arviz]"'
        ) from error
    return arviz
