"""Writing the experiments' figures."""

import matplotlib.pyplot as plt


def save_figure(fig, path, **savefig_kwargs):
    """Lays out ``fig``, writes it to ``path`` at 120 dpi and closes it."""
    fig.tight_layout()
    fig.savefig(path, dpi=120, **savefig_kwargs)
    plt.close(fig)
