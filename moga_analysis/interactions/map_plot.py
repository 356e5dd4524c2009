"""Figures of per-cell interaction maps: where an image's low-, middle- and high-order interactions are.

Pure functions of computed results (:class:`~.maps.InteractionMaps`, :class:`~.maps.MapDifference`,
Grad-CAM map tensors); pyplot is imported on call only.
"""

from __future__ import annotations

from typing import Any, List, Mapping, Optional, Sequence, Union

import torch

from ..plotting.style import PALETTE, paper_style, shorten_label, wrap_title
from .maps import InteractionMaps, MapDifference

__all__ = ["plot_interaction_maps"]


def _display(img: torch.Tensor) -> torch.Tensor:
    """``[H, W, 3]`` float in [0, 1] from a display image ``[C, H, W]`` (C = 1 or 3)."""
    img = img.detach().float().cpu()
    if img.dim() == 2:
        img = img[None]
    if img.shape[0] == 1:
        img = img.expand(3, -1, -1)
    return img[:3].clamp(0, 1).permute(1, 2, 0)


def _cam_tensor(cam: Any) -> torch.Tensor:
    """Grad-CAM maps ``[B, H, W]`` from a tensor or anything with a ``.maps`` tensor (a CAMResult)."""
    t = cam.maps if hasattr(cam, "maps") else cam
    t = torch.as_tensor(t).detach().float().cpu()
    if t.dim() == 4 and t.shape[1] == 1:
        t = t[:, 0]
    if t.dim() != 3:
        raise ValueError(f"Grad-CAM maps must be [B, H, W], got shape {list(t.shape)}")
    return t


def _resize(m: torch.Tensor, size) -> torch.Tensor:
    if tuple(m.shape[-2:]) == tuple(size):
        return m
    return torch.nn.functional.interpolate(m[None, None], size=size, mode="bilinear", align_corners=False)[0, 0]


def _band_title(name: str, rng) -> str:
    lo, hi = rng
    return f"{shorten_label(name, 12)} orders\nm/(n-2) {lo:g}-{hi:g}"


def plot_interaction_maps(
    images: torch.Tensor,
    maps: Union[InteractionMaps, Sequence[InteractionMaps], Mapping[str, InteractionMaps]],
    cams: Optional[Any] = None,
    models: Optional[Sequence[str]] = None,
    *,
    difference: Optional[MapDifference] = None,
    bands: Optional[Sequence[str]] = None,
    class_names: Optional[Sequence[str]] = None,
    row_labels: Optional[Sequence[str]] = None,
    floor_factor: float = 1.0,
    cmap: str = "magma",
    diff_cmap: str = "RdBu_r",
    cam_cmap: str = "jet",
    alpha: float = 0.85,
    panel_size: float = 1.15,
    title: Optional[str] = None,
):
    """One row per image: the image, its Grad-CAM and the band maps of one or two models.

    * ``images``: display images ``[X, C, H, W]`` in [0, 1] (un-normalised; C = 1 or 3).
    * ``maps``: an :class:`InteractionMaps` (one model), or two of them (a sequence or
      ``{name: maps}``) on the same images: two column groups side by side.
    * ``cams``: Grad-CAM maps per model, in the order of ``maps``: a ``[X, H, W]`` tensor or an
      object with ``.maps`` (a :class:`~moga_analysis.gradcam.CAMResult`), or one of those for all
      models; None: no Grad-CAM column.
    * ``models``: group titles (default: the maps' model names); ``bands``: which bands to draw
      (default all, in the maps' order); ``class_names``: to label rows by the explained class
      (shortened at word boundaries); ``row_labels`` overrides them.
    * ``difference``: a :class:`MapDifference` of the two models (b - a): a third group of signed
      per-image differences on a diverging scale.

    Each band panel shows the cells' mean |I^(m)| over the image (dimmed to grey), on one colour
    scale per row shared by all band panels of the row (colour bar at the right of the row).
    Cells whose mean |I| is not above ``floor_factor`` times their noise floor are left
    uncoloured and hatched: they read as empty.  In the difference group a cell is coloured only
    where ``|b - a|`` exceeds twice its estimator standard error (from both maps' stderr bounds).
    The corner of each panel gives the panel's mean (mean |I|, or mean |b - a|) and the number of
    coloured cells.  Returns ``(fig, axes)`` with
    axes ``[X, n_columns]`` (spacers between groups excluded).
    """
    import matplotlib
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.patches import Rectangle

    if isinstance(maps, InteractionMaps):
        groups = [maps]
    elif isinstance(maps, Mapping):
        models = list(models) if models is not None else list(maps)
        groups = list(maps.values())
    else:
        groups = list(maps)
    if not 1 <= len(groups) <= 2:
        raise ValueError(f"draw one or two models, got {len(groups)}")
    names = list(models) if models is not None else [g.model or f"model {k + 1}" for k, g in enumerate(groups)]
    if len(names) != len(groups):
        raise ValueError(f"{len(names)} model names for {len(groups)} maps")
    images = torch.as_tensor(images)
    X = groups[0].n_images
    if images.shape[0] != X or any(g.n_images != X for g in groups):
        raise ValueError(f"{images.shape[0]} images for maps of {[g.n_images for g in groups]} images")
    if len(groups) == 2:
        g0, g1 = groups
        if g0.grid != g1.grid or g0.bands != g1.bands:
            raise ValueError("the two models' maps have different grids or bands")
    if difference is not None and len(groups) != 2:
        raise ValueError("a difference group needs two models")
    band_names = list(bands) if bands is not None else groups[0].band_names
    band_idx = [groups[0].band_index(b) for b in band_names]
    if cams is None:
        cam_list: List[Optional[torch.Tensor]] = [None] * len(groups)
    elif isinstance(cams, (list, tuple)):
        if len(cams) != len(groups):
            raise ValueError(f"{len(cams)} Grad-CAM results for {len(groups)} models")
        cam_list = [None if c is None else _cam_tensor(c) for c in cams]
    else:
        cam_list = [_cam_tensor(cams)] * len(groups)
    for c in cam_list:
        if c is not None and c.shape[0] != X:
            raise ValueError(f"Grad-CAM maps for {c.shape[0]} images, maps for {X}")
    has_cam = any(c is not None for c in cam_list)

    # columns: input | per model: [Grad-CAM] + bands | [difference: bands]; spacers between groups
    layout = [("input", None, None)]
    for k in range(len(groups)):
        layout.append(("spacer", k, None))
        if has_cam:
            layout.append(("cam", k, None))
        layout += [("band", k, b) for b in band_idx]
    if difference is not None:
        layout.append(("spacer", "diff", None))
        layout += [("diff", None, b) for b in band_idx]
    # the spacer after the last model group holds that group's colour bar
    widths = [(0.55 if k == "diff" else 0.12) if kind == "spacer" else 1.0 for kind, k, _ in layout]
    cbar_w = 0.45
    real = [e for e in layout if e[0] != "spacer"]
    n_real = len(real)
    last_band = max(c for c, (kind, _, _) in enumerate(real) if kind == "band")
    fig_w = panel_size * (sum(widths) + cbar_w) + 0.5
    fig_h = panel_size * X + 0.75
    with paper_style():
        fig = plt.figure(figsize=(fig_w, fig_h))
        gs = fig.add_gridspec(X, len(layout), width_ratios=widths, wspace=0.04, hspace=0.08,
                              left=0.45 / fig_w, right=1 - panel_size * cbar_w / fig_w,
                              top=1 - 0.62 / fig_h, bottom=0.08 / fig_h)  # fmt: skip
        axes = np.empty((X, n_real), dtype=object)
        cell_cmap = matplotlib.colormaps[cmap]
        dcmap = matplotlib.colormaps[diff_cmap]
        g = groups[0].grid
        for r in range(X):
            img = _display(images[r])
            H, W = img.shape[:2]
            grey = img.mean(-1, keepdim=True).expand(-1, -1, 3) * 0.55 + 0.15
            vals = torch.stack([grp.mean_abs[r, band_idx] for grp in groups])
            finite = vals[torch.isfinite(vals)]
            vmax = float(finite.max()) if finite.numel() and float(finite.max()) > 0 else 1.0
            if difference is not None:
                dper = difference.per_image[r, band_idx]
                a, b = groups
                dnoise = (a.signed_stderr_bound()[r, band_idx] ** 2 + b.signed_stderr_bound()[r, band_idx] ** 2).sqrt()
                dshow = dper.abs() > 2 * dnoise
                dfin = dper[torch.isfinite(dper)].abs()
                dmax = float(dfin.max()) if dfin.numel() and float(dfin.max()) > 0 else 1.0
            col = 0
            for pos, (kind, k, b) in enumerate(layout):
                if kind == "spacer":
                    continue
                ax = fig.add_subplot(gs[r, pos])
                axes[r, col] = ax
                col += 1
                if kind == "input":
                    ax.imshow(img.numpy(), interpolation="bilinear")
                elif kind == "cam":
                    cam = cam_list[k]
                    if cam is None:
                        ax.imshow(grey.numpy())
                        ax.text(0.5, 0.5, "no Grad-CAM", ha="center", va="center", transform=ax.transAxes)
                    else:
                        c = _resize(cam[r], (H, W)).clamp(0, 1)
                        blend = 0.5 * img.numpy() + 0.5 * matplotlib.colormaps[cam_cmap](c.numpy())[..., :3]
                        ax.imshow(np.clip(blend, 0, 1), interpolation="bilinear")
                else:
                    ax.imshow(grey.numpy(), interpolation="bilinear")
                    if kind == "band":
                        grp = groups[k]
                        v = grp.mean_abs[r, b]
                        show = (grp.mean_abs[r, b] > floor_factor * grp.noise_floor[r, b]) & torch.isfinite(v)
                        rgba = cell_cmap((v / vmax).clamp(0, 1).nan_to_num(0).numpy())
                    else:
                        v = dper[band_idx.index(b)]
                        show = dshow[band_idx.index(b)] & torch.isfinite(v)
                        rgba = dcmap(((v / dmax).clamp(-1, 1).nan_to_num(0).numpy() + 1) / 2)
                    # opacity grows with the value, so that weak cells let the image through
                    strength = (v.abs() / (vmax if kind == "band" else dmax)).clamp(0, 1).nan_to_num(0).numpy()
                    rgba[..., 3] = np.where(show.numpy(), alpha * (0.35 + 0.65 * strength), 0.0)
                    ax.imshow(rgba, extent=(0, W, H, 0), interpolation="nearest")
                    ch, cw = H / g, W / g
                    for cy, cx in (~show).nonzero().tolist():
                        ax.add_patch(Rectangle((cx * cw, cy * ch), cw, ch, fill=False, hatch="////",
                                               edgecolor=(0.85, 0.85, 0.85, 0.55), linewidth=0))  # fmt: skip
                    level = float(v[torch.isfinite(v)].abs().mean()) if torch.isfinite(v).any() else float("nan")
                    corner = f"{'|d|' if kind == 'diff' else 'mean'} {level:.2g} · {int(show.sum())}/{g * g}"
                    ax.text(0.97, 0.03, corner, transform=ax.transAxes, ha="right", va="bottom", fontsize=5,
                            color="white",
                            bbox=dict(facecolor="black", alpha=0.45, pad=0.8, linewidth=0))  # fmt: skip
                    ax.set_xlim(0, W)
                    ax.set_ylim(H, 0)
                ax.set_xticks([])
                ax.set_yticks([])
                for s in ax.spines.values():
                    s.set_visible(False)
            # colour bars: one per row for the band maps (and one for the differences)
            cax = axes[r, last_band].inset_axes([1.05, 0.06, 0.07, 0.88])
            sm = matplotlib.cm.ScalarMappable(norm=matplotlib.colors.Normalize(0, vmax), cmap=cell_cmap)
            cb = fig.colorbar(sm, cax=cax)
            cb.ax.tick_params(labelsize=5, length=1.5, pad=1)
            cb.outline.set_linewidth(0.3)
            cb.set_label("mean |I|", fontsize=5, labelpad=1)
            if difference is not None:
                dax = axes[r, n_real - 1].inset_axes([1.05, 0.06, 0.07, 0.88])
                sm = matplotlib.cm.ScalarMappable(norm=matplotlib.colors.Normalize(-dmax, dmax), cmap=dcmap)
                cb = fig.colorbar(sm, cax=dax)
                cb.ax.tick_params(labelsize=5, length=1.5, pad=1)
                cb.outline.set_linewidth(0.3)
                cb.set_label(f"{shorten_label(names[1], 10)} - {shorten_label(names[0], 10)}", fontsize=5, labelpad=1)
            # row label: the explained class
            if row_labels is not None:
                label = row_labels[r]
            else:
                t = int(groups[0].targets[r])
                known = class_names is not None and 0 <= t < len(class_names)
                label = shorten_label(class_names[t], 16) if known else f"class {t}"
            axes[r, 0].set_ylabel(label, fontsize=6)
        # column titles and group headers
        for c, (kind, k, b) in enumerate(real):
            if kind == "input":
                head = "input"
            elif kind == "cam":
                head = "Grad-CAM"
            else:
                head = _band_title(groups[0].band_names[b], groups[0].bands[groups[0].band_names[b]])
            axes[0, c].set_title(head, fontsize=6, pad=2)
        fig.canvas.draw()
        group_titles = [(k, wrap_title(names[k], 30)) for k in range(len(groups))]
        if difference is not None:
            group_titles.append((None, f"difference: {shorten_label(names[1], 14)} - {shorten_label(names[0], 14)}"))
        for k, text in group_titles:
            cols = [c for c, (kind, kk, _) in enumerate(real) if (kind == "diff" if k is None else kk == k)]
            p0, p1 = axes[0, cols[0]].get_position(), axes[0, cols[-1]].get_position()
            colour = PALETTE[k] if k is not None else "0.25"
            fig.text((p0.x0 + p1.x1) / 2, p0.y1 + 0.30 / fig_h, text, ha="center", va="bottom", fontsize=7,
                     color=colour, fontweight="bold")  # fmt: skip
            fig.add_artist(matplotlib.lines.Line2D([p0.x0, p1.x1], [p0.y1 + 0.27 / fig_h] * 2, color=colour,
                                                   linewidth=0.8))  # fmt: skip
        if title:
            fig.suptitle(title, fontsize=8, y=1 - 0.04 / fig_h, va="top")
    return fig, axes

