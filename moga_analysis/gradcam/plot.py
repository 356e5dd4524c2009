"""Grad-CAM figures: overlays of :class:`~moga_analysis.gradcam.CAMResult` maps on their images.

Pure functions of computed results (a :class:`~moga_analysis.gradcam.pipeline.CAMStack`, or display
images and ``{model: CAMResult}``); pyplot is imported on call only.
"""

from __future__ import annotations

from typing import Mapping, Optional, Sequence

import torch

from ..plotting.style import shorten_label, styled, wrap_title

__all__ = ["plot_cam_grid", "overlay"]


def overlay(image: torch.Tensor, cam: torch.Tensor, cmap: str = "jet", alpha: float = 0.5):
    """RGB array ``[H, W, 3]`` of ``image`` ([3, H, W] in [0, 1]) blended with ``cam`` ([H, W] in [0, 1])."""
    import matplotlib
    import numpy as np

    img = image.detach().float().cpu().clamp(0, 1).permute(1, 2, 0).numpy()
    c = cam.detach().float().cpu()
    if c.shape != img.shape[:2]:
        c = torch.nn.functional.interpolate(c[None, None], size=img.shape[:2], mode="bilinear", align_corners=False)[
            0, 0
        ]
    heat = matplotlib.colormaps[cmap](c.clamp(0, 1).numpy())[..., :3]
    return np.clip((1 - alpha) * img + alpha * heat, 0, 1)


@styled
def plot_cam_grid(
    images,
    results: Optional[Mapping[str, "object"]] = None,
    titles: Optional[Sequence[str]] = None,
    row_labels: Optional[Sequence[str]] = None,
    cmap: str = "jet",
    alpha: float = 0.5,
    panel_size: float = 1.3,
    show_scores: bool = True,
    class_names: Optional[Sequence[str]] = None,
):
    """Grid figure: rows are images, columns the input then one overlay per model.

    ``images``: a ``CAMStack`` (its display images, results and class names), or ``[B, 3, H, W]``
    display images in [0, 1] (un-normalised) with ``results``: model name -> ``CAMResult`` (its
    ``maps`` are resized to the image size when they differ).  Class names are shortened at word
    boundaries.  Returns ``(fig, axes)``.
    """
    import matplotlib.pyplot as plt

    if results is None:  # a CAMStack
        images, results, class_names = images.display, images.results, class_names or images.class_names
    names = list(results)
    B = images.shape[0]
    ncol = 1 + len(names)
    fig, axes = plt.subplots(B, ncol, figsize=(panel_size * ncol, panel_size * B), squeeze=False)
    heads = ["input"] + list(titles or [wrap_title(n) for n in names])
    for r in range(B):
        axes[r, 0].imshow(images[r].detach().float().cpu().clamp(0, 1).permute(1, 2, 0).numpy())
        for c, name in enumerate(names, start=1):
            res = results[name]
            axes[r, c].imshow(overlay(images[r], res.maps[r], cmap=cmap, alpha=alpha))
            if show_scores:
                t = int(res.targets[r])
                label = shorten_label(class_names[t], 16) if class_names is not None else f"class {t}"
                axes[r, c].text(
                    0.02,
                    0.02,
                    f"{label} {float(res.probs[r]):.2g}",
                    transform=axes[r, c].transAxes,
                    fontsize=5,
                    color="white",
                    va="bottom",
                    bbox=dict(facecolor="black", alpha=0.5, pad=1, linewidth=0),
                )
        if row_labels is not None:
            axes[r, 0].set_ylabel(row_labels[r])
    for c, h in enumerate(heads):
        axes[0, c].set_title(h)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
        for s in ax.spines.values():
            s.set_visible(False)
    fig.tight_layout(pad=0.2)
    return fig, axes
