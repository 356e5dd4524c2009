"""``python -m moga_analysis.ablation``: the gate-ablation sweep of a MogaNet over an image folder."""

from __future__ import annotations

import argparse
import logging
from typing import Optional, Sequence

from .interventions import KINDS

__all__ = ["build_parser", "main", "RESUMES"]

log = logging.getLogger(__name__)

#: whether ``--resume`` continues an interrupted run (asked by experiments/make_figures.py)
RESUMES = True


def build_parser() -> argparse.ArgumentParser:
    from ..cli import add_image_args, add_model_args, add_run_args

    p = argparse.ArgumentParser(
        prog="python -m moga_analysis.ablation",
        description="Gate-ablation sweep of a MogaNet over an image folder: accuracy, NLL, agreement, KL.",
        allow_abbrev=False,
    )
    add_model_args(p)
    add_image_args(p)
    p.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: min(8, CPUs))")
    a = p.add_argument_group("ablations")
    a.add_argument("--ablations", default=",".join(KINDS), help=f"comma list of {', '.join(KINDS)}")
    a.add_argument("--stages", default="all", help="comma list of stage choices: all, 1..4, or 2+3")
    a.add_argument("--modes", default="zero", help="zero and/or mean (mean: gate/context only)")
    a.add_argument("--calibration-images", type=int, default=256,
                   help="images (the first of the evaluated subset) for mean-mode channel means")
    a.add_argument("--amp", dest="dtype", choices=["bf16", "fp16", "none"], help=argparse.SUPPRESS)
    a.add_argument("--checkpoint-every", type=float, default=120.0, help="seconds between state saves")
    x = p.add_argument_group("optional analyses of each ablated model (through the other pipelines)")
    x.add_argument("--interactions", action="store_true", help="J^(m) curves (moga_analysis.interactions)")
    x.add_argument("--erf", action="store_true", help="ERF area ratios (moga_analysis.erf)")
    x.add_argument("--gradcam", action="store_true", help="Grad-CAM deletion faithfulness (moga_analysis.gradcam)")
    x.add_argument("--analysis-images", type=int, default=4, help="images for the optional analyses")
    x.add_argument("--interaction-grid", type=int, default=8, help="players: grid x grid cells")
    x.add_argument("--interaction-pairs", type=int, default=8)
    x.add_argument("--interaction-contexts", type=int, default=16, help="sampled contexts per order and pair")
    x.add_argument("--faithfulness-steps", type=int, default=20, help="deletion/insertion steps")
    add_run_args(p, "ablation", image_size_help="input size",
                 dtype_help="autocast dtype: float32 (default: none), bfloat16, float16")
    return p


def _settings(args: argparse.Namespace):
    from ..interactions.pipeline import InteractionSettings
    from .pipeline import AblationSettings, AnalysisSettings

    dtype = {"none": "float32", "bf16": "bfloat16", "fp16": "float16"}.get(args.dtype, args.dtype)
    sweep = AblationSettings(
        ablations=tuple(s for s in args.ablations.split(",") if s.strip()),
        stages=tuple(s for s in args.stages.split(",") if s.strip()),
        modes=tuple(s for s in args.modes.split(",") if s.strip()),
        calibration_images=args.calibration_images, image_size=args.image_size, dtype=dtype,
        memory_format=args.memory_format, seed=args.seed)
    inter = None
    if args.interactions:
        inter = InteractionSettings.efficient(grid=args.interaction_grid, pairs=args.interaction_pairs,
                                              contexts=args.interaction_contexts, seed=args.seed)
    analyses = AnalysisSettings(interactions=inter, erf=args.erf,
                                gradcam_steps=args.faithfulness_steps if args.gradcam else None,
                                images=args.analysis_images)
    return sweep, analyses


def main(argv: Optional[Sequence[str]] = None) -> int:
    from ..cli import figure_out, setup_from_args, specs_from_args
    from ..results import markdown_table
    from .evaluate import MARKDOWN_COLUMNS
    from .pipeline import run_ablation
    from .plot import plot_accuracy_drop, plot_interaction_curves

    args = build_parser().parse_args(argv)
    setup_from_args(args)
    if not (args.images or args.imagenet_val):
        raise ValueError("give the images to evaluate: --images DIR (or --imagenet-val DIR)")
    if args.images and args.imagenet_val:
        raise ValueError("give --images or --imagenet-val, not both")
    sweep, analyses = _settings(args)
    (spec,) = specs_from_args(args)[:1]
    report = run_ablation(spec, args.imagenet_val or args.images, sweep, labels_file=args.labels,
                          labels_format=args.labels_format, num_images=args.num_images, analyses=analyses,
                          out=args.out, resume=args.resume, device=args.device, batch_size=args.batch_size,
                          workers=args.workers, checkpoint_every_s=args.checkpoint_every, progress=not args.no_progress)
    if not args.no_figures:
        try:
            fig, _ = plot_accuracy_drop(report.metrics)
            figure_out(fig, f"{args.out}/ablation_accuracy_drop")
        except ValueError as err:  # e.g. no rows with values
            log.warning("no accuracy figure: %s", err)
        curves = report.metadata.get("analyses", {}).get("interactions")
        if curves:
            fig, _ = plot_interaction_curves(curves)
            figure_out(fig, f"{args.out}/ablation_interactions")
    log.info("wrote %s/ablation_results.md", args.out)
    if not args.quiet:
        print(markdown_table(report.rows(), MARKDOWN_COLUMNS), end="")
    return 0
