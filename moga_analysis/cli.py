"""One command-line vocabulary for every tool: ``moga-analysis <tool>`` (or ``python -m
moga_analysis <tool>``, or ``python -m moga_analysis.<tool>``) with the tools ``interactions``,
``gradcam``, ``erf``, ``ablation``, ``weights`` and ``demo``.

Rules
-----
* **Lists** are space-separated values of one flag (``--compare resnet50 convnext_tiny``,
  ``--ablations gate fd``, ``--thresholds 0.2 0.5``); a flag whose values are a closed set
  lists them as ``choices`` and refuses any other.  No flag takes a comma-separated list.
* **One meaning per name**: ``--checkpoint`` is always a weights file, ``--dtype`` always the
  model's dtype, ``--steps`` always deletion/insertion steps, ``--num-images`` always the size
  of the evaluated subset.  A flag a tool does not act on is not offered by that tool.
* **Shared ideas are spelled the same** in every tool, flags borrowed from another tool keep
  that tool's name (ablation's ``--grid``/``--pairs``/``--contexts`` are interactions' flags,
  its ``--steps`` is gradcam's), and every flag has a help text that says what it does.
* **Advanced flags** (speed and memory knobs that do not change what is computed, up to float
  rounding) sit in their own ``advanced`` group at the end of ``--help``.
* Before 1.0 there are no old spellings: ``--size``, ``--img-size``, ``--no-figure``,
  ``--channels-last``, ``--no-channels-last``, ``--data``, ``--amp``, ``--checkpoint-every``,
  ``--faithfulness-steps``, ``--analysis-images``, ``--interaction-grid``,
  ``--interaction-pairs``, ``--interaction-contexts`` and the weights tool's ``--dir`` and
  ``--progress`` are refused like any unknown flag.

Shared groups (this module)
---------------------------
* model (:func:`add_model_args`): ``--model NAME``, ``--checkpoint FILE`` (weights file or URL
  for ``--model``), ``--compare MODEL[=CHECKPOINT] ...`` (tools comparing models),
  ``--random-weights``, ``--weights-dir DIR`` (folder of weight files found by name; default
  ``$MOGA_WEIGHTS_DIR``).
* images (:func:`add_image_args`): ``--images DIR``, ``--imagenet-val DIR`` (one of the two),
  ``--labels FILE``, ``--labels-format FORMAT`` (:data:`moga_analysis.labels.LABEL_FORMATS`),
  ``--num-images N`` (one subset rule: :func:`moga_analysis.data.choose_subset`).
* run (:func:`add_run_args`): ``--device``, ``--dtype {float32,bfloat16,float16}`` (tools that
  run the model in that dtype), ``--image-size N``, ``--seed``, ``--out DIR`` (default
  ``runs/<tool>``), ``--resume``, ``--no-figures``, ``--no-progress``, ``-v/--verbose``,
  ``-q/--quiet``.
* advanced (:func:`advanced_group`): ``--batch-size N``, ``--memory-format
  {auto,channels_last,contiguous}`` (tools that honour it), ``--no-tune-malloc``.

Tool flags
----------
* gradcam: ``--layer NAME``, ``--steps N``, ``--no-metrics``, ``--sanity``.
* erf: ``--layer NAME``, ``--thresholds T ...``.
* ablation: ``--ablations {gate,context,single_order,fd,ca} ...``, ``--stages STAGES ...``
  (``all``, ``1``..``4`` or ``+``-joined stages such as ``2+3``), ``--modes {zero,mean} ...``,
  ``--calibration-images N``; optional analyses ``--interactions`` (with ``--grid``,
  ``--pairs``, ``--contexts``), ``--erf``, ``--gradcam`` (with ``--steps``),
  ``--analysis-num-images N``; advanced ``--autocast {float32,bfloat16,float16}`` (autocast
  dtype; the weights stay float32), ``--save-every SECONDS``, ``--workers N``.  It takes one
  model (no ``--compare``) and needs ``--images`` or ``--imagenet-val``.
* weights: ``download [NAME ...]`` with ``--weights-dir DIR`` (where to download; default
  ``$MOGA_WEIGHTS_DIR``, else the torch hub cache), ``--all-tags``, ``--no-progress``;
  ``list`` with ``--weights-dir DIR``, ``--no-hash``, ``--json``; both ``-v`` / ``-q``.
* interactions: its own group (``--protocol``, ``--grid``, ``--pairs``, ``--contexts``,
  ``--ratios R ...``, ...; see its ``--help``) beside the shared groups.

:func:`run_main` turns user errors into one line on stderr and exit status 2, and gives the
process the allocator settings it runs fastest with.  The parsers only parse: each tool's
``main`` turns the namespace into plain arguments and settings objects for the library.
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
    "advanced_group",
    "setup_from_args",
    "specs_from_args",
    "images_from_args",
    "run_main",
    "DTYPES",
    "MEMORY_FORMATS",
    "MALLOC_ENV",
]

log = logging.getLogger(__name__)

#: glibc settings that keep freed memory (see :func:`moga_analysis.runtime.tune_malloc`)
MALLOC_ENV = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(16 << 30)}
_REEXEC_FLAG = "MOGA_ANALYSIS_REEXEC"

#: the values of ``--dtype`` (and of ablation's ``--autocast``)
DTYPES = ("float32", "bfloat16", "float16")
#: the values of ``--memory-format``
MEMORY_FORMATS = ("auto", "channels_last", "contiguous")
_ADVANCED = "advanced"


def advanced_group(p: argparse.ArgumentParser):
    """The parser's ``advanced`` argument group (created on first use): speed and memory knobs
    that do not change what is computed.  Tools add their own advanced flags to it."""
    for g in p._action_groups:
        if g.title == _ADVANCED:
            return g
    return p.add_argument_group(_ADVANCED, "speed and memory; they do not change the results beyond float rounding")


def add_model_args(p: argparse.ArgumentParser, default_model: str = "moganet_small", *, compare: bool = True) -> None:
    """``--model``, ``--checkpoint``, ``--compare`` (only with ``compare``), ``--random-weights``,
    ``--weights-dir``."""
    g = p.add_argument_group("model")
    g.add_argument("--model", default=default_model, metavar="NAME",
                   help=f"timm model name; moganet_* are registered by this package (default {default_model})")
    g.add_argument("--checkpoint", default=None, metavar="FILE",
                   help="weights file or URL for --model, loaded strictly (default: its pretrained weights)")
    if compare:
        g.add_argument(
            "--compare",
            nargs="+",
            default=[],
            metavar="MODEL[=CHECKPOINT]",
            help="more timm models to run beside --model, space-separated; MODEL=CHECKPOINT loads that model "
            "from a weights file",
        )
    g.add_argument(
        "--random-weights",
        action="store_true",
        help="build the models with random weights (results then say nothing about a trained network)",
    )
    g.add_argument(
        "--weights-dir",
        default=os.environ.get("MOGA_WEIGHTS_DIR") or None,
        metavar="DIR",
        help="folder of pretrained weight files, found by name before the torch hub cache (default "
        "$MOGA_WEIGHTS_DIR; fill one with: moga-analysis weights download --weights-dir DIR)",
    )


def add_image_args(
    p: argparse.ArgumentParser, *, imagenet: bool = True, default_num: Optional[int] = None, required: bool = False
) -> None:
    """``--images`` (with ``imagenet``: or ``--imagenet-val``, never both; with ``required``: one of
    them must be given), ``--labels``, ``--labels-format``, ``--num-images``."""
    g = p.add_argument_group("images")
    where = g.add_mutually_exclusive_group(required=required) if imagenet else g
    where.add_argument(
        "--images",
        default=None,
        required=required and not imagenet,
        metavar="DIR",
        help="image folder: ImageNet synset folders, a flat folder (+ --labels) or any images "
        + ("(required" + (", or --imagenet-val)" if imagenet else ")") if required
           else "(default: the photos shipped with the package)"),
    )
    if imagenet:
        where.add_argument(
            "--imagenet-val",
            default=None,
            metavar="DIR",
            help="ImageNet validation folder (synset sub-folders, or flat with --labels); labels are required",
        )
    g.add_argument("--labels", default=None, metavar="FILE",
                   help="labels file for a flat image folder (formats: see --labels-format)")
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
        metavar="N",
        help="use this many images: a seeded random subset (--seed), the same in every tool"
        + (f" (default {default_num})" if default_num else " (default: all)"),
    )


def add_run_args(
    p: argparse.ArgumentParser,
    tool: str,
    *,
    image_size: Optional[int] = None,
    image_size_help: str = "square input size",
    dtype: bool = True,
    dtype_help: str = "model dtype",
    memory_format: bool = True,
    resume: bool = True,
    figures: bool = True,
    seed_help: str = "seeds the image subset and every random draw of the run",
) -> None:
    """The ``run`` group (``--device``, ``--dtype`` with ``dtype``, ``--image-size``, ``--seed``,
    ``--out``, ``--resume`` with ``resume``, ``--no-figures`` with ``figures``, ``--no-progress``,
    ``-v``, ``-q``) and the :func:`advanced_group` (``--batch-size``, ``--memory-format`` with
    ``memory_format``, ``--no-tune-malloc``)."""
    g = p.add_argument_group("run")
    g.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:1 ... (default auto)")
    if dtype:
        g.add_argument("--dtype", default="float32", choices=DTYPES, help=f"{dtype_help} (default float32)")
    g.add_argument(
        "--image-size",
        type=int,
        default=image_size,
        metavar="N",
        help=f"{image_size_help} (default: {image_size if image_size else 'the model’s own'})",
    )
    g.add_argument("--seed", type=int, default=0, help=f"{seed_help} (default 0)")
    g.add_argument("--out", default=f"runs/{tool}", metavar="DIR", help=f"output folder (default runs/{tool})")
    if resume:
        g.add_argument(
            "--resume", action="store_true", help="keep finished results in --out (same settings and weights only)"
        )
    if figures:
        g.add_argument("--no-figures", action="store_true", help="write results and tables only, no figures")
    g.add_argument("--no-progress", action="store_true", help="hide progress bars")
    g.add_argument("-v", "--verbose", action="count", default=0, help="more log lines (-vv: debug)")
    g.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    a = advanced_group(p)
    a.add_argument("--batch-size", type=int, default=None, metavar="N",
                   help="rows per forward pass (default: chosen per device)")
    if memory_format:
        a.add_argument(
            "--memory-format",
            choices=MEMORY_FORMATS,
            default="auto",
            help="memory layout of model and input; auto: channels_last for convolutional networks (default auto)",
        )
    a.add_argument("--no-tune-malloc", action="store_true",
                   help="leave glibc's allocator settings alone (default: tuned for speed)")


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
    ``--compare`` entry, if the tool has ``--compare`` (an entry equal to ``--model`` is dropped)."""
    from .specs import model_specs

    entries = [(args.model, args.checkpoint)]
    for entry in getattr(args, "compare", None) or []:
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
