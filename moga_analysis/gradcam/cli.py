"""``moga-analysis gradcam`` (``python -m moga_analysis.gradcam``): Grad-CAM grids and
faithfulness metrics across models.

The parser only parses (flags: :mod:`moga_analysis.cli`); :func:`settings_from_args` turns the
namespace into a :class:`~moga_analysis.gradcam.pipeline.CAMSettings` and :func:`main` calls
:func:`~moga_analysis.gradcam.pipeline.compute_cams` with plain arguments.
"""

from __future__ import annotations

import argparse
import logging
from typing import Optional, Sequence

__all__ = ["build_parser", "settings_from_args", "main"]

log = logging.getLogger(__name__)



def build_parser() -> argparse.ArgumentParser:
    from ..cli import add_image_args, add_model_args, add_run_args

    p = argparse.ArgumentParser(
        prog="moga-analysis gradcam",
        description="Grad-CAM maps side by side across models, with faithfulness metrics.",
        allow_abbrev=False,
    )
    add_model_args(p)
    add_image_args(p)
    g = p.add_argument_group("grad-cam")
    g.add_argument("--layer", default=None, metavar="NAME",
                   help="layer of --model whose activations and gradients make the map (default: the family's "
                   "default; stage1..4 on MogaNet)")
    g.add_argument("--steps", type=int, default=50, metavar="N",
                   help="deletion/insertion steps of the faithfulness metrics (default 50; RISE used one per 224 "
                   "pixels)")
    g.add_argument("--no-metrics", action="store_true", help="skip the deletion/insertion faithfulness metrics")
    g.add_argument("--sanity", action="store_true",
                   help="also run the model-randomisation sanity check (rank correlation with a randomised model)")
    add_run_args(p, "gradcam", image_size=224, dtype=False, memory_format=False,
                 image_size_help="input size, the same for every model so maps line up",
                 seed_help="seeds the image subset and the sanity check's random weights")
    return p


def settings_from_args(args: argparse.Namespace):
    """The :class:`~moga_analysis.gradcam.pipeline.CAMSettings` of parsed arguments."""
    from .pipeline import CAMSettings

    return CAMSettings(
        image_size=args.image_size,
        layers={args.model: args.layer} if args.layer else {},
        steps=args.steps,
        metrics=not args.no_metrics,
        sanity=args.sanity,
        seed=args.seed,
    )


def main(argv: Optional[Sequence[str]] = None) -> int:
    from ..cli import figure_out, images_from_args, setup_from_args, specs_from_args
    from . import pipeline
    from .plot import plot_cam_grid

    args = build_parser().parse_args(argv)
    setup_from_args(args)
    stack = pipeline.compute_cams(specs_from_args(args), images_from_args(args), settings_from_args(args),
                                  out=args.out, resume=args.resume, device=args.device, batch_size=args.batch_size,
                                  progress=not args.no_progress)
    if not args.no_figures:
        fig, _ = plot_cam_grid(stack)
        figure_out(fig, f"{args.out}/gradcam_grid")
    log.info("results in %s (metrics.csv, metrics.md, metrics.json)", args.out)
    return 0
