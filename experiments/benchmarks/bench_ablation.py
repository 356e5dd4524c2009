"""Throughput of the ablation sweep against plain inference of the same model, in one run.

    python experiments/benchmarks/bench_ablation.py --model moganet_xtiny --img-size 224 \
        --batch-size 32 --batches 4

Images are random tensors already in memory (no decoding), so the numbers isolate the model
work: plain inference runs ``model(x)`` under ``inference_mode``; the sweep runs
:func:`moga_analysis.ablation.evaluate_ablations` (full model + every ablation per batch, hooks,
metrics on the device) over the same batches.  The two alternate for ``--repeats`` rounds
(:mod:`timing`).  The sweep's ideal is plain throughput divided by the number of forward passes
per image; ``efficiency`` (median over rounds) is how close it gets.  :func:`sweep_methods` is
what ``experiments/device_check.py`` times.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable, Dict, Optional, Sequence

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from timing import interleaved, markdown_table  # noqa: E402

PLAIN, SWEEP = "plain inference", "ablation sweep"


def sweep_methods(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, specs: Sequence, batches: int,
                  amp: Optional[torch.dtype] = None, channels_last: bool = True) -> Dict[str, Callable[[], None]]:
    """``{PLAIN, SWEEP}``: ``batches`` passes of the batch ``x`` (labels ``y``) through the model,
    and the sweep of ``specs`` (the full model first) over the same batches."""
    from moga_analysis.ablation import evaluate_ablations

    dev = x.device

    def plain():
        ctx = torch.autocast(dev.type, dtype=amp) if amp is not None else torch.autocast(dev.type, enabled=False)
        with torch.inference_mode(), ctx:
            for _ in range(batches):
                model(x)

    loader = [(x, y)] * batches
    return {PLAIN: plain, SWEEP: lambda: evaluate_ablations(model, loader, specs, amp_dtype=amp,
                                                            channels_last=channels_last, show_progress=False)}


def main(argv=None) -> None:
    import timm

    from moga_analysis.ablation import moga_blocks, parse_specs
    from moga_analysis.runtime import environment_info, fast_path, resolve_device, resolve_dtype

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="moganet_xtiny")
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--batches", type=int, default=4, help="batches per timed call")
    p.add_argument("--repeats", type=int, default=3, help="interleaved rounds (after one warm-up round)")
    p.add_argument("--ablations", default="gate,context,single_order,fd,ca")
    p.add_argument("--stages", default="all")
    p.add_argument("--device", default="auto")
    p.add_argument("--amp", choices=["none", "bf16"], default="none")
    p.add_argument("--no-channels-last", action="store_true")
    args = p.parse_args(argv)

    fast_path()
    device = resolve_device(args.device)
    amp = None if args.amp == "none" else resolve_dtype(args.amp)
    model = timm.create_model(args.model).eval().to(device)  # random weights: speed only
    moga_blocks(model)
    cl = not args.no_channels_last
    if cl:
        model = model.to(memory_format=torch.channels_last)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch_size, 3, args.img_size, args.img_size, generator=g).to(device)
    if cl:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 1000, (args.batch_size,), generator=g).to(device)
    specs = parse_specs(args.ablations, args.stages, "zero")
    passes = len(specs)  # the full model is the first spec and also the reference
    t = interleaved(sweep_methods(model, x, y, specs, args.batches, amp, cl), args.repeats, device=device)

    n = args.batches * args.batch_size
    ips_plain, ips_sweep = n / t.median(PLAIN), n / t.median(SWEEP)
    env = environment_info(device)
    print(f"# {args.model} @ {args.img_size}px, batch {args.batch_size}, {args.batches} batches per call, "
          f"{t.rounds} interleaved rounds, {env.get('device_name', env['device'])}, {env['threads']} threads, "
          f"torch {env['torch']}, amp={args.amp}, channels_last={cl}")
    print(f"# sweep: {len(specs) - 1} ablations ({args.ablations} @ {args.stages}) + full model = "
          f"{passes} forward passes per image")
    print(markdown_table(["run", "images/s", "forward passes/s", "efficiency"], [
        [PLAIN, f"{ips_plain:.1f}", f"{ips_plain:.1f}", "1.00"],
        [SWEEP, f"{ips_sweep:.2f}", f"{ips_sweep * passes:.1f}", f"{passes * t.ratio(PLAIN, SWEEP):.2f}"],
    ], "lrrr"))


if __name__ == "__main__":
    main()
