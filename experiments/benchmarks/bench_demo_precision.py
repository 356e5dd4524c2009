"""The demo's J^(m) curves at their evaluation caps: adaptive (the demo's settings) against uniform
shared contexts at about the same evaluations, over seeds (each seed draws its own pairs).

``make demo`` gives each image a few thousand evaluations (``DemoSettings``: Fashion-MNIST
MogaNets, target 0.5, at most 6,000; EfficientNet-Lite0 on the shipped photos, target 0.8, at most
1,600), about ten contexts per pair and order. This prints, per model and method, the worst
per-image noise ratio (noise floor / mean |I|, worst order) as median and mean over every image
and seed, the mean ratio over the orders, and the evaluations per image, e.g.

    python experiments/benchmarks/bench_demo_precision.py --seeds 0 1 2 --uniform-contexts 12
    python experiments/benchmarks/bench_demo_precision.py --photos --seeds 0 1 --uniform-contexts 9
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import tempfile
import time
from pathlib import Path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--photos", action="store_true", help="EfficientNet-Lite0 on the photos (default: Fashion-MNIST)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--uniform-contexts", type=int, default=10, help="uniform shared contexts per pair and order")
    p.add_argument("--images", type=int, default=None, help="default: the demo's")
    p.add_argument("--max-evaluations", type=int, default=None, help="the adaptive cap per image (default: the demo's)")
    args = p.parse_args(argv)

    from moga_analysis import demo as D
    from moga_analysis.fmnist import write_fmnist_folder
    from moga_analysis.interactions import InteractionSettings, compute_interactions
    from moga_analysis.runtime import tune_malloc

    tune_malloc()
    s = D.DemoSettings()
    tmp = Path(tempfile.mkdtemp(prefix="bench_demo_precision_"))
    if args.photos:
        models, n_img = [D.EFFNET], args.images or s.photo_images
        imgs = D._first(None, n_img)
        geo = dict(grid=s.photo_grid, pairs=s.photo_pairs, image_size=s.photo_image_size)
        tau, cap = s.photo_target_noise, s.photo_max_evaluations
    else:
        models, n_img = [D.FULL, D.NO_GATE], args.images or s.fmnist_images
        imgs = D._first(write_fmnist_folder(tmp / "fmnist", n_img), n_img)
        geo = dict(grid=s.grid, pairs=s.pairs)
        tau, cap = s.target_noise, s.max_evaluations
    cap = args.max_evaluations or cap
    methods = {
        f"adaptive, target {tau}, at most {cap:,}": InteractionSettings.precise(
            tau, max_evaluations=cap, ratios=D.RATIOS, pilot_contexts=s.pilot_contexts,
            min_contexts=s.min_contexts, **geo),
        f"uniform shared, {args.uniform_contexts} contexts": InteractionSettings.efficient(
            contexts=args.uniform_contexts, ratios=D.RATIOS, **geo),
    }
    worst = {(m, k): [] for m in models for k in methods}
    mean_order = {(m, k): [] for m in models for k in methods}
    evals = {(m, k): [] for m in models for k in methods}
    for seed in args.seeds:  # the methods interleaved, seed by seed
        for i, (name, settings) in enumerate(methods.items()):
            t0 = time.perf_counter()
            stack = compute_interactions(models, imgs, dataclasses.replace(settings, seed=seed),
                                         out=tmp / f"seed{seed}_method{i}", progress=False)
            for m in models:
                r = stack[m].noise_ratio()
                worst[m, name] += r.max(1).values.tolist()
                mean_order[m, name].append(float(r[:, 1:-1].mean()))
                evals[m, name].append(stack[m].n_evaluations / len(stack[m].images))
            print(f"seed {seed}, {name}: {time.perf_counter() - t0:.0f} s", flush=True)

    print(f"\n{len(args.seeds)} seeds x {n_img} images per model\n")
    print("| model | method | worst noise ratio per image: median | mean | mean over orders | evaluations / image |")
    print("|---|---|---|---|---|---|")
    for m in models:
        for name in methods:
            w = worst[m, name]
            print(f"| {m} | {name} | {statistics.median(w):.3f} | {statistics.mean(w):.3f} "
                  f"| {statistics.mean(mean_order[m, name]):.3f} | {statistics.mean(evals[m, name]):,.0f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
