"""J^(m) curves: one line per model with bootstrap confidence bands over images.

Pure functions from computed curves to a matplotlib figure; pyplot is imported on call only.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Sequence

import torch

__all__ = ["plot_relative_strength"]


def plot_relative_strength(
    curves: Sequence[Dict[str, Any]],
    *,
    normalization: str = "evaluated",
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
    ax=None,
    title: Optional[str] = None,
):
    """Figure of J^(m) against m/(n-2).

    ``curves``: dicts with ``name``, ``orders`` [O], ``per_image`` [n_images, O] (E_(i,j)|I^(m)| per
    image) and ``n_players``.  Bands: percentile bootstrap over images (``level``), computed by
    :func:`moga_analysis.interactions.bootstrap_relative_strength`.  Returns the figure.
    """
    import matplotlib.pyplot as plt

    from .strength import bootstrap_relative_strength
    from ..plotting.style import paper_style

    with paper_style():
        if ax is None:
            fig, ax = plt.subplots(figsize=(3.4, 2.4))
        else:
            fig = ax.figure
        for c in curves:
            orders = torch.as_tensor(c["orders"], dtype=torch.float64)
            n = int(c["n_players"])
            J, lo, hi = bootstrap_relative_strength(
                c["per_image"], orders, n, normalization=normalization, n_boot=n_boot, level=level, seed=seed
            )
            x = (orders / (n - 2)).numpy()
            n_img = int(torch.as_tensor(c["per_image"]).shape[0])
            (line,) = ax.plot(
                x, J.numpy(), marker="o", markersize=2.5, linewidth=1.2, label=f"{c['name']} ({n_img} img)"
            )
            if n_img > 1:
                ax.fill_between(x, lo.numpy(), hi.numpy(), color=line.get_color(), alpha=0.2, linewidth=0)
        ax.set_xlabel("order m / (n - 2)")
        ax.set_ylabel(r"$J^{(m)}$")
        ax.axhline(1.0, color="0.6", linewidth=0.6, linestyle=":")
        ax.set_xlim(0, 1)
        ax.legend(fontsize="small")
        norm = "mean over evaluated orders" if normalization == "evaluated" else "mean over all orders"
        ax.set_title(title or f"relative interaction strength ({norm})", fontsize="small")
        fig.tight_layout()
    return fig
