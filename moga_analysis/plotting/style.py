"""One paper style for every figure, and saving as PNG + PDF."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator, List, Sequence, Union

__all__ = ["paper_style", "save_figure", "wrap_title", "PALETTE"]

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
    """Matplotlib settings for paper figures (small fonts, 300 dpi, no top/right spines)."""
    import matplotlib as mpl
    from cycler import cycler

    rc = dict(_RC, **{"axes.prop_cycle": cycler(color=PALETTE)}, **overrides)
    with mpl.rc_context(rc):
        yield


def save_figure(fig, path: Union[str, os.PathLike], formats: Sequence[str] = ("png", "pdf")) -> List[Path]:
    """Save ``fig`` as ``path`` with each suffix in ``formats``; returns the written paths."""
    base = Path(path)
    base.parent.mkdir(parents=True, exist_ok=True)
    stem = base.with_suffix("") if base.suffix.lower() in {".png", ".pdf", ".svg"} else base
    out = []
    for fmt in formats:
        p = stem.with_suffix("." + fmt)
        fig.savefig(p)
        out.append(p)
    return out


def wrap_title(name: str, width: int = 18) -> str:
    """Break a long model name (before its last ``.``, else at an ``_``) so panel titles do not collide."""
    if len(name) <= width:
        return name
    cut = name.rfind(".")
    if cut <= 0:
        cut = name.find("_", len(name) // 3)
    return name if cut <= 0 else name[:cut] + "\n" + name[cut:]
