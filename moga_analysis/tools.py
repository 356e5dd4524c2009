"""The command-line faces of the analysis packages, resolved on first use.

``moga_analysis.interactions.main(argv)`` (and ``gradcam``, ``erf``, ``ablation``) runs the tool's
command line in-process; importing an analysis package never imports its CLI module.
"""

from __future__ import annotations

import importlib
from typing import Callable, Optional, Sequence, Tuple

__all__ = ["entry_points"]


def entry_points(package: str) -> Tuple[Callable[..., int], Callable[[], object]]:
    """``(main, build_parser)`` of ``<package>.cli``, imported when first called."""

    def main(argv: Optional[Sequence[str]] = None) -> int:
        """The command line, ``python -m <package>`` (see its ``cli`` module)."""
        return importlib.import_module(f"{package}.cli").main(argv)

    def build_parser():
        """The command line's argument parser (see its ``cli`` module)."""
        return importlib.import_module(f"{package}.cli").build_parser()

    return main, build_parser
