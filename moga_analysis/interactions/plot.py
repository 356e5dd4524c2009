"""J^(m) curves: one line per model with bootstrap bands over images and the estimator's noise floor.

Pure functions from computed results (an :class:`~moga_analysis.interactions.pipeline.InteractionStack`
or curve dicts) to a matplotlib figure; pyplot is imported on call only.
"""

from __future__ import annotations

import logging
from typing import Any, Dict, List, Optional, Sequence, Union

import torch

from ..plotting.style import styled
from .strength import bootstrap_relative_strength, strength_normaliser

__all__ = ["plot_relative_strength", "curves_of"]

log = logging.getLogger(__name__)


def curves_of(source: Any) -> List[Dict[str, Any]]:
    """Curve dicts (``name``, ``orders``, ``per_image`` mean |I| ``[n_images, O]``, ``n_players``,
    optional ``noise_floor`` ``[n_images, O]``) from a stack, its models, or curve dicts."""
    if hasattr(source, "values") and hasattr(source, "models"):  # an InteractionStack
        source = [source[m] for m in source.models]
    out = []
    for c in source:
        if isinstance(c, dict):
            out.append(c)
        else:  # a ModelInteractions
            out.append({"name": c.model, "orders": c.orders, "per_image": c.mean_abs(), "n_players": c.n_players,
                        "noise_floor": c.noise_floor(), "target_noise": c.metadata.get("target_noise")})
    return out


@styled
def plot_relative_strength(
    source: Union[Any, Sequence[Dict[str, Any]]],
    *,
    normalization: str = "evaluated",
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
    show_noise: bool = True,
    ax=None,
    title: Optional[str] = None,
):
    """Figure of J^(m) against m/(n-2); returns ``(fig, ax)``.

    ``source``: an ``InteractionStack`` or curve dicts (:func:`curves_of`).  Bands: percentile
    bootstrap over images (``level``).  ``show_noise``: each model's noise floor in J units (the
    mean |I| pure estimator noise would give, divided by the curve's normaliser) as a dotted line;
    a J^(m) near it is noise.  Orders that missed a run's noise target are logged.
    """
    import matplotlib.pyplot as plt

    if ax is None:
        fig, ax = plt.subplots(figsize=(3.4, 2.4))
    else:
        fig = ax.figure
    for c in curves_of(source):
        orders = torch.as_tensor(c["orders"], dtype=torch.float64)
        n = int(c["n_players"])
        per_image = torch.as_tensor(c["per_image"], dtype=torch.float64)
        J, lo, hi = bootstrap_relative_strength(per_image, orders, n, normalization=normalization, n_boot=n_boot,
                                                level=level, seed=seed)
        x = (orders / (n - 2)).numpy()
        n_img = int(per_image.shape[0])
        (line,) = ax.plot(x, J.numpy(), marker="o", markersize=2.5, linewidth=1.2, label=f"{c['name']} ({n_img} img)")
        if n_img > 1:
            ax.fill_between(x, lo.numpy(), hi.numpy(), color=line.get_color(), alpha=0.2, linewidth=0)
        if show_noise and c.get("noise_floor") is not None:
            floor = torch.as_tensor(c["noise_floor"], dtype=torch.float64).mean(0)
            scale = strength_normaliser(per_image.mean(0), orders, n, normalization)[0]
            ax.plot(x, (floor / scale).numpy(), color=line.get_color(), linewidth=0.7, linestyle=":")
            target = c.get("target_noise")
            ratio = floor / per_image.mean(0).clamp_min(1e-300)
            if target is not None and bool((ratio > float(target)).any()):
                log.warning("%s: noise floor above the target %.3g at m/(n-2) = %s", c["name"], float(target),
                            [round(float(v), 3) for v in torch.as_tensor(x)[ratio > float(target)]])
    ax.set_xlabel("order m / (n - 2)")
    ax.set_ylabel(r"$J^{(m)}$")
    ax.axhline(1.0, color="0.6", linewidth=0.6, linestyle=":")
    ax.set_xlim(0, 1)
    ax.set_ylim(bottom=0)
    ax.legend(fontsize="small")
    norm = "mean over evaluated orders" if normalization == "evaluated" else "mean over all orders"
    note = "; dotted: noise floor" if show_noise else ""
    ax.set_title(title or f"J^(m), {norm}{note}", fontsize="small")
    fig.tight_layout()
    return fig, ax
