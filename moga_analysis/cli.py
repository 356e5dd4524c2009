"""Shared command-line arguments and set-up for ``python -m moga_analysis.<tool>``."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator, List, Optional, Sequence, Tuple

if TYPE_CHECKING:
    import torch

__all__ = [
    "add_common_args", "add_model_args", "add_image_args", "setup_from_args", "images_from_args", "model_specs",
    "models_from_args", "run_main",
]

log = logging.getLogger(__name__)


def add_model_args(p: argparse.ArgumentParser, default_model: str = "moganet_small") -> None:
    g = p.add_argument_group("model")
    g.add_argument("--model", default=default_model, help="timm model name (moganet_* registered by this package)")
    g.add_argument("--checkpoint", default=None, help="local checkpoint file or URL (strict load)")
    g.add_argument(
        "--compare",
        nargs="*",
        default=[],
        metavar="MODEL",
        help="more timm models to compare with; MODEL=CHECKPOINT loads that model from a local checkpoint",
    )
    g.add_argument("--random-weights", action="store_true", help="use random weights (no download)")


def add_image_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("images")
    g.add_argument("--images", default=None, help="folder of images (default: the photos shipped with the package)")
    g.add_argument("--num-images", type=int, default=None, help="use at most this many images")


def add_common_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("run")
    g.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")
    g.add_argument("--batch-size", type=int, default=None, help="rows per forward pass")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--out", default=None, help="output folder")
    g.add_argument("--no-progress", action="store_true", help="hide progress bars")
    g.add_argument("--no-tune-malloc", action="store_true", help="leave glibc's allocator settings alone")
    g.add_argument("-v", "--verbose", action="count", default=0)
    g.add_argument("-q", "--quiet", action="store_true")


def setup_from_args(args: argparse.Namespace) -> None:
    """Logging and allocator tuning from the common arguments."""
    from .runtime import setup_logging, tune_malloc

    setup_logging(-1 if args.quiet else args.verbose)
    if not getattr(args, "no_tune_malloc", False):
        tune_malloc()


def images_from_args(args: argparse.Namespace) -> List[Path]:
    """Image paths from ``--images`` / ``--num-images`` (the shipped photos by default)."""
    from .data import list_images, sample_image_paths

    paths = list_images(args.images) if args.images else sample_image_paths()
    if args.num_images is not None:
        paths = paths[: args.num_images]
    return paths


def model_specs(args: argparse.Namespace) -> List[Tuple[str, Optional[str]]]:
    """``(name, checkpoint)`` for ``--model`` (with ``--checkpoint``) then each ``--compare`` entry.

    A ``--compare`` entry ``NAME=CHECKPOINT`` loads NAME from that checkpoint (for example a model
    trained here); a plain entry equal to ``--model`` is dropped.  Results are stored by model name,
    so a name may appear once.
    """
    specs: List[Tuple[str, Optional[str]]] = [(args.model, args.checkpoint)]
    for entry in args.compare or []:
        name, sep, checkpoint = entry.partition("=")
        if sep and not (name and checkpoint):
            raise ValueError(f"--compare {entry!r}: write MODEL or MODEL=CHECKPOINT")
        if not sep and name == args.model:
            continue
        specs.append((name, checkpoint or None))
    names = [name for name, _ in specs]
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise ValueError(f"model(s) {', '.join(twice)} given twice; results are stored by model name")
    return specs


def models_from_args(args: argparse.Namespace, device) -> Iterator[Tuple[str, "torch.nn.Module"]]:
    """``(name, model)`` for each of :func:`model_specs`, loaded one at a time.

    ``--random-weights`` skips every download.
    """
    from .data import load_model

    for name, checkpoint in model_specs(args):
        yield name, load_model(
            name, checkpoint=checkpoint, device=device, pretrained=False if args.random_weights else None
        )


def run_main(main: Callable[[Optional[Sequence[str]]], int], argv: Optional[Sequence[str]] = None) -> None:
    """Run a CLI ``main``; user errors become one message on stderr and exit status 2."""
    try:
        code = main(argv)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        code = 130
    except (ValueError, FileNotFoundError, KeyError, RuntimeError) as err:
        if logging.getLogger().isEnabledFor(logging.DEBUG):
            raise
        msg = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"error: {msg}", file=sys.stderr)
        code = 2
    sys.exit(code or 0)
