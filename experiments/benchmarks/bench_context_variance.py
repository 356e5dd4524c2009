"""How much of the sampling variance of Delta(i,j,S) could smarter context designs remove?

The shared estimator reuses game evaluations; the other route to fewer evaluations at equal RMSE
is lower variance per sample (stratified or balanced contexts, control variates). Those gain at
most 1 / (1 - R^2), where R^2 is the share of Var[Delta(i,j,S)] over random contexts S that a
model of the context explains. This script draws independent contexts per pair on a real network
and prints, per order, the median held-out R^2 of two such models:

* ``linear``: Delta regressed on the inclusion indicator of every other player (the main effects
  that a balanced design, each player present in the same share of contexts, would cancel;
  fitted only with at least 4 samples per coefficient, ``--samples`` >= 8 (n-1), else n/a);
* ``local``: Delta regressed on the number of present players within Chebyshev radius 1, 2, 3 of
  i and of j (what stratifying by the local context would capture).

Fit on one half of the samples, R^2 on the other half (so it can be negative).

Those models bound designs that predict Delta itself. A design can also gain where the *spread*
of Delta depends on the context, by sampling more often where it is large: importance sampling
with the proposal q(S) proportional to p(S) sigma(S) has the per-sample variance
E_p[sigma] E_p[Delta^2 / sigma] - I^2 (Neyman-allocated strata are the special case of a sigma
constant within strata). The column ``spread`` is the median over pairs of Var[Delta] over that
variance, with sigma^2(S) from a regression of Delta^2 on the ``local`` counts fitted on one half
and the variance measured on the other half: the gain a design steered by the local context's
effect on the spread could give (1 = none).

``--permutations T`` also measures one such design directly, disjoint blocks: a random permutation
of the players other than i and j is cut into g = (n-2) // a blocks of a = min(m, n-2-m) players,
each block giving one context (the block itself at low orders, everything but the block at high
orders).  Every context is uniform over the pair's contexts of size m (unbiased), and at low orders
the blocks tile the players, so the part of Delta that is additive in the players present cancels
in the permutation's mean.  The column ``blocks`` is the median over pairs of
Var[Delta] / (g Var[mean of a permutation's g blocks]) over T permutations: the variance gain per
sample against independent contexts (1 = none).

    python experiments/benchmarks/bench_context_variance.py                      # shipped FMNIST MogaNet
    python experiments/benchmarks/bench_context_variance.py --permutations 40    # with the block design
    python experiments/benchmarks/bench_context_variance.py --model tf_efficientnet_lite0.pypi --grid 14
"""

from __future__ import annotations

import argparse
import statistics

import torch


def heldout_r2(x: torch.Tensor, y: torch.Tensor) -> float:
    h = len(y) // 2
    x1 = torch.cat([x.double(), torch.ones(len(x), 1, dtype=torch.float64)], 1)
    beta = torch.linalg.lstsq(x1[:h], y[:h, None]).solution
    resid = y[h:] - (x1[h:] @ beta)[:, 0]
    return float(1 - resid.var() / y[h:].var())


def spread_gain(x: torch.Tensor, y: torch.Tensor) -> float:
    """Var[y] / (E[sigma] E[y^2 / sigma] - E[y]^2) on the second half of the samples, with sigma^2 a
    least-squares fit of y^2 on ``x`` over the first half (floored at 2 % of its mean there): the
    variance gain per sample of importance sampling with q proportional to p sigma."""
    h = len(y) // 2
    x1 = torch.cat([x.double(), torch.ones(len(x), 1, dtype=torch.float64)], 1)
    y2 = y.double() ** 2
    beta = torch.linalg.lstsq(x1[:h], y2[:h, None]).solution
    sigma = (x1[h:] @ beta)[:, 0].clamp_min(0.02 * float(y2[:h].mean())).sqrt()
    rest = y[h:].double()
    return float(rest.var() / (sigma.mean() * (rest**2 / sigma).mean() - rest.mean() ** 2))


def ring_counts(grid: int, i: int, j: int, present: torch.Tensor) -> torch.Tensor:
    cols = []
    for c in (i, j):
        y, x = divmod(c, grid)
        for r in (1, 2, 3):
            cells = [yy * grid + xx for yy in range(max(0, y - r), min(grid, y + r + 1))
                     for xx in range(max(0, x - r), min(grid, x + r + 1))]
            cols.append(present[:, cells].sum(1, keepdim=True))
    return torch.cat(cols, 1)


def block_contexts(n: int, i: int, j: int, m: int, permutations: int, gen: torch.Generator):
    """Contexts of the block design for pair (i, j) at order m: bool ``[permutations * g, n]``
    (permutation by permutation, g blocks each) and g."""
    others = torch.tensor([c for c in range(n) if c not in (i, j)])
    a = min(m, n - 2 - m)
    if a < 1:
        raise ValueError("orders 0 and n-2 have a single context")
    g = (n - 2) // a
    blocks = torch.stack([others[torch.randperm(n - 2, generator=gen)][: g * a] for _ in range(permutations)])
    blocks = blocks.view(permutations * g, a)
    S = torch.zeros(permutations * g, n, dtype=torch.bool)
    S[torch.arange(len(S))[:, None], blocks] = True
    if m > n - 2 - m:  # high orders: the block is what is absent
        S = ~S
        S[:, [i, j]] = False
    return S, g


def block_gain(delta: torch.Tensor, g: int) -> float:
    """Var[Delta] / (g Var[permutation mean]) for ``delta`` ordered permutation by permutation."""
    d = delta.view(-1, g)
    return float(d.var() / (g * d.mean(1).var()))


def second_differences(game, S: torch.Tensor, i: int, j: int) -> torch.Tensor:
    Si, Sj = S.clone(), S.clone()
    Si[:, i] = True
    Sj[:, j] = True
    Sij = Si.clone()
    Sij[:, j] = True
    K = len(S)
    v = game(torch.cat([Sij, Si, Sj, S]))
    return v[:K] - v[K:2 * K] - v[2 * K:3 * K] + v[3 * K:]


def main(argv=None):
    from moga_analysis.data import load_model, shipped_examples
    from moga_analysis.games import ImageMaskingGame
    from moga_analysis.interactions import orders_from_ratios, reference_pairs
    from moga_analysis.interactions.estimators import _random_subsets
    from moga_analysis.runtime import environment_info, tune_malloc

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="moganet_xtiny.fmnist_64")
    p.add_argument("--grid", type=int, default=8)
    p.add_argument("--images", type=int, default=3, help="images (shipped FMNIST test images or photos)")
    p.add_argument("--pairs", type=int, default=3, help="reference pairs per image")
    p.add_argument("--samples", type=int, default=600, help="independent contexts per pair and order")
    p.add_argument("--ratios", type=float, nargs="+", default=[0.1, 0.3, 0.5, 0.7, 0.9])
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--permutations", type=int, default=0, help="permutations per pair and order for the block "
                   "design's measured gain (0: not measured)")
    args = p.parse_args(argv)
    tune_malloc()
    model = load_model(args.model, device="cpu")
    items = shipped_examples(model, args.images)
    n = args.grid**2
    orders = orders_from_ratios(args.ratios, n)
    gen = torch.Generator().manual_seed(0)
    gen_blocks = torch.Generator().manual_seed(1)  # its own stream: the R^2 columns do not depend on it
    r2 = {m: {"linear": [], "local": [], "spread": [], "blocks": []} for m in orders}
    # n - 1 coefficients fitted on half the samples: with fewer than 4 samples per coefficient the
    # held-out R^2 measures the overfit (-20 to -30 with 200 samples for 195 coefficients), not the model
    fit_linear = args.samples // 2 >= 4 * (n - 1)
    for k, (image, label) in enumerate(items):
        game = ImageMaskingGame(model, image, target=label, grid=args.grid, batch_size=args.batch_size)
        pairs = reference_pairs(args.grid, args.pairs, generator=torch.Generator().manual_seed(k))
        for m in orders:
            for i, j in pairs.tolist():
                K = args.samples
                excl = torch.zeros(K, n, dtype=torch.bool)
                excl[:, [i, j]] = True
                S = _random_subsets(K, n, m, gen, excl)
                delta = second_differences(game, S, i, j)
                if args.permutations:
                    B, g = block_contexts(n, i, j, m, args.permutations, gen_blocks)
                    r2[m]["blocks"].append(block_gain(second_differences(game, B, i, j), g))
                if fit_linear:
                    others = [c for c in range(n) if c not in (i, j)]
                    r2[m]["linear"].append(heldout_r2(S[:, others], delta))
                local = ring_counts(args.grid, i, j, S)
                r2[m]["local"].append(heldout_r2(local, delta))
                r2[m]["spread"].append(spread_gain(local, delta))
    env = environment_info()
    print(f"model {args.model}, grid {args.grid}, {len(items)} images x {args.pairs} pairs, "
          f"{args.samples} contexts per pair and order, torch {env.get('torch')}")
    blocks = " blocks, measured gain (range over pairs) |" if args.permutations else ""
    print("| order m | m/(n-2) | median R^2 linear | median R^2 local | variance ceiling 1/(1-R^2) "
          "| spread, median gain |" + blocks)
    print("|---|---|---|---|---|---|" + ("---|" if blocks else ""))
    for m in orders:
        lin = statistics.median(r2[m]["linear"]) if fit_linear else 0.0
        loc = statistics.median(r2[m]["local"])
        best = max(lin, loc, 0.0)
        gains = r2[m]["blocks"]
        cell = f" {statistics.median(gains):.2f}x ({min(gains):.2f}-{max(gains):.2f}) |" if gains else ""
        spread = statistics.median(r2[m]["spread"])
        lin_cell = f"{lin:.2f}" if fit_linear else f"n/a ({n - 1} coefficients, {args.samples // 2} samples)"
        print(f"| {m} | {m / (n - 2):.2f} | {lin_cell} | {loc:.2f} | {1 / (1 - best):.2f}x | {spread:.2f}x |" + cell)
    return r2


if __name__ == "__main__":
    main()
