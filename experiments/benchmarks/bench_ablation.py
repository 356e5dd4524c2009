"""Throughput of the ablation sweep against plain inference of the same model, in one run.

    python experiments/benchmarks/bench_ablation.py --model moganet_xtiny --img-size 224 \
        --batch-size 32 --batches 4

Images are random tensors already in memory (no decoding), so the numbers isolate the model
work: plain inference runs ``model(x)`` under ``inference_mode``; the sweep runs
:func:`moga_analysis.ablation.evaluate_ablations` (full model + every ablation per batch, hooks,
metrics on the device).  The sweep's ideal is plain throughput divided by the number of
forward passes per image; ``efficiency`` is how close it gets.
"""

from __future__ import annotations

import argparse
import time

import torch

import moga_analysis  # noqa: F401
from moga_analysis.ablation import evaluate_ablations, moga_blocks, parse_specs
from moga_analysis.runtime import environment_info, resolve_device, resolve_dtype, tune_malloc


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="moganet_xtiny")
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--batches", type=int, default=4, help="timed batches (after one warm-up batch)")
    p.add_argument("--ablations", default="gate,context,single_order,fd,ca")
    p.add_argument("--stages", default="all")
    p.add_argument("--device", default="auto")
    p.add_argument("--amp", choices=["none", "bf16"], default="none")
    p.add_argument("--no-channels-last", action="store_true")
    args = p.parse_args(argv)

    tune_malloc()
    import timm

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

    def plain(n):
        ctx = torch.autocast(device.type, dtype=amp) if amp is not None else torch.autocast(device.type, enabled=False)
        with torch.inference_mode(), ctx:
            for _ in range(n):
                model(x)

    plain(1)
    _sync(device)
    t = time.perf_counter()
    plain(args.batches)
    _sync(device)
    t_plain = time.perf_counter() - t

    loader = [(x, y)] * args.batches
    evaluate_ablations(model, loader[:1], specs, amp_dtype=amp, channels_last=cl, show_progress=False)
    _sync(device)
    t = time.perf_counter()
    evaluate_ablations(model, loader, specs, amp_dtype=amp, channels_last=cl, show_progress=False)
    _sync(device)
    t_sweep = time.perf_counter() - t

    n = args.batches * args.batch_size
    ips_plain = n / t_plain
    ips_sweep = n / t_sweep
    env = environment_info(device)
    print(f"# {args.model} @ {args.img_size}px, batch {args.batch_size}, {args.batches} batches, "
          f"{env.get('device_name', env['device'])}, {env['threads']} threads, torch {env['torch']}, "
          f"amp={args.amp}, channels_last={cl}")
    print(f"# sweep: {len(specs) - 1} ablations ({args.ablations} @ {args.stages}) + full model = "
          f"{passes} forward passes per image")
    print("| run | images/s | forward passes/s | efficiency |")
    print("|---|---|---|---|")
    print(f"| plain inference | {ips_plain:.1f} | {ips_plain:.1f} | 1.00 |")
    print(f"| ablation sweep | {ips_sweep:.2f} | {ips_sweep * passes:.1f} | {ips_sweep * passes / ips_plain:.2f} |")


if __name__ == "__main__":
    main()
