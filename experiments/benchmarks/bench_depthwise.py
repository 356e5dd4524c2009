"""MogaNet's depthwise convs with and without skipping the kernel taps that only read padding.

Every distinct depthwise conv of a MogaNet variant at one input size (its channels, kernel,
dilation and feature-map size, found by running the model once), timed alone both ways
(``DepthwiseConv2d.skip_dead_taps`` True / False), call by call in interleaved rounds, medians
(:mod:`timing`); then the whole model.

    python experiments/benchmarks/bench_depthwise.py                     # MogaNet-XT at 64 px
    python experiments/benchmarks/bench_depthwise.py --variant tiny --size 224 --batch-size 32
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from timing import interleaved  # noqa: E402

from moga_analysis.models import ARCH_SETTINGS, MogaNet  # noqa: E402
from moga_analysis.models.layers import DepthwiseConv2d, _dead_taps, set_skip_dead_taps  # noqa: E402
from moga_analysis.runtime import fast_path  # noqa: E402


def _both(module, inp, toggle):
    """``{"full": ..., "live": ...}``: ``module(inp)`` with the dead taps computed / skipped."""

    def run(skip):
        def call():
            toggle(skip)
            module(inp)

        return call

    return {"full": run(False), "live": run(True)}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variant", default="xtiny", choices=sorted(ARCH_SETTINGS))
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--repeats", type=int, default=27, help="interleaved rounds")
    p.add_argument("--nchw", action="store_true", help="NCHW instead of channels_last")
    args = p.parse_args(argv)
    fast_path()
    fmt = torch.contiguous_format if args.nchw else torch.channels_last
    model = MogaNet(**ARCH_SETTINGS[args.variant]).eval().to(memory_format=fmt)
    x = torch.randn(args.batch_size, 3, args.size, args.size).contiguous(memory_format=fmt)
    shapes: dict = {}  # (channels, kernel, dilation, padding, map size) -> calls per forward

    def count(mod, inputs):
        key = (mod.in_channels, mod.kernel_size[0], mod.dilation[0], mod.padding[0], tuple(inputs[0].shape[-2:]))
        shapes[key] = shapes.get(key, 0) + 1

    hooks = [m.register_forward_pre_hook(count) for m in model.modules() if isinstance(m, DepthwiseConv2d)]
    with torch.inference_mode():
        model(x)
    for h in hooks:
        h.remove()
    print(f"moganet_{args.variant}, {args.size} px, batch {args.batch_size}, "
          f"{'NCHW' if args.nchw else 'channels_last'}, {torch.get_num_threads()} threads, "
          f"medians of {args.repeats} interleaved rounds\n")
    print("| channels | kernel, dilation | map | live taps per axis | calls per forward "
          "| full (ms) | live centre (ms) | full / live |")
    print("|---|---|---|---|---|---|---|---|")
    total = {True: 0.0, False: 0.0}
    for (c, k, d, pad, (h, w)), calls in sorted(shapes.items(), key=lambda kv: -kv[1]):
        conv = DepthwiseConv2d(c, k, padding=pad, dilation=d).eval().to(memory_format=fmt)
        inp = torch.randn(args.batch_size, c, h, w).contiguous(memory_format=fmt)
        with torch.inference_mode():
            t = interleaved(_both(conv, inp, lambda skip: setattr(conv, "skip_dead_taps", skip)), args.repeats)
        ms = {True: t.median("live") * 1e3, False: t.median("full") * 1e3}
        for s in ms:
            total[s] += ms[s] * calls
        live = f"{k - 2 * _dead_taps(pad, d, h)} x {k - 2 * _dead_taps(pad, d, w)} of {k}"
        print(f"| {c} | {k}x{k}, {d} | {h}x{w} | {live} | {calls} | {ms[False]:.2f} | {ms[True]:.2f} "
              f"| {ms[False] / ms[True]:.1f}x |")
    print(f"\ndepthwise convs per forward: full {total[False]:.1f} ms, live centre {total[True]:.1f} ms")
    with torch.inference_mode():
        t = interleaved(_both(model, x, lambda skip: set_skip_dead_taps(model, skip)), args.repeats)
    ips = {True: args.batch_size / t.median("live"), False: args.batch_size / t.median("full")}
    print(f"whole model: full kernels {ips[False]:.1f} images/s, live centre {ips[True]:.1f} images/s "
          f"({ips[True] / ips[False]:.2f}x)")


if __name__ == "__main__":
    main()
