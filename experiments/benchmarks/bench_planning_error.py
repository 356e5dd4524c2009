"""How well a pilot can plan the adaptive estimator: per-order needs and the pilot's planning error.

On the shipped Fashion-MNIST MogaNet (8 x 8 grid, its test images) it draws ``--contexts`` shared
contexts per pair at every inner reference order (12 reference pairs by default) and, from those
second differences, prints per order

* the signal A (noise-corrected mean |I|, ``deconvolved_mean_abs``), the mean per-sample sigma,
  the samples per pair that noise ratio ``--target-noise`` needs, the median per-pair kurtosis and
  the game evaluations per sample of the shared plan;
* the ceiling of allocation over orders: uniform shared contexts at the hardest order's need
  against each order's own need (at least ``--min-contexts``), in evaluations;
* the planning error of pilots of 8, 16 and 32 samples per pair (bootstrap from the drawn
  samples, ``--reps`` times): mean and sd of log(planned need / need), planned exactly as
  ``estimate_adaptive`` plans (noise-corrected signal bounded below, c4-corrected mean sigma),
  with the mean bootstrap sd of log need the estimator computes from such a pilot
  (``plan_log_sd``) and the share of plans short of the need without and with the plan margin
  exp(2 sd).

    python experiments/benchmarks/bench_planning_error.py --images 0 --contexts 120
"""

from __future__ import annotations

import argparse
import math
import time

import torch

SQRT_2_PI = math.sqrt(2 / math.pi)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, nargs="+", default=[0], help="0: the first test image, 1: the last")
    p.add_argument("--pairs", type=int, default=12)
    p.add_argument("--contexts", type=int, default=120, help="shared contexts per pair and order drawn")
    p.add_argument("--target-noise", type=float, default=0.3)
    p.add_argument("--min-contexts", type=int, default=8)
    p.add_argument("--pilots", type=int, nargs="+", default=[8, 16, 32])
    p.add_argument("--reps", type=int, default=200)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)

    from moga_analysis.interactions import REFERENCE_RATIOS, ImageMaskingGame, orders_from_ratios, reference_pairs
    from moga_analysis.interactions.adaptive import _c4, plan_log_sd, planning_signal
    from moga_analysis.interactions.estimators import _evaluate, _shared_samples, deconvolved_mean_abs
    from moga_analysis.models.loading import load_model
    from moga_analysis.runtime import prepare_model, tune_malloc
    from moga_analysis.training import load_fmnist_samples

    torch.set_num_threads(args.threads)
    tune_malloc()
    model = prepare_model(load_model("moganet_xtiny.fmnist_64", device="cpu"), dtype="float32",
                          memory_format="contiguous")
    imgs, labels = load_fmnist_samples()
    grid, n, P, K, tau = 8, 64, args.pairs, args.contexts, args.target_noise
    for x in args.images:
        idx = [0, len(imgs) - 1][x]
        game = ImageMaskingGame(model, imgs[idx], target=int(labels[idx]), grid=grid, batch_size=128)
        pairs = reference_pairs(grid, P, generator=torch.Generator().manual_seed(x))
        orders = orders_from_ratios(REFERENCE_RATIOS, n)[1:-1]
        gen = torch.Generator().manual_seed(123 + x)
        deltas, cost = {}, {}
        t0 = time.perf_counter()
        for m in orders:
            rows, (a, b, c, d), _ = _shared_samples(n, pairs, m, torch.full((P,), K, dtype=torch.long), gen)
            v = _evaluate(game, rows, None, False, "")
            deltas[m], cost[m] = (v[a] - v[b] - v[c] + v[d]).view(P, K), len(rows) / (P * K)
        print(f"image {x} (test index {idx}), {P} pairs, {K} contexts per pair and order, "
              f"{time.perf_counter() - t0:.0f} s; target {tau}")
        print("| order | A | sigma | need | kurtosis (median pair) | evaluations per sample |")
        print("|---|---|---|---|---|---|")
        needs = []
        for m in orders:
            v = deltas[m]
            mean, sd = v.mean(1), v.std(1)
            A = float(deconvolved_mean_abs(mean[None], (sd / math.sqrt(K))[None])[0])
            need = (SQRT_2_PI * float(sd.mean()) / (tau * A)) ** 2
            kurt = float((((v - mean[:, None]) / sd[:, None]) ** 4).mean(1).median())
            needs.append(need)
            print(f"| {m} | {A:.4f} | {float(sd.mean()):.4f} | {need:.1f} | {kurt:.1f} | {cost[m]:.2f} |")
        need_t = torch.tensor(needs)
        c = torch.tensor([cost[m] for m in orders])
        ceiling = float(need_t.max()) * float(c.sum()) / float((need_t.clamp_min(args.min_contexts) * c).sum())
        print(f"allocation over orders vs uniform shared (needs known, at least {args.min_contexts}): {ceiling:.2f}x; "
              f"sd of log need over orders {float(need_t.log().std()):.2f}")
        pair_of = torch.arange(P)
        for n0 in args.pilots:
            g = torch.Generator().manual_seed(0)
            errs = torch.zeros(args.reps, len(orders), dtype=torch.float64)
            boot = torch.zeros(args.reps, len(orders), dtype=torch.float64)
            for r in range(args.reps):
                pilots = []
                for i, m in enumerate(orders):
                    s = torch.gather(deltas[m], 1, torch.randint(0, K, (P, n0), generator=g))
                    pilots.append((s.flatten(), pair_of.repeat_interleave(n0)))
                    mean, sd = s.mean(1), s.std(1)
                    se = sd / math.sqrt(n0)
                    A = float(planning_signal(mean[None], se[None])[0])
                    sig = float((sd / _c4(torch.tensor(n0))).mean())
                    planned = (SQRT_2_PI * sig / (tau * A)) ** 2 if A > 0 else float("inf")
                    errs[r, i] = math.log(planned / needs[i])
                boot[r] = plan_log_sd(pilots, P, tau, 4096.0, g)
            rnd = lambda t: [round(float(v), 2) for v in t]
            print(f"pilot {n0}: log(planned / need) per order: mean {rnd(errs.mean(0))}, sd {rnd(errs.std(0))}")
            print(f"pilot {n0}: bootstrap sd of log need (mean): {rnd(boot.mean(0))}; plans short of the need: "
                  f"{rnd((errs < 0).double().mean(0))}, with the margin exp(2 sd): "
                  f"{rnd((errs + 2 * boot < 0).double().mean(0))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
