"""I^(m)(i,j) to a stated precision in the fewest game evaluations: :func:`estimate_adaptive`.

The target is a relative noise level per order: ``noise_floor / mean |I^(m)| <= target_noise``
at every evaluated inner order, where the noise floor is ``E_(i,j) sqrt(2/pi) stderr`` (the mean
|I| that pure estimator noise would give, :meth:`InteractionResult.noise_floor`).

Method
------
1. **Planning pilot** (round 0): ``pilot_contexts`` shared contexts per pair at every inner
   order (part of the estimate in weighted mode, below; planning only otherwise).  It gives each
   order's signal, the noise-corrected mean |I| of
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
2. **Pilot rounds** (``pilot="weighted"``, the default, and ``"discard"``): an order whose pilot
   noise ratio is above ``max_pilot_ratio`` while its pilot holds fewer than ``pilot_fraction`` of
   the samples it needs gets more pilot, up to that fraction, at most ``pilot_rounds`` times,
   re-planning after each.  ``"weighted"``: round r of e_r samples per pair enters pair p's
   estimate with the weight ``w_r = e_r / (weight_margin * planned need)``, fixed from the data
   before the round (all rounds of a pair together at most 0.6); ``"discard"``: the rounds plan
   only.  Round 0 is part of the estimate too in weighted mode: at order o its weight is
   ``pilot_contexts / (weight_margin x safety x the larger need of o's neighbouring inner
   orders)``, each neighbour planned from its own round 0, shaped over the pairs by their relative
   sigma at the other orders, at most 0.5, so a function of the *other* orders' values only.
   Under a cap (weighted mode) the planned need here is the share of the plan the budget affords,
   and round 0's weight comes from the budget (below).
3. **Cross-fitted pilot** (``pilot="reuse"`` only, part of the estimate): ``pilot_fraction`` of
   each order's need (planned from the raw mean |I|, which is above the signal in expectation, so
   the pilot stays below the need; at least ``min_contexts``) per pair, with the pairs in
   K = min(4, P) folds (pair p in fold p mod K) that draw separate contexts, shared within the
   fold.  The final plan for the pairs of fold f comes from the planning pilot and the other folds'
   cross-fitted pilot only.
4. **Plan margins** (weighted and discard modes without the top-up: ``top_up=False`` or a cap):
   each order's planning data are resampled (``_BOOTSTRAP`` times, each pair's samples with
   replacement) and re-planned, which gives the sd of log(planned need)
   (``metadata["plan_log_sd"]``; it tracks the actual planning error over seeds,
   tests/test_adaptive.py).  The cheapest orders, cheapest first, get their plan times
   exp(2 sd) (at most ``_MAX_MARGIN``) while the extra evaluations stay within ``margin_budget``
   (10 %) of the plan (``metadata["plan_margin"]``).  Why: the result is judged at its worst
   order, and a cheap order is planned from a pilot about as large as its need, so its plan is as
   uncertain as an expensive order's (sd 0.33-0.46 from 8 samples on the shipped Fashion-MNIST
   MogaNet) while a margin there costs almost nothing.  The margins are fixed before the main
   stage's samples, so nothing below changes.
5. **Main stage**: fresh contexts, shared by all pairs of an order (the shared estimator of
   :mod:`.estimators`, which draws exactly the requested number of samples per pair).  With
   weighted rounds (total weight W_p, sum of w_r^2 / e_r U_p) it has the weight R_p = 1 - W_p and
   N_p = R_p^2 / (1 / k_p - U_p) samples, which gives the variance of k_p unweighted samples
   (``metadata["effective_samples"]``).
6. **Top-up** (``top_up=True``, the default in weighted and discard modes without a cap): the
   main stage is planned to the bare need (``safety`` 1.0 by default, no plan margins) and drawn
   as two independent halves A and B of fresh shared contexts (ceil and floor of half of each
   pair's count).  From half B's samples alone (with the rounds before the main stage) the scale c_B >= 1
   on the main stage's counts that brings the order to ``target / sqrt(safety)`` is solved for
   (per pair the variance of the rounds plus R^2 sigma_p^2 / (c N_p), the signal from
   :func:`planning_signal` of half B's values); half A is topped up to c_B times its count with
   fresh contexts, and half B to c_A times its own, both scales computed before either half
   grows.  Each half's samples are pooled; the main stage's value is the mean of the two halves,
   its stderr^2 a quarter of the sum of theirs, its split halves the two halves.  Why: the
   result is judged at its worst order, and a plan from a pilot of 8-15 samples per pair misses
   single orders by 30-50 % in noise ratio; the top-up sees the order's own main-stage data.

Unbiasedness
------------
* ``pilot="weighted"``: let F_r be everything drawn up to round r.  Round r's count e_r and
  weights w_r are functions of F_(r-1); its contexts are drawn afterwards, so given F_(r-1) its
  samples of pair p are i.i.d. draws of Delta(i,j,S), S uniform over the subsets of size m of N
  minus {i,j} (the shared plan's property), and their mean X_r has E[X_r | F_(r-1)] = I.  The main
  stage's N_p and weight R_p = 1 - sum_r w_r are functions of everything before it.  The estimate
  ``sum_r w_r X_r + R X_main`` therefore has expectation I (each term's weight is known before its
  samples, the weights sum to 1): unbiased, whatever the data did to the plan.  Its errors
  w_r (X_r - I) are martingale differences, so its variance is E[sum_r w_r^2 sigma^2 / e_r]
  (main stage included), which the reported ``stderr^2 = sum_r w_r^2 s_r^2 / e_r`` matches in
  expectation exactly (each s_r^2 is unbiased given the past); the halves (the first half of every
  stage's samples against the rest, with the same weights) have E[h_0 h_1] = I^2 by the same
  argument, so ``half_values[0] * half_values[1]`` stays unbiased for I^2.  Round 0's weight at
  order o is a function of the other orders' round-0 values (without a cap) or of the budget and
  the pilot's context draws (under a cap), never of order o's own values; the orders' contexts
  are drawn separately, so round 0 of order o is i.i.d. given that weight and the same argument
  holds with F_(-1) = the other orders' round 0.  (One constant for every order would be far from
  its share where the needs differ 10-20x between orders; the neighbours' need is conservative,
  since a weight below the fair share k_pilot / need costs little, any weight up to twice it beats
  discarding the round, and one far above it could leave the main stage unable to reach the
  target.)  A budget cap is allowed (the scale is a function of the data before the main stage).
* Top-up: half A's extra count is a function of the data before the main stage and of half B's
  contexts and values only (and the reverse); given those, half A's main samples are i.i.d.
  draws of Delta(i,j,S) (drawn separately from B's) and its top-up samples are drawn afterwards,
  so half A's pooled mean is unbiased given its count, and so is B's; the estimate
  ``sum_r w_r X_r + R (X_A + X_B) / 2`` has expectation I.  Each half's sample variance is
  honest for its pooled mean; the two halves are not exactly independent (each one's count
  depends on the other's values), a second-order effect the z-score tests do not see.  Measured
  over seeds at n = 196 (the closed form, ``experiments/adaptive_bias_over_seeds.py``): discard
  mode with the top-up over 48 seeds, every order within |t| < 2.5; weighted mode with the top-up
  (the default) over seeds 48-2999, every order within |t| <= 1.83, the mean error at most 0.01
  of a run's stderr (2-se bound 0.018), squared errors / stderr^2 = 1.000.  (Seeds 0-47 had one
  order, m = 135, at t = 4.0; it is at t = -0.95 over the 2,952 seeds after them.)
* ``pilot="discard"``: no round enters the estimate; the estimates come only from the main stage,
  whose allocation is a function of the pilot, so the same statements hold given the pilot.
* ``pilot="reuse"`` (no budget cap, two or more pairs): pair p's samples at order m are its
  cross-fitted pilot and its main samples; how many it gets, N(m,p), is a function of the planning
  pilot (drawn separately, never in the estimate) and of the other folds' cross-fitted pilot, all
  drawn independently of pair p's cross-fitted pilot.  So N(m,p) is independent of those samples,
  and the main samples are drawn afterwards, i.i.d. given N(m,p): their mean is unbiased, their
  sample variance honest, and a split fixed in advance gives independent halves.  A budget cap
  would depend on every pilot sample, so this mode has none.
* Under a cap, if the main stage's plan, once built, has more rows than estimated, it is shrunk
  and rebuilt; that shrink looks at the main stage's own context draws (never at a game value),
  a dependence we do not remove; it happens only when the cap binds.

What would be biased, and is not done: pooling the pilot rounds with equal weight per sample (the
rounds' values decided how many samples follow them, so their share of the pooled mean would
depend on their own values), and a sequential rule that tops an order up until the target is met
and then pools everything (the top-up above sizes each half from the other half only).  Tests:
tests/test_adaptive.py (mean over seeds against the closed form at n = 196 for every mode, with
the weighted rounds checked to carry weight and the top-up checked to run, and at n = 8,
z-score calibration, split halves).

Exact end orders (0 and n-2) have one context each and cost 1 + U + P evaluations (U distinct
players, P pairs).  Every evaluation, both pilots included, is counted in ``n_evaluations``.

Reported in ``result.metadata``: ``target_noise``, ``allocation``, ``pilot_mode``, ``folds``,
``pilot_weight`` (per order, the weighted rounds' mean weight), ``effective_samples`` (per order
and pair), ``plan_margin`` and ``plan_log_sd`` (per order, 1 and 0 at the exact orders),
``noise_ratio`` and ``target_met`` per order (achieved, from the final estimates; 0 / True at the
exact orders), ``missed_orders``, ``planned_noise_ratio``, ``contexts_per_order`` (samples per pair
in the estimate, mean over pairs), ``pilot_contexts_per_order`` (planning pilot),
``reused_pilot_contexts_per_order``, ``pilot_mean_abs_debiased``, ``capped_orders`` (orders that
hit ``max_contexts``), ``endpoint_evaluations``, ``pilot_evaluations`` (planning only),
``reused_pilot_evaluations``, ``main_evaluations``, ``top_up_evaluations`` and
``top_up_contexts_per_order`` (mean extra samples per pair), ``pilot_rounds``, ``max_evaluations``,
``budget_capped``, ``budget_scale`` and ``settings``.  ``samples_per_pair`` holds the samples of
every pair and order where they differ between pairs.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
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
PILOT_MODES = ("weighted", "discard", "reuse")
_SQRT_2_PI = math.sqrt(2 / math.pi)
#: folds of the cross-fitted pilot
_FOLDS = 4
#: weighted mode: the largest total weight of the pilot rounds in a pair's estimate
_MAX_ROUND_WEIGHT = 0.6
#: weighted mode under a cap: the largest weight of round 0 (its share of the even split over weight_margin)
_FIRST_ROUND_WEIGHT = 0.5
#: weighted mode: the default pilot_fraction (its rounds are part of the estimate, so they may be larger)
_WEIGHTED_PILOT_FRACTION = 0.35
#: plan margins: bootstrap resamples of the planning data, the margin exp(z sd) and its largest value
_BOOTSTRAP = 48
_BOOTSTRAP_FIT = dict(grid_size=30, iterations=40)
_MARGIN_Z = 2.0
_MAX_MARGIN = 3.0


def _c4(k: torch.Tensor) -> torch.Tensor:
    """E[s] / sigma for the sample std of k normal samples (corrects the pilot's mean std)."""
    k = torch.as_tensor(k).double().clamp_min(2)
    return torch.exp(0.5 * math.log(2.0) - 0.5 * (k - 1).log() + torch.lgamma(k / 2) - torch.lgamma((k - 1) / 2))


def _evaluate_blocks(game: Game, blocks: List[torch.Tensor], batch_size: Optional[int], desc: str):
    """Game values of several blocks of rows in one call (full batches across the blocks), split
    back into one tensor per block."""
    if not blocks:
        return []
    return list(_evaluate(game, torch.cat(blocks), batch_size, False, desc).split([len(b) for b in blocks]))


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


def planning_signal(mean: torch.Tensor, se: torch.Tensor, **fit) -> torch.Tensor:
    """Per order [O], the signal a plan uses from per-pair estimates and stderrs [O, P]: the
    noise-corrected mean |I| (``deconvolved_mean_abs``, ``fit``: its grid and iterations), bounded
    below by mean(|x_p| - sqrt(2/pi) se_p), which is below mean |I| in expectation."""
    lower = (mean.abs() - _SQRT_2_PI * se).mean(1)
    return torch.maximum(deconvolved_mean_abs(mean, se, **fit), lower)


def plan_log_sd(data, n_pairs: int, tau: float, cap: float, gen: torch.Generator,
                resamples: int = _BOOTSTRAP) -> torch.Tensor:
    """Per order [O], the sd of log(planned need) over bootstrap resamples of its planning data.

    ``data[o] = (delta, pair_of)``: an order's second differences, sorted by pair, two or more per
    pair.  Each resample draws every pair's samples with replacement and plans the order's need as
    the estimator does, (sqrt(2/pi) mean_p sigma_p / (tau A))^2 with A from
    :func:`planning_signal` and c4-corrected sigmas, clamped to [1, ``cap``].  The deconvolution
    is fitted coarser than the plan's (``_BOOTSTRAP_FIT``: on synthetic pilots of 11 orders x 24
    pairs x 8 samples the sd came out within 7 % of the full fit's, 50x faster)."""
    B, P = int(resamples), int(n_pairs)
    means, sds, counts = [], [], []
    for d, pair_of in data:
        count = torch.bincount(pair_of, minlength=P)
        start = torch.cumsum(count, 0) - count
        u = torch.rand(B, len(d), generator=gen, dtype=torch.float64)
        x = d[start[pair_of] + (u * count[pair_of]).long().clamp(max=count[pair_of] - 1)]  # [B, samples]
        mean = torch.zeros(B, P, dtype=torch.float64).index_add_(1, pair_of, x) / count
        ss = torch.zeros(B, P, dtype=torch.float64).index_add_(1, pair_of, (x - mean[:, pair_of]) ** 2)
        means.append(mean)
        sds.append((ss / (count - 1).clamp_min(1)).sqrt())
        counts.append(count.expand(B, P))
    mean, sd, count = (torch.cat(t) for t in (means, sds, counts))  # [O * B, P]
    A = planning_signal(mean, sd / count.sqrt(), **_BOOTSTRAP_FIT)
    sigma = (sd / _c4(count)).mean(1)
    need = torch.where(A > 0, (_SQRT_2_PI * sigma / (tau * A.clamp_min(1e-300))) ** 2, torch.full_like(A, cap))
    return need.clamp(1.0, cap).log().view(len(data), B).std(1)


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


def _planned_costs(run) -> Dict[int, float]:
    """Per inner order of an :class:`_AdaptiveRun`, the evaluations of its current plan (mean
    need x safety, at most ``max_contexts``, at the pilot's cost per sample)."""
    p = run.p
    return {o: run.cost_per_k[o] * min(float(run.need[o].mean()) * p.safety, p.k_max) for o in run.inner}


@dataclass(frozen=True)
class _Plan:
    """The validated knobs of one :func:`estimate_adaptive` call."""

    tau: float
    k_pilot: int
    k_min: int
    k_max: int
    budget: Optional[int]
    allocation: str
    pilot: str
    safety: float
    pilot_fraction: float
    max_pilot_ratio: float
    pilot_rounds: int
    weight_margin: float = 1.25
    margin_budget: float = 0.1
    top_up: bool = True

    @property
    def reuse(self) -> bool:
        return self.pilot == "reuse"

    @property
    def tops_up(self) -> bool:
        """Whether the main stage is drawn in two halves, each topped up from the other's data."""
        return self.top_up and not self.reuse and self.budget is None

    def settings(self) -> dict:
        out = dict(
            pilot_contexts=self.k_pilot, min_contexts=self.k_min, max_contexts=self.k_max,
            safety=float(self.safety), pilot_fraction=float(self.pilot_fraction),
            max_pilot_ratio=float(self.max_pilot_ratio), pilot_rounds=int(self.pilot_rounds),
        )
        if not self.reuse:
            out["margin_budget"] = float(self.margin_budget)
        if self.pilot == "weighted":
            out["weight_margin"] = float(self.weight_margin)
        if not self.reuse:
            out["top_up"] = bool(self.tops_up)
        return out


def _validated(target_noise, pilot_contexts, min_contexts, max_contexts, max_evaluations, allocation, pilot,
               safety, pilot_fraction, max_pilot_ratio, pilot_rounds, n_pairs: int,
               weight_margin: float = 1.25, margin_budget: float = 0.1, top_up: bool = True) -> _Plan:
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
    budget = None if max_evaluations is None else int(max_evaluations)
    if safety is None:  # the top-up corrects a short plan; without it the plan carries the margin
        safety = 1.0 if (top_up and pilot != "reuse" and budget is None) else 1.1
    if safety < 1:
        raise ValueError("safety must be >= 1")
    if pilot == "reuse" and budget is not None:
        raise ValueError("a budget cap needs pilot='discard' (see the module docstring)")
    if pilot == "reuse" and n_pairs < 2:
        raise ValueError("pilot='reuse' needs at least two pairs (it cross-fits over them)")
    if pilot_fraction is None:
        pilot_fraction = _WEIGHTED_PILOT_FRACTION if pilot == "weighted" else 0.2
    if not 0 < pilot_fraction <= 1:
        raise ValueError("pilot_fraction must be in (0, 1]")
    if not weight_margin >= 1:
        raise ValueError("weight_margin must be >= 1")
    if not 0 <= margin_budget <= 1:
        raise ValueError("margin_budget must be in [0, 1]")
    return _Plan(tau, k_pilot, k_min, k_max, budget, allocation, pilot, float(safety), pilot_fraction,
                 max_pilot_ratio, pilot_rounds, float(weight_margin), float(margin_budget), bool(top_up))


def estimate_adaptive(
    game: Game, n_players: int, pairs, orders, *,
    target_noise: float = 0.1, pilot_contexts: int = 8, min_contexts: int = 8, max_contexts: int = 1024,
    max_evaluations: Optional[int] = None, allocation: str = "orders+pairs", seed: int = 0,
    batch_size: Optional[int] = None, progress: bool = False, pilot: str = "weighted",
    safety: Optional[float] = None, pilot_fraction: Optional[float] = None, max_pilot_ratio: float = 0.35,
    pilot_rounds: int = 2, weight_margin: float = 1.25, margin_budget: float = 0.1, top_up: bool = True,
) -> InteractionResult:
    """I^(m)(i,j) with noise floor / mean |I^(m)| <= ``target_noise`` at every order, at least cost
    (the method, and why the estimates are unbiased: the module docstring).

    Args:
        game, n_players, pairs, orders: as for :func:`estimate_interactions`.
        target_noise: the relative noise level to reach at every inner order.
        pilot_contexts: planning-pilot contexts per pair at every inner order (>= 2).
        min_contexts, max_contexts: bounds on the samples per pair and order in the estimate.
        max_evaluations: cap on the game evaluations of this call, pilot included; never
            exceeded (not with ``pilot="reuse"``); too small for the pilot and ``min_contexts``:
            an error says how many are needed; too small for the target: one factor scales every
            order down (``metadata["budget_capped"]``, ``"budget_scale"``).
        allocation: ``"orders"`` (one count per order) or ``"orders+pairs"`` (``k_p ~ sigma_p^(2/3)``).
        seed: seeds every generator; the same seed and game give bit-identical results.
        batch_size, progress: as for :func:`estimate_interactions`.
        pilot: ``"weighted"`` (default: more pilot rounds where the first is too weak to plan
            from, part of the estimate with weights fixed before each round), ``"discard"`` (the
            same rounds plan only) or ``"reuse"`` (a cross-fitted pilot that is part of the
            estimate; no budget cap, two or more pairs).
        safety: the planned samples are ``safety`` times the estimated need (main stage and
            top-up).  None: 1.0 with the top-up (it corrects short plans), else 1.1.
        pilot_fraction: reuse mode: the cross-fitted pilot's share of each order's planned need;
            weighted and discard modes, with ``max_pilot_ratio`` and ``pilot_rounds``: an order
            whose pilot noise ratio exceeds ``max_pilot_ratio`` while its pilot holds fewer than
            ``pilot_fraction`` of the samples it needs gets its pilot extended to that fraction,
            at most ``pilot_rounds`` times (under a cap, the extensions use at most
            ``pilot_fraction`` of it).  None: 0.35 in weighted mode, 0.2 otherwise.
        weight_margin: weighted mode: a round's weight is its share of the planned need over this (>= 1).
        margin_budget: weighted and discard modes without the top-up: the share of the planned
            evaluations for plan margins of the cheapest orders (0: none; module docstring).
        top_up: (default) weighted and discard modes without a cap: the main stage in two halves,
            each topped up to what the *other* half's data say the target needs (module
            docstring); False, a cap or ``pilot="reuse"``: one main stage planned from the pilot.

    Returns an :class:`InteractionResult` with ``method="adaptive"`` and the achieved precision in
    ``metadata``; orders that miss the target are logged as warnings.
    """
    n = int(n_players)
    pairs, orders = _check_pairs(pairs, n), _check_orders(orders, n)
    plan = _validated(target_noise, pilot_contexts, min_contexts, max_contexts, max_evaluations, allocation,
                      pilot, safety, pilot_fraction, max_pilot_ratio, pilot_rounds, len(pairs), weight_margin,
                      margin_budget, top_up)
    run = _AdaptiveRun(game, n, pairs, orders, plan, int(seed), batch_size, progress)
    run.first_pilot()
    run.plan()
    if plan.reuse:
        run.cross_fitted_pilot()
    else:
        run.extend_pilot()
    run.main_stage()
    return run.result()


class _AdaptiveRun:
    """The state of one :func:`estimate_adaptive` call, stage by stage (see the module docstring)."""

    def __init__(self, game, n: int, pairs: torch.Tensor, orders: torch.Tensor, plan: _Plan, seed: int,
                 batch_size, progress: bool):
        self.game, self.n, self.pairs, self.orders, self.p = game, n, pairs, orders, plan
        self.seed, self.batch_size, self.progress = seed, batch_size, progress
        self.O, self.P = len(orders), len(pairs)
        self.order_list = orders.tolist()
        self.inner = [o for o, m in enumerate(self.order_list) if 0 < m < n - 2]
        self.K = min(_FOLDS, self.P) if plan.reuse else 1
        self.fold_of = torch.arange(self.P) % self.K
        self.gen_pilot = torch.Generator().manual_seed(_derived_seed(seed, 0))
        O, P = self.O, self.P
        self.values = torch.zeros(O, P, dtype=torch.float64)
        self.stderr = torch.zeros(O, P, dtype=torch.float64)
        self.halves = torch.zeros(2, O, P, dtype=torch.float64)
        self.n_samples = torch.ones(O, dtype=torch.long)
        self.per_pair = torch.ones(O, P, dtype=torch.long)
        self.pilots = {o: _Samples(P) for o in self.inner}
        # weighted mode: the pilot rounds in the estimate, their total weight and sum of w^2 / N per pair
        self.round_samples = {o: [] for o in self.inner}
        self.round_weight = {o: torch.zeros(P, dtype=torch.float64) for o in self.inner}
        self.round_units = {o: torch.zeros(P, dtype=torch.float64) for o in self.inner}
        self.effective = {}  # samples per pair that give the same variance unweighted
        self.reused = {o: _Samples(P) for o in self.inner}
        self.endpoint_evals = self.pilot_evals = self.reused_evals = self.main_evals = self.top_up_evals = 0
        self.top_up_count = {}
        self.rounds = 0
        self.scale, self.capped = 1.0, False
        self.margin = {o: 1.0 for o in self.inner}  # plan margins of the cheapest orders
        self.plan_sd = {o: 0.0 for o in self.inner}  # bootstrap sd of log(planned need)

    def _evaluate(self, rows: torch.Tensor, progress: bool) -> torch.Tensor:
        return _evaluate(self.game, rows, self.batch_size, progress, "adaptive pilot")

    # ------------------------------------------------------------------------------ pilots
    def _pilot_rows(self, needs: Dict[int, int], groups):
        """Rows and sample indices of ``needs[o]`` more contexts per pair, drawn separately for each
        group of pairs (shared within a group); returns (blocks, plans, rows in all)."""
        blocks, plans, off = [], [], 0
        for o, k in needs.items():
            for members in groups:
                need = torch.full((len(members),), k, dtype=torch.long)
                rows, idx, local = _shared_samples(self.n, self.pairs[members], self.order_list[o], need,
                                                   self.gen_pilot)
                plans.append((o, tuple(t + off for t in idx), members[local], len(rows)))
                blocks.append(rows)
                off += len(rows)
        return blocks, plans, off

    @staticmethod
    def _add_samples(store, plans, v):
        for o, (a, b, c, d), pair_of, _ in plans:
            store[o].add(v[a] - v[b] - v[c] + v[d], pair_of)

    def _endpoint_rows(self):
        """Rows of the exact end orders (one context each) and their sample indices."""
        end_blocks, end_plans, offset = [], {}, 0
        for o, m in enumerate(self.order_list):
            if o in self.inner:
                continue
            rows, idx = _plan_shared(self.n, self.pairs, m, 1, self.gen_pilot)
            end_plans[o] = tuple(t + offset for t in idx)
            end_blocks.append(rows)
            offset += len(rows)
        return end_blocks, end_plans, offset

    def _store_endpoints(self, end_plans, v) -> None:
        for o, (a, b, c, d) in end_plans.items():
            self.values[o] = (v[a] - v[b] - v[c] + v[d])[:, 0]
            self.halves[:, o] = self.values[o]

    def first_pilot(self) -> None:
        """The exact end orders and the first planning-pilot round, evaluated together."""
        p, n = self.p, self.n
        end_blocks, end_plans, offset = self._endpoint_rows()
        self.endpoint_evals = offset
        blocks, plans, pilot_rows = self._pilot_rows({o: p.k_pilot for o in self.inner}, [torch.arange(self.P)])
        # evaluations per (sample per pair) at each order, from the pilot's plan
        self.cost_per_k = {o: 0.0 for o in self.inner}
        for o, _, _, r in plans:
            self.cost_per_k[o] += r / p.k_pilot
        # the main stage's minimum (discard mode)
        self.min_main = sum(self.cost_per_k[o] * p.k_min for o in self.inner)
        if p.budget is not None and offset + pilot_rows + self.min_main > p.budget:
            need = int(math.ceil(offset + pilot_rows + 1.05 * self.min_main))
            raise ValueError(
                f"max_evaluations={p.budget} is too small: the exact end orders ({offset}), the pilot "
                f"({pilot_rows}) and min_contexts={p.k_min} at every inner order (about {int(self.min_main)}) "
                f"need about {need}; raise it or lower pilot_contexts / min_contexts"
            )
        all_rows = torch.cat(end_blocks + blocks) if (end_blocks or blocks) else torch.zeros(0, n, dtype=torch.bool)
        v = self._evaluate(all_rows, self.progress)
        self._store_endpoints(end_plans, v)
        self._add_samples(self.pilots, plans, v[offset:])
        weights = self._first_round_weights()  # no game value of the order it weights
        if weights:
            self._keep_round({o: p.k_pilot for o in self.inner}, weights, plans, v[offset:])
            self.reused_evals = pilot_rows
        else:
            self.pilot_evals = pilot_rows

    def _first_round_weights(self) -> Dict[int, torch.Tensor]:
        """Weighted mode: round 0's weight in the estimate.  Under a cap the same at every order and
        fixed from the budget alone: its share of the samples per pair that the budget affords
        every order evenly, over ``weight_margin``, at most ``_FIRST_ROUND_WEIGHT``.  A capped run
        is small, so its first round is a large part of it (a margin of 2 instead of 1.25 was
        measured worse on the demo's curves).  Without a cap: :meth:`_cross_order_weights`."""
        p = self.p
        if p.pilot != "weighted" or not self.inner:
            return {}
        if p.budget is None:
            return self._cross_order_weights()
        even = (p.budget - self.endpoint_evals) / sum(self.cost_per_k.values())
        w = min(p.k_pilot / (p.weight_margin * max(even, p.k_pilot)), _FIRST_ROUND_WEIGHT)
        return {o: torch.full((self.P,), w, dtype=torch.float64) for o in self.inner}

    def _cross_order_weights(self) -> Dict[int, torch.Tensor]:
        """Uncapped weighted mode: round 0's weight at order o from the round-0 values of the
        *other* orders only (drawn from their own contexts, so independent of order o's samples):
        k_pilot over ``weight_margin`` x ``safety`` x the larger need of its neighbouring inner
        orders (each planned from its own first round with the plan's signal A, one count for all
        pairs), shaped over the pairs by their relative sigma at the other orders, at most
        ``_FIRST_ROUND_WEIGHT``.  A weight below the fair share k_pilot / need costs little (any
        weight up to twice it beats discarding the round); one far above it could leave the main
        stage unable to reach the target, hence the conservative need."""
        p, inner = self.p, self.inner
        if len(inner) < 2:  # a single inner order: nothing independent to plan its weight from
            return {}
        stats = {o: self.pilots[o].stats() for o in inner}
        order_need, spread = {}, self._log_spread(stats)
        for o in inner:
            count, mean, var = stats[o]
            A = float(planning_signal(mean[None], (var / count).sqrt()[None])[0])
            sigma = float((var.sqrt() / _c4(count)).mean())
            k = (_SQRT_2_PI * sigma / (p.tau * A)) ** 2 if A > 0 else float("inf")
            order_need[o] = min(max(k, float(p.k_pilot)), 4.0 * p.k_max)
        out = {}
        for i, o in enumerate(inner):
            others = [q for q in inner if q != o]
            near = [inner[j] for j in (i - 1, i + 1) if 0 <= j < len(inner)]
            shape = torch.ones(self.P, dtype=torch.float64)
            if p.allocation == "orders+pairs":
                rel = torch.stack([spread[q] for q in others]).mean(0).exp() ** (2.0 / 3.0)
                shape = rel / rel.mean()
            need = max(order_need[q] for q in near) * p.safety * shape
            w = p.k_pilot / (p.weight_margin * need.clamp_min(float(p.k_pilot)))
            out[o] = w.clamp(max=_FIRST_ROUND_WEIGHT)
        return out

    def extend_pilot(self) -> None:
        """More pilot where it is too weak to plan from (weighted mode: rounds in the estimate)."""
        p = self.p
        budget, endpoint_evals = p.budget, self.endpoint_evals
        spare = 0 if budget is None else max(budget - endpoint_evals - self._spent(), 0)
        pilot_cap = None if budget is None else self._spent() + p.pilot_fraction * spare
        while self.rounds < int(p.pilot_rounds):
            ext, share = {}, self._affordable_share()
            for o in self.inner:
                have = int(self.pilots[o].stats()[0].min())
                want = int(math.ceil(p.pilot_fraction * min(float(self.need[o].mean()) * share, p.k_max)))
                if self.pratio[o] > p.max_pilot_ratio and want > have:
                    # a weighted round needs two samples per pair for its stderr
                    ext[o] = max(want - have, 2) if p.pilot == "weighted" else want - have
            if budget is not None and ext:
                est = sum(self.cost_per_k[o] * e for o, e in ext.items())
                room = min(pilot_cap - self._spent(), budget - endpoint_evals - self._spent() - 1.2 * self.min_main)
                if est > room:
                    scale = max(room, 0.0) / est
                    ext = {o: int(e * scale) for o, e in ext.items()}
                    ext = {o: e for o, e in ext.items() if e >= 2}
            if not ext:
                break
            blocks, plans, rows_n = self._pilot_rows(ext, [torch.arange(self.P)])
            if budget is not None and endpoint_evals + self._spent() + rows_n + self.min_main > budget:
                break  # the plan came out larger than estimated: keep the budget for the main stage
            weights = self._round_weights(ext, share) if p.pilot == "weighted" else None  # before the values
            v = self._evaluate(torch.cat(blocks), self.progress)
            self._add_samples(self.pilots, plans, v)
            if weights is not None:
                self._keep_round(ext, weights, plans, v)
                self.reused_evals += rows_n
            else:
                self.pilot_evals += rows_n
            self.rounds += 1
            self.plan()

    def _spent(self) -> int:
        """Pilot evaluations so far, planning-only and weighted rounds together."""
        return self.pilot_evals + self.reused_evals

    def _affordable_share(self) -> float:
        """Weighted mode under a cap: the share of the current plan the budget affords (at most 1),
        so that the rounds and their weights follow the plan the main stage can pay for."""
        p = self.p
        if p.pilot != "weighted" or p.budget is None:
            return 1.0
        cost = sum(_planned_costs(self).values())
        available = p.budget - self.endpoint_evals - self.pilot_evals
        return min(1.0, max(available, 0) / cost) if cost > 0 else 1.0

    def _round_weights(self, ext: Dict[int, int], share: float = 1.0) -> Dict[int, torch.Tensor]:
        """Weighted mode: the weight of a round of ``ext[o]`` samples per pair in the estimate, fixed
        from the data before it: its share of the planned need (times the ``share`` of it a cap
        affords), over ``weight_margin`` (a smaller weight costs little when the need was
        overestimated and keeps the target reachable when it was underestimated), with at most
        ``_MAX_ROUND_WEIGHT`` for all rounds of a pair together."""
        out = {}
        for o, e in ext.items():
            planned = (self.need[o] * self.p.safety * share).clamp(min=float(e), max=float(self.p.k_max))
            w = e / (self.p.weight_margin * planned)
            out[o] = torch.minimum(w, (_MAX_ROUND_WEIGHT - self.round_weight[o]).clamp_min(0))
        return out

    def _keep_round(self, ext, weights, plans, v) -> None:
        for o, w in weights.items():
            store = _Samples(self.P)
            self._add_samples({o: store}, [pl for pl in plans if pl[0] == o], v)
            self.round_samples[o].append((store, w))
            self.round_weight[o] = self.round_weight[o] + w
            self.round_units[o] = self.round_units[o] + w**2 / ext[o]

    def round_count(self, o: int) -> int:
        """Samples per pair of the weighted pilot rounds at order o."""
        return sum(int(st.stats()[0].min()) for st, _ in self.round_samples[o])

    def cross_fitted_pilot(self) -> None:
        """Reuse mode: a cross-fitted pilot, part of the estimate, sized from the raw mean |I| of the
        planning pilot (above the signal in expectation, so the pilot stays below the need); the
        main stage of fold f is then planned from the planning pilot and the other folds."""
        p = self.p
        if not self.inner:
            return
        scout_need = {o: float(v.mean()) for o, v in self._needs(signal_rule="raw")[0].items()}
        sizes = {o: int(min(max(math.ceil(p.pilot_fraction * scout_need[o]), p.k_min), p.k_max)) for o in self.inner}
        self.gen_pilot = torch.Generator().manual_seed(_derived_seed(self.seed, 2))
        folds = [(self.fold_of == f).nonzero().flatten() for f in range(self.K)]
        blocks, plans, self.reused_evals = self._pilot_rows(sizes, folds)
        self._add_samples(self.reused, plans, self._evaluate(torch.cat(blocks), self.progress))
        self.plan(extra=self.reused)

    # ------------------------------------------------------------------------------ planning
    def _log_spread(self, stats):
        """Per order and pair: log pilot std minus its mean over the pairs of that order."""
        out = {}
        for o in self.inner:
            count, _, var = stats[o]
            s = var.sqrt()
            s = s.clamp_min(1e-3 * float(s.mean()) + 1e-300)
            ls = s.log()
            out[o] = ls - ls.mean()
        return out

    def _combined(self, o, extra, keep):
        """Per pair (count, mean, var) at order o of the planning pilot plus, for the pairs in
        ``keep``, the samples of ``extra``."""
        n1, m1, v1 = self.pilots[o].stats()
        if extra is None:
            return n1, m1, v1
        n2, m2, v2 = extra[o].stats()
        n2 = torch.where(keep, n2, torch.zeros_like(n2))
        n = n1 + n2
        m = (n1 * m1 + n2 * m2) / n.clamp_min(1)
        ss = (n1 - 1).clamp_min(0) * v1 + (n2 - 1).clamp_min(0) * v2 + n1 * (m1 - m) ** 2 + n2 * (m2 - m) ** 2
        return n, m, ss / (n - 1).clamp_min(1)

    def plan(self, extra=None) -> None:
        self.need, self.pratio, self.psignal = self._needs(extra)

    def _needs(self, extra=None, signal_rule: str = "debiased"):
        """need[o]: real-valued samples per pair [P] (before safety); ratio[o]: the noise ratio of
        the data planned from; signal[o]: their mean |I| (``"debiased"``: the deconvolution,
        bounded below by the mean of |x_p| - sqrt(2/pi) se_p, which is below mean |I| in
        expectation; ``"raw"``: the raw mean |x|, above it).  ``extra`` (the cross-fitted pilot):
        the numbers for the pairs of fold f come from the planning pilot and the other folds only."""
        inner, P = self.inner, self.P
        folds = self.K if extra is not None else 1
        need = {o: torch.zeros(P, dtype=torch.float64) for o in inner}
        signal = {o: torch.zeros(P, dtype=torch.float64) for o in inner}
        ratio = {}
        if not inner:
            return need, ratio, signal
        for f in range(folds):
            mine = self.fold_of == f if folds > 1 else torch.ones(P, dtype=torch.bool)
            n_f, r_f, s_f = self._needs_from({o: self._combined(o, extra, ~mine) for o in inner}, signal_rule)
            for o in inner:
                need[o][mine] = n_f[o][mine]
                signal[o][mine] = s_f[o]
                if f == 0:
                    ratio[o] = r_f[o]
        return need, ratio, signal

    def _needs_from(self, stats, signal_rule: str = "debiased"):
        """need[o] [P], ratio[o] and signal[o] (see :meth:`_needs`) planned from per-pair
        ``stats[o] = (count, mean, var)``."""
        inner = self.inner
        count = torch.stack([stats[o][0] for o in inner])  # [O_in, P]
        mean = torch.stack([stats[o][1] for o in inner])
        sd = torch.stack([stats[o][2] for o in inner]).sqrt()
        se = sd / count.sqrt()
        if signal_rule == "raw":
            A_all = mean.abs().mean(1)
        else:
            A_all = planning_signal(mean, se)
        rel = None
        if self.p.allocation == "orders+pairs":  # a pair's relative sigma: its mean over the orders
            spread = self._log_spread(stats)
            rel = torch.stack([spread[q] for q in inner]).mean(0).exp()
        need, ratio, signal = {}, {}, {}
        for i, o in enumerate(inner):
            A = float(A_all[i])
            need[o] = self._order_need(A, float((sd[i] / _c4(count[i])).mean()), rel)
            signal[o] = A
            ratio[o] = float(_SQRT_2_PI * se[i].mean()) / A if A > 0 else float("inf")
        return need, ratio, signal

    def _order_need(self, A: float, sigma_bar: float, rel: Optional[torch.Tensor]) -> torch.Tensor:
        """Real-valued samples per pair [P] that bring one order with signal A and mean per-sample
        std sigma_bar to the target (one count per order, or ``rel``-weighted per pair)."""
        k_max = self.p.k_max
        target_floor = self.p.tau * A / _SQRT_2_PI  # required mean_p sigma_p / sqrt(k_p)
        if rel is None:
            k = (sigma_bar / target_floor) ** 2 if target_floor > 0 else float("inf")
            return torch.full((self.P,), min(k, 4.0 * k_max), dtype=torch.float64)
        sig = sigma_bar * rel / float(rel.mean())
        return _pair_needs(sig, target_floor, 1.0, 4.0 * k_max)

    def _plan_spread(self) -> Dict[int, float]:
        """Per inner order, the bootstrap sd of log(planned need) of its planning data (pilot and
        rounds), from a generator of its own (the contexts drawn are unchanged)."""
        gen = torch.Generator().manual_seed(_derived_seed(self.seed, 3))
        spread = plan_log_sd([self.pilots[o].flat() for o in self.inner], self.P, self.p.tau,
                             4.0 * self.p.k_max, gen)
        return {o: float(spread[i]) for i, o in enumerate(self.inner)}

    def _plan_margins(self) -> Dict[int, float]:
        """The cheapest orders' plans times exp(z sd) (at most ``_MAX_MARGIN``), cheapest first,
        while their extra evaluations stay within ``margin_budget`` of the planned main stage: a
        cheap order planned from a pilot as large as its need is as uncertain as an expensive one,
        and the worst order decides the result, so its margin buys much for little."""
        cost = _planned_costs(self)
        room = self.p.margin_budget * sum(cost.values())
        out = {o: 1.0 for o in self.inner}
        for o in sorted(self.inner, key=lambda q: cost[q]):
            mult = min(math.exp(_MARGIN_Z * self.plan_sd[o]), _MAX_MARGIN)
            extra = cost[o] * (mult - 1)
            if extra > room:
                break
            out[o], room = mult, room - extra
        return out

    # ------------------------------------------------------------------------------ main stage
    def _allocate(self, scale: float, floor_min: int) -> Dict[int, torch.Tensor]:
        out, p = {}, self.p
        for o in self.inner:
            k = torch.ceil(self.need[o] * p.safety * self.margin[o] * scale)
            if p.pilot == "weighted" and bool((self.round_weight[o] > 0).any()):
                # effective samples k = 1 / (U + R^2 / N_main) with U = sum w^2 / N of the rounds
                R2, U = (1 - self.round_weight[o]) ** 2, self.round_units[o]
                room = 1 / k.clamp(1, 4.0 * p.k_max) - U
                main = torch.where(room > 1e-12, torch.ceil(R2 / room.clamp_min(1e-12)), torch.full_like(k, p.k_max))
                out[o] = main.clamp(max(self.main_min, floor_min - int(self.pilot_count[o][0])), p.k_max).long()
            elif p.reuse:  # total samples per pair; the cross-fitted pilot's count towards it
                lo = max(floor_min, int(self.pilot_count[o].min()))
                total = k.clamp(lo, max(p.k_max, lo)).long()
                out[o] = (total - self.pilot_count[o]).clamp_min(0)
            else:
                out[o] = k.clamp(max(floor_min, self.main_min), max(p.k_max, self.main_min)).long()
        return out

    @property
    def main_min(self) -> int:
        """The fewest main-stage samples per pair: two per half with the top-up (each half's stderr)."""
        return 4 if self.p.tops_up else 2

    def _build(self, alloc):
        """The main stage's rows per order: one shared draw, or with the top-up two independent
        draws (halves A and B, ceil and floor of half the allocation)."""
        gen_main = torch.Generator().manual_seed(_derived_seed(self.seed, 1))
        out, total = {}, 0
        for o in self.inner:
            if int(alloc[o].max()) == 0:
                out[o] = None
                continue
            parts = [(alloc[o] + 1) // 2, alloc[o] // 2] if self.p.tops_up else [alloc[o]]
            out[o] = [_shared_samples(self.n, self.pairs, self.order_list[o], k, gen_main) for k in parts]
            total += sum(len(part[0]) for part in out[o])
        return out, total

    def _budget_scale(self, allocate, remaining: float, floor_min: int):
        """The one factor on every order's allocation that fits ``allocate``'s plan into
        ``remaining`` evaluations (estimated from the pilot's cost per sample), and whether it binds."""

        def est_cost(s):
            a = allocate(s, floor_min)
            return sum(self.cost_per_k[o] * float(a[o].double().mean()) for o in self.inner)

        if est_cost(1.0) <= remaining:
            return 1.0, False
        lo, hi = 0.0, 1.0
        for _ in range(50):
            mid = 0.5 * (lo + hi)
            if est_cost(mid) <= 0.98 * remaining:
                lo = mid
            else:
                hi = mid
        return lo, True

    def _fit(self, allocate, remaining: Optional[float]):
        """``allocate(scale, floor_min)``'s plan and the main stage's rows drawn for it, within
        ``remaining`` evaluations if that is given; returns (alloc, rows, total, scale, capped)."""
        floor_min, scale, capped = self.p.k_min, 1.0, False
        if remaining is not None:
            scale, capped = self._budget_scale(allocate, remaining, floor_min)
        alloc = allocate(scale, floor_min)
        main, total = self._build(alloc)
        while remaining is not None and total > remaining:
            # the random plan came out larger than estimated: shrink and rebuild (deterministic)
            capped = True
            smaller = allocate(scale * 0.97 * remaining / total, floor_min)
            if all(torch.equal(smaller[o], alloc[o]) for o in self.inner):  # min_contexts binds everywhere
                if floor_min <= 2:
                    raise RuntimeError(f"cannot fit the main stage into max_evaluations={self.p.budget}")
                floor_min -= 1
            else:
                scale *= 0.97 * remaining / total
            alloc = allocate(scale, floor_min)
            main, total = self._build(alloc)
        return alloc, main, total, scale, capped

    def _fitted_plan(self):
        """The main stage's allocation and rows, within the budget if there is one."""
        budget = self.p.budget
        remaining = None if budget is None else budget - self.endpoint_evals - self.pilot_evals - self.reused_evals
        alloc, main, total, self.scale, self.capped = self._fit(self._allocate, remaining)
        return alloc, main, total

    def main_stage(self) -> None:
        """Fresh contexts, shared by all pairs of an order, up to the planned totals."""
        self.pilot_count = {o: self.reused[o].stats()[0] for o in self.inner}
        if self.p.pilot == "weighted":
            self.pilot_count = {o: torch.full((self.P,), self.round_count(o), dtype=torch.long) for o in self.inner}
        if not self.p.reuse and self.inner:
            self.plan_sd = self._plan_spread()
            if self.p.margin_budget > 0 and not self.p.tops_up:  # the top-up replaces the margins
                self.margin = self._plan_margins()
        self.alloc, main, total = self._fitted_plan()
        self.top_up_count = {o: torch.zeros(self.P, dtype=torch.long) for o in self.inner}
        gen_top = torch.Generator().manual_seed(_derived_seed(self.seed, 4))
        enabled = self.progress and len(self.inner) > 1
        for o in _progress(self.inner, enabled=enabled, desc="adaptive main", leave=False, unit="order"):
            parts = [self.reused[o]] if not self.p.tops_up else [_Samples(self.P), _Samples(self.P)]
            drawn = main[o] or []
            values = _evaluate_blocks(self.game, [r for r, _, _ in drawn], self.batch_size, "adaptive main")
            for store, (_, (a, b, c, d), pair_of), vo in zip(parts, drawn, values):
                store.add(vo[a] - vo[b] - vo[c] + vo[d], pair_of)
            main[o] = None  # free the rows
            if self.p.tops_up:
                self.top_up_evals += self._top_up(o, parts, gen_top)
                mean, se, hv, count, units = self._pooled_halves(parts)
            else:
                mean, se, hv, count = _pair_statistics(*parts[0].flat(), self.P)
                units = 1 / count.double()
            R = 1 - self.round_weight[o]
            self.effective[o] = 1 / (self.round_units[o] + R**2 * units)
            if self.round_samples[o]:
                mean, se, hv, count = self._with_rounds(o, mean, se, hv, count)
            self.values[o], self.stderr[o], self.halves[:, o] = mean, se, hv
            self.per_pair[o] = count
            self.n_samples[o] = int(count.min())
        self.main_evals = total

    # ------------------------------------------------------------------------------ the top-up
    def _top_up(self, o: int, halves, gen: torch.Generator) -> int:
        """Tops up each half of order o's main stage to the count the *other* half's data ask for
        (:meth:`_scale_from`); returns the evaluations.  Half A's extra count is a function of the
        data before the main stage and of half B's contexts and values only, and the reverse."""
        planned = [halves[0].stats()[0], halves[1].stats()[0]]
        # both scales from the main samples alone, before either half grows
        scales = [self._scale_from(o, halves[1 - h], planned[0] + planned[1]) for h in (0, 1)]
        drawn = []
        for h, scale in enumerate(scales):
            want = torch.ceil(scale * planned[h].double()).clamp(max=self.p.k_max).long()
            extra = (want - planned[h]).clamp_min(0)
            if int(extra.max()) > 0:
                drawn.append((h, _shared_samples(self.n, self.pairs, self.order_list[o], extra, gen)))
                self.top_up_count[o] += extra
        values = _evaluate_blocks(self.game, [rows for _, (rows, _, _) in drawn], self.batch_size, "adaptive top-up")
        for (h, (_, (a, b, c, d), pair_of)), v in zip(drawn, values):
            halves[h].add(v[a] - v[b] - v[c] + v[d], pair_of)
        return sum(len(rows) for _, (rows, _, _) in drawn)

    def _scale_from(self, o: int, half: "_Samples", main_count: torch.Tensor) -> float:
        """The factor (>= 1) on the main stage's samples that brings order o to the target, as one
        half's data predict it: per pair the variance of the estimate with the rounds before the
        main stage and ``main_count`` main samples of the half's per-sample sigma, its values from
        the half, the signal from :func:`planning_signal` of those (the noise-corrected mean |I|);
        the target is the noise floor of ``safety`` times the need (``target / sqrt(safety)``)."""
        count, mean, var = half.stats()
        R, sigma2 = 1 - self.round_weight[o], var / _c4(count) ** 2
        rounds_var = torch.zeros(self.P, dtype=torch.float64)
        value = R * mean
        for store, w in self.round_samples[o]:
            m_r, se_r, _, _ = _pair_statistics(*store.flat(), self.P)
            rounds_var, value = rounds_var + (w * se_r) ** 2, value + w * m_r
        se_half = (rounds_var + R**2 * sigma2 / count).sqrt()
        A = float(planning_signal(value[None], se_half[None])[0])
        floor_target = self.p.tau * A / (_SQRT_2_PI * math.sqrt(self.p.safety))
        main = main_count.double()

        def floor_at(c: float) -> float:
            return float((rounds_var + R**2 * sigma2 / (c * main)).sqrt().mean())

        hi = max(float(self.p.k_max) / float(main.min()), 1.0)
        if not floor_target > 0 or floor_at(hi) > floor_target:
            return hi
        if floor_at(1.0) <= floor_target:
            return 1.0
        lo = 1.0
        for _ in range(50):
            mid = 0.5 * (lo + hi)
            lo, hi = (mid, hi) if floor_at(mid) > floor_target else (lo, mid)
        return hi

    def _pooled_halves(self, halves):
        """The main stage from its two topped-up halves: each half's samples pooled (mean over
        them), the stage's value the mean of the two halves, its stderr^2 a quarter of the sum of
        theirs, its halves the two halves; with the effective units sum 1 / (4 N_h)."""
        mA, seA, _, cA = _pair_statistics(*halves[0].flat(), self.P)
        mB, seB, _, cB = _pair_statistics(*halves[1].flat(), self.P)
        units = 0.25 * (1 / cA.double() + 1 / cB.double())
        return 0.5 * (mA + mB), 0.5 * (seA**2 + seB**2).sqrt(), torch.stack([mA, mB]), cA + cB, units

    def _with_rounds(self, o, mean, se, hv, count):
        """Weighted mode: the main stage (weight 1 - sum of the rounds' weights) and the weighted
        pilot rounds of order o together: values, stderr (sum of w^2 se^2), halves, counts."""
        R = 1 - self.round_weight[o]
        mean, var, hv = R * mean, (R * se) ** 2, R * hv
        for store, w in self.round_samples[o]:
            m_r, se_r, hv_r, c_r = _pair_statistics(*store.flat(), self.P)
            mean, var, hv, count = mean + w * m_r, var + (w * se_r) ** 2, hv + w * hv_r, count + c_r
        return mean, var.sqrt(), hv, count

    # ------------------------------------------------------------------------------ the result
    def _planned(self):
        """Per order: the noise ratio the plan predicted, the planning pilot's contexts and the
        signal planned from (the achieved signal at the exact orders)."""
        O, reuse = self.O, self.p.reuse
        signal = self.values.abs().mean(1)
        planned, pilot_k, pilot_A = [0.0] * O, [0] * O, [float(signal[o]) for o in range(O)]
        for o in self.inner:
            count, _, var = (self.reused if reuse else self.pilots)[o].stats()
            pilot_k[o] = int(self.pilots[o].stats()[0].min())
            A = float(self.psignal[o].mean())
            pilot_A[o] = A
            sig = var.sqrt() / _c4(count)
            k_est = self.per_pair[o].double() if reuse else self.alloc[o].double()
            if self.round_samples[o]:  # effective samples of the weighted rounds and the main stage
                R = 1 - self.round_weight[o]
                k_est = 1 / (self.round_units[o] + R**2 / self.alloc[o].double())
            planned[o] = float(_SQRT_2_PI * (sig / k_est.sqrt()).mean() / A) if A > 0 else float("inf")
        return planned, pilot_k, pilot_A

    def result(self) -> InteractionResult:
        p, O, order_list = self.p, self.O, self.order_list
        floor = _SQRT_2_PI * self.stderr.mean(1)
        signal = self.values.abs().mean(1)
        ratio = torch.where(floor > 0, floor / signal.clamp_min(1e-300), torch.zeros_like(floor))
        met = [bool(r <= p.tau) for r in ratio.tolist()]
        missed = [order_list[o] for o in range(O) if not met[o]]
        capped_orders = [order_list[o] for o in self.inner
                         if float((self.need[o] * p.safety * self.margin[o] * self.scale).max()) > p.k_max]
        planned, pilot_k, pilot_A = self._planned()
        if missed:
            log.warning(
                "adaptive interactions: %d of %d orders miss noise ratio %.3g (orders %s: %s)%s",
                len(missed), O, p.tau, missed, [round(float(ratio[order_list.index(m)]), 3) for m in missed],
                "; the evaluation budget was capped" if self.capped else "",
            )
        metadata = dict(
            target_noise=p.tau, allocation=p.allocation, pilot_mode=p.pilot, folds=self.K,
            noise_ratio=[float(r) for r in ratio], target_met=met, missed_orders=missed,
            planned_noise_ratio=planned,
            contexts_per_order=[float(self.per_pair[o].double().mean()) for o in range(O)],
            pilot_contexts_per_order=pilot_k, pilot_mean_abs_debiased=pilot_A, capped_orders=capped_orders,
            endpoint_evaluations=int(self.endpoint_evals), pilot_evaluations=int(self.pilot_evals),
            reused_pilot_contexts_per_order=[int(self.pilot_count[o].min()) if o in self.inner else 0
                                             for o in range(O)],
            reused_pilot_evaluations=int(self.reused_evals), main_evaluations=int(self.main_evals),
            top_up_evaluations=int(self.top_up_evals),
            top_up_contexts_per_order=[float(self.top_up_count[o].double().mean()) if o in self.top_up_count
                                       else 0.0 for o in range(O)],
            pilot_rounds=self.rounds, max_evaluations=p.budget, budget_capped=bool(self.capped),
            budget_scale=float(self.scale), settings=p.settings(),
            pilot_weight=[float(self.round_weight[o].mean()) if o in self.inner else 0.0 for o in range(O)],
            plan_margin=[self.margin.get(o, 1.0) for o in range(O)],
            plan_log_sd=[self.plan_sd.get(o, 0.0) for o in range(O)],
            effective_samples=[self.effective[o].tolist() if o in self.effective else [1.0] * self.P
                               for o in range(O)],
        )
        ragged = bool((self.per_pair != self.per_pair[:, :1]).any())
        return InteractionResult(
            orders=self.orders, pairs=self.pairs, values=self.values, stderr=self.stderr,
            half_values=self.halves, n_samples=self.n_samples,
            n_evaluations=int(self.endpoint_evals + self.pilot_evals + self.reused_evals + self.main_evals
                              + self.top_up_evals),
            n_players=self.n, method="adaptive", seed=self.seed, metadata=metadata,
            samples_per_pair=self.per_pair if ragged else None,
        )

