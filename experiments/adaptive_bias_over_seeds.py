"""Is ``estimate_adaptive`` unbiased?  Its error against the closed form over many seeds.

The game of the unbiasedness test (tests/test_adaptive.py): a Harsanyi game with 150 random
coalitions on n = 196 players, 20 reference pairs, the 13 reference orders, Gaussian noise of sd
0.3 on every evaluation (noise seed 100 + s), and in weighted mode a 4-context first pilot, rounds
at every order (``max_pilot_ratio=0.05``) and target 0.15, so the rounds carry weight.  Per run s
(estimator seed s) the error of every inner order is averaged over the pairs (they share
contexts; only the seeds are independent); the table gives per order the t statistic of the mean
error over the seeds and the mean error in units of a run's mean reported stderr with its 2-se
bound, and the last line the squared errors against the reported stderr^2.

    python experiments/adaptive_bias_over_seeds.py --seeds 48 3000 --jobs 2     # the default: weighted + top-up
    python experiments/adaptive_bias_over_seeds.py --seeds 0 400 --pilot discard --no-top-up
"""

from __future__ import annotations

import argparse
import logging
import math
import multiprocessing

import torch


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs=2, default=[0, 100], metavar=("FIRST", "STOP"),
                   help="seeds FIRST .. STOP-1")
    p.add_argument("--pilot", default="weighted", choices=["weighted", "discard", "reuse"])
    p.add_argument("--top-up", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--allocation", default="orders+pairs", choices=["orders", "orders+pairs"])
    p.add_argument("--jobs", type=int, default=1, help="processes (one thread each)")
    return p


def _game():
    from moga_analysis.interactions import REFERENCE_RATIOS, HarsanyiGame, orders_from_ratios, reference_pairs

    n = 196
    pairs = reference_pairs(14, 20, generator=torch.Generator().manual_seed(1))
    g = HarsanyiGame.random(n, 150, max_size=5, seed=2, must_include=pairs.tolist())
    orders = orders_from_ratios(REFERENCE_RATIOS, n)
    return g, n, pairs, orders


def run_seeds(job):
    """(per-seed mean error [S, O], mean stderr [S, O], sum err^2, sum stderr^2) over the inner orders."""
    from moga_analysis.interactions import HarsanyiGame, estimate_adaptive

    seeds, pilot, top_up, allocation = job
    torch.set_num_threads(1)
    logging.getLogger("moga_analysis.interactions.adaptive").setLevel(logging.ERROR)  # orders a hair over 0.15
    g, n, pairs, orders = _game()
    truth = g.interactions(pairs, orders)[1:-1]
    kw = dict(pilot_contexts=4, max_pilot_ratio=0.05, target_noise=0.15) if pilot == "weighted" else \
        dict(target_noise=0.3)
    u, se, e2, v = [], [], 0.0, 0.0
    for s in seeds:
        noisy = HarsanyiGame(g.coalitions, g.dividends, noise=0.3, generator=torch.Generator().manual_seed(100 + s))
        r = estimate_adaptive(noisy, n, pairs, orders, seed=s, allocation=allocation, pilot=pilot, top_up=top_up, **kw)
        err, var = r.values[1:-1] - truth, r.stderr[1:-1] ** 2
        u.append(err.mean(1))
        se.append(var.sqrt().mean(1))
        e2, v = e2 + float((err**2).sum()), v + float(var.sum())
    return torch.stack(u), torch.stack(se), e2, v


def main(argv=None):
    args = build_parser().parse_args(argv)
    seeds = list(range(*args.seeds))
    chunks = [seeds[i :: args.jobs] for i in range(args.jobs)]
    jobs = [(c, args.pilot, args.top_up, args.allocation) for c in chunks if c]
    if len(jobs) > 1:
        with multiprocessing.get_context("spawn").Pool(len(jobs)) as pool:
            parts = pool.map(run_seeds, jobs)
    else:
        parts = [run_seeds(jobs[0])]
    u, se = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
    e2, v = sum(p[2] for p in parts), sum(p[3] for p in parts)
    _, _, _, orders = _game()
    S = len(u)
    print(f"{args.pilot}, top-up {args.top_up}, {args.allocation}: seeds {args.seeds[0]}..{args.seeds[1] - 1} ({S})\n")
    print("| order m | t over seeds | mean error / stderr | 2-se bound |")
    print("|---|---|---|---|")
    ts = []
    for o, m in enumerate(orders[1:-1]):
        mean, sd, s_run = float(u[:, o].mean()), float(u[:, o].std()), float(se[:, o].mean())
        ts.append(mean / (sd / math.sqrt(S)))
        print(f"| {m} | {ts[-1]:.2f} | {mean / s_run:.3f} | {2 * sd / math.sqrt(S) / s_run:.3f} |")
    print(f"\nlargest |t| {max(abs(t) for t in ts):.2f}; squared errors / reported stderr^2: {e2 / v:.4f}")
    return ts, e2 / v


if __name__ == "__main__":
    main()
