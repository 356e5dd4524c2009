"""Figures: pure functions ``result -> (fig, ax)``.  Nothing here imports pyplot at import time."""

from .style import paper_style, save_figure

__all__ = ["paper_style", "save_figure"]
