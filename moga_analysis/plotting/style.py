"""One paper style for every figure, and saving as PNG + PDF."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator, List, Sequence, Union

__all__ = ["styled", "paper_style", "save_figure", "wrap_title", "shorten_label", "PALETTE", "README_WIDTH_PX"]

#: colour-blind-safe qualitative palette (Okabe & Ito)
PALETTE = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442", "#000000"]

_RC = {
    "figure.dpi": 110,
    "savefig.dpi": 300,
    "savefig.bbox": "tight",
    "savefig.pad_inches": 0.02,
    "font.size": 8,
    "axes.titlesize": 8,
    "axes.labelsize": 8,
    "legend.fontsize": 7,
    "xtick.labelsize": 7,
    "ytick.labelsize": 7,
    "axes.linewidth": 0.6,
    "lines.linewidth": 1.2,
    "lines.markersize": 3,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "legend.frameon": False,
    "pdf.fonttype": 42,  # editable text in PDFs
    "ps.fonttype": 42,
    "image.cmap": "turbo",
}


@contextlib.contextmanager
def paper_style(**overrides) -> Iterator[None]:
    """Matplotlib settings for paper figures (small fonts, 300 dpi, no top/right spines).

    Only these settings are restored on exit, not every rcParam as ``matplotlib.rc_context``
    does: the first figure of a Jupyter kernel loads the inline backend, which turns interactive
    mode on, and restoring that too left every later figure of the session undisplayed."""
    import matplotlib as mpl
    from cycler import cycler

    rc = dict(_RC, **{"axes.prop_cycle": cycler(color=PALETTE)}, **overrides)
    saved = {key: mpl.rcParams[key] for key in rc}
    mpl.rcParams.update(rc)
    try:
        yield
    finally:
        mpl.rcParams.update(saved)


#: PNG figures are written about this wide (pixels), so that every figure reads well in a README
README_WIDTH_PX = 1600


def styled(fn):
    """Decorator: draw the figure of a plot function inside :func:`paper_style` (every plot
    function of the package uses it, so figures look alike wherever they are drawn)."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with paper_style():
            return fn(*args, **kwargs)

    return wrapper


def save_figure(
    fig, path: Union[str, os.PathLike], formats: Sequence[str] = ("png", "pdf"), close: bool = False
) -> List[Path]:
    """Save ``fig`` as ``path`` with each suffix in ``formats`` (the paper style's bounding box and
    fonts; PNG at a resolution giving about :data:`README_WIDTH_PX` pixels of width, 150-600 dpi);
    ``close`` closes the figure afterwards.  Returns the written paths."""
    base = Path(path)
    base.parent.mkdir(parents=True, exist_ok=True)
    stem = base.with_suffix("") if base.suffix.lower() in {".png", ".pdf", ".svg"} else base
    dpi = min(600.0, max(150.0, README_WIDTH_PX / max(fig.get_figwidth(), 1e-3)))
    out = []
    with paper_style():
        for fmt in formats:
            p = stem.with_suffix("." + fmt)
            fig.savefig(p, dpi=dpi if fmt == "png" else None)
            out.append(p)
    if close:
        import matplotlib.pyplot as plt

        plt.close(fig)
    return out


def shorten_label(text: str, width: int = 16) -> str:
    """``text`` cut at a word boundary to at most ``width`` characters, with an ellipsis when cut
    ('football helmet' stays whole at 16; 'American lobster, Northern lobster' -> 'American…')."""
    text = str(text)
    if len(text) <= width:
        return text
    words, out = text.replace(",", " ,").split(), ""
    for w in words:
        cand = (out + " " + w).strip() if w != "," else out
        if len(cand) + 1 > width:
            break
        out = cand
    if not out:  # a single long word
        out = text[: width - 1]
    return out.rstrip(" ,") + "…"


def wrap_title(name: str, width: int = 18) -> str:
    """Break a long model name (before its last ``.``, else at an ``_``) so panel titles do not collide."""
    if len(name) <= width:
        return name
    cut = name.rfind(".")
    if cut <= 0:
        cut = name.find("_", len(name) // 3)
    return name if cut <= 0 else name[:cut] + "\n" + name[cut:]
