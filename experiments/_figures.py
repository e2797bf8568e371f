"""Writing the experiments' figures, with the one matplotlib backend of every
study (Agg: files only, no display). Studies take ``plt`` from here."""

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

__all__ = ["plt", "save_figure"]


def save_figure(fig, path, **savefig_kwargs):
    """Lays out ``fig``, writes it to ``path`` at 120 dpi and closes it."""
    fig.tight_layout()
    fig.savefig(path, dpi=120, **savefig_kwargs)
    plt.close(fig)
