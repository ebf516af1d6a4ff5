"""Helpers shared by the plotting functions (scanpy's ``show``/``save`` conventions)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def savefig_or_show(fig: Figure, *, show: bool | None, save: str | None, own_figure: bool) -> bool:
    """Save ``fig`` to ``save`` and show it when asked; return whether it was shown.

    As in scanpy, ``show=None`` shows the figure only when the function drew its own figure,
    nothing is saved, and matplotlib is interactive. A saved figure stays open (a notebook's
    inline backend shows it at the end of the cell; close it with ``plt.close()`` in a loop).
    """
    import matplotlib.pyplot as plt

    if save:
        fig.savefig(save, dpi=150, bbox_inches="tight")
    if show is None:
        show = own_figure and not save and plt.isinteractive()
    if show:
        plt.show()
    return bool(show)


def missing_obs_key(adata, key: str, what: str, hint: str) -> KeyError:
    """A KeyError that names the missing column, the columns there are, and what to run."""
    msg = (
        f"{what} {key!r} is not a column of adata.obs (columns: {list(adata.obs.columns)}). {hint}"
    )
    return KeyError(msg)
