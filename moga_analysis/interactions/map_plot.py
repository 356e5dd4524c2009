"""Figures of per-cell interaction maps: where an image's low-, middle- and high-order interactions are.

Pure functions of computed results (:class:`~.maps.InteractionMaps`, :class:`~.maps.MapDifference`,
Grad-CAM map tensors); pyplot is imported on call only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, List, Mapping, Optional, Sequence, Tuple, Union

import torch

from ..plotting.style import PALETTE, paper_style, shorten_label, wrap_title
from .maps import InteractionMaps, MapDifference

__all__ = [
    "plot_interaction_maps",
    "plot_map_stack",
]


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


@dataclass
class _Panels:
    """What every panel of the figure draws from: the models' maps, their Grad-CAM maps, the bands
    shown (indices into the maps' bands), the optional difference and the drawing options."""

    groups: List[InteractionMaps]
    names: List[str]
    cams: List[Optional[torch.Tensor]]
    band_idx: List[int]
    difference: Optional[MapDifference]
    floor_factor: float
    cmap: Any  # colormap objects
    diff_cmap: Any
    cam_cmap: str  # a name
    alpha: float


@dataclass
class _RowScale:
    """One image row: the display image, its dimmed grey copy under the cell maps, the row's shared
    band colour scale ``vmax`` and, with a difference group, the signed differences ``dper``, which of
    their cells clear the noise (``dshow``) and their scale ``dmax``."""

    img: torch.Tensor
    grey: torch.Tensor
    vmax: float
    dper: Optional[torch.Tensor] = None
    dshow: Optional[torch.Tensor] = None
    dmax: float = 1.0


def _model_groups(maps, models) -> Tuple[List[InteractionMaps], List[str]]:
    """The one or two models' maps and their group titles."""
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
    return groups, names


def _check_inputs(images: torch.Tensor, groups: List[InteractionMaps], difference: Optional[MapDifference]) -> None:
    """The images and all maps cover the same images; two models share grid and bands."""
    X = groups[0].n_images
    if images.shape[0] != X or any(g.n_images != X for g in groups):
        raise ValueError(f"{images.shape[0]} images for maps of {[g.n_images for g in groups]} images")
    if len(groups) == 2:
        g0, g1 = groups
        if g0.grid != g1.grid or g0.bands != g1.bands:
            raise ValueError("the two models' maps have different grids or bands")
    if difference is not None and len(groups) != 2:
        raise ValueError("a difference group needs two models")


def _cam_list(cams: Optional[Any], groups: List[InteractionMaps]) -> List[Optional[torch.Tensor]]:
    """One Grad-CAM tensor ``[X, H, W]`` (or None) per model."""
    if cams is None:
        cam_list: List[Optional[torch.Tensor]] = [None] * len(groups)
    elif isinstance(cams, (list, tuple)):
        if len(cams) != len(groups):
            raise ValueError(f"{len(cams)} Grad-CAM results for {len(groups)} models")
        cam_list = [None if c is None else _cam_tensor(c) for c in cams]
    else:
        cam_list = [_cam_tensor(cams)] * len(groups)
    X = groups[0].n_images
    for c in cam_list:
        if c is not None and c.shape[0] != X:
            raise ValueError(f"Grad-CAM maps for {c.shape[0]} images, maps for {X}")
    return cam_list


def _column_layout(n_groups: int, has_cam: bool, band_idx: List[int], has_diff: bool) -> List[tuple]:
    """Grid columns as ``(kind, group, band)``: input | per model: [Grad-CAM] + bands |
    [difference: bands], with a spacer before each group."""
    layout: List[tuple] = [("input", None, None)]
    for k in range(n_groups):
        layout.append(("spacer", k, None))
        if has_cam:
            layout.append(("cam", k, None))
        layout += [("band", k, b) for b in band_idx]
    if has_diff:
        layout.append(("spacer", "diff", None))
        layout += [("diff", None, b) for b in band_idx]
    return layout


def _figure(layout: List[tuple], n_rows: int, panel_size: float):
    """The figure and its grid spec; the spacer after the last model group is wide enough for that
    group's colour bars, and room is left at the right for the last group's."""
    import matplotlib.pyplot as plt

    widths = [(0.55 if k == "diff" else 0.12) if kind == "spacer" else 1.0 for kind, k, _ in layout]
    cbar_w = 0.45
    fig_w = panel_size * (sum(widths) + cbar_w) + 0.5
    fig_h = panel_size * n_rows + 0.75
    fig = plt.figure(figsize=(fig_w, fig_h))
    gs = fig.add_gridspec(n_rows, len(layout), width_ratios=widths, wspace=0.04, hspace=0.08,
                          left=0.45 / fig_w, right=1 - panel_size * cbar_w / fig_w,
                          top=1 - 0.62 / fig_h, bottom=0.08 / fig_h)  # fmt: skip
    return fig, gs


def _row_scale(p: _Panels, image: torch.Tensor, r: int) -> _RowScale:
    """Row ``r``'s display image and colour scales (band maps; differences and their noise test)."""
    img = _display(image)
    grey = img.mean(-1, keepdim=True).expand(-1, -1, 3) * 0.55 + 0.15
    vals = torch.stack([grp.mean_abs[r, p.band_idx] for grp in p.groups])
    finite = vals[torch.isfinite(vals)]
    row = _RowScale(img, grey, float(finite.max()) if finite.numel() and float(finite.max()) > 0 else 1.0)
    if p.difference is not None:
        row.dper = p.difference.per_image[r, p.band_idx]
        a, b = p.groups
        dnoise = (a.signed_stderr_bound()[r, p.band_idx] ** 2 + b.signed_stderr_bound()[r, p.band_idx] ** 2).sqrt()
        row.dshow = row.dper.abs() > 2 * dnoise
        dfin = row.dper[torch.isfinite(row.dper)].abs()
        row.dmax = float(dfin.max()) if dfin.numel() and float(dfin.max()) > 0 else 1.0
    return row


def _cam_panel(ax, cam: Optional[torch.Tensor], r: int, row: _RowScale, cam_cmap: str) -> None:
    """The image blended half and half with its Grad-CAM (or the grey image and a note if none)."""
    import matplotlib
    import numpy as np

    if cam is None:
        ax.imshow(row.grey.numpy())
        ax.text(0.5, 0.5, "no Grad-CAM", ha="center", va="center", transform=ax.transAxes)
        return
    H, W = row.img.shape[:2]
    c = _resize(cam[r], (H, W)).clamp(0, 1)
    blend = 0.5 * row.img.numpy() + 0.5 * matplotlib.colormaps[cam_cmap](c.numpy())[..., :3]
    ax.imshow(np.clip(blend, 0, 1), interpolation="bilinear")


def _band_cells(p: _Panels, row: _RowScale, r: int, k: int, b: int):
    """Model ``k``'s band ``b`` in row ``r``: values, cells above the noise floor, colours, scale."""
    grp = p.groups[k]
    v = grp.mean_abs[r, b]
    show = (grp.mean_abs[r, b] > p.floor_factor * grp.noise_floor[r, b]) & torch.isfinite(v)
    rgba = p.cmap((v / row.vmax).clamp(0, 1).nan_to_num(0).numpy())
    return v, show, rgba, row.vmax


def _diff_cells(p: _Panels, row: _RowScale, b: int):
    """The difference in band ``b``: values, cells clear of the noise, colours, scale."""
    j = p.band_idx.index(b)
    v = row.dper[j]
    show = row.dshow[j] & torch.isfinite(v)
    rgba = p.diff_cmap(((v / row.dmax).clamp(-1, 1).nan_to_num(0).numpy() + 1) / 2)
    return v, show, rgba, row.dmax


def _cell_panel(ax, p: _Panels, row: _RowScale, v, show, rgba, scale: float, what: str) -> None:
    """A cell map over the grey image: shown cells coloured, opacity growing with ``|v| / scale``
    (weak cells let the image through), the others hatched; the panel's mean and count of coloured
    cells in the corner (``what`` names the mean)."""
    import numpy as np
    from matplotlib.patches import Rectangle

    H, W = row.img.shape[:2]
    g = p.groups[0].grid
    ax.imshow(row.grey.numpy(), interpolation="bilinear")
    strength = (v.abs() / scale).clamp(0, 1).nan_to_num(0).numpy()
    rgba[..., 3] = np.where(show.numpy(), p.alpha * (0.35 + 0.65 * strength), 0.0)
    ax.imshow(rgba, extent=(0, W, H, 0), interpolation="nearest")
    ch, cw = H / g, W / g
    for cy, cx in (~show).nonzero().tolist():
        ax.add_patch(Rectangle((cx * cw, cy * ch), cw, ch, fill=False, hatch="////",
                               edgecolor=(0.85, 0.85, 0.85, 0.55), linewidth=0))  # fmt: skip
    level = float(v[torch.isfinite(v)].abs().mean()) if torch.isfinite(v).any() else float("nan")
    corner = f"{what} {level:.2g} · {int(show.sum())}/{g * g}"
    ax.text(0.97, 0.03, corner, transform=ax.transAxes, ha="right", va="bottom", fontsize=5, color="white",
            bbox=dict(facecolor="black", alpha=0.45, pad=0.8, linewidth=0))  # fmt: skip
    ax.set_xlim(0, W)
    ax.set_ylim(H, 0)


def _panel(ax, p: _Panels, row: _RowScale, r: int, kind: str, k, b) -> None:
    """One panel of row ``r``, without ticks or frame."""
    if kind == "input":
        ax.imshow(row.img.numpy(), interpolation="bilinear")
    elif kind == "cam":
        _cam_panel(ax, p.cams[k], r, row, p.cam_cmap)
    elif kind == "band":
        _cell_panel(ax, p, row, *_band_cells(p, row, r, k, b), what="mean")
    else:
        _cell_panel(ax, p, row, *_diff_cells(p, row, b), what="|d|")
    ax.set_xticks([])
    ax.set_yticks([])
    for s in ax.spines.values():
        s.set_visible(False)


def _colour_bar(fig, ax, vmin: float, vmax: float, cmap, label: str) -> None:
    """A slim colour bar just right of ``ax``."""
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    cax = ax.inset_axes([1.05, 0.06, 0.07, 0.88])
    cb = fig.colorbar(ScalarMappable(norm=Normalize(vmin, vmax), cmap=cmap), cax=cax)
    cb.ax.tick_params(labelsize=5, length=1.5, pad=1)
    cb.outline.set_linewidth(0.3)
    cb.set_label(label, fontsize=5, labelpad=1)


def _row_label(maps: InteractionMaps, r: int, class_names, row_labels) -> str:
    """Row ``r``'s label: given, or the explained class (its shortened name where known)."""
    if row_labels is not None:
        return row_labels[r]
    t = int(maps.targets[r])
    known = class_names is not None and 0 <= t < len(class_names)
    return shorten_label(class_names[t], 16) if known else f"class {t}"


def _draw_row(fig, gs, axes, columns: List[tuple], p: _Panels, row: _RowScale, r: int) -> None:
    """Row ``r``'s panels into ``axes[r]`` (``columns``: grid position and ``(kind, group, band)``
    of each panel), then its colour bars: one for the band maps, right of the last model's last band,
    and one for the differences, right of the last column."""
    for c, (pos, (kind, k, b)) in enumerate(columns):
        ax = axes[r, c] = fig.add_subplot(gs[r, pos])
        _panel(ax, p, row, r, kind, k, b)
    last_band = max(c for c, (_, (kind, _, _)) in enumerate(columns) if kind == "band")
    _colour_bar(fig, axes[r, last_band], 0, row.vmax, p.cmap, "mean |I|")
    if p.difference is not None:
        label = f"{shorten_label(p.names[1], 10)} - {shorten_label(p.names[0], 10)}"
        _colour_bar(fig, axes[r, len(columns) - 1], -row.dmax, row.dmax, p.diff_cmap, label)


def _column_titles(axes, real: List[tuple], maps: InteractionMaps) -> None:
    """Titles over the first row: input, Grad-CAM, or the band and its order range."""
    for c, (kind, _, b) in enumerate(real):
        if kind == "input":
            head = "input"
        elif kind == "cam":
            head = "Grad-CAM"
        else:
            head = _band_title(maps.band_names[b], maps.bands[maps.band_names[b]])
        axes[0, c].set_title(head, fontsize=6, pad=2)


def _group_headers(fig, axes, real: List[tuple], names: List[str], has_diff: bool) -> None:
    """Each group's title above its columns, underlined in the group's colour (placed after a draw,
    from the panels' final positions)."""
    from matplotlib.lines import Line2D

    fig.canvas.draw()
    fig_h = fig.get_figheight()
    group_titles = [(k, wrap_title(names[k], 30)) for k in range(len(names))]
    if has_diff:
        group_titles.append((None, f"difference: {shorten_label(names[1], 14)} - {shorten_label(names[0], 14)}"))
    for k, text in group_titles:
        cols = [c for c, (kind, kk, _) in enumerate(real) if (kind == "diff" if k is None else kk == k)]
        p0, p1 = axes[0, cols[0]].get_position(), axes[0, cols[-1]].get_position()
        colour = PALETTE[k] if k is not None else "0.25"
        fig.text((p0.x0 + p1.x1) / 2, p0.y1 + 0.30 / fig_h, text, ha="center", va="bottom", fontsize=7,
                 color=colour, fontweight="bold")  # fmt: skip
        fig.add_artist(Line2D([p0.x0, p1.x1], [p0.y1 + 0.27 / fig_h] * 2, color=colour, linewidth=0.8))


def _draw(images: torch.Tensor, p: _Panels, row_names: List[str], panel_size: float, title: Optional[str]):
    """The whole figure, row by row, then column titles, group headers and the title."""
    import numpy as np

    layout = _column_layout(len(p.groups), any(c is not None for c in p.cams), p.band_idx, p.difference is not None)
    columns = [(pos, e) for pos, e in enumerate(layout) if e[0] != "spacer"]
    real = [e for _, e in columns]
    X = len(row_names)
    with paper_style():
        fig, gs = _figure(layout, X, panel_size)
        axes = np.empty((X, len(real)), dtype=object)
        for r in range(X):
            _draw_row(fig, gs, axes, columns, p, _row_scale(p, images[r], r), r)
            axes[r, 0].set_ylabel(row_names[r], fontsize=6)
        _column_titles(axes, real, p.groups[0])
        _group_headers(fig, axes, real, p.names, p.difference is not None)
        if title:
            fig.suptitle(title, fontsize=8, y=1 - 0.04 / fig.get_figheight(), va="top")
    return fig, axes


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

    groups, names = _model_groups(maps, models)
    images = torch.as_tensor(images)
    _check_inputs(images, groups, difference)
    band_idx = [groups[0].band_index(b) for b in (list(bands) if bands is not None else groups[0].band_names)]
    panels = _Panels(groups, names, _cam_list(cams, groups), band_idx, difference, floor_factor,
                     matplotlib.colormaps[cmap], matplotlib.colormaps[diff_cmap], cam_cmap, alpha)  # fmt: skip
    row_names = [_row_label(groups[0], r, class_names, row_labels) for r in range(groups[0].n_images)]
    return _draw(images, panels, row_names, panel_size, title)


def plot_map_stack(stack, cams=None, models: Optional[Sequence[str]] = None, *, difference: bool = True, **kwargs):
    """:func:`plot_interaction_maps` of a run on map pairs: ``stack`` an ``InteractionStack`` with
    maps, ``cams`` a ``CAMStack`` of the same images (its display images, maps and class names);
    one or two ``models`` (default: the first two), with their paired difference when two."""
    names = list(models or list(stack.maps)[:2])
    if not names or any(n not in stack.maps for n in names):
        raise ValueError(f"no maps for {names}: compute the run with InteractionSettings.maps()")
    if cams is None:
        raise ValueError("the maps figure draws the images: pass the CAMStack of the same images")
    diff = stack.map_difference(names[0], names[1]) if difference and len(names) == 2 else None
    kwargs.setdefault("class_names", cams.class_names)
    return plot_interaction_maps(cams.display, [stack.maps[n] for n in names], [cams.results[n] for n in names],
                                 models=names, difference=diff, **kwargs)
