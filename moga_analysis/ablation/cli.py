"""``moga-analysis ablation`` (``python -m moga_analysis.ablation``): the gate-ablation sweep of a
MogaNet over an image folder.

The parser only parses (flags: :mod:`moga_analysis.cli`); :func:`settings_from_args` makes the
:class:`~moga_analysis.ablation.pipeline.AblationSettings` and
:class:`~moga_analysis.ablation.pipeline.AnalysisSettings`, and :func:`main` calls
:func:`~moga_analysis.ablation.pipeline.run_ablation` with plain arguments.
"""

from __future__ import annotations

import argparse
import logging
import re
from typing import Optional, Sequence

from .interventions import KINDS, MODES

__all__ = ["build_parser", "settings_from_args", "main"]

log = logging.getLogger(__name__)


#: defaults of the optional analyses' flags (None on the parser: given or not is checked)
ANALYSIS_DEFAULTS = {"grid": 8, "pairs": 8, "contexts": 16, "steps": 20}

_STAGES = re.compile(r"all|[1-4](\+[1-4])*")


def _stage(value: str) -> str:
    if not _STAGES.fullmatch(value):
        raise argparse.ArgumentTypeError(f"invalid stage {value!r}: write all, 1, 2, 3, 4 or stages joined by +, "
                                         "e.g. 2+3; several: space-separated")
    return value


def build_parser() -> argparse.ArgumentParser:
    from ..cli import DTYPES, add_image_args, add_model_args, add_run_args, advanced_group

    p = argparse.ArgumentParser(
        prog="moga-analysis ablation",
        description="Gate-ablation sweep of a MogaNet over an image folder: accuracy, NLL, agreement, KL.",
        allow_abbrev=False,
    )
    add_model_args(p, compare=False)
    add_image_args(p, required=True)
    a = p.add_argument_group("ablations")
    a.add_argument("--ablations", nargs="+", choices=KINDS, default=list(KINDS), metavar="KIND",
                   help=f"what to ablate, space-separated: {', '.join(KINDS)} (default: all of them)")
    a.add_argument("--stages", nargs="+", type=_stage, default=["all"], metavar="STAGES",
                   help="where, space-separated: all, 1, 2, 3, 4, or stages joined by + such as 2+3 (default all)")
    a.add_argument("--modes", nargs="+", choices=MODES, default=["zero"], metavar="MODE",
                   help="replace the ablated signal by zero and/or its channel mean over the calibration images "
                   "(mean: gate and context only), space-separated (default zero)")
    a.add_argument("--calibration-images", type=int, default=256, metavar="N",
                   help="images (the first of the evaluated subset) for mean-mode channel means (default 256)")
    x = p.add_argument_group("optional analyses of each ablated model (through the other tools' pipelines)")
    x.add_argument("--interactions", action="store_true", help="J^(m) curves (moga-analysis interactions)")
    x.add_argument("--erf", action="store_true", help="ERF area ratios (moga-analysis erf)")
    x.add_argument("--gradcam", action="store_true",
                   help="Grad-CAM deletion/insertion faithfulness (moga-analysis gradcam)")
    x.add_argument("--analysis-num-images", type=int, default=4, metavar="N",
                   help="the optional analyses use the first N evaluated images (default 4)")
    d = ANALYSIS_DEFAULTS
    x.add_argument("--grid", type=int, default=None, metavar="N",
                   help=f"with --interactions: players = N x N cells (default {d['grid']})")
    x.add_argument("--pairs", type=int, default=None, metavar="N",
                   help=f"with --interactions: player pairs per image (default {d['pairs']})")
    x.add_argument("--contexts", type=int, default=None, metavar="N",
                   help=f"with --interactions: sampled contexts per pair and order (default {d['contexts']})")
    x.add_argument("--steps", type=int, default=None, metavar="N",
                   help=f"with --gradcam: deletion/insertion steps (default {d['steps']})")
    add_run_args(p, "ablation", dtype=False, image_size_help="input size",
                 seed_help="seeds the image subset and the interaction pairs and contexts")
    adv = advanced_group(p)
    adv.add_argument("--autocast", choices=DTYPES, default="float32",
                     help="run the forward passes under autocast to this dtype; the weights stay float32 "
                     "(default float32: no autocast)")
    adv.add_argument("--save-every", type=float, default=120.0, metavar="SECONDS",
                     help="seconds between saves of the sweep's state, for --resume (default 120)")
    adv.add_argument("--workers", type=int, default=None, metavar="N",
                     help="DataLoader worker processes (default: min(8, CPUs))")
    return p


def settings_from_args(args: argparse.Namespace):
    """``(AblationSettings, AnalysisSettings)`` of parsed arguments."""
    from ..interactions.pipeline import InteractionSettings
    from .pipeline import AblationSettings, AnalysisSettings

    for flag, needs in (("grid", "interactions"), ("pairs", "interactions"), ("contexts", "interactions"),
                        ("steps", "gradcam")):
        if getattr(args, flag) is not None and not getattr(args, needs):
            raise ValueError(f"--{flag} sets the {needs} analysis: give --{needs} too")
    value = {k: v if getattr(args, k) is None else getattr(args, k) for k, v in ANALYSIS_DEFAULTS.items()}
    sweep = AblationSettings(
        ablations=tuple(args.ablations), stages=tuple(args.stages), modes=tuple(args.modes),
        calibration_images=args.calibration_images, image_size=args.image_size, dtype=args.autocast,
        memory_format=args.memory_format, seed=args.seed)
    inter = None
    if args.interactions:
        inter = InteractionSettings.efficient(grid=value["grid"], pairs=value["pairs"], contexts=value["contexts"],
                                              seed=args.seed)
    analyses = AnalysisSettings(interactions=inter, erf=args.erf,
                                gradcam_steps=value["steps"] if args.gradcam else None,
                                images=args.analysis_num_images)
    return sweep, analyses


def main(argv: Optional[Sequence[str]] = None) -> int:
    from ..cli import figure_out, setup_from_args, specs_from_args
    from ..results import markdown_table
    from . import pipeline
    from .evaluate import MARKDOWN_COLUMNS
    from .plot import plot_accuracy_drop, plot_interaction_curves

    args = build_parser().parse_args(argv)
    setup_from_args(args)
    sweep, analyses = settings_from_args(args)
    (spec,) = specs_from_args(args)
    report = pipeline.run_ablation(spec, args.imagenet_val or args.images, sweep, labels_file=args.labels,
                                   labels_format=args.labels_format, num_images=args.num_images, analyses=analyses,
                                   out=args.out, resume=args.resume, device=args.device, batch_size=args.batch_size,
                                   workers=args.workers, checkpoint_every_s=args.save_every,
                                   progress=not args.no_progress)
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
