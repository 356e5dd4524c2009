"""Benchmark of the interaction engine; prints a markdown table.

1. Masked-evaluation overhead: ImageMaskingGame(masks) vs plain batched inference on the same
   number of rows (same model, batch size, device).
2. Evaluations per pair-sample of the two estimators for the reference protocol (counted).
3. Shared vs independent at equal RMSE of I^(m)(i,j) on a real network: both estimators draw
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


def main(argv=None):
    import moga_analysis  # noqa: F401
    from moga_analysis.data import load_images, load_model, sample_image_paths
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
    p.add_argument("--rmse-size", type=int, default=112, help="input size for the equal-RMSE measurement")
    p.add_argument("--only-overhead", action="store_true", help="skip the estimator comparisons")
    p.add_argument("--rmse-grid", type=int, default=14)
    p.add_argument("--rmse-pairs", type=int, default=12)
    p.add_argument("--rmse-contexts", type=int, default=6)
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
    # 2. counted evaluations, reference protocol (50 pairs, 50 contexts, 13 ratios), no network
    n = 196
    orders = orders_from_ratios(REFERENCE_RATIOS, n)
    pairs = reference_pairs(14, 50, generator=torch.Generator().manual_seed(0))
    zero = lambda m: torch.zeros(m.shape[0], dtype=torch.float64)
    ev = {
        m: estimate_interactions(zero, n, pairs, orders, 50, method=m, seed=0).n_evaluations
        for m in ("independent", "shared")
    }
    rows += [
        ("evaluations / image, independent (reference protocol)", f"{ev['independent']}"),
        ("evaluations / image, shared", f"{ev['shared']}"),
        ("independent / shared evaluations (same samples per pair)", f"{ev['independent'] / ev['shared']:.2f}"),
    ]

    # 3. equal RMSE on the real network at a smaller input
    img, _, _ = load_images(sample_image_paths()[:1], model, size=args.rmse_size)
    game = ImageMaskingGame(model, img[0], grid=args.rmse_grid, batch_size=args.batch_size)
    nr = args.rmse_grid**2
    orders_r = orders_from_ratios(REFERENCE_RATIOS, nr)
    pairs = reference_pairs(args.rmse_grid, args.rmse_pairs, generator=torch.Generator().manual_seed(1))
    res = {}
    for m in ("independent", "shared"):
        t0 = time.perf_counter()
        r = estimate_interactions(game, nr, pairs, orders_r, args.rmse_contexts, method=m, seed=1)
        res[m] = (r, time.perf_counter() - t0)
    ri, rs = res["independent"][0], res["shared"][0]
    vi = (ri.stderr[1:-1] ** 2).mean()
    vs = (rs.stderr[1:-1] ** 2).mean()
    ratio = (ri.n_evaluations * vi) / (rs.n_evaluations * vs)
    rows += [
        (
            f"real net @ {args.rmse_size}px, grid {args.rmse_grid}: independent evals / time (s)",
            f"{ri.n_evaluations} / {res['independent'][1]:.1f}",
        ),
        (
            f"real net @ {args.rmse_size}px, grid {args.rmse_grid}: shared evals / time (s)",
            f"{rs.n_evaluations} / {res['shared'][1]:.1f}",
        ),
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
