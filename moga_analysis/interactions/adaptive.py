"""I^(m)(i,j) to a stated precision in the fewest game evaluations: :func:`estimate_adaptive`.

The target is a relative noise level per order: ``noise_floor / mean |I^(m)| <= target_noise``
at every evaluated inner order, where the noise floor is ``E_(i,j) sqrt(2/pi) stderr`` (the mean
|I| that pure estimator noise would give, :meth:`InteractionResult.noise_floor`).

Method
------
1. **Planning pilot** (never part of the estimate): ``pilot_contexts`` shared contexts per pair at
   every inner order.  It gives each order's signal, the noise-corrected mean |I| of
   :func:`~moga_analysis.interactions.estimators.deconvolved_mean_abs` (the raw mean |I| of a small
   pilot is mostly noise at the middle orders and would under-allocate them), and the per-sample
   standard deviations sigma_p of Delta(i,j,S).  An order needs
   ``k_o = (sqrt(2/pi) mean_p sigma_p / (target * A_o))^2`` samples per pair with
   ``allocation="orders"``; with ``"orders+pairs"`` pair p gets ``k_p ~ sigma_p^(2/3)`` (minimise
   sum_p k_p subject to mean_p sigma_p / sqrt(k_p) = const: the Lagrange optimum), where a pair's
   relative sigma is its mean over the orders (a pair's spread is nearly the same at every order:
   correlation 0.84-0.99 between orders on the shipped Fashion-MNIST MogaNet).  Orders are
   separate constraints, so the least-cost plan gives each order its own need; ``safety``
   multiplies it.
2. **Cross-fitted pilot** (``pilot="reuse"`` only, part of the estimate): ``pilot_fraction`` of
   each order's need (planned from the raw mean |I|, which is above the signal in expectation, so
   the pilot stays below the need; at least ``min_contexts``) per pair, with the pairs in
   K = min(4, P) folds (pair p in fold p mod K) that draw separate contexts, shared within the
   fold.  The final plan for the pairs of fold f comes from the planning pilot and the other folds'
   cross-fitted pilot only.
3. **Main stage**: fresh contexts, shared by all pairs of an order (the shared estimator of
   :mod:`.estimators`, which draws exactly the requested number of samples per pair), up to the
   planned total.

Unbiasedness
------------
* ``pilot="reuse"`` (no budget cap, two or more pairs): pair p's samples at order m are its
  cross-fitted pilot and its main samples; how many it gets, N(m,p), is a function of the planning
  pilot (drawn separately, never in the estimate) and of the other folds' cross-fitted pilot, all
  drawn independently of pair p's cross-fitted pilot.  So N(m,p) is independent of those samples,
  and the main samples are drawn afterwards, i.i.d. given N(m,p).  Conditional on N(m,p), pair
  p's N(m,p) samples are therefore i.i.d. draws of Delta(i,j,S), S uniform over the subsets of size
  m of N minus {i,j}: their mean is unbiased for I^(m)(i,j) given N(m,p), hence unbiased; their
  sample variance is unbiased, so stderr = std / sqrt(N) is the usual honest one; and a split
  fixed in advance (the first half of a pair's samples against the rest) gives independent
  halves, so ``half_values[0] * half_values[1]`` stays unbiased for I^2.
* ``pilot="discard"`` (the default; needed with ``max_evaluations``): no cross-fitted pilot;
  the estimates come only from the main stage, whose allocation is a function of the planning pilot
  alone, so the same three statements hold conditionally on it.  This mode may look at everything
  (each pair's own pilot variance, more pilot rounds for orders whose pilot is too weak to plan
  from, and the budget) because none of it enters the estimate.  A budget cap needs it: the scale
  that fits all orders into the budget depends on every pilot sample, so it cannot be made
  independent of any one of them.

What would be biased, and is not done: pooling a pilot whose own values decided how many samples
follow it (its mean enters the signal estimate, and its variance estimate is correlated with its
mean when Delta is skewed), and any sequential rule that tops an order up until the target is
met, which looks at |mean| and so biases the mean.  Tests: tests/test_adaptive.py (mean over
seeds against the closed form at n = 196 and at n = 8, z-score calibration, split halves).

Exact end orders (0 and n-2) have one context each and cost 1 + U + P evaluations (U distinct
players, P pairs).  Every evaluation, both pilots included, is counted in ``n_evaluations``.

Reported in ``result.metadata``: ``target_noise``, ``allocation``, ``pilot_mode``, ``folds``,
``noise_ratio`` and ``target_met`` per order (achieved, from the final estimates; 0 / True at the
exact orders), ``missed_orders``, ``planned_noise_ratio``, ``contexts_per_order`` (samples per pair
in the estimate, mean over pairs), ``pilot_contexts_per_order`` (planning pilot),
``reused_pilot_contexts_per_order``, ``pilot_mean_abs_debiased``, ``capped_orders`` (orders that
hit ``max_contexts``), ``endpoint_evaluations``, ``pilot_evaluations`` (planning only),
``reused_pilot_evaluations``, ``main_evaluations``, ``pilot_rounds``, ``max_evaluations``,
``budget_capped``, ``budget_scale`` and ``settings``.  ``samples_per_pair`` holds the samples of
every pair and order where they differ between pairs.
"""

from __future__ import annotations

import logging
import math
from typing import Dict, List, Optional

import torch

from ..runtime import progress as _progress
from .estimators import (
    Game,
    InteractionResult,
    _check_orders,
    _check_pairs,
    _evaluate,
    _plan_shared,
    _shared_samples,
    deconvolved_mean_abs,
)

__all__ = ["estimate_adaptive", "ALLOCATIONS", "PILOT_MODES"]

log = logging.getLogger(__name__)

ALLOCATIONS = ("orders", "orders+pairs")
PILOT_MODES = ("discard", "reuse")
_SQRT_2_PI = math.sqrt(2 / math.pi)
#: folds of the cross-fitted pilot
_FOLDS = 4


def _c4(k: torch.Tensor) -> torch.Tensor:
    """E[s] / sigma for the sample std of k normal samples (corrects the pilot's mean std)."""
    k = torch.as_tensor(k).double().clamp_min(2)
    return torch.exp(0.5 * math.log(2.0) - 0.5 * (k - 1).log() + torch.lgamma(k / 2) - torch.lgamma((k - 1) / 2))


def _derived_seed(seed: int, stage: int) -> int:
    return (int(seed) * 1_000_003 + 7_919 * (stage + 1)) % (2**63 - 1)


class _Samples:
    """Second differences of one order, flat, with the (global) pair of each sample."""

    def __init__(self, n_pairs: int):
        self.P = n_pairs
        self.delta: List[torch.Tensor] = []
        self.pair_of: List[torch.Tensor] = []

    def add(self, delta: torch.Tensor, pair_of: torch.Tensor) -> None:
        self.delta.append(delta)
        self.pair_of.append(pair_of)

    def flat(self):
        """(delta, pair_of) sorted by pair, in the order the samples were added within a pair."""
        if not self.delta:
            return torch.zeros(0, dtype=torch.float64), torch.zeros(0, dtype=torch.long)
        d, p = torch.cat(self.delta), torch.cat(self.pair_of)
        order = torch.sort(p, stable=True).indices
        return d[order], p[order]

    def stats(self):
        """Per pair: count, mean, unbiased variance (0 where fewer than 2 samples)."""
        d, p = self.flat()
        count = torch.bincount(p, minlength=self.P)
        mean = torch.zeros(self.P, dtype=torch.float64).index_add_(0, p, d) / count.clamp_min(1)
        ss = torch.zeros(self.P, dtype=torch.float64).index_add_(0, p, (d - mean[p]) ** 2)
        return count, mean, ss / (count - 1).clamp_min(1)


def _pair_statistics(delta: torch.Tensor, pair_of: torch.Tensor, P: int):
    """values, stderr, the two half means and counts of samples sorted by pair (first half of a
    pair's samples in their order against the rest)."""
    count = torch.bincount(pair_of, minlength=P)
    if int(count.min()) < 2:
        raise RuntimeError("every pair needs at least two samples")
    mean = torch.zeros(P, dtype=torch.float64).index_add_(0, pair_of, delta) / count
    ss = torch.zeros(P, dtype=torch.float64).index_add_(0, pair_of, (delta - mean[pair_of]) ** 2)
    stderr = (ss / (count - 1) / count).sqrt()
    start = torch.cumsum(count, 0) - count
    pos = torch.arange(len(delta)) - start[pair_of]
    h = count // 2
    first = pos < h[pair_of]
    h0 = torch.zeros(P, dtype=torch.float64).index_add_(0, pair_of[first], delta[first]) / h
    h1 = torch.zeros(P, dtype=torch.float64).index_add_(0, pair_of[~first], delta[~first]) / (count - h)
    return mean, stderr, torch.stack([h0, h1]), count


def _pair_needs(sigma: torch.Tensor, target_floor: float, lo: float, hi: float) -> torch.Tensor:
    """Real-valued k_p ~ sigma_p^(2/3), clamped to [lo, hi], with mean_p sigma_p / sqrt(k_p) =
    ``target_floor`` (the Lagrange optimum of sum k_p at a given mean stderr), by bisection on
    the scale; all ``hi`` if even that misses."""
    w = sigma.clamp_min(0) ** (2.0 / 3.0)

    def k_at(c: float) -> torch.Tensor:
        return torch.where(w > 0, c * w, torch.zeros_like(w)).clamp(lo, hi)

    def floor_at(c: float) -> float:
        return float((sigma / k_at(c).sqrt()).mean())

    if not (math.isfinite(target_floor) and target_floor > 0) or float((sigma / math.sqrt(hi)).mean()) > target_floor:
        return torch.full_like(sigma, float(hi))
    a, b = 0.0, 1.0
    while floor_at(b) > target_floor:
        b *= 2.0
    for _ in range(60):
        c = 0.5 * (a + b)
        if floor_at(c) > target_floor:
            a = c
        else:
            b = c
    return k_at(b)


def estimate_adaptive(
    game: Game,
    n_players: int,
    pairs,
    orders,
    *,
    target_noise: float = 0.1,
    pilot_contexts: int = 8,
    min_contexts: int = 8,
    max_contexts: int = 1024,
    max_evaluations: Optional[int] = None,
    allocation: str = "orders+pairs",
    seed: int = 0,
    batch_size: Optional[int] = None,
    progress: bool = False,
    pilot: str = "discard",
    safety: float = 1.1,
    pilot_fraction: float = 0.2,
    max_pilot_ratio: float = 0.35,
    pilot_rounds: int = 2,
) -> InteractionResult:
    """I^(m)(i,j) with noise floor / mean |I^(m)| <= ``target_noise`` at every order, at least cost.

    See the module docstring for the method and why the estimates are unbiased.

    Args:
        game, n_players, pairs, orders: as for :func:`estimate_interactions`.
        target_noise: the relative noise level to reach at every inner order.
        pilot_contexts: planning-pilot contexts per pair at every inner order (>= 2).
        min_contexts, max_contexts: bounds on the samples per pair and order in the estimate.
        max_evaluations: cap on the game evaluations of this call, pilot included; never
            exceeded (needs ``pilot="discard"``).  If it is too small for the pilot plus
            ``min_contexts`` everywhere, an error says how many are needed; if the target does
            not fit, every order's allocation is scaled down by one factor, which equalises the
            predicted noise ratio over the orders (``metadata["budget_capped"]``,
            ``"budget_scale"``).
        allocation: ``"orders"`` (one context count per order) or ``"orders+pairs"`` (per pair,
            ``k_p ~ sigma_p^(2/3)``).
        seed: all randomness comes from generators seeded with it; the same seed and game give
            bit-identical results.
        batch_size, progress: as for :func:`estimate_interactions`.
        pilot: ``"discard"`` (default: the pilot plans only, with more rounds where it is too
            weak to plan from) or ``"reuse"`` (a cross-fitted pilot that is part of the estimate;
            no budget cap, two or more pairs).
        safety: the planned samples are ``safety`` times the estimated need.
        pilot_fraction: reuse mode: the cross-fitted pilot's share of each order's planned need;
            discard mode, with ``max_pilot_ratio`` and ``pilot_rounds``: an order whose pilot
            noise ratio exceeds ``max_pilot_ratio`` while its pilot holds fewer than
            ``pilot_fraction`` of the samples it needs gets its pilot extended to that fraction,
            at most ``pilot_rounds`` times (under a cap, the extensions use at most
            ``pilot_fraction`` of it).

    Returns an :class:`InteractionResult` with ``method="adaptive"`` and the achieved precision in
    ``metadata``; orders that miss the target are logged as warnings.
    """
    if allocation not in ALLOCATIONS:
        raise ValueError(f"unknown allocation {allocation!r}; choose one of {ALLOCATIONS}")
    if pilot not in PILOT_MODES:
        raise ValueError(f"unknown pilot mode {pilot!r}; choose one of {PILOT_MODES}")
    tau = float(target_noise)
    if not tau > 0:
        raise ValueError("target_noise must be > 0")
    k_pilot, k_min, k_max = int(pilot_contexts), int(min_contexts), int(max_contexts)
    if k_pilot < 2 or k_min < 2:
        raise ValueError("pilot_contexts and min_contexts must be >= 2 (a stderr needs two samples)")
    if k_max < k_min:
        raise ValueError("max_contexts must be >= min_contexts")
    if safety < 1:
        raise ValueError("safety must be >= 1")
    n = int(n_players)
    pairs = _check_pairs(pairs, n)
    orders = _check_orders(orders, n)
    O, P = len(orders), len(pairs)
    order_list = orders.tolist()
    inner = [o for o, m in enumerate(order_list) if 0 < m < n - 2]
    budget = None if max_evaluations is None else int(max_evaluations)
    if pilot == "reuse" and budget is not None:
        raise ValueError("a budget cap needs pilot='discard' (see the module docstring)")
    if pilot == "reuse" and P < 2:
        raise ValueError("pilot='reuse' needs at least two pairs (it cross-fits over them)")
    reuse = pilot == "reuse"
    K = min(_FOLDS, P) if reuse else 1
    fold_of = torch.arange(P) % K
    everyone = [torch.arange(P)]
    fold_pairs = [(fold_of == f).nonzero().flatten() for f in range(K)]

    # ---- exact end orders and the first pilot round: rows built before anything is evaluated
    gen_pilot = torch.Generator().manual_seed(_derived_seed(seed, 0))
    end_blocks, end_plans = [], {}
    offset = 0
    for o, m in enumerate(order_list):
        if o in inner:
            continue
        rows, idx = _plan_shared(n, pairs, m, 1, gen_pilot)
        end_plans[o] = tuple(t + offset for t in idx)
        end_blocks.append(rows)
        offset += len(rows)
    endpoint_evals = offset

    def pilot_plan(needs: Dict[int, int], groups):
        """Rows and sample indices of ``needs[o]`` more contexts per pair, drawn separately for each
        group of pairs (shared within a group)."""
        blocks, plans, off = [], [], 0
        for o, k in needs.items():
            for members in groups:
                need = torch.full((len(members),), k, dtype=torch.long)
                rows, idx, local = _shared_samples(n, pairs[members], order_list[o], need, gen_pilot)
                plans.append((o, tuple(t + off for t in idx), members[local], len(rows)))
                blocks.append(rows)
                off += len(rows)
        return blocks, plans, off

    def run_pilot(store, plans, v):
        for o, (a, b, c, d), pair_of, _ in plans:
            store[o].add(v[a] - v[b] - v[c] + v[d], pair_of)

    blocks, plans, pilot_rows = pilot_plan({o: k_pilot for o in inner}, everyone)
    # evaluations per (sample per pair) at each order, from the pilot's plan
    cost_per_k = {o: 0.0 for o in inner}
    for o, _, _, r in plans:
        cost_per_k[o] += r / k_pilot
    min_main = sum(cost_per_k[o] * k_min for o in inner)  # the main stage's minimum (discard mode)
    if budget is not None and endpoint_evals + pilot_rows + min_main > budget:
        need = int(math.ceil(endpoint_evals + pilot_rows + 1.05 * min_main))
        raise ValueError(
            f"max_evaluations={budget} is too small: the exact end orders ({endpoint_evals}), the pilot "
            f"({pilot_rows}) and min_contexts={k_min} at every inner order (about {int(min_main)}) need "
            f"about {need}; raise it or lower pilot_contexts / min_contexts"
        )
    all_rows = torch.cat(end_blocks + blocks) if (end_blocks or blocks) else torch.zeros(0, n, dtype=torch.bool)
    v = _evaluate(game, all_rows, batch_size, progress, "adaptive pilot")
    values = torch.zeros(O, P, dtype=torch.float64)
    stderr = torch.zeros(O, P, dtype=torch.float64)
    halves = torch.zeros(2, O, P, dtype=torch.float64)
    n_samples = torch.ones(O, dtype=torch.long)
    per_pair = torch.ones(O, P, dtype=torch.long)
    for o, (a, b, c, d) in end_plans.items():
        values[o] = (v[a] - v[b] - v[c] + v[d])[:, 0]
        halves[:, o] = values[o]
    pilots = {o: _Samples(P) for o in inner}
    run_pilot(pilots, plans, v[endpoint_evals:])
    pilot_evals = pilot_rows

    # ---- planning
    def log_spread(stats):
        """Per order and pair: log pilot std minus its mean over the pairs of that order."""
        out = {}
        for o in inner:
            count, _, var = stats[o]
            s = var.sqrt()
            s = s.clamp_min(1e-3 * float(s.mean()) + 1e-300)
            ls = s.log()
            out[o] = ls - ls.mean()
        return out

    def combined(o, extra, keep):
        """Per pair (count, mean, var) at order o of the planning pilot plus, for the pairs in
        ``keep``, the samples of ``extra``."""
        n1, m1, v1 = pilots[o].stats()
        if extra is None:
            return n1, m1, v1
        n2, m2, v2 = extra[o].stats()
        n2 = torch.where(keep, n2, torch.zeros_like(n2))
        n = n1 + n2
        m = (n1 * m1 + n2 * m2) / n.clamp_min(1)
        ss = (n1 - 1).clamp_min(0) * v1 + (n2 - 1).clamp_min(0) * v2 + n1 * (m1 - m) ** 2 + n2 * (m2 - m) ** 2
        return n, m, ss / (n - 1).clamp_min(1)

    def plan_needs(extra=None, signal_rule: str = "debiased"):
        """need[o]: real-valued samples per pair [P] (before safety); ratio[o]: the noise ratio of
        the data planned from; signal[o]: their mean |I| (``"debiased"``: the deconvolution,
        bounded below by the mean of |x_p| - sqrt(2/pi) se_p, which is below mean |I| in
        expectation; ``"raw"``: the raw mean |x|, above it).  ``extra`` (the cross-fitted pilot):
        the numbers for the pairs of fold f come from the planning pilot and the other folds only."""
        folds = K if extra is not None else 1
        need = {o: torch.zeros(P, dtype=torch.float64) for o in inner}
        signal = {o: torch.zeros(P, dtype=torch.float64) for o in inner}
        ratio = {}
        if not inner:
            return need, ratio, signal
        for f in range(folds):
            mine = fold_of == f if folds > 1 else torch.ones(P, dtype=torch.bool)
            stats = {o: combined(o, extra, ~mine) for o in inner}
            count = torch.stack([stats[o][0] for o in inner])  # [O_in, P]
            mean = torch.stack([stats[o][1] for o in inner])
            sd = torch.stack([stats[o][2] for o in inner]).sqrt()
            se = sd / count.sqrt()
            raw = mean.abs().mean(1)
            if signal_rule == "raw":
                A_all = raw
            else:
                lower = (mean.abs() - _SQRT_2_PI * se).mean(1)
                A_all = torch.maximum(deconvolved_mean_abs(mean, se), lower)
            spread = log_spread(stats) if allocation == "orders+pairs" else None
            for i, o in enumerate(inner):
                A = float(A_all[i])
                sigma_bar = float((sd[i] / _c4(count[i])).mean())
                target_floor = tau * A / _SQRT_2_PI  # required mean_p sigma_p / sqrt(k_p)
                if spread is None:
                    k = (sigma_bar / target_floor) ** 2 if target_floor > 0 else float("inf")
                    nf = torch.full((P,), min(k, 4.0 * k_max), dtype=torch.float64)
                else:  # a pair's relative sigma: its mean over the orders
                    rel = torch.stack([spread[q] for q in inner]).mean(0).exp()
                    sig = sigma_bar * rel / float(rel.mean())
                    nf = _pair_needs(sig, target_floor, 1.0, 4.0 * k_max)
                need[o][mine] = nf[mine]
                signal[o][mine] = A
                if f == 0:
                    ratio[o] = float(_SQRT_2_PI * se[i].mean()) / A if A > 0 else float("inf")
        return need, ratio, signal

    need, pratio, psignal = plan_needs()
    rounds = 0
    if not reuse:  # more pilot where it is too weak to plan from (planning data only)
        spare = 0 if budget is None else max(budget - endpoint_evals - pilot_evals, 0)
        pilot_cap = None if budget is None else pilot_evals + pilot_fraction * spare
        while rounds < int(pilot_rounds):
            ext = {}
            for o in inner:
                have = int(pilots[o].stats()[0].min())
                want = int(math.ceil(pilot_fraction * min(float(need[o].mean()), k_max)))
                if pratio[o] > max_pilot_ratio and want > have:
                    ext[o] = want - have
            if budget is not None and ext:
                est = sum(cost_per_k[o] * e for o, e in ext.items())
                room = min(pilot_cap - pilot_evals, budget - endpoint_evals - pilot_evals - 1.2 * min_main)
                if est > room:
                    scale = max(room, 0.0) / est
                    ext = {o: int(e * scale) for o, e in ext.items()}
                    ext = {o: e for o, e in ext.items() if e >= 2}
            if not ext:
                break
            blocks, plans, rows_n = pilot_plan(ext, everyone)
            if budget is not None and endpoint_evals + pilot_evals + rows_n + min_main > budget:
                break  # the plan came out larger than estimated: keep the budget for the main stage
            run_pilot(pilots, plans, _evaluate(game, torch.cat(blocks), batch_size, progress, "adaptive pilot"))
            pilot_evals += rows_n
            rounds += 1
            need, pratio, psignal = plan_needs()
    # the cross-fitted pilot is sized from the raw mean |I| (above the signal in expectation, so
    # the pilot stays below the need) and is then part of the estimate
    scout_need = {o: float(v.mean()) for o, v in plan_needs(signal_rule="raw")[0].items()} if reuse else {}

    # ---- reuse mode: a cross-fitted pilot, sized from the planning-only pilot above, that is part
    # of the estimate; the main stage is planned from it alone
    reused = {o: _Samples(P) for o in inner}
    reused_evals = 0
    if reuse and inner:
        sizes = {o: int(min(max(math.ceil(pilot_fraction * scout_need[o]), k_min), k_max)) for o in inner}
        gen_pilot = torch.Generator().manual_seed(_derived_seed(seed, 2))
        blocks, plans, reused_evals = pilot_plan(sizes, fold_pairs)
        run_pilot(reused, plans, _evaluate(game, torch.cat(blocks), batch_size, progress, "adaptive pilot"))
        need, pratio, psignal = plan_needs(extra=reused)

    # ---- main stage: fresh contexts, sizes fixed above
    pilot_count = {o: reused[o].stats()[0] for o in inner}

    def allocate(scale: float, floor_min: int) -> Dict[int, torch.Tensor]:
        out = {}
        for o in inner:
            k = torch.ceil(need[o] * safety * scale)
            if reuse:  # total samples per pair; the cross-fitted pilot's count towards it
                lo = max(floor_min, int(pilot_count[o].min()))
                total = k.clamp(lo, max(k_max, lo)).long()
                out[o] = (total - pilot_count[o]).clamp_min(0)
            else:
                out[o] = k.clamp(floor_min, k_max).long()
        return out

    def build(alloc):
        gen_main = torch.Generator().manual_seed(_derived_seed(seed, 1))
        out, total = {}, 0
        for o in inner:
            if int(alloc[o].max()) == 0:
                out[o] = None
                continue
            rows, idx, pair_of = _shared_samples(n, pairs, order_list[o], alloc[o], gen_main)
            out[o] = (rows, idx, pair_of)
            total += len(rows)
        return out, total

    scale, capped, floor_min = 1.0, False, k_min
    if budget is not None:
        remaining = budget - endpoint_evals - pilot_evals

        def est_cost(s):
            a = allocate(s, floor_min)
            return sum(cost_per_k[o] * float(a[o].double().mean()) for o in inner)

        if est_cost(1.0) > remaining:
            capped = True
            lo, hi = 0.0, 1.0
            for _ in range(50):
                mid = 0.5 * (lo + hi)
                if est_cost(mid) <= 0.98 * remaining:
                    lo = mid
                else:
                    hi = mid
            scale = lo
    alloc = allocate(scale, floor_min)
    main, total = build(alloc)
    while budget is not None and total > budget - endpoint_evals - pilot_evals:
        # the random plan came out larger than estimated: shrink and rebuild (deterministic;
        # discard mode only, where the allocation never enters the estimate through the pilot)
        capped = True
        remaining = budget - endpoint_evals - pilot_evals
        smaller = allocate(scale * 0.97 * remaining / total, floor_min)
        if all(torch.equal(smaller[o], alloc[o]) for o in inner):  # min_contexts binds everywhere
            if floor_min <= 2:
                raise RuntimeError(f"cannot fit the main stage into max_evaluations={budget}")
            floor_min -= 1
        else:
            scale *= 0.97 * remaining / total
        alloc = allocate(scale, floor_min)
        main, total = build(alloc)
    for o in _progress(inner, enabled=progress and len(inner) > 1, desc="adaptive main", leave=False, unit="order"):
        samples = reused[o]  # empty in discard mode
        if main[o] is not None:
            r, (a, b, c, d), pair_of = main[o]
            vo = _evaluate(game, r, batch_size, False, "adaptive main")
            samples.add(vo[a] - vo[b] - vo[c] + vo[d], pair_of)
            main[o] = None  # free the rows
        mean, se, hv, count = _pair_statistics(*samples.flat(), P)
        values[o], stderr[o], halves[:, o] = mean, se, hv
        per_pair[o] = count
        n_samples[o] = int(count.min())
    main_evals = total

    # ---- achieved precision
    floor = _SQRT_2_PI * stderr.mean(1)
    signal = values.abs().mean(1)
    ratio = torch.where(floor > 0, floor / signal.clamp_min(1e-300), torch.zeros_like(floor))
    met = [bool(r <= tau) for r in ratio.tolist()]
    missed = [order_list[o] for o in range(O) if not met[o]]
    capped_orders = [order_list[o] for o in inner if float((need[o] * safety * scale).max()) > k_max]
    planned, pilot_k, pilot_A = [0.0] * O, [0] * O, [float(signal[o]) for o in range(O)]
    for o in inner:
        count, _, var = (reused if reuse else pilots)[o].stats()
        pilot_k[o] = int(pilots[o].stats()[0].min())
        A = float(psignal[o].mean())
        pilot_A[o] = A
        sig = var.sqrt() / _c4(count)
        k_est = per_pair[o].double() if reuse else alloc[o].double()
        planned[o] = float(_SQRT_2_PI * (sig / k_est.sqrt()).mean() / A) if A > 0 else float("inf")
    if missed:
        log.warning(
            "adaptive interactions: %d of %d orders miss noise ratio %.3g (orders %s: %s)%s",
            len(missed), O, tau, missed, [round(float(ratio[order_list.index(m)]), 3) for m in missed],
            "; the evaluation budget was capped" if capped else "",
        )
    metadata = dict(
        target_noise=tau,
        allocation=allocation,
        pilot_mode=pilot,
        folds=K,
        noise_ratio=[float(r) for r in ratio],
        target_met=met,
        missed_orders=missed,
        planned_noise_ratio=planned,
        contexts_per_order=[float(per_pair[o].double().mean()) for o in range(O)],
        pilot_contexts_per_order=pilot_k,
        pilot_mean_abs_debiased=pilot_A,
        capped_orders=capped_orders,
        endpoint_evaluations=int(endpoint_evals),
        pilot_evaluations=int(pilot_evals),
        reused_pilot_contexts_per_order=[int(pilot_count[o].min()) if o in inner else 0 for o in range(O)],
        reused_pilot_evaluations=int(reused_evals),
        main_evaluations=int(main_evals),
        pilot_rounds=rounds,
        max_evaluations=budget,
        budget_capped=bool(capped),
        budget_scale=float(scale),
        settings=dict(
            pilot_contexts=k_pilot, min_contexts=k_min, max_contexts=k_max, safety=float(safety),
            pilot_fraction=float(pilot_fraction), max_pilot_ratio=float(max_pilot_ratio),
            pilot_rounds=int(pilot_rounds),
        ),
    )
    ragged = bool((per_pair != per_pair[:, :1]).any())
    return InteractionResult(
        orders=orders,
        pairs=pairs,
        values=values,
        stderr=stderr,
        half_values=halves,
        n_samples=n_samples,
        n_evaluations=int(endpoint_evals + pilot_evals + reused_evals + main_evals),
        n_players=n,
        method="adaptive",
        seed=int(seed),
        metadata=metadata,
        samples_per_pair=per_pair if ragged else None,
    )
