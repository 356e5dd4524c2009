"""ERF figures: log-scaled heatmaps side by side with the high-contribution area-ratio table."""

from __future__ import annotations

from typing import Mapping, Optional, Sequence

import torch

from ..plotting.style import styled, wrap_title

__all__ = ["plot_erf", "erf_display"]


def erf_display(erf_map: torch.Tensor) -> torch.Tensor:
    """The RepLKNet display transform: ``log10(x + 1)`` scaled to max 1 (display only)."""
    m = torch.log10(erf_map.detach().double().cpu().clamp_min(0) + 1)
    peak = m.max()
    return (m / peak if peak > 0 else m).float()


@styled
def plot_erf(
    results: Mapping[str, "object"],
    thresholds: Sequence[float] = (0.2, 0.3, 0.5, 0.99),
    titles: Optional[Sequence[str]] = None,
    cmap: str = "RdYlGn",
    panel_size: float = 1.8,
    table: bool = True,
):
    """One log-scaled heatmap per model (``results``: an ``ERFStack`` or name -> ``ERFResult``), and
    below them a table of the area ratios (%) at ``thresholds``.  Returns ``(fig, axes)``."""
    import matplotlib.pyplot as plt

    results = getattr(results, "results", results)  # an ERFStack
    names = list(results)
    n = len(names)
    fig = plt.figure(figsize=(panel_size * n, panel_size * (1.45 if table else 1.1)))
    grid = fig.add_gridspec(2 if table else 1, n, height_ratios=[1, 0.4] if table else [1], hspace=0.1)
    axes = [fig.add_subplot(grid[0, i]) for i in range(n)]
    im = None
    for ax, name, title in zip(axes, names, list(titles or [wrap_title(n) for n in names])):
        im = ax.imshow(erf_display(results[name].map).numpy(), cmap=cmap, vmin=0, vmax=1)
        ax.set_title(title)
        ax.set_xticks([])
        ax.set_yticks([])
    if im is not None:
        fig.colorbar(im, ax=axes, fraction=0.02, pad=0.01)
    if table:
        tax = fig.add_subplot(grid[1, :])
        tax.axis("off")
        cells = [[f"{100 * results[nm].area_ratio(thresholds)[float(t)]:.1f}" for t in thresholds] for nm in names]
        tab = tax.table(
            cellText=cells,
            rowLabels=list(titles or names),
            colLabels=[f"t = {t:g}" for t in thresholds],
            loc="center",
            cellLoc="center",
        )
        tab.auto_set_font_size(False)
        tab.set_fontsize(6)
        axes.append(tax)
    return fig, axes
