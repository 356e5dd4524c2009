"""Benchmark of the interaction engine; prints a markdown table.

1. Masked-evaluation overhead: ImageMaskingGame(masks) vs plain batched inference on the same
   number of rows (same model, batch size, device).
2. Peak memory of CLI runs on 1 and 4 images (it should not grow with the number of images).
3. Evaluations per pair-sample of the two estimators for the reference protocol (counted), and
   the ceiling of any design that shares one context among all pairs.
4. Shared vs independent at equal RMSE of I^(m)(i,j) on a trained network (default: the shipped
   Fashion-MNIST MogaNet, 64 px, 8 x 8 grid, reference pairs): both estimators draw
   i.i.d. second differences of the same distribution per pair, so the variance of each estimate
   is stderr^2 (calibrated in tests/test_interactions.py); the evaluation ratio at equal RMSE is
   (evals_ind * mean stderr_ind^2) / (evals_sh * mean stderr_sh^2), measured from one run each.

    python experiments/benchmarks/bench_interactions.py \
        --checkpoint ../shared/reference/moganet_xtiny_seed0.safetensors
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch


def timed(fn, reps):
    fn()  # warm-up
    t = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t.append(time.perf_counter() - t0)
    t.sort()
    return t[len(t) // 2]


def peak_memory(n_images: int, device: str):
    """(peak RSS, peak CUDA memory) in MB of ``python -m moga_analysis.interactions`` on ``n_images``
    shipped photos (MogaNet-XT, random weights, 112 px, 14 x 14 grid, 8 pairs, 4 contexts, 13 orders)."""
    import json
    import subprocess
    import sys
    import tempfile

    with tempfile.TemporaryDirectory() as out:
        argv = ["--model", "moganet_xtiny", "--random-weights", "--image-size", "112", "--grid", "14",
                "--pairs", "8", "--contexts", "4", "--num-images", str(n_images), "--device", device,
                "--out", out, "--no-figure", "--no-progress", "-q"]
        code = (
            "import json, resource, torch\n"
            "from moga_analysis.interactions import main\n"
            f"main({json.dumps(argv)})\n"
            "cuda = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else 0.0\n"
            "print(json.dumps([resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, cuda]))\n"
        )
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    rss, cuda = json.loads(done.stdout.strip().splitlines()[-1])
    return rss, cuda


def main(argv=None):
    import moga_analysis  # noqa: F401
    from moga_analysis.data import load_images, load_model, sample_image_paths, shipped_examples
    from moga_analysis.games import ImageMaskingGame
    from moga_analysis.interactions import REFERENCE_RATIOS, estimate_interactions, orders_from_ratios, reference_pairs
    from moga_analysis.runtime import environment_info, resolve_device, tune_malloc

    p = argparse.ArgumentParser()
    p.add_argument("--model", default="moganet_xtiny")
    reference = Path(__file__).resolve().parents[3] / "shared" / "reference"
    p.add_argument("--checkpoint", default=str(reference / "moganet_xtiny_seed0.safetensors"))
    p.add_argument("--device", default="auto")
    p.add_argument("--size", type=int, default=224, help="input size for the overhead measurement")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--batches", type=int, default=3)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--rmse-model", default="moganet_xtiny.fmnist_64",
                   help="trained model of the equal-RMSE measurement ('' = --model)")
    p.add_argument("--rmse-images", type=int, default=2)
    p.add_argument("--only-overhead", action="store_true", help="skip the estimator comparisons")
    p.add_argument("--rmse-grid", type=int, default=8)
    p.add_argument("--rmse-pairs", type=int, default=16)
    p.add_argument("--rmse-contexts", type=int, default=16)
    p.add_argument("--memory-images", type=int, nargs="*", default=[1, 4],
                   help="peak memory of CLI runs on this many shipped photos each (none: skip)")
    args = p.parse_args(argv)
    tune_malloc()
    dev = resolve_device(args.device)
    model = load_model(args.model, checkpoint=args.checkpoint, device=dev)
    rows = [("setting", "value")]
    img, _, _ = load_images(sample_image_paths()[:1], model, size=args.size)
    image = img[0]
    k = args.batch_size * args.batches
    masks = torch.rand(k, 196, generator=torch.Generator().manual_seed(0)) < 0.5
    game = ImageMaskingGame(model, image, grid=14, batch_size=args.batch_size)
    x = image.to(dev)[None].expand(args.batch_size, -1, -1, -1).contiguous()

    def plain():
        with torch.inference_mode():
            for _ in range(args.batches):
                model(x).float().sum()

    # interleaved repetitions (plain, game, plain, game, ...): load changes hit both alike
    plain()
    game(masks)
    tp, tg = [], []
    for _ in range(args.reps):
        tp.append(timed(plain, 1))
        tg.append(timed(lambda: game(masks), 1))
    t_plain, t_game = sorted(tp)[len(tp) // 2], sorted(tg)[len(tg) // 2]
    rows += [
        (f"plain inference, {k} rows @ {args.size}px (s)", f"{t_plain:.3f}  ({k / t_plain:.1f} img/s)"),
        (f"masked game, {k} rows @ {args.size}px (s)", f"{t_game:.3f}  ({k / t_game:.1f} img/s)"),
        ("masked / plain time", f"{t_game / t_plain:.3f}"),
    ]

    if args.only_overhead:
        return _print(rows, args, dev, environment_info)
    # 2. peak memory against the number of images
    for n_img in args.memory_images:
        rss, cuda = peak_memory(n_img, args.device)
        rows.append((f"peak memory of a CLI run on {n_img} image(s): RSS / CUDA (MB)", f"{rss:.0f} / {cuda:.0f}"))
    # 3. counted evaluations, reference protocol (50 pairs, 50 contexts, 13 ratios), no network
    n = 196
    orders = orders_from_ratios(REFERENCE_RATIOS, n)
    pairs = reference_pairs(14, 50, generator=torch.Generator().manual_seed(0))
    zero = lambda m: torch.zeros(m.shape[0], dtype=torch.float64)
    ev = {
        m: estimate_interactions(zero, n, pairs, orders, 50, method=m, seed=0).n_evaluations
        for m in ("independent", "shared")
    }
    # a context shared by all P pairs costs at least 1 + U + P rows (U distinct players) for P
    # samples, against 4 rows per sample with independent contexts
    U = len(torch.unique(pairs))
    P = len(pairs)
    rows += [
        ("evaluations / image, independent (reference protocol)", f"{ev['independent']}"),
        ("evaluations / image, shared", f"{ev['shared']}"),
        ("independent / shared evaluations (same samples per pair)", f"{ev['independent'] / ev['shared']:.2f}"),
        (f"ceiling of sharing one context: 4P/(1+U+P), P={P} pairs, U={U} players", f"{4 * P / (1 + U + P):.2f}"),
    ]

    # 4. equal RMSE on a trained network (default: the shipped Fashion-MNIST MogaNet at 64 px)
    rmse_model = load_model(args.rmse_model, device=dev) if args.rmse_model else model
    items = shipped_examples(rmse_model, args.rmse_images)
    nr = args.rmse_grid**2
    orders_r = orders_from_ratios(REFERENCE_RATIOS, nr)
    evals = {"independent": 0, "shared": 0}
    var = {"independent": [], "shared": []}
    secs = {"independent": 0.0, "shared": 0.0}
    for k, (image, label) in enumerate(items):
        game = ImageMaskingGame(rmse_model, image, target=label, grid=args.rmse_grid, batch_size=args.batch_size)
        pairs = reference_pairs(args.rmse_grid, args.rmse_pairs, generator=torch.Generator().manual_seed(1 + k))
        for m in ("independent", "shared"):
            t0 = time.perf_counter()
            r = estimate_interactions(game, nr, pairs, orders_r, args.rmse_contexts, method=m, seed=1 + k)
            secs[m] += time.perf_counter() - t0
            evals[m] += r.n_evaluations
            var[m].append(r.stderr[1:-1] ** 2)
    vi = torch.stack(var["independent"]).mean()
    vs = torch.stack(var["shared"]).mean()
    ratio = (evals["independent"] * vi) / (evals["shared"] * vs)
    tag = f"{args.rmse_model or args.model} @ grid {args.rmse_grid}, {len(items)} img x {args.rmse_pairs} pairs"
    rows += [
        (f"{tag}: independent evals / time (s)", f"{evals['independent']} / {secs['independent']:.1f}"),
        (f"{tag}: shared evals / time (s)", f"{evals['shared']} / {secs['shared']:.1f}"),
        ("mean stderr^2 independent / shared", f"{float(vi):.4g} / {float(vs):.4g}"),
        ("evaluations ratio at equal RMSE (independent / shared)", f"{float(ratio):.2f}"),
    ]
    return _print(rows, args, dev, environment_info)


def _print(rows, args, dev, environment_info):
    info = environment_info(dev)
    print(f"model {args.model} ({args.checkpoint}), device {dev}, threads {info['threads']}, torch {info['torch']}")
    w = max(len(a) for a, _ in rows)
    print(f"| {'setting'.ljust(w)} | value |")
    print(f"|{'-' * (w + 2)}|-------|")
    for a, b in rows[1:]:
        print(f"| {a.ljust(w)} | {b} |")


if __name__ == "__main__":
    main()
