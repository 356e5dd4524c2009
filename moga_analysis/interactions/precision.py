"""The precision-target estimator behind :class:`~.estimators.PrecisionTarget`.

The target is a relative noise level per order, ``noise_floor / mean |I^(m)| <= target_noise`` at
every inner order (:func:`~.sampling.noise_floor`).  Every stage draws shared contexts
(:func:`~.sampling.shared_samples`); the end orders 0 and n-2 are exact.

1. **Pilot** (round 0): a few samples per pair at every inner order.  An order's need is planned
   from its signal (the noise-corrected mean |I|, :func:`planning_signal`) and its pairs'
   per-sample spreads: pair p gets ``k_p ~ sigma_p^(2/3)`` (the least total at a given mean
   stderr), a pair's relative sigma being its mean over the orders.  Round 0 enters the estimate
   with a weight planned from the *other* orders' pilot only.
2. **Pilot rounds**: an order whose pilot is too noisy to plan from gets more pilot (at most two
   rounds), each entering the estimate with a weight fixed from the data before it.
3. **Main stage** in two independent halves A and B of fresh contexts, weighted by one minus the
   rounds' weights.
4. **Top-up**: from half B's data alone the factor on the main stage that reaches the target is
   solved for, and half A is topped up by it (and B from A's data), both factors computed before
   either half grows; at most :data:`_MAX_TOP_UP` times the main stage.
5. **Completion**: an order still above the target gets fresh samples that enter with an
   inverse-variance weight fixed before they are drawn, repeated until it meets the target.

Under a cap (``max_evaluations``) the main stage is one draw planned with a margin of
:data:`_CAPPED_SAFETY` and scaled to what the budget affords, without the top-up; the completion
runs with what the budget has left, and missed orders are reported.

Why the estimate is unbiased: a stage's samples are drawn after its size and weight are fixed, so
given everything before it they are i.i.d. draws of Delta(i,j,S) with S uniform, and
``sum_r w_r X_r + R (X_A + X_B) / 2`` has expectation I whatever the data did to the plan.  The
stderr ``sum_r w_r^2 s_r^2 + R^2 (s_A^2 + s_B^2) / 4`` matches that variance.  What is not exact:
each half's later sizes depend on the other half's values, and the completion's decision and
weights depend on the estimate so far (its stderrs and its order's signal, not a pair's value
alone); the bias and calibration this leaves are measured over seeds on
closed-form games (docs: interactions, "precision target"; tests/test_precision.py).
"""

from __future__ import annotations

import logging
import math
from typing import Any, Dict, List, Optional

import torch

from .result import InteractionResult, deconvolved_mean_abs
from .sampling import (
    SQRT_2_PI,
    Game,
    check_orders,
    check_pairs,
    evaluate,
    noise_floor,
    pair_statistics,
    shared_plan,
    shared_samples,
)

__all__ = ["estimate_precision", "project_precision", "planning_signal"]

log = logging.getLogger(__name__)

#: pilot samples per pair at every inner order (round 0)
_PILOT_CONTEXTS = 8
#: an order whose pilot noise ratio is above this gets more pilot ...
_MAX_PILOT_RATIO = 0.35
#: ... up to this share of its planned need, in at most this many rounds
_PILOT_FRACTION = 0.35
_PILOT_ROUNDS = 2
#: a round's weight is its share of the planned need over this margin
_WEIGHT_MARGIN = 1.25
#: the largest total weight of the pilot rounds in a pair's estimate, and of round 0 alone
_MAX_ROUND_WEIGHT = 0.6
_FIRST_ROUND_WEIGHT = 0.5
#: under a cap: the main stage is planned to this multiple of the need (no top-up corrects it)
_CAPPED_SAFETY = 1.1
#: the top-up at most multiplies the main stage by this: a half whose few samples put an order's
#: signal near zero would otherwise ask for up to max_contexts (on a Fashion-MNIST image at target
#: 0.5, 2,088 contexts per pair at one order where 39 met it); the completion, which decides from
#: all the data, adds what a bounded top-up leaves short
_MAX_TOP_UP = 2.0
#: completion rounds: at most this many, each aiming this fraction below the target and drawing
#: at least (this factor - 1) times a pair's samples so far
_COMPLETION_ROUNDS = 8
_COMPLETION_AIM = 0.95
_COMPLETION_MIN_SCALE = 1.15


def _c4(k: torch.Tensor) -> torch.Tensor:
    """E[s] / sigma for the sample std of k normal samples (corrects the pilot's mean std)."""
    k = torch.as_tensor(k).double().clamp_min(2)
    return torch.exp(0.5 * math.log(2.0) - 0.5 * (k - 1).log() + torch.lgamma(k / 2) - torch.lgamma((k - 1) / 2))


def _evaluate_blocks(game: Game, blocks: List[torch.Tensor], batch_size: Optional[int]):
    """Game values of several blocks of rows in one call, split back into one tensor per block."""
    if not blocks:
        return []
    return list(evaluate(game, torch.cat(blocks), batch_size).split([len(b) for b in blocks]))


def _derived_seed(seed: int, stage: int) -> int:
    return (int(seed) * 1_000_003 + 7_919 * (stage + 1)) % (2**63 - 1)


class _Samples:
    """Second differences of one order, flat, with the pair of each sample."""

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


def planning_signal(mean: torch.Tensor, se: torch.Tensor, **fit) -> torch.Tensor:
    """Per order [O], the signal a plan uses from per-pair estimates and stderrs [O, P]: the
    noise-corrected mean |I| (``deconvolved_mean_abs``, ``fit``: its grid and iterations), bounded
    below by mean(|x_p| - sqrt(2/pi) se_p), which is below mean |I| in expectation."""
    lower = (mean.abs() - SQRT_2_PI * se).mean(1)
    return torch.maximum(deconvolved_mean_abs(mean, se, **fit), lower)


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


def _bisect_scale(floor_at, target: float, hi: float) -> float:
    """The least factor c in [1, hi] with floor_at(c) <= target (hi if none)."""
    if not target > 0 or floor_at(hi) > target:
        return hi
    if floor_at(1.0) <= target:
        return 1.0
    lo = 1.0
    for _ in range(50):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if floor_at(mid) > target else (lo, mid)
    return hi


def estimate_precision(est, game: Game, n_players: int, pairs, orders, *, seed: int = 0,
                       batch_size: Optional[int] = None) -> InteractionResult:
    """:meth:`PrecisionTarget.estimate` (the method: the module docstring)."""
    run = _Run(est, game, n_players, pairs, orders, seed, batch_size)
    run.first_pilot()
    run.plan()
    run.extend_pilot()
    run.main_stage()
    run.complete()
    return run.result()


def project_precision(est, game: Game, n_players: int, pairs, orders, *, seed: int = 0,
                      batch_size: Optional[int] = None) -> Dict[str, Any]:
    """:meth:`PrecisionTarget.project`: the pilot of :func:`estimate_precision` and the evaluations
    its plan projects (each order's need at the pilot's cost per sample, within the cap)."""
    run = _Run(est, game, n_players, pairs, orders, seed, batch_size)
    run.first_pilot()
    run.plan()
    spent = run.endpoint_evals + run._spent()
    total = spent + sum(run.cost_per_k[o] * min(float(run.need[o].mean()), run.k_max) for o in run.inner)
    if run.budget is not None:
        total = min(total, run.budget)
    return {"pilot_evaluations": int(spent), "projected_evaluations": int(math.ceil(total))}


class _Run:
    """The state of one :func:`estimate_precision` call, stage by stage."""

    def __init__(self, est, game, n_players: int, pairs, orders, seed: int, batch_size):
        n = int(n_players)
        self.game, self.n, self.seed, self.batch_size = game, n, int(seed), batch_size
        self.pairs, self.orders = check_pairs(pairs, n), check_orders(orders, n)
        self.tau, self.k_min, self.k_max, self.budget = est.target_noise, est.min_contexts, est.max_contexts, \
            est.max_evaluations
        self.tops_up = self.budget is None
        self.safety = 1.0 if self.tops_up else _CAPPED_SAFETY
        self.O, self.P = len(self.orders), len(self.pairs)
        self.order_list = self.orders.tolist()
        self.inner = [o for o, m in enumerate(self.order_list) if 0 < m < n - 2]
        self.gen_pilot = torch.Generator().manual_seed(_derived_seed(seed, 0))
        O, P = self.O, self.P
        self.values = torch.zeros(O, P, dtype=torch.float64)
        self.stderr = torch.zeros(O, P, dtype=torch.float64)
        self.halves = torch.zeros(2, O, P, dtype=torch.float64)
        self.n_samples = torch.ones(O, dtype=torch.long)
        self.per_pair = torch.ones(O, P, dtype=torch.long)
        self.pilots = {o: _Samples(P) for o in self.inner}
        # the pilot rounds in the estimate: their samples and weights, total weight and sum of w^2 / N per pair
        self.round_samples = {o: [] for o in self.inner}
        self.round_weight = {o: torch.zeros(P, dtype=torch.float64) for o in self.inner}
        self.round_units = {o: torch.zeros(P, dtype=torch.float64) for o in self.inner}
        self.parts: Dict[int, List[_Samples]] = {}
        self.effective = {}  # samples per pair that give the same variance unweighted
        self.endpoint_evals = self.pilot_evals = self.round_evals = self.main_evals = 0
        self.top_up_evals = self.completion_evals = 0
        self.extra_count = {o: torch.zeros(P, dtype=torch.long) for o in self.inner}
        self.completion_rounds = {o: 0 for o in self.inner}
        self.rounds = 0
        self.scale, self.capped, self.budget_stopped = 1.0, False, False

    def _evaluate(self, rows: torch.Tensor) -> torch.Tensor:
        return evaluate(self.game, rows, self.batch_size)

    # ------------------------------------------------------------------------------ pilot
    def _pilot_rows(self, needs: Dict[int, int]):
        """Rows and sample indices of ``needs[o]`` more contexts per pair; (blocks, plans, rows)."""
        blocks, plans, off = [], [], 0
        for o, k in needs.items():
            need = torch.full((self.P,), k, dtype=torch.long)
            rows, idx, pair_of = shared_samples(self.n, self.pairs, self.order_list[o], need, self.gen_pilot)
            plans.append((o, tuple(t + off for t in idx), pair_of, len(rows)))
            blocks.append(rows)
            off += len(rows)
        return blocks, plans, off

    @staticmethod
    def _add_samples(store, plans, v):
        for o, (a, b, c, d), pair_of, _ in plans:
            store[o].add(v[a] - v[b] - v[c] + v[d], pair_of)

    def first_pilot(self) -> None:
        """The exact end orders and round 0 of the pilot, evaluated together."""
        end_blocks, end_plans, offset = [], {}, 0
        for o, m in enumerate(self.order_list):
            if o not in self.inner:
                rows, idx = shared_plan(self.n, self.pairs, m, 1, self.gen_pilot)
                end_plans[o] = tuple(t + offset for t in idx)
                end_blocks.append(rows)
                offset += len(rows)
        self.endpoint_evals = offset
        blocks, plans, pilot_rows = self._pilot_rows({o: _PILOT_CONTEXTS for o in self.inner})
        # evaluations per (sample per pair) at each order, from the pilot's plan
        self.cost_per_k = {o: 0.0 for o in self.inner}
        for o, _, _, r in plans:
            self.cost_per_k[o] += r / _PILOT_CONTEXTS
        self.min_main = sum(self.cost_per_k[o] * self.k_min for o in self.inner)
        if self.budget is not None and offset + pilot_rows + self.min_main > self.budget:
            need = int(math.ceil(offset + pilot_rows + 1.05 * self.min_main))
            raise ValueError(
                f"max_evaluations={self.budget} is too small: the exact end orders ({offset}), the pilot "
                f"({pilot_rows}) and min_contexts={self.k_min} at every inner order (about {int(self.min_main)}) "
                f"need about {need}; raise it or lower min_contexts"
            )
        v = self._evaluate(torch.cat(end_blocks + blocks))
        for o, (a, b, c, d) in end_plans.items():
            self.values[o] = (v[a] - v[b] - v[c] + v[d])[:, 0]
            self.halves[:, o] = self.values[o]
        self._add_samples(self.pilots, plans, v[offset:])
        weights = self._first_round_weights()  # no game value of the order it weights
        if weights:
            self._keep_round({o: _PILOT_CONTEXTS for o in self.inner}, weights, plans, v[offset:])
            self.round_evals = pilot_rows
        else:
            self.pilot_evals = pilot_rows

    def _first_round_weights(self) -> Dict[int, torch.Tensor]:
        """Round 0's weight in the estimate.  Under a cap: the same at every order, from the budget
        alone (its share of the samples per pair that the budget affords every order evenly, over
        the weight margin).  Without a cap: :meth:`_cross_order_weights`."""
        if not self.inner:
            return {}
        if self.budget is None:
            return self._cross_order_weights()
        even = (self.budget - self.endpoint_evals) / sum(self.cost_per_k.values())
        w = min(_PILOT_CONTEXTS / (_WEIGHT_MARGIN * max(even, _PILOT_CONTEXTS)), _FIRST_ROUND_WEIGHT)
        return {o: torch.full((self.P,), w, dtype=torch.float64) for o in self.inner}

    def _cross_order_weights(self) -> Dict[int, torch.Tensor]:
        """Round 0's weight at order o from the round-0 values of the *other* orders only (drawn from
        their own contexts, so independent of order o's samples): the pilot over the weight margin
        x the larger need of its neighbouring inner orders, shaped over the pairs by their relative
        sigma at the other orders.  A weight below the fair share costs little; one far above it
        could leave the main stage unable to reach the target, hence the conservative need."""
        inner = self.inner
        if len(inner) < 2:  # a single inner order: nothing independent to plan its weight from
            return {}
        stats = {o: self.pilots[o].stats() for o in inner}
        order_need, spread = {}, self._log_spread(stats)
        for o in inner:
            count, mean, var = stats[o]
            A = float(planning_signal(mean[None], (var / count).sqrt()[None])[0])
            sigma = float((var.sqrt() / _c4(count)).mean())
            k = (SQRT_2_PI * sigma / (self.tau * A)) ** 2 if A > 0 else float("inf")
            order_need[o] = min(max(k, float(_PILOT_CONTEXTS)), 4.0 * self.k_max)
        out = {}
        for i, o in enumerate(inner):
            others = [q for q in inner if q != o]
            near = [inner[j] for j in (i - 1, i + 1) if 0 <= j < len(inner)]
            rel = torch.stack([spread[q] for q in others]).mean(0).exp() ** (2.0 / 3.0)
            need = max(order_need[q] for q in near) * self.safety * rel / rel.mean()
            w = _PILOT_CONTEXTS / (_WEIGHT_MARGIN * need.clamp_min(float(_PILOT_CONTEXTS)))
            out[o] = w.clamp(max=_FIRST_ROUND_WEIGHT)
        return out

    def extend_pilot(self) -> None:
        """More pilot where it is too weak to plan from, each round in the estimate with its weight."""
        budget = self.budget
        spare = 0 if budget is None else max(budget - self.endpoint_evals - self._spent(), 0)
        pilot_cap = None if budget is None else self._spent() + _PILOT_FRACTION * spare
        while self.rounds < _PILOT_ROUNDS:
            ext, share = {}, self._affordable_share()
            for o in self.inner:
                have = int(self.pilots[o].stats()[0].min())
                want = int(math.ceil(_PILOT_FRACTION * min(float(self.need[o].mean()) * share, self.k_max)))
                if self.pratio[o] > _MAX_PILOT_RATIO and want > have:
                    ext[o] = max(want - have, 2)  # a round needs two samples per pair for its stderr
            if budget is not None and ext:
                est = sum(self.cost_per_k[o] * e for o, e in ext.items())
                room = min(pilot_cap - self._spent(),
                           budget - self.endpoint_evals - self._spent() - 1.2 * self.min_main)
                if est > room:
                    scale = max(room, 0.0) / est
                    ext = {o: int(e * scale) for o, e in ext.items()}
                    ext = {o: e for o, e in ext.items() if e >= 2}
            if not ext:
                break
            blocks, plans, rows_n = self._pilot_rows(ext)
            if budget is not None and self.endpoint_evals + self._spent() + rows_n + self.min_main > budget:
                break  # the plan came out larger than estimated: keep the budget for the main stage
            weights = self._round_weights(ext, share)  # before the values
            v = self._evaluate(torch.cat(blocks))
            self._add_samples(self.pilots, plans, v)
            self._keep_round(ext, weights, plans, v)
            self.round_evals += rows_n
            self.rounds += 1
            self.plan()

    def _spent(self) -> int:
        return self.pilot_evals + self.round_evals

    def _affordable_share(self) -> float:
        """Under a cap, the share of the current plan the budget affords (at most 1), so that the
        rounds and their weights follow the plan the main stage can pay for."""
        if self.budget is None:
            return 1.0
        cost = sum(self.cost_per_k[o] * min(float(self.need[o].mean()) * self.safety, self.k_max) for o in self.inner)
        available = self.budget - self.endpoint_evals - self.pilot_evals
        return min(1.0, max(available, 0) / cost) if cost > 0 else 1.0

    def _round_weights(self, ext: Dict[int, int], share: float = 1.0) -> Dict[int, torch.Tensor]:
        """The weight of a round of ``ext[o]`` samples per pair, fixed from the data before it: its
        share of the planned need over the weight margin, all rounds of a pair together at most
        :data:`_MAX_ROUND_WEIGHT`."""
        out = {}
        for o, e in ext.items():
            planned = (self.need[o] * self.safety * share).clamp(min=float(e), max=float(self.k_max))
            w = e / (_WEIGHT_MARGIN * planned)
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
        """Samples per pair of the pilot rounds in the estimate at order o."""
        return sum(int(st.stats()[0].min()) for st, _ in self.round_samples[o])

    # ------------------------------------------------------------------------------ planning
    def _log_spread(self, stats):
        """Per order and pair: log pilot std minus its mean over the pairs of that order."""
        out = {}
        for o in self.inner:
            s = stats[o][2].sqrt()
            s = s.clamp_min(1e-3 * float(s.mean()) + 1e-300)
            ls = s.log()
            out[o] = ls - ls.mean()
        return out

    def plan(self) -> None:
        """need[o]: real-valued samples per pair [P] (before safety); pratio[o]: the pilot's noise
        ratio; psignal[o]: the signal planned from."""
        self.need, self.pratio, self.psignal = {}, {}, {}
        inner = self.inner
        if not inner:
            return
        stats = {o: self.pilots[o].stats() for o in inner}
        count = torch.stack([stats[o][0] for o in inner])  # [O_in, P]
        mean = torch.stack([stats[o][1] for o in inner])
        sd = torch.stack([stats[o][2] for o in inner]).sqrt()
        se = sd / count.sqrt()
        A_all = planning_signal(mean, se)
        spread = self._log_spread(stats)  # a pair's relative sigma: its mean over the orders
        rel = torch.stack([spread[q] for q in inner]).mean(0).exp()
        for i, o in enumerate(inner):
            A = float(A_all[i])
            sig = float((sd[i] / _c4(count[i])).mean()) * rel / float(rel.mean())
            self.need[o] = _pair_needs(sig, self.tau * A / SQRT_2_PI, 1.0, 4.0 * self.k_max)
            self.psignal[o] = A
            self.pratio[o] = float(SQRT_2_PI * se[i].mean()) / A if A > 0 else float("inf")

    # ------------------------------------------------------------------------------ main stage
    def _allocate(self, scale: float, floor_min: int) -> Dict[int, torch.Tensor]:
        out = {}
        for o in self.inner:
            k = torch.ceil(self.need[o] * self.safety * scale)
            if bool((self.round_weight[o] > 0).any()):
                # effective samples k = 1 / (U + R^2 / N_main) with U = sum w^2 / N of the rounds
                R2, U = (1 - self.round_weight[o]) ** 2, self.round_units[o]
                room = 1 / k.clamp(1, 4.0 * self.k_max) - U
                main = torch.where(room > 1e-12, torch.ceil(R2 / room.clamp_min(1e-12)),
                                   torch.full_like(k, self.k_max))
                out[o] = main.clamp(max(self.main_min, floor_min - self.round_count(o)), self.k_max).long()
            else:
                out[o] = k.clamp(max(floor_min, self.main_min), max(self.k_max, self.main_min)).long()
        return out

    @property
    def main_min(self) -> int:
        """The fewest main-stage samples per pair: two per half with the top-up (each half's stderr)."""
        return 4 if self.tops_up else 2

    def _build(self, alloc):
        """The main stage's rows per order: with the top-up two independent draws (halves A and B,
        ceil and floor of half the allocation), else one."""
        gen_main = torch.Generator().manual_seed(_derived_seed(self.seed, 1))
        out, total = {}, 0
        for o in self.inner:
            parts = [(alloc[o] + 1) // 2, alloc[o] // 2] if self.tops_up else [alloc[o]]
            out[o] = [shared_samples(self.n, self.pairs, self.order_list[o], k, gen_main) for k in parts]
            total += sum(len(part[0]) for part in out[o])
        return out, total

    def _budget_scale(self, remaining: float, floor_min: int):
        """The one factor on every order's allocation that fits the plan into ``remaining``
        evaluations (estimated from the pilot's cost per sample), and whether it binds."""

        def est_cost(s):
            a = self._allocate(s, floor_min)
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

    def _fitted_plan(self):
        """The main stage's allocation and rows, within the budget if there is one."""
        floor_min, scale, capped = self.k_min, 1.0, False
        remaining = None if self.budget is None else self.budget - self.endpoint_evals - self._spent()
        if remaining is not None:
            scale, capped = self._budget_scale(remaining, floor_min)
        alloc = self._allocate(scale, floor_min)
        main, total = self._build(alloc)
        while remaining is not None and total > remaining:
            # the random plan came out larger than estimated: shrink and rebuild (deterministic)
            capped = True
            smaller = self._allocate(scale * 0.97 * remaining / total, floor_min)
            if all(torch.equal(smaller[o], alloc[o]) for o in self.inner):  # min_contexts binds everywhere
                if floor_min <= 2:
                    raise RuntimeError(f"cannot fit the main stage into max_evaluations={self.budget}")
                floor_min -= 1
            else:
                scale *= 0.97 * remaining / total
            alloc = self._allocate(scale, floor_min)
            main, total = self._build(alloc)
        self.scale, self.capped = scale, capped
        return alloc, main, total

    def main_stage(self) -> None:
        """Fresh contexts, shared by all pairs of an order, up to the planned counts; with the
        top-up, each half is then topped up from the other half's data."""
        self.alloc, main, self.main_evals = self._fitted_plan()
        gen_top = torch.Generator().manual_seed(_derived_seed(self.seed, 4))
        for o in self.inner:
            parts = [_Samples(self.P) for _ in main[o]]
            values = _evaluate_blocks(self.game, [r for r, _, _ in main[o]], self.batch_size)
            for store, (_, (a, b, c, d), pair_of), vo in zip(parts, main[o], values):
                store.add(vo[a] - vo[b] - vo[c] + vo[d], pair_of)
            main[o] = None  # free the rows
            self.parts[o] = parts
            if self.tops_up:
                drawn = self._top_up_rows(o, 1.0, 1.0, gen_top)
                self.top_up_evals += self._add_top_ups(drawn)
            self._finalise(o)

    # ------------------------------------------------------------------------------ top-up, completion
    def _top_up_rows(self, o: int, aim: float, min_scale: float, gen: torch.Generator):
        """Rows that top up each half of order o to the count the *other* half's data ask for
        (:meth:`_scale_from`, at least ``min_scale`` times its count, at most half of
        ``max_contexts``); both factors are computed before either half grows."""
        halves = self.parts[o]
        counts = [halves[0].stats()[0], halves[1].stats()[0]]
        cap = (self.k_max + 1) // 2  # samples per pair in a half
        scales = [max(self._scale_from(o, halves[1 - h], counts[0] + counts[1], aim), min_scale) for h in (0, 1)]
        drawn = []
        for h, scale in enumerate(scales):
            want = torch.minimum(torch.ceil(scale * counts[h].double()).long(), counts[h].clamp_min(cap))
            extra = (want - counts[h]).clamp_min(0)
            if int(extra.max()) > 0:
                drawn.append((o, h, shared_samples(self.n, self.pairs, self.order_list[o], extra, gen)))
                self.extra_count[o] += extra
        return drawn

    def _add_top_ups(self, drawn) -> int:
        """Evaluate the top-up rows of :meth:`_top_up_rows` (one call) and add them to their halves."""
        values = _evaluate_blocks(self.game, [rows for _, _, (rows, _, _) in drawn], self.batch_size)
        for (o, h, (_, (a, b, c, d), pair_of)), v in zip(drawn, values):
            self.parts[o][h].add(v[a] - v[b] - v[c] + v[d], pair_of)
        return sum(len(rows) for _, _, (rows, _, _) in drawn)

    def _scale_from(self, o: int, half: _Samples, main_count: torch.Tensor, aim: float) -> float:
        """The factor (>= 1) on the main stage's ``main_count`` samples per pair that brings order o to
        ``aim`` x the target, as one half's data predict it: per pair the variance of the rounds plus
        R^2 sigma_p^2 / (c main_count), the signal from :func:`planning_signal` of the half's values."""
        count, mean, var = half.stats()
        R, sigma2 = 1 - self.round_weight[o], var / _c4(count) ** 2
        rounds_var = torch.zeros(self.P, dtype=torch.float64)
        value = R * mean
        for store, w in self.round_samples[o]:
            m_r, se_r, _, _ = pair_statistics(*store.flat(), self.P)
            rounds_var, value = rounds_var + (w * se_r) ** 2, value + w * m_r
        se_half = (rounds_var + R**2 * sigma2 / count).sqrt()
        A = float(planning_signal(value[None], se_half[None])[0])
        target = aim * self.tau * A / (SQRT_2_PI * math.sqrt(self.safety))
        main = main_count.double()
        hi = max(min(float(self.k_max) / float(main.min()), _MAX_TOP_UP), 1.0)
        return _bisect_scale(lambda c: float((rounds_var + R**2 * sigma2 / (c * main)).sqrt().mean()), target, hi)

    def _finalise(self, o: int) -> None:
        """Order o's values, stderr, halves and counts from its halves (or single main draw) and rounds."""
        parts = self.parts[o]
        if self.tops_up:
            mA, seA, _, cA = pair_statistics(*parts[0].flat(), self.P)
            mB, seB, _, cB = pair_statistics(*parts[1].flat(), self.P)
            mean, se, hv, count = 0.5 * (mA + mB), 0.5 * (seA**2 + seB**2).sqrt(), torch.stack([mA, mB]), cA + cB
            units = 0.25 * (1 / cA.double() + 1 / cB.double())
        else:
            mean, se, hv, count = pair_statistics(*parts[0].flat(), self.P)
            units = 1 / count.double()
        R = 1 - self.round_weight[o]
        self.effective[o] = 1 / (self.round_units[o] + R**2 * units)
        mean, var, hv = R * mean, (R * se) ** 2, R * hv
        for store, w in self.round_samples[o]:
            m_r, se_r, hv_r, c_r = pair_statistics(*store.flat(), self.P)
            mean, var, hv, count = mean + w * m_r, var + (w * se_r) ** 2, hv + w * hv_r, count + c_r
        self.values[o], self.stderr[o], self.halves[:, o] = mean, var.sqrt(), hv
        self.per_pair[o] = count
        self.n_samples[o] = int(count.min())

    def _ratio(self, o: int) -> float:
        floor = float(noise_floor(self.stderr[o]))
        return floor / max(float(self.values[o].abs().mean()), 1e-300) if floor > 0 else 0.0

    def complete(self) -> None:
        """A completion stage for each order still above the target, repeated until it meets it (at
        most :data:`_COMPLETION_ROUNDS` rounds of at most ``max_contexts`` samples per pair; under a
        cap, only the orders whose round fits into what the budget has left, the worst first).
        Fresh samples X_c (N_p per pair, a multiple of the pair's samples so far) enter as
        ``(1 - lam_p) X + lam_p X_c`` with the inverse-variance weight ``lam_p = V_p / (V_p +
        sigma_p^2 / N_p)``, fixed before they are drawn; this lifts the variance floor of the pilot
        rounds' fixed weights, which no top-up of the main stage can."""
        gen = torch.Generator().manual_seed(_derived_seed(self.seed, 5))
        for _ in range(_COMPLETION_ROUNDS):
            todo = [o for o in self.inner if self._ratio(o) > self.tau]
            if self.budget is not None:  # the worst first, while the budget lasts
                todo.sort(key=self._ratio, reverse=True)
            plans = {o: self._completion_plan(o) for o in todo}
            drawn = [(o, shared_samples(self.n, self.pairs, self.order_list[o], plans[o][0], gen)) for o in todo]
            drawn = self._within_budget(drawn)
            if not drawn:
                return
            values = _evaluate_blocks(self.game, [rows for _, (rows, _, _) in drawn], self.batch_size)
            for (o, (rows, (a, b, c, d), pair_of)), v in zip(drawn, values):
                self.completion_evals += len(rows)
                self.completion_rounds[o] += 1
                m_c, se_c, hv_c, count_c = pair_statistics(v[a] - v[b] - v[c] + v[d], pair_of, self.P)
                lam = plans[o][1]
                var = (1 - lam) ** 2 * self.stderr[o] ** 2 + lam**2 * se_c**2
                self.effective[o] = self.effective[o] * self.stderr[o] ** 2 / var
                self.values[o] = (1 - lam) * self.values[o] + lam * m_c
                self.halves[:, o] = (1 - lam) * self.halves[:, o] + lam * hv_c
                self.stderr[o] = var.sqrt()
                self.per_pair[o] += count_c
                self.n_samples[o] = int(self.per_pair[o].min())

    def _evaluations(self) -> int:
        return (self.endpoint_evals + self.pilot_evals + self.round_evals + self.main_evals + self.top_up_evals
                + self.completion_evals)

    def _within_budget(self, drawn):
        """The completion rounds of ``drawn`` (worst order first) that fit into the budget's rest."""
        if self.budget is None:
            return drawn
        left, kept = self.budget - self._evaluations(), []
        for o, sample in drawn:
            if len(sample[0]) <= left:
                kept.append((o, sample))
                left -= len(sample[0])
            else:
                self.budget_stopped = True
        return kept

    def _completion_plan(self, o: int):
        """(samples per pair N [P], weights lam [P]) of a completion round at order o: per pair the
        variance after it is 1 / (1 / V_p + N_p / sigma_p^2); N_p = c x the pair's samples so far,
        c the least factor (at least ``_COMPLETION_MIN_SCALE - 1``) that brings the noise floor to
        ``_COMPLETION_AIM`` x the target, with the signal of :func:`planning_signal`."""
        V = self.stderr[o] ** 2
        sigma2 = torch.zeros(self.P, dtype=torch.float64)
        for part in self.parts[o]:  # the per-sample variance, from the main stage's halves
            count, _, var = part.stats()
            sigma2 += var / _c4(count) ** 2 / len(self.parts[o])
        A = float(planning_signal(self.values[o][None], self.stderr[o][None])[0])
        target = _COMPLETION_AIM * self.tau * A / SQRT_2_PI
        have = self.per_pair[o].double()

        def floor_at(c: float) -> float:
            return float((1 / (1 / V + c * have / sigma2)).sqrt().mean())

        hi = float(self.k_max) / float(have.min())
        c = max(_bisect_scale(lambda x: floor_at(x - 1.0), target, hi + 1.0) - 1.0, _COMPLETION_MIN_SCALE - 1.0)
        N = torch.ceil(c * have).clamp(2, self.k_max).long()
        lam = V / (V + sigma2 / N.double())
        return N, lam

    # ------------------------------------------------------------------------------ the result
    def result(self) -> InteractionResult:
        O, order_list = self.O, self.order_list
        ratio = [self._ratio(o) for o in range(O)]
        met = [r <= self.tau for r in ratio]
        missed = [order_list[o] for o in range(O) if not met[o]]
        at_max = [order_list[o] for o in self.inner if int(self.per_pair[o].max()) >= self.k_max]
        if missed:
            log.warning(
                "precision target: %d of %d orders miss noise ratio %.3g (orders %s: %s)%s",
                len(missed), O, self.tau, missed, [round(ratio[order_list.index(m)], 3) for m in missed],
                "; the evaluation budget ran out" if self.capped or self.budget_stopped else
                f" after {max(self.completion_rounds.values(), default=0)} completion rounds",
            )
        inner = set(self.inner)
        metadata = dict(
            target_noise=self.tau, noise_ratio=ratio, target_met=met, missed_orders=missed,
            contexts_per_order=[float(self.per_pair[o].double().mean()) for o in range(O)],
            pilot_contexts=_PILOT_CONTEXTS, max_contexts_orders=at_max,
            top_up_contexts_per_order=[float(self.extra_count[o].double().mean()) if o in inner else 0.0
                                       for o in range(O)],
            endpoint_evaluations=int(self.endpoint_evals), pilot_evaluations=int(self.pilot_evals),
            round_evaluations=int(self.round_evals), main_evaluations=int(self.main_evals),
            top_up_evaluations=int(self.top_up_evals), completion_evaluations=int(self.completion_evals),
            completion_rounds=[self.completion_rounds.get(o, 0) for o in range(O)],
            pilot_rounds=self.rounds, max_evaluations=self.budget,
            budget_capped=bool(self.capped or self.budget_stopped),
            budget_scale=float(self.scale),
            pilot_weight=[float(self.round_weight[o].mean()) if o in inner else 0.0 for o in range(O)],
            effective_samples=[self.effective[o].tolist() if o in self.effective else [1.0] * self.P
                               for o in range(O)],
        )
        ragged = bool((self.per_pair != self.per_pair[:, :1]).any())
        n_eval = self._evaluations()
        return InteractionResult(
            orders=self.orders, pairs=self.pairs, values=self.values, stderr=self.stderr,
            half_values=self.halves, n_samples=self.n_samples, n_evaluations=int(n_eval),
            n_players=self.n, method="precision", seed=self.seed, metadata=metadata,
            samples_per_pair=self.per_pair if ragged else None,
        )
