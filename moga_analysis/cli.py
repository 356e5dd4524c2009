"""One command-line vocabulary for ``python -m moga_analysis.<tool>``: shared argument groups.

Every tool spells the same idea the same way:

* models: ``--model``, ``--checkpoint``, ``--compare MODEL[=CHECKPOINT] ...``, ``--random-weights``;
* images: ``--images DIR``, ``--imagenet-val DIR``, ``--labels FILE``, ``--labels-format FORMAT``
  (:data:`moga_analysis.labels.LABEL_FORMATS`), ``--num-images N`` (one subset rule:
  :func:`moga_analysis.data.choose_subset`);
* run: ``--device``, ``--dtype``, ``--memory-format``, ``--batch-size``, ``--image-size``,
  ``--seed``, ``--out`` (default ``runs/<tool>``), ``--resume``, ``--no-figures``,
  ``--no-progress``, ``--no-tune-malloc``, ``-v`` / ``-q``.

Older spellings (``--size``, ``--img-size``, ``--no-figure``, ``--channels-last``, ``--data``,
``--amp``) are accepted as hidden aliases.  :func:`run_main` turns user errors into one line on
stderr and exit status 2, and gives the process the allocator settings it runs fastest with.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Callable, List, Optional, Sequence

__all__ = [
    "add_model_args",
    "add_image_args",
    "add_run_args",
    "setup_from_args",
    "specs_from_args",
    "images_from_args",
    "run_main",
    "MALLOC_ENV",
]

log = logging.getLogger(__name__)

#: glibc settings that keep freed memory (see :func:`moga_analysis.runtime.tune_malloc`)
MALLOC_ENV = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(16 << 30)}
_REEXEC_FLAG = "MOGA_ANALYSIS_REEXEC"


def add_model_args(p: argparse.ArgumentParser, default_model: str = "moganet_small") -> None:
    g = p.add_argument_group("model")
    g.add_argument("--model", default=default_model, help="timm model name (moganet_* registered by this package)")
    g.add_argument("--checkpoint", default=None, help="local checkpoint file or URL for --model (strict load)")
    g.add_argument(
        "--compare",
        nargs="*",
        default=[],
        metavar="MODEL",
        help="more timm models to compare with; MODEL=CHECKPOINT loads that model from a local checkpoint",
    )
    g.add_argument(
        "--random-weights",
        action="store_true",
        help="build the models with random weights (the only way to get them; results then say nothing "
        "about a trained network)",
    )
    g.add_argument(
        "--weights-dir",
        default=os.environ.get("MOGA_WEIGHTS_DIR") or None,
        metavar="DIR",
        help="folder of pretrained weight files, found by name before the torch hub cache (default "
        "$MOGA_WEIGHTS_DIR; fill one with: python -m moga_analysis.weights download --dir DIR)",
    )


def add_image_args(
    p: argparse.ArgumentParser, *, imagenet: bool = True, default_num: Optional[int] = None, required: bool = False
) -> None:
    g = p.add_argument_group("images")
    g.add_argument(
        "--images",
        "--data",
        dest="images",
        default=None,
        required=required and not imagenet,
        help="image folder: ImageNet synset folders, a flat folder (+ --labels) or any images "
        + ("(required)" if required else "(default: the photos shipped with the package)"),
    )
    if imagenet:
        g.add_argument(
            "--imagenet-val",
            default=None,
            metavar="DIR",
            help="ImageNet validation folder (synset sub-folders, or flat with --labels); labels are required",
        )
    g.add_argument("--labels", default=None, help="labels file for a flat folder (formats: moga_analysis.labels)")
    from .labels import LABEL_FORMATS

    g.add_argument(
        "--labels-format",
        choices=LABEL_FORMATS,
        default="auto",
        help="how --labels is read: auto (detected from the content; a bare integer file is refused unless "
        "named as the devkit ground truth), or forced: " + ", ".join(LABEL_FORMATS[1:]),
    )
    g.add_argument(
        "--num-images",
        type=int,
        default=default_num,
        help="use this many images: a seeded random subset (--seed), the same in every tool"
        + (f" (default {default_num})" if default_num else " (default: all)"),
    )


def add_run_args(
    p: argparse.ArgumentParser,
    tool: str,
    *,
    image_size: Optional[int] = None,
    image_size_help: str = "square input size",
    dtype_help: str = "model dtype: float32 (default), bfloat16, float16",
    resume: bool = True,
    figures: bool = True,
) -> None:
    g = p.add_argument_group("run")
    g.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:1 ...")
    g.add_argument("--dtype", default="float32", help=dtype_help)
    g.add_argument(
        "--memory-format",
        choices=["auto", "channels_last", "contiguous"],
        default="auto",
        help="auto: channels_last for convolutional networks, model and input together",
    )
    g.add_argument("--channels-last", dest="memory_format", action="store_const", const="channels_last",
                   help=argparse.SUPPRESS)
    g.add_argument("--no-channels-last", dest="memory_format", action="store_const", const="contiguous",
                   help=argparse.SUPPRESS)
    g.add_argument("--batch-size", type=int, default=None, help="rows per forward pass (default: per device)")
    g.add_argument(
        "--image-size",
        type=int,
        default=image_size,
        help=f"{image_size_help} (default: {image_size if image_size else 'the model’s own'})",
    )
    g.add_argument("--size", "--img-size", dest="image_size", type=int, help=argparse.SUPPRESS)
    g.add_argument("--seed", type=int, default=0, help="seeds the image subset, pairs, contexts and random weights")
    g.add_argument("--out", default=f"runs/{tool}", help=f"output folder (default runs/{tool})")
    if resume:
        g.add_argument(
            "--resume", action="store_true", help="keep finished results in --out (same settings and weights only)"
        )
    if figures:
        g.add_argument("--no-figures", action="store_true", help="write results and tables only")
        g.add_argument("--no-figure", dest="no_figures", action="store_true", help=argparse.SUPPRESS)
    g.add_argument("--no-progress", action="store_true", help="hide progress bars")
    g.add_argument("--no-tune-malloc", action="store_true", help="leave glibc's allocator settings alone")
    g.add_argument("-v", "--verbose", action="count", default=0)
    g.add_argument("-q", "--quiet", action="store_true")


def setup_from_args(args: argparse.Namespace) -> None:
    """Logging and allocator tuning from the run arguments."""
    from .runtime import setup_logging, tune_malloc

    setup_logging(-1 if args.quiet else args.verbose)
    if not getattr(args, "no_tune_malloc", False):
        tune_malloc()
    if hasattr(args, "weights_dir"):
        from .models.hub import set_weights_dir

        set_weights_dir(args.weights_dir)  # every model this run loads looks there first (None: the env)


def specs_from_args(args: argparse.Namespace):
    """:class:`~moga_analysis.specs.ModelSpec` for ``--model`` (with ``--checkpoint``) then each
    ``--compare`` entry (an entry equal to ``--model`` is dropped)."""
    from .specs import model_specs

    entries = [(args.model, args.checkpoint)]
    for entry in args.compare or []:
        name, sep, checkpoint = entry.partition("=")
        if sep and not (name and checkpoint):
            raise ValueError(f"--compare {entry!r}: write MODEL or MODEL=CHECKPOINT")
        if not sep and name == args.model:
            continue
        entries.append((name, checkpoint or None))
    return model_specs(entries, random_weights=args.random_weights)


def images_from_args(args: argparse.Namespace):
    """The :class:`~moga_analysis.data.ImageSet` of ``--images`` / ``--imagenet-val`` / ``--labels``
    / ``--labels-format`` / ``--num-images`` (the shipped photos by default)."""
    from .data import image_set

    imagenet = getattr(args, "imagenet_val", None)
    if imagenet and args.images:
        raise ValueError("give --images or --imagenet-val, not both")
    return image_set(
        imagenet or args.images,
        labels_file=args.labels,
        labels_format=getattr(args, "labels_format", "auto"),
        num_images=args.num_images,
        seed=args.seed,
        require_labels=bool(imagenet),
    )


def _reexec_with_allocator(argv: Optional[Sequence[str]]) -> None:
    """Start the process again with :data:`MALLOC_ENV` when it was started without it.

    glibc reads these variables only at start-up; set later (``mallopt``), they recover only part
    of the speed (see the README).  Only a command-line start (``argv is None``) is re-executed,
    once, and never with ``--no-tune-malloc`` or ``MOGA_ANALYSIS_REEXEC=0``.
    """
    if argv is not None or sys.platform != "linux" or os.environ.get(_REEXEC_FLAG) is not None:
        return
    if "--no-tune-malloc" in sys.argv or all(os.environ.get(k) for k in MALLOC_ENV):
        return
    orig = getattr(sys, "orig_argv", None)
    if not orig:
        return
    env = dict(os.environ, **{k: os.environ.get(k) or v for k, v in MALLOC_ENV.items()}, **{_REEXEC_FLAG: "1"})
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *orig[1:]], env)


def run_main(main: Callable[[Optional[Sequence[str]]], int], argv: Optional[Sequence[str]] = None) -> None:
    """Run a CLI ``main``; user errors become one message on stderr and exit status 2.

    Started from the command line, the process first re-executes itself with the allocator
    settings of :data:`MALLOC_ENV` when they are missing (:func:`_reexec_with_allocator`)."""
    _reexec_with_allocator(argv)
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


def figure_out(fig, path, formats=("png", "pdf")) -> List:
    """Save a CLI's figure as PNG + PDF (:func:`moga_analysis.plotting.style.save_figure`), close it."""
    from .plotting.style import save_figure

    written = save_figure(fig, path, formats, close=True)
    for w in written:
        log.info("wrote %s", w)
    return written
