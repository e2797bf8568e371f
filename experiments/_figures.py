"""Writing the experiments' figures, with the one matplotlib backend of every
study (Agg: files only, no display). Studies take ``plt`` from here, and the
few drawing rules every figure follows:

- several seeds are drawn as their mean with a band from the lowest to the
  highest seed (:func:`seed_band`), so one seed's luck is never read as a
  difference;
- legends sit outside the data (:func:`legend_outside`);
- curves that are equal to the last digit are named as such in the legend
  (:func:`coinciding`) and drawn with distinct line styles and markers, so
  that the one on top does not hide the other;
- :func:`save_figure` lays out and crops the figure so that outside legends
  are kept.
"""

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import matplotlib.transforms as transforms
import numpy as np

__all__ = ["plt", "save_figure", "seed_band", "legend_outside", "coinciding", "band_note", "off_scale", "zoom_ylim"]


def save_figure(fig, path, **savefig_kwargs):
    """Lays out ``fig`` (unless it has its own layout engine), writes it to
    ``path`` at 120 dpi, cropped to its contents (outside legends included),
    and closes it."""
    if fig.get_layout_engine() is None:
        fig.tight_layout()
    savefig_kwargs.setdefault("bbox_inches", "tight")
    fig.savefig(path, dpi=120, **savefig_kwargs)
    plt.close(fig)


def seed_band(ax, x, curves, label=None, band_alpha=0.2, **style):
    """Plots the mean over seeds of ``curves`` (shape ``(seeds, len(x))``)
    and shades from the lowest to the highest seed; returns the line."""
    curves = np.atleast_2d(np.asarray(curves, dtype=float))
    (line,) = ax.plot(x, curves.mean(0), label=label, **style)
    if len(curves) > 1:
        ax.fill_between(x, curves.min(0), curves.max(0), color=line.get_color(), alpha=band_alpha, lw=0)
    return line


def band_note(num_seeds):
    """The words that say what a band is, for titles and legends."""
    if num_seeds == 1:
        return "1 seed"
    return f"mean of {num_seeds} seeds, band: lowest to highest seed"


def legend_outside(ax, where="right", fontsize=8, **kwargs):
    """A legend beside (``"right"``) or under (``"below"``) the axes, never
    over the data; returns it."""
    if where == "right":
        placement = dict(loc="upper left", bbox_to_anchor=(1.02, 1.0))
    elif where == "below":
        # under the tick labels and the x label: a fixed offset in points
        below = transforms.offset_copy(ax.transAxes, fig=ax.figure, y=-36, units="points")
        placement = dict(
            loc="upper center", bbox_to_anchor=(0.5, 0.0), bbox_transform=below, ncol=kwargs.pop("ncol", 2)
        )
    else:
        raise ValueError(f"where must be 'right' or 'below', got {where!r}")
    return ax.legend(borderaxespad=0.0, fontsize=fontsize, **placement, **kwargs)


def coinciding(curves, rtol=1e-5, atol=1e-8):
    """``name -> name of an earlier curve it equals`` for every curve of
    ``curves`` (name -> array, in drawing order) equal to an earlier one up
    to float32 rounding (``rtol``)."""
    names = list(curves)
    same = {}
    for j, later in enumerate(names):
        for earlier in names[:j]:
            a, b = np.asarray(curves[earlier], float), np.asarray(curves[later], float)
            if earlier not in same and a.shape == b.shape and np.allclose(a, b, rtol=rtol, atol=atol):
                same[later] = earlier
                break
    return same


def off_scale(gaps, factor=20.0):
    """The names in ``gaps`` (name -> final distance to the optimum) whose
    distance exceeds ``factor`` times the median: runs that would flatten the
    others into a band on a linear axis and get a panel of their own."""
    values = np.asarray(list(gaps.values()), float)
    threshold = factor * max(np.median(values), 1e-12)
    return [name for name, gap in gaps.items() if gap > threshold]


def zoom_ylim(ax, curves, pad=0.08, include=()):
    """Sets the y-limits of ``ax`` to the range of ``curves`` (arrays) and
    the values in ``include``, padded by ``pad`` of that range."""
    values = np.concatenate([np.ravel(np.asarray(c, float)) for c in curves] + [np.ravel(include)])
    values = values[np.isfinite(values)]
    low, high = values.min(), values.max()
    margin = pad * (high - low) if high > low else max(abs(high) * 1e-3, 1e-9)
    ax.set_ylim(low - margin, high + margin)
