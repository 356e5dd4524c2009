"""``python -m moga_analysis.erf``: effective receptive fields side by side, with area ratios."""

from __future__ import annotations

import argparse
import logging
from typing import Optional, Sequence

from .erf import DEFAULT_THRESHOLDS

__all__ = ["build_parser", "main", "RESUMES"]

log = logging.getLogger(__name__)

#: whether ``--resume`` continues an interrupted run (asked by experiments/make_figures.py)
RESUMES = True


def build_parser() -> argparse.ArgumentParser:
    from ..cli import add_image_args, add_model_args, add_run_args

    p = argparse.ArgumentParser(
        prog="python -m moga_analysis.erf",
        description="Effective receptive fields (RepLKNet protocol) side by side, with area ratios.",
        allow_abbrev=False,
    )
    add_model_args(p)
    add_image_args(p, default_num=50)
    g = p.add_argument_group("erf")
    g.add_argument("--layer", default=None, help="feature layer of --model (default: last stage; stage1..4 on MogaNet)")
    g.add_argument("--thresholds", type=float, nargs="+", default=list(DEFAULT_THRESHOLDS))
    add_run_args(p, "erf", image_size=1024, image_size_help="input size (RepLKNet: 1024)")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    from ..cli import figure_out, images_from_args, setup_from_args, specs_from_args
    from .pipeline import ERFSettings, compute_erfs
    from .plot import plot_erf

    args = build_parser().parse_args(argv)
    setup_from_args(args)
    settings = ERFSettings(image_size=args.image_size, layers={args.model: args.layer} if args.layer else {},
                           thresholds=tuple(args.thresholds), seed=args.seed)
    stack = compute_erfs(specs_from_args(args), images_from_args(args), settings, out=args.out, resume=args.resume,
                         device=args.device, batch_size=args.batch_size, progress=not args.no_progress)
    if not args.no_figures:
        fig, _ = plot_erf(stack)
        figure_out(fig, f"{args.out}/erf")
    log.info("results in %s (area_ratio.csv, .md, .json)", args.out)
    return 0
