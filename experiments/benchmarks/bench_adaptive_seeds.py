"""The factor of ``estimate_adaptive`` over the reference protocol at equal worst order, over seeds.

The worst of 11 orders of one run is a noisy statistic (one run's factor moves by +-30 %), so
this script repeats the adaptive run (c) of ``bench_adaptive.py`` with several seeds on the same
images and pairs and counts, for each run, the evaluations of (a) the reference protocol
(independent contexts, uniform) with the contexts k_u it needs for the worst-order noise ratio
that (c) reached (from (c)'s per-order sigma and mean |I|: an oracle without a pilot; counted
with a game that costs nothing, not run), and the ceiling of any allocation: the shared plan
with every order's and pair's need known (from the same sigma and mean |I|, the worst order
everywhere, no pilot).  Evaluation counts only (they do not depend on the machine's speed or
load), per run and the median per image.

    python experiments/benchmarks/bench_adaptive_seeds.py --pairs 50 --target-noise 0.3 --seeds 0 1 2 [--no-top-up]

Run it at two commits (``git worktree``) to compare versions of the estimator on the same draws.
"""

from __future__ import annotations

import argparse
import math
import statistics

import torch

SQRT_2_PI = math.sqrt(2 / math.pi)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="moganet_xtiny.fmnist_64")
    p.add_argument("--grid", type=int, default=8)
    p.add_argument("--images", type=int, default=2, help="Fashion-MNIST test images (first, last)")
    p.add_argument("--pairs", type=int, default=50)
    p.add_argument("--target-noise", type=float, default=0.3)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--top-up", action=argparse.BooleanOptionalAction, default=True,
                   help="estimate_adaptive's top-up: halves topped up from each other's data (default: on, the "
                   "library's; --no-top-up: one main stage planned from the pilot)")
    return p


def counted_reference(res, n: int, pairs, orders) -> tuple:
    """(k_u, evaluations of the reference protocol with k_u contexts) for (c)'s worst order."""
    from moga_analysis.interactions import estimate_interactions

    counts = torch.tensor(res.metadata["effective_samples"], dtype=torch.float64)
    sigma = res.stderr * counts.sqrt()
    worst = float(res.noise_ratio().max())
    need = (SQRT_2_PI * sigma.mean(1) / (worst * res.mean_abs())) ** 2
    k_u = max(2, int(math.ceil(float(need[res.stderr.sum(1) > 0].max()))))
    zero = lambda masks: torch.zeros(masks.shape[0], dtype=torch.float64)  # noqa: E731
    return k_u, estimate_interactions(zero, n, pairs, orders, k_u, method="independent", seed=0).n_evaluations


def oracle_evaluations(res, n: int, pairs, orders) -> int:
    """Evaluations of shared contexts that give every inner order (c)'s worst noise ratio with
    each order's and pair's need known: k_p ~ sigma_p^(2/3) (the plan's rule), no pilot."""
    from moga_analysis.interactions.adaptive import _pair_needs
    from moga_analysis.interactions.estimators import _plan_shared, _shared_samples

    counts = torch.tensor(res.metadata["effective_samples"], dtype=torch.float64)
    sigma = res.stderr * counts.sqrt()
    worst, signal = float(res.noise_ratio().max()), res.mean_abs()
    gen = torch.Generator().manual_seed(0)
    total = 0
    for o, m in enumerate(orders):
        if float(res.stderr[o].sum()) == 0:  # an exact end order: one context
            total += len(_plan_shared(n, pairs, m, 1, gen)[0])
            continue
        k = _pair_needs(sigma[o], worst * float(signal[o]) / SQRT_2_PI, 1.0, 1e9).ceil().long()
        total += len(_shared_samples(n, pairs, m, k, gen)[0])
    return total


def main(argv=None):
    args = build_parser().parse_args(argv)
    from moga_analysis.data import load_model
    from moga_analysis.games import ImageMaskingGame
    from moga_analysis.interactions import REFERENCE_RATIOS, estimate_adaptive, orders_from_ratios, reference_pairs
    from moga_analysis.runtime import prepare_model, tune_malloc
    from moga_analysis.training import load_fmnist_samples

    torch.set_num_threads(args.threads)
    tune_malloc()
    model = prepare_model(load_model(args.model, device="cpu"), dtype="float32", memory_format="auto")
    imgs, labels = load_fmnist_samples()
    n = args.grid * args.grid
    orders = orders_from_ratios(REFERENCE_RATIOS, n)
    picks = torch.linspace(0, len(imgs) - 1, max(args.images, 2)).long().tolist()[: args.images]
    print(f"{args.model}, grid {args.grid}, {args.pairs} pairs, target {args.target_noise}, seeds {args.seeds}"
          f"{', top-up' if args.top_up else ', no top-up'}\n")
    print("| image | seed | (c) evaluations | worst noise ratio | orders missed | k_u | (a) evaluations | (a) / (c) "
          "| ceiling: needs known | (a) / ceiling |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    medians = []
    for x, idx in enumerate(picks):
        pairs = reference_pairs(args.grid, args.pairs, generator=torch.Generator().manual_seed(x))
        factors = []
        for s in args.seeds:
            game = ImageMaskingGame(model, imgs[idx], target=int(labels[idx]), grid=args.grid, batch_size=64,
                                    channels_last=True)
            res = estimate_adaptive(game, n, pairs, orders, target_noise=args.target_noise, seed=1 + x + 10 * s,
                                    top_up=args.top_up)
            k_u, a = counted_reference(res, n, pairs, orders)
            ceiling = oracle_evaluations(res, n, pairs, orders)
            factors.append(a / res.n_evaluations)
            print(f"| {x} | {s} | {res.n_evaluations:,} | {float(res.noise_ratio().max()):.3f} | "
                  f"{len(res.metadata['missed_orders'])} | {k_u} | {a:,} | {factors[-1]:.2f} | {ceiling:,} | "
                  f"{a / ceiling:.2f} |", flush=True)
        medians.append(statistics.median(factors))
    print("\nmedian (a) / (c) per image: " + ", ".join(f"{m:.2f}" for m in medians))
    return medians


if __name__ == "__main__":
    main()
