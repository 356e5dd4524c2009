"""MogaNet forward speed: ours against the official implementation, side by side, and the CPU
fast paths (glibc allocator tuning, channels_last).

    python experiments/benchmarks/bench_model.py --official /path/to/MogaNet/models/moganet.py

``--official`` points to the official ``models/moganet.py`` (github.com/Westlake-AI/MogaNet) or a
copy of its model classes; it is imported from that path at run time and never shipped here.
Without it only our own variants are timed.  Both models hold the same weights (checked: equal
logits) and run in eval mode under ``torch.inference_mode`` with the same thread count; the rows
are interleaved so that machine noise hits both alike (:mod:`timing`).  Medians of ``--repeats`` rounds.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from timing import interleaved  # noqa: E402

import moga_analysis  # noqa: E402,F401
from moga_analysis.models import ARCH_SETTINGS, MogaNet  # noqa: E402
from moga_analysis.runtime import tune_malloc  # noqa: E402


def _official_class(path: str):
    spec = importlib.util.spec_from_file_location("moganet_official_for_bench", path)
    mod = importlib.util.module_from_spec(spec)
    # the official file registers names in timm's registry; keep ours by restoring them after import
    import timm.models._registry as reg

    saved = dict(reg._model_entrypoints)
    spec.loader.exec_module(mod)
    reg._model_entrypoints.update(saved)
    return mod.MogaNet


def _build_official(cls, variant: str):
    s = ARCH_SETTINGS[variant]
    try:  # the upstream class takes an ``arch`` name
        return cls(arch={"xtiny": "x-tiny"}.get(variant, variant))
    except (TypeError, AssertionError):
        return cls(embed_dims=list(s["embed_dims"]), depths=list(s["depths"]), ffn_ratios=list(s["ffn_ratios"]))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variants", nargs="+", default=["xtiny", "tiny", "small"])
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--official", default=None, help="path to the official models/moganet.py")
    p.add_argument("--no-tune-malloc", action="store_true")
    args = p.parse_args(argv)

    tuned = False if args.no_tune_malloc else tune_malloc()
    official = _official_class(args.official) if args.official else None
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, batch {args.batch_size}, "
          f"{args.size}px, malloc tuned: {tuned}, median of {args.repeats}")
    print()
    print("| variant | ours (img/s) | official (img/s) | ours / official | ours, channels_last "
          "| official, channels_last | ours / official, channels_last |")
    print("|---|---|---|---|---|---|---|")
    x = torch.randn(args.batch_size, 3, args.size, args.size)
    for variant in args.variants:
        ours = MogaNet(**ARCH_SETTINGS[variant]).eval()
        ours_cl = MogaNet(**ARCH_SETTINGS[variant]).eval().to(memory_format=torch.channels_last)
        ours_cl.load_state_dict(ours.state_dict())
        runs = {"ours": (ours, x), "ours_cl": (ours_cl, x.contiguous(memory_format=torch.channels_last))}
        if official is not None:
            off = _build_official(official, variant).eval()
            off.load_state_dict(ours.state_dict(), strict=True)
            with torch.inference_mode():
                diff = (off(x[:2]) - ours(x[:2])).abs().max().item()
            if diff > 1e-4:
                sys.exit(f"official and ours disagree on {variant}: max |diff| {diff:.2e}")
            runs["official"] = (off, x)
            off_cl = _build_official(official, variant).eval().to(memory_format=torch.channels_last)
            off_cl.load_state_dict(ours.state_dict(), strict=True)
            runs["official_cl"] = (off_cl, runs["ours_cl"][1])
        with torch.inference_mode():
            t = interleaved({k: (lambda m=m, inp=inp: m(inp)) for k, (m, inp) in runs.items()}, args.repeats,
                            warmup=args.warmup)
        ips = {k: args.batch_size / t.median(k) for k in runs}
        def cell(key):
            return f"{ips[key]:.1f}" if key in ips else "n/a"

        def ratio(a, b):
            return f"{ips[a] / ips[b]:.2f}x" if b in ips else "n/a"

        print(f"| moganet_{variant} | {cell('ours')} | {cell('official')} | {ratio('ours', 'official')} "
              f"| {cell('ours_cl')} | {cell('official_cl')} | {ratio('ours_cl', 'official_cl')} |")


if __name__ == "__main__":
    main()
