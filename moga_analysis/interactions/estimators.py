"""Estimators of multi-order game-theoretic interactions I^(m)(i,j).

Definitions (Deng et al., ICLR 2022), for a game v over players N (|N| = n):

* Delta(i,j,S) = v(S+ij) - v(S+i) - v(S+j) + v(S)  for S a subset of N minus {i,j};
* I^(m)(i,j) = E_{S subset of N\\{i,j}, |S| = m} Delta(i,j,S),  m = 0 .. n-2.

An estimator is a small object with one call, ``estimator.estimate(game, n_players, pairs,
orders, seed=...) -> InteractionResult`` (the :class:`Estimator` protocol):

* :class:`FixedContexts` ``(contexts, sharing)``: ``contexts`` samples per pair and order, drawn
  per pair (``sharing="independent"``, the reference protocol) or shared between the pairs they
  serve (``"shared"``; :mod:`.sampling`);
* :class:`PrecisionTarget` ``(target_noise, max_evaluations=None)``: as many shared contexts per
  pair and order as it takes to bring noise floor / mean |I^(m)| to ``target_noise`` at every
  order (:mod:`.precision`).

:func:`exact_interactions` enumerates all 2^n coalitions (small n), and
:func:`estimate_interactions` is the function form of :class:`FixedContexts`.

Orders 0 and n-2 have a single context: every estimator computes them exactly (stderr 0).
Each pair's samples are split into two halves; ``half_values`` are their means, so that
``mean(half_values[0] * half_values[1])`` is an unbiased estimate of E_(i,j)[I^2] (the noise
cancels), reported beside the raw mean |I| and its noise floor.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import Any, Dict, Optional, Protocol, runtime_checkable

import torch

from .precision import estimate_precision, project_precision
from .result import InteractionResult, deconvolved_mean_abs
from .sampling import (
    Game,
    check_orders,
    check_pairs,
    evaluate,
    independent_samples,
    shared_plan,
)

__all__ = [
    "InteractionResult",
    "Estimator",
    "FixedContexts",
    "PrecisionTarget",
    "SHARING",
    "estimator_from_dict",
    "exact_interactions",
    "estimate_interactions",
    "deconvolved_mean_abs",
    "Game",
]

log = logging.getLogger(__name__)

#: how the contexts of :class:`FixedContexts` are drawn
SHARING = ("shared", "independent")


# ----------------------------------------------------------------------------------------------
# exact
# ----------------------------------------------------------------------------------------------
def exact_interactions(
    game: Game, n_players: int, pairs, orders=None, *, batch_size: Optional[int] = 4096, max_players: int = 22
) -> InteractionResult:
    """I^(m)(i,j) by enumerating all 2^n coalitions (one evaluation each); ``orders=None``: 0..n-2."""
    n = int(n_players)
    if n > max_players:
        raise ValueError(f"exact enumeration needs 2^{n} evaluations; n_players must be <= {max_players}")
    pairs = check_pairs(pairs, n)
    orders = check_orders(range(n - 1) if orders is None else orders, n)
    codes = torch.arange(2**n, dtype=torch.long)
    bits = 1 << torch.arange(n, dtype=torch.long)
    masks = (codes[:, None] & bits) != 0
    v = evaluate(game, masks, batch_size)
    size = masks.sum(1)
    values = torch.zeros(len(orders), len(pairs), dtype=torch.float64)
    for p, (i, j) in enumerate(pairs.tolist()):
        bi, bj = 1 << i, 1 << j
        S = codes[(codes & (bi | bj)) == 0]
        delta = v[S | bi | bj] - v[S | bi] - v[S | bj] + v[S]
        sums = torch.zeros(n + 1, dtype=torch.float64).index_add_(0, size[S], delta)
        counts = torch.zeros(n + 1, dtype=torch.float64).index_add_(0, size[S], torch.ones_like(delta))
        values[:, p] = (sums / counts)[orders]
    zeros = torch.zeros_like(values)
    return InteractionResult(
        orders=orders,
        pairs=pairs,
        values=values,
        stderr=zeros,
        half_values=torch.stack([values, values]),
        n_samples=torch.tensor([math.comb(n - 2, int(m)) for m in orders], dtype=torch.long),
        n_evaluations=2**n,
        n_players=n,
        method="exact",
    )




# ----------------------------------------------------------------------------------------------
# estimator objects
# ----------------------------------------------------------------------------------------------
@runtime_checkable
class Estimator(Protocol):
    """What every estimator is: settings that define its numbers, and one call."""

    def estimate(self, game: Game, n_players: int, pairs, orders, *, seed: int = 0,
                 batch_size: Optional[int] = None) -> InteractionResult:
        """I^(m)(i,j) of ``game`` for ``pairs [P, 2]`` at ``orders``; randomness from ``seed`` only."""

    def planned_evaluations(self, n_players: int, pairs, orders, *, seed: int = 0) -> Optional[int]:
        """The game evaluations :meth:`estimate` will use, where known before the game is played."""

    def to_dict(self) -> Dict[str, Any]:
        """The settings that define the numbers (a run folder's fingerprint)."""


def _fixed_plan(n: int, pairs: torch.Tensor, orders: torch.Tensor, k: int, sharing: str, gen: torch.Generator):
    """Rows of ``k`` contexts per pair at every order (one at the exact orders 0 and n-2) and,
    per order, (exact, sample indices into the rows)."""
    plans, row_blocks, offset = [], [], 0
    for m in orders.tolist():
        exact = m == 0 or m == n - 2
        kk = 1 if exact else k
        if sharing == "shared" or exact:
            rows, idx = shared_plan(n, pairs, m, kk, gen)
        else:
            rows, idx = independent_samples(n, pairs, m, kk, gen)
        plans.append((exact, tuple(t + offset for t in idx)))
        row_blocks.append(rows)
        offset += len(rows)
    return plans, torch.cat(row_blocks)


def _fixed_statistics(v: torch.Tensor, plans, O: int, P: int):
    """values, stderr, split-half means and samples per order from the game values of the rows."""
    values = torch.zeros(O, P, dtype=torch.float64)
    stderr = torch.zeros(O, P, dtype=torch.float64)
    halves = torch.zeros(2, O, P, dtype=torch.float64)
    n_samples = torch.zeros(O, dtype=torch.long)
    for o, (exact, (a, b, c, d)) in enumerate(plans):
        delta = v[a] - v[b] - v[c] + v[d]  # [P, k]
        values[o] = delta.mean(1)
        n_samples[o] = delta.shape[1]
        if exact:
            halves[:, o] = values[o]
            continue
        stderr[o] = delta.std(1, unbiased=True) / math.sqrt(delta.shape[1])
        h = delta.shape[1] // 2
        halves[0, o] = delta[:, :h].mean(1)
        halves[1, o] = delta[:, h:].mean(1)
    return values, stderr, halves, n_samples


@dataclasses.dataclass(frozen=True)
class FixedContexts:
    """``contexts`` samples of Delta(i,j,S) per pair and order.

    ``sharing="independent"``: every pair draws its own contexts, 4 evaluations per sample (the
    public reference code's protocol, ``contexts=50``); ``"shared"``: one context serves every
    pair it can (the same samples per pair in fewer evaluations; :mod:`.sampling`).
    """

    contexts: int = 50
    sharing: str = "shared"

    def __post_init__(self):
        if self.sharing not in SHARING:
            raise ValueError(f"unknown sharing {self.sharing!r}; choose 'shared' or 'independent'")
        if int(self.contexts) < 2:
            raise ValueError("contexts must be >= 2 (a stderr needs two samples)")
        object.__setattr__(self, "contexts", int(self.contexts))

    def _plan(self, n_players: int, pairs, orders, seed: int):
        n = int(n_players)
        pairs, orders = check_pairs(pairs, n), check_orders(orders, n)
        plans, masks = _fixed_plan(n, pairs, orders, self.contexts, self.sharing,
                                   torch.Generator().manual_seed(int(seed)))
        return n, pairs, orders, plans, masks

    def planned_evaluations(self, n_players: int, pairs, orders, *, seed: int = 0) -> int:
        """The exact number of evaluations of :meth:`estimate` with the same arguments."""
        return int(self._plan(n_players, pairs, orders, seed)[4].shape[0])

    def estimate(self, game: Game, n_players: int, pairs, orders, *, seed: int = 0,
                 batch_size: Optional[int] = None) -> InteractionResult:
        """Sampled I^(m)(i,j); orders 0 and n-2 exact.  ``batch_size``: masks per game call (None:
        every row in one call; the game batches its forward passes itself)."""
        n, pairs, orders, plans, masks = self._plan(n_players, pairs, orders, seed)
        v = evaluate(game, masks, batch_size)
        values, stderr, halves, n_samples = _fixed_statistics(v, plans, len(orders), len(pairs))
        return InteractionResult(
            orders=orders, pairs=pairs, values=values, stderr=stderr, half_values=halves, n_samples=n_samples,
            n_evaluations=int(masks.shape[0]), n_players=n, method=self.sharing, seed=int(seed),
        )

    def to_dict(self) -> Dict[str, Any]:
        return {"estimator": "fixed_contexts", "contexts": self.contexts, "sharing": self.sharing}


@dataclasses.dataclass(frozen=True)
class PrecisionTarget:
    """As many shared contexts per pair and order as it takes to bring the noise floor / mean |I^(m)|
    to at most ``target_noise`` at every inner order, at least cost (the method: :mod:`.precision`).

    Without a cap every order ends at or below the target (orders whose pairs would need more than
    ``max_contexts`` samples are the exception, reported in ``metadata["missed_orders"]``).
    ``max_evaluations``: a cap on the game evaluations per call, never exceeded; an order the cap
    leaves above the target is reported in ``metadata["missed_orders"]``.  ``min_contexts``,
    ``max_contexts``: bounds on the samples per pair and order.
    """

    target_noise: float = 0.1
    max_evaluations: Optional[int] = None
    min_contexts: int = 8
    max_contexts: int = 4096

    def __post_init__(self):
        tau = float(self.target_noise)
        if not 0 < tau < 10:
            raise ValueError(f"target_noise is a ratio noise floor / mean |I|, e.g. 0.1; got {self.target_noise}")
        if int(self.min_contexts) < 4:
            raise ValueError("min_contexts must be >= 4 (two samples in each of the two halves)")
        if int(self.max_contexts) < int(self.min_contexts):
            raise ValueError("max_contexts must be >= min_contexts")
        if self.max_evaluations is not None and int(self.max_evaluations) < 1:
            raise ValueError("max_evaluations must be a positive number of evaluations, or None")
        object.__setattr__(self, "target_noise", tau)
        object.__setattr__(self, "min_contexts", int(self.min_contexts))
        object.__setattr__(self, "max_contexts", int(self.max_contexts))
        if self.max_evaluations is not None:
            object.__setattr__(self, "max_evaluations", int(self.max_evaluations))

    def planned_evaluations(self, n_players: int, pairs, orders, *, seed: int = 0) -> Optional[int]:
        """Unknown before the game is played: :meth:`project` runs the pilot and projects it."""
        return None

    def project(self, game: Game, n_players: int, pairs, orders, *, seed: int = 0,
                batch_size: Optional[int] = None) -> Dict[str, Any]:
        """Play the pilot only and project the evaluations of :meth:`estimate` from it:
        ``{"pilot_evaluations", "projected_evaluations"}`` (the cap where it binds)."""
        return project_precision(self, game, n_players, pairs, orders, seed=seed, batch_size=batch_size)

    def estimate(self, game: Game, n_players: int, pairs, orders, *, seed: int = 0,
                 batch_size: Optional[int] = None) -> InteractionResult:
        """I^(m)(i,j) to the target; the precision reached per order is in ``metadata``."""
        return estimate_precision(self, game, n_players, pairs, orders, seed=seed, batch_size=batch_size)

    def to_dict(self) -> Dict[str, Any]:
        return {"estimator": "precision_target", "target_noise": self.target_noise,
                "max_evaluations": self.max_evaluations, "min_contexts": self.min_contexts,
                "max_contexts": self.max_contexts}


_ESTIMATORS = {"fixed_contexts": FixedContexts, "precision_target": PrecisionTarget}


def estimator_from_dict(d: Dict[str, Any]):
    """The estimator whose :meth:`to_dict` is ``d``."""
    d = dict(d)
    kind = d.pop("estimator", None)
    if kind not in _ESTIMATORS:
        raise ValueError(f"unknown estimator {kind!r}; known: {', '.join(_ESTIMATORS)}")
    return _ESTIMATORS[kind](**d)


def estimate_interactions(
    game: Game,
    n_players: int,
    pairs,
    orders,
    n_contexts: int,
    *,
    method: str = "shared",
    seed: int = 0,
    batch_size: Optional[int] = None,
) -> InteractionResult:
    """``FixedContexts(n_contexts, sharing=method).estimate(game, n_players, pairs, orders, seed=seed)``."""
    return FixedContexts(n_contexts, method).estimate(game, n_players, pairs, orders, seed=seed,
                                                      batch_size=batch_size)
