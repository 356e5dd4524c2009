"""``moga-analysis erf`` (``python -m moga_analysis.erf``): effective receptive fields side by
side, with area ratios.

The parser only parses (flags: :mod:`moga_analysis.cli`); :func:`settings_from_args` makes the
:class:`~moga_analysis.erf.pipeline.ERFSettings` and :func:`main` calls
:func:`~moga_analysis.erf.pipeline.compute_erfs` with plain arguments.
"""

from __future__ import annotations

import argparse
import logging
from typing import Optional, Sequence

from .erf import DEFAULT_THRESHOLDS

__all__ = ["build_parser", "settings_from_args", "main"]

log = logging.getLogger(__name__)



def build_parser() -> argparse.ArgumentParser:
    from ..cli import add_image_args, add_model_args, add_run_args

    p = argparse.ArgumentParser(
        prog="moga-analysis erf",
        description="Effective receptive fields (RepLKNet protocol) side by side, with area ratios.",
        allow_abbrev=False,
    )
    add_model_args(p)
    add_image_args(p, default_num=50)
    g = p.add_argument_group("erf")
    g.add_argument("--layer", default=None, metavar="NAME",
                   help="feature layer of --model whose centre is traced back (default: the last stage; stage1..4 "
                   "on MogaNet)")
    default = " ".join(str(t) for t in DEFAULT_THRESHOLDS)
    g.add_argument("--thresholds", type=float, nargs="+", default=list(DEFAULT_THRESHOLDS), metavar="T",
                   help="thresholds t in (0, 1) of the area ratio: the smallest centred square holding more than t of "
                   f"the (log-scaled) ERF, as a share of the image; space-separated (default {default})")
    add_run_args(p, "erf", image_size=1024, dtype=False, memory_format=False,
                 image_size_help="input size (RepLKNet: 1024)", seed_help="seeds the image subset")
    return p


def settings_from_args(args: argparse.Namespace):
    """The :class:`~moga_analysis.erf.pipeline.ERFSettings` of parsed arguments."""
    from .pipeline import ERFSettings

    return ERFSettings(image_size=args.image_size, layers={args.model: args.layer} if args.layer else {},
                       thresholds=tuple(args.thresholds), seed=args.seed)


def main(argv: Optional[Sequence[str]] = None) -> int:
    from ..cli import figure_out, images_from_args, setup_from_args, specs_from_args
    from . import pipeline
    from .plot import plot_erf

    args = build_parser().parse_args(argv)
    setup_from_args(args)
    stack = pipeline.compute_erfs(specs_from_args(args), images_from_args(args), settings_from_args(args),
                                  out=args.out, resume=args.resume, device=args.device, batch_size=args.batch_size,
                                  progress=not args.no_progress)
    if not args.no_figures:
        fig, _ = plot_erf(stack)
        figure_out(fig, f"{args.out}/erf")
    log.info("results in %s (area_ratio.csv, .md, .json)", args.out)
    return 0
