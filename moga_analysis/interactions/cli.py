"""``python -m moga_analysis.interactions``: J^(m) curves of timm classifiers from the command line.

A thin face of :func:`moga_analysis.interactions.pipeline.compute_interactions`: arguments become
an :class:`~moga_analysis.interactions.pipeline.InteractionSettings`, the pipeline computes and
saves, and the figure is drawn from the returned stack.  Under ``torchrun`` the process group is
started here and the images are sharded over the ranks.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import os
from typing import Iterator, Optional, Sequence

__all__ = ["build_parser", "main", "settings_from_args"]

log = logging.getLogger(__name__)



def build_parser() -> argparse.ArgumentParser:
    from ..cli import add_image_args, add_model_args, add_run_args

    p = argparse.ArgumentParser(
        prog="python -m moga_analysis.interactions",
        description="Multi-order interactions I^(m)(i,j) and J^(m) curves of timm classifiers (MogaNet included).",
        allow_abbrev=False,
    )
    add_model_args(p)
    add_image_args(p)
    g = p.add_argument_group("interactions")
    g.add_argument(
        "--protocol",
        choices=["reference", "efficient", "precise", "maps"],
        default=None,
        help="(default reference; precise with --target-noise) reference: 50 independent contexts per pair "
        "and order (the public code's protocol); efficient: "
        "the same samples with contexts shared between pairs; precise: as many shared contexts as it takes to "
        "reach --target-noise (default 0.1) at every order; maps: per-cell maps of I^(m) by band of orders "
        "(every cell with its right and lower neighbours; grid 8, 16 contexts) beside Grad-CAM",
    )
    g.add_argument("--target-noise", type=float, default=None, metavar="TAU",
                   help="noise floor / mean |I^(m)| <= TAU at every order and image (implies --protocol precise)")
    g.add_argument("--max-evaluations", type=int, default=None, metavar="N",
                   help="with a target: at most N game evaluations per image (orders it leaves above the target "
                   "are reported)")
    g.add_argument("--grid", type=int, default=None, help="players = grid x grid cells (default 14; 8 for maps)")
    g.add_argument("--pairs", type=int, default=None, help="pairs per image (default 50)")
    g.add_argument("--contexts", type=int, default=None,
                   help="contexts per pair and order of the fixed protocols (default 50; 16 for maps)")
    g.add_argument("--ratios", type=float, nargs="+", default=None, metavar="R",
                   help="order ratios r, m = int((n-2) r) (default: the 13 reference ratios; for maps those "
                   "inside the bands)")
    g.add_argument("--baseline", default="mean", choices=["mean", "zero", "blur"], help="absent-player baseline")
    g.add_argument("--value", dest="output", default="log_odds", choices=["log_odds", "logit", "log_prob"],
                   help="game value v(S) of the target class (default log_odds)")
    g.add_argument("--dry-run", action="store_true",
                   help="write OUT/plan.json (evaluations per image, measured seconds per evaluation, expected "
                   "time), print it and compute nothing else")
    a = p.add_argument_group("interactions, advanced")
    a.add_argument("--sharing", choices=["shared", "independent"], default=None,
                   help="how the fixed protocols draw contexts (default: independent for reference, shared otherwise)")
    a.add_argument("--min-contexts", type=int, default=8, help="with a target: contexts per pair and order, at least")
    a.add_argument("--max-contexts", type=int, default=4096,
                   help="with a target: contexts per pair and order, at most")
    a.add_argument("--map-radius", type=int, default=1, help="maps: neighbours within this distance")
    a.add_argument("--map-neighbourhood", choices=["right_down", "chebyshev"], default="right_down",
                   help="maps: right and lower neighbours, or every cell within the radius")
    a.add_argument("--compile", action="store_true", help="torch.compile the model (pays off on long GPU runs)")
    a.add_argument("--normalization", choices=["evaluated", "all"], default="evaluated",
                   help="J^(m) divides by the mean over the evaluated orders (reference) or over all orders")
    a.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the figure's bands")
    add_run_args(p, "interactions", dtype_help="model dtype: float32 (default), bfloat16, float16")
    return p


def settings_from_args(args: argparse.Namespace):
    """The :class:`InteractionSettings` of parsed arguments."""
    from .estimators import FixedContexts, PrecisionTarget
    from .pipeline import InteractionSettings

    protocol = args.protocol or ("precise" if args.target_noise is not None else "reference")
    if args.target_noise is not None and protocol != "precise":
        raise ValueError(f"--target-noise sets a precision target; --protocol {protocol} has a fixed number of "
                         f"contexts: drop one of them")
    given = dict(grid=args.grid, pairs=args.pairs, ratios=None if args.ratios is None else tuple(args.ratios))
    overrides = dict({k: v for k, v in given.items() if v is not None}, baseline=args.baseline, output=args.output,
                     image_size=args.image_size, dtype=args.dtype, memory_format=args.memory_format, seed=args.seed)
    if protocol == "precise":
        if args.contexts is not None or args.sharing is not None:
            raise ValueError("a precision target chooses its contexts: drop --contexts / --sharing")
        tau = 0.1 if args.target_noise is None else args.target_noise
        est = PrecisionTarget(tau, args.max_evaluations, args.min_contexts, args.max_contexts)
        return InteractionSettings.precise(**overrides, estimator=est)
    if args.max_evaluations is not None:
        raise ValueError("--max-evaluations caps a precision target: give --target-noise too")
    if protocol == "maps":
        overrides.update(map_radius=args.map_radius, map_neighbourhood=args.map_neighbourhood)
    preset = getattr(InteractionSettings, protocol)
    settings = preset(**overrides) if args.contexts is None else preset(contexts=args.contexts, **overrides)
    if args.sharing is not None:
        settings = dataclasses.replace(settings, estimator=FixedContexts(settings.estimator.contexts, args.sharing))
    return settings


@contextlib.contextmanager
def _process_group(device: str) -> Iterator[int]:
    """Under ``torchrun`` (``WORLD_SIZE`` > 1): a process group (NCCL on CUDA, else gloo); yields the rank."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        yield 0
        return
    import torch.distributed as dist

    from ..runtime import analysis_device

    dist.init_process_group("nccl" if analysis_device(device, world).type == "cuda" else "gloo")
    try:
        yield dist.get_rank()
    finally:
        dist.destroy_process_group()


def _maps_figure(args: argparse.Namespace, stack) -> None:
    """The maps beside Grad-CAM of the same images and classes (two models: their difference too)."""
    from ..cli import figure_out, images_from_args, specs_from_args
    from ..gradcam.pipeline import CAMSettings, compute_cams
    from .map_plot import plot_map_stack

    specs = specs_from_args(args)[:2]
    targets = stack[specs[0].name].targets.tolist()
    cams = compute_cams(specs, images_from_args(args), CAMSettings(image_size=args.image_size, metrics=False,
                                                                    target="label", seed=args.seed),
                        labels=targets, out=f"{args.out}/gradcam", resume=args.resume, device=args.device,
                        progress=not args.no_progress)
    fig, _ = plot_map_stack(stack, cams, models=[s.name for s in specs])
    figure_out(fig, f"{args.out}/interaction_maps")


def main(argv: Optional[Sequence[str]] = None) -> int:
    from ..cli import figure_out, images_from_args, setup_from_args, specs_from_args
    from .pipeline import compute_interactions, plan_interactions
    from .plot import plot_relative_strength

    args = build_parser().parse_args(argv)
    setup_from_args(args)
    settings = settings_from_args(args)
    if args.dry_run:
        plan = plan_interactions(specs_from_args(args), images_from_args(args), settings, device=args.device,
                                 batch_size=args.batch_size)
        path = plan.save(args.out)
        print(plan.describe())
        print(f"plan written to {path}")
        return 0
    with _process_group(args.device) as rank:
        stack = compute_interactions(specs_from_args(args), images_from_args(args), settings, out=args.out,
                                     resume=args.resume, device=args.device, batch_size=args.batch_size,
                                     compile=args.compile, progress=not args.no_progress)
        if rank != 0:
            return 0
    if not args.no_figures:
        fig, _ = plot_relative_strength(stack, normalization=args.normalization, n_boot=args.bootstrap, seed=args.seed)
        figure_out(fig, f"{args.out}/interactions_J")
        if settings.pair_rule == "map":
            _maps_figure(args, stack)
    for name, J in stack.relative_strength(args.normalization).items():
        log.info("%s J^(m): %s", name, " ".join(f"{x:.3f}" for x in J.tolist()))
    log.info("results in %s", args.out)
    return 0
