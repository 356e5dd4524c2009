"""Multi-order game-theoretic interactions I^(m)(i,j) and their relative strength J^(m).

Definitions (Deng et al., ICLR 2022), for a game v over players N (|N| = n):

* Delta(i,j,S) = v(S+ij) - v(S+i) - v(S+j) + v(S)  for S a subset of N minus {i,j};
* I^(m)(i,j) = E_{S subset of N\\{i,j}, |S| = m} Delta(i,j,S),  m = 0 .. n-2;
* J^(m) = E_x E_(i,j) |I^(m)(i,j)|, divided by its mean over orders (see :func:`relative_strength`).

Estimators (all return an :class:`InteractionResult`):

* :func:`exact_interactions`: enumeration of all 2^n coalitions (small n).
* :func:`estimate_interactions` with ``method="independent"``: the reference protocol; every pair
  draws its own ``n_contexts`` contexts S per order, 4 evaluations each.
* ``method="shared"``: one sampled context serves every pair it can.  At low orders an anchor S
  (|S| = m) is drawn from all of N and serves the pairs disjoint from it (v(S) and v(S+i) are
  shared); at high orders the present set R (|R| = m+2) is drawn and serves the pairs inside it
  (v(R) and v(R-i) are shared).  Each pair keeps the first ``n_contexts`` anchors that serve it;
  conditional on serving a pair, an anchor is uniform over that pair's contexts, so the estimate
  is unbiased and its samples are i.i.d. (the stderr is the usual std/sqrt(k)).

Orders 0 and n-2 have a single context: they are computed exactly (stderr 0) by both methods.
Each pair's samples are split into two halves; ``half_values`` are their means, so that
``mean(half_values[0] * half_values[1])`` is an unbiased estimate of E_(i,j)[I^2] (the noise
cancels), reported beside the raw mean |I| and its noise floor.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import os
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch

from .results import SavableResult, load_tensors, save_tensors
from .runtime import progress as _progress

__all__ = [
    "InteractionResult",
    "exact_interactions",
    "estimate_interactions",
    "relative_strength",
    "strength_per_image",
    "bootstrap_relative_strength",
    "paired_band_difference",
    "ORDER_BANDS",
    "reference_pairs",
    "orders_from_ratios",
    "REFERENCE_RATIOS",
    "main",
]

log = logging.getLogger(__name__)

#: the order grid of the public reference code: m = int((n - 2) * r)
REFERENCE_RATIOS = (0.0, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0)

Game = Callable[[torch.Tensor], torch.Tensor]


# ----------------------------------------------------------------------------------------------
# result type
# ----------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class InteractionResult(SavableResult):
    """Interactions of one game.

    orders: LongTensor [n_orders];  pairs: LongTensor [n_pairs, 2];
    values: float64 [n_orders, n_pairs], I^(m)(i,j) (raw, signed, unnormalised);
    stderr: same shape, standard error of each value (0 where exact);
    half_values: [2, n_orders, n_pairs], means of the two halves of each pair's samples;
    n_samples: LongTensor [n_orders], samples (contexts) per pair and order;
    n_evaluations: game evaluations used;  method: "exact", "shared" or "independent".
    """

    orders: torch.Tensor
    pairs: torch.Tensor
    values: torch.Tensor
    stderr: torch.Tensor
    half_values: torch.Tensor
    n_samples: torch.Tensor
    n_evaluations: int
    n_players: int
    method: str
    seed: Optional[int] = None
    metadata: Dict[str, Any] = dataclasses.field(default_factory=dict)

    def mean_abs(self) -> torch.Tensor:
        """Raw E_(i,j)|I^(m)| per order ``[n_orders]`` (biased upwards by estimator noise)."""
        return self.values.abs().mean(1)

    def noise_floor(self) -> torch.Tensor:
        """E_(i,j) sqrt(2/pi)*stderr: the mean |I| that pure estimator noise would give."""
        return math.sqrt(2 / math.pi) * self.stderr.mean(1)

    def mean_square_unbiased(self) -> torch.Tensor:
        """Unbiased E_(i,j)[I^2] per order from the product of independent half estimates."""
        return (self.half_values[0] * self.half_values[1]).mean(1)

    def mean_square_raw(self) -> torch.Tensor:
        return (self.values**2).mean(1)


def _check_pairs(pairs, n_players: int) -> torch.Tensor:
    pairs = torch.as_tensor(pairs, dtype=torch.long)
    if pairs.dim() != 2 or pairs.shape[1] != 2 or len(pairs) == 0:
        raise ValueError(f"pairs must be a non-empty [n_pairs, 2] integer tensor, got shape {list(pairs.shape)}")
    if (pairs < 0).any() or (pairs >= n_players).any():
        raise ValueError(f"pair indices must lie in [0, {n_players})")
    if (pairs[:, 0] == pairs[:, 1]).any():
        raise ValueError("a pair needs two different players")
    return pairs


def _check_orders(orders, n_players: int) -> torch.Tensor:
    orders = torch.as_tensor(
        list(orders) if not isinstance(orders, torch.Tensor) else orders, dtype=torch.long
    ).flatten()
    if len(orders) == 0 or (orders < 0).any() or (orders > n_players - 2).any():
        raise ValueError(f"orders must lie in [0, {n_players - 2}], got {orders.tolist()}")
    return orders


def _evaluate(
    game: Game, masks: torch.Tensor, batch_size: Optional[int], show_progress: bool, desc: str
) -> torch.Tensor:
    """Game values of ``masks`` in chunks of ``batch_size`` rows (float64, CPU); NaN is an error."""
    k = masks.shape[0]
    step = k if not batch_size else int(batch_size)
    starts = range(0, k, max(step, 1))
    out = []
    for s in _progress(starts, enabled=show_progress and len(starts) > 1, desc=desc, leave=False, unit="batch"):
        v = torch.as_tensor(game(masks[s : s + step])).detach().to("cpu", torch.float64).flatten()
        if v.shape[0] != min(step, k - s):
            raise ValueError(f"the game returned {v.shape[0]} values for {min(step, k - s)} masks")
        out.append(v)
    v = torch.cat(out) if out else torch.zeros(0, dtype=torch.float64)
    bad = ~torch.isfinite(v)
    if bad.any():
        raise ValueError(
            f"the game returned {int(bad.sum())} non-finite values (NaN/inf) out of {k}; "
            f"check the model's dtype and inputs"
        )
    return v


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
    pairs = _check_pairs(pairs, n)
    orders = _check_orders(range(n - 1) if orders is None else orders, n)
    codes = torch.arange(2**n, dtype=torch.long)
    bits = 1 << torch.arange(n, dtype=torch.long)
    masks = (codes[:, None] & bits) != 0
    v = _evaluate(game, masks, batch_size, False, "exact")
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
# sampling plans: rows to evaluate and how to combine them
# ----------------------------------------------------------------------------------------------
def _random_subsets(
    count: int, n: int, size: int, gen: torch.Generator, exclude: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """``count`` uniform random subsets of ``size`` players as bool ``[count, n]`` rows.

    ``exclude [count, n]`` (bool): players that must not be drawn in that row.
    """
    keys = torch.rand(count, n, generator=gen, dtype=torch.float64)
    if exclude is not None:
        keys = keys.masked_fill(exclude, 2.0)
    out = torch.zeros(count, n, dtype=torch.bool)
    if size > 0:
        idx = keys.topk(size, dim=1, largest=False).indices
        out.scatter_(1, idx, True)
    return out


def _flip(rows: torch.Tensor, players: torch.Tensor) -> torch.Tensor:
    out = rows.clone()
    r = torch.arange(len(rows))
    out[r, players] = ~out[r, players]
    return out


def _plan_independent(n: int, pairs: torch.Tensor, m: int, k: int, gen: torch.Generator):
    P = len(pairs)
    pi = pairs[:, 0].repeat_interleave(k)
    pj = pairs[:, 1].repeat_interleave(k)
    excl = torch.zeros(P * k, n, dtype=torch.bool)
    r = torch.arange(P * k)
    excl[r, pi] = True
    excl[r, pj] = True
    S = _random_subsets(P * k, n, m, gen, excl)
    Si, Sj = _flip(S, pi), _flip(S, pj)
    Sij = _flip(Si, pj)
    rows = torch.cat([Sij, Si, Sj, S])
    base = torch.arange(P * k).view(P, k)
    R = P * k
    return rows, (base, base + R, base + 2 * R, base + 3 * R)


def _plan_shared(n: int, pairs: torch.Tensor, m: int, k: int, gen: torch.Generator):
    """Anchors serving many pairs; returns rows and index tensors [P, k] (a - b - c + d)."""
    P = len(pairs)
    pi, pj = pairs[:, 0], pairs[:, 1]
    low = (n - m) * (n - m - 1) >= (m + 2) * (m + 1)
    size = m if low else m + 2
    p_serve = ((n - m) * (n - m - 1) if low else (m + 2) * (m + 1)) / (n * (n - 1))
    need = torch.full((P,), k, dtype=torch.long)
    anchors, takes = [], []
    while int(need.max()) > 0:
        count = int(math.ceil(int(need.max()) / p_serve * 1.1)) + 4
        A = _random_subsets(count, n, size, gen)
        if low:
            serve = ~A[:, pi] & ~A[:, pj]
        else:
            serve = A[:, pi] & A[:, pj]
        take = serve & (serve.long().cumsum(0) <= need)
        need = need - take.sum(0)
        keep = take.any(1)
        anchors.append(A[keep])
        takes.append(take[keep])
    A = torch.cat(anchors)
    take = torch.cat(takes)  # [C, P]
    C = len(A)
    c_idx, p_idx = take.nonzero(as_tuple=True)  # sorted by context, then pair
    # single flips, deduplicated per (context, player)
    keys_i = c_idx * n + pi[p_idx]
    keys_j = c_idx * n + pj[p_idx]
    uniq, inv = torch.unique(torch.cat([keys_i, keys_j]), return_inverse=True)
    single = _flip(A[uniq // n], uniq % n)
    T = len(c_idx)
    inv_i, inv_j = inv[:T], inv[T:]
    double = _flip(_flip(A[c_idx], pi[p_idx]), pj[p_idx])
    rows = torch.cat([A, single, double])
    off_single, off_double = C, C + len(uniq)
    # order the samples of each pair by context (stable sort on the pair index)
    order = torch.sort(p_idx, stable=True).indices
    c_s = c_idx[order].view(P, k)
    t_s = order.view(P, k)
    a = off_double + t_s
    b = off_single + inv_i[order].view(P, k)
    c = off_single + inv_j[order].view(P, k)
    d = c_s
    if low:  # rows: S+ij, S+i, S+j, S
        return rows, (a, b, c, d)
    return rows, (d, c, b, a)  # rows: R, R-j, R-i, R-ij  -> Delta = v(R) - v(R-i) - v(R-j) + v(R-ij)


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
    progress: bool = False,
) -> InteractionResult:
    """Sampled I^(m)(i,j) with ``n_contexts`` contexts per pair and order.

    Orders 0 and n-2 are exact (one context, stderr 0).  ``batch_size``: masks per game call
    (None: all rows of the run in one call; the game batches its forward passes itself).
    Randomness comes only from a ``torch.Generator`` seeded with ``seed``.
    """
    if method not in ("shared", "independent"):
        raise ValueError(f"unknown method {method!r}; choose 'shared' or 'independent'")
    n = int(n_players)
    pairs = _check_pairs(pairs, n)
    orders = _check_orders(orders, n)
    k = int(n_contexts)
    if k < 2:
        raise ValueError("n_contexts must be >= 2 (a stderr needs two samples)")
    gen = torch.Generator().manual_seed(int(seed))
    plans, row_blocks, offset = [], [], 0
    for m in orders.tolist():
        exact = m == 0 or m == n - 2
        kk = 1 if exact else k
        if method == "shared" or exact:
            rows, idx = _plan_shared(n, pairs, m, kk, gen)
        else:
            rows, idx = _plan_independent(n, pairs, m, kk, gen)
        plans.append((exact, tuple(t + offset for t in idx)))
        row_blocks.append(rows)
        offset += len(rows)
    masks = torch.cat(row_blocks)
    v = _evaluate(game, masks, batch_size, progress, f"{method} rows")
    O, P = len(orders), len(pairs)
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
    return InteractionResult(
        orders=orders,
        pairs=pairs,
        values=values,
        stderr=stderr,
        half_values=halves,
        n_samples=n_samples,
        n_evaluations=int(masks.shape[0]),
        n_players=n,
        method=method,
        seed=int(seed),
    )


# ----------------------------------------------------------------------------------------------
# pairs, orders and J^(m)
# ----------------------------------------------------------------------------------------------
def orders_from_ratios(ratios: Sequence[float], n_players: int) -> List[int]:
    """m = int((n - 2) * r) as in the reference code (duplicates removed, order kept)."""
    out: List[int] = []
    for r in ratios:
        if not 0.0 <= float(r) <= 1.0:
            raise ValueError(f"ratio {r} is outside [0, 1]")
        m = int((n_players - 2) * float(r))
        if m not in out:
            out.append(m)
    return out


def reference_pairs(
    grid: int, n_pairs: int, radius: int = 2, generator: Optional[torch.Generator] = None
) -> torch.Tensor:
    """The reference pair rule: i uniform over the ``grid x grid`` cells, j uniform among the cells
    at Chebyshev distance 1..``radius`` of i that lie inside the grid (24 away from the border
    for radius 2).  Returns LongTensor ``[n_pairs, 2]`` (row-major cell indices)."""
    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    n = grid * grid
    out = torch.zeros(n_pairs, 2, dtype=torch.long)
    offsets = [(dy, dx) for dy in range(-radius, radius + 1) for dx in range(-radius, radius + 1) if (dy, dx) != (0, 0)]
    for p in range(n_pairs):
        i = int(torch.randint(n, (1,), generator=gen))
        y, x = divmod(i, grid)
        nbrs = [(y + dy) * grid + (x + dx) for dy, dx in offsets if 0 <= y + dy < grid and 0 <= x + dx < grid]
        j = nbrs[int(torch.randint(len(nbrs), (1,), generator=gen))]
        out[p, 0], out[p, 1] = i, j
    return out


def _as_stack(source) -> Tuple[torch.Tensor, Optional[torch.Tensor], Optional[torch.Tensor], Optional[int]]:
    """(values [X,O,P], halves [X,2,O,P] or None, orders, n_players) from results or a tensor."""
    if isinstance(source, InteractionResult):
        source = [source]
    if isinstance(source, torch.Tensor):
        vals = source if source.dim() == 3 else source[None]
        return vals.double(), None, None, None
    source = list(source)
    if not source:
        raise ValueError("no results given")
    vals = torch.stack([r.values for r in source])
    halves = torch.stack([r.half_values for r in source])
    return vals, halves, source[0].orders, source[0].n_players


def strength_per_image(source, statistic: str = "mean_abs") -> torch.Tensor:
    """``[n_images, n_orders]``: E_(i,j)|I^(m)| per image (``"mean_abs"``) or the noise-free
    root of the split-half E_(i,j)[I^2] (``"rms_unbiased"``, needs results)."""
    vals, halves, _, _ = _as_stack(source)
    if statistic == "mean_abs":
        return vals.abs().mean(-1)
    if statistic == "rms_unbiased":
        if halves is None:
            raise ValueError("rms_unbiased needs InteractionResult objects (their half_values)")
        return (halves[:, 0] * halves[:, 1]).mean(-1).clamp_min(0).sqrt()
    raise ValueError(f"unknown statistic {statistic!r}; choose 'mean_abs' or 'rms_unbiased'")


def _normaliser(
    curve: torch.Tensor, orders: Optional[torch.Tensor], n_players: Optional[int], normalization: str
) -> torch.Tensor:
    if normalization == "evaluated":
        return curve.mean(-1, keepdim=True)
    if normalization == "all":
        if orders is None or n_players is None:
            raise ValueError("normalization='all' needs the orders and n_players")
        o = torch.as_tensor(orders, dtype=torch.float64)
        if int(o[0]) != 0 or int(o[-1]) != n_players - 2 or (o[1:] <= o[:-1]).any():
            raise ValueError("normalization='all' needs increasing orders from 0 to n-2 (it interpolates between them)")
        grid = torch.arange(n_players - 1, dtype=torch.float64)
        seg = torch.searchsorted(o, grid, right=True).clamp(1, len(o) - 1)
        lo, hi = o[seg - 1], o[seg]
        w = (grid - lo) / (hi - lo)
        full = curve[..., seg - 1] * (1 - w) + curve[..., seg] * w
        return full.mean(-1, keepdim=True)
    raise ValueError(f"unknown normalization {normalization!r}; choose 'evaluated' or 'all'")


def relative_strength(
    source,
    orders=None,
    n_players: Optional[int] = None,
    *,
    normalization: str = "evaluated",
    statistic: str = "mean_abs",
) -> torch.Tensor:
    """J^(m) = E_x E_(i,j)|I^(m)| divided by its mean over orders, ``[n_orders]``.

    ``source``: an :class:`InteractionResult`, a list of them (one per image) or a tensor of values
    ``[n_images, n_orders, n_pairs]``.  ``normalization``:

    * ``"evaluated"`` (the public reference code): mean over the evaluated orders only;
    * ``"all"``: mean over every order 0..n-2, the curve linearly interpolated between the
      evaluated orders (which must include 0 and n-2).
    """
    vals, _, o, n = _as_stack(source)
    orders = orders if orders is not None else o
    n_players = n_players if n_players is not None else n
    curve = strength_per_image(source, statistic).mean(0)
    return curve / _normaliser(curve, orders, n_players, normalization)[..., 0]


def bootstrap_relative_strength(
    per_image: torch.Tensor,
    orders=None,
    n_players: Optional[int] = None,
    *,
    normalization: str = "evaluated",
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(J, lower, upper): percentile bootstrap over images of ``per_image [n_images, n_orders]``."""
    per_image = torch.as_tensor(per_image, dtype=torch.float64)
    X = per_image.shape[0]
    curve = per_image.mean(0)
    J = curve / _normaliser(curve, orders, n_players, normalization)[0]
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randint(X, (n_boot, X), generator=gen)
    curves = per_image[idx].mean(1)  # [B, O]
    Jb = curves / _normaliser(curves, orders, n_players, normalization)
    q = torch.tensor([(1 - level) / 2, 1 - (1 - level) / 2], dtype=torch.float64)
    lo, hi = torch.quantile(Jb, q, dim=0)
    return J, lo, hi


#: order bands as ranges of m / (n - 2): low and high orders and the middle between them
ORDER_BANDS = {"low": (0.05, 0.2), "middle": (0.3, 0.6), "high": (0.7, 0.95)}


def paired_band_difference(
    per_image_a: torch.Tensor,
    per_image_b: torch.Tensor,
    orders,
    n_players: int,
    bands: Optional[Dict[str, Tuple[float, float]]] = None,
    *,
    n_boot: int = 4000,
    level: float = 0.95,
    seed: int = 0,
) -> Dict[str, Dict[str, Any]]:
    """Model b against model a in absolute interaction strength, per band of orders.

    ``per_image_a``, ``per_image_b``: ``[n_images, n_orders]`` mean |I^(m)| per image of two models
    on the **same** images, pairs and contexts (same seed), so the difference is paired per image.
    For each band (``{name: (lo, hi)}`` in m/(n-2), inclusive, the ends mapped to orders as in
    :func:`orders_from_ratios`; default :data:`ORDER_BANDS`) the per-image difference b - a is
    averaged over the band's evaluated orders. Returned per band: ``diff`` (mean over images),
    ``lower``/``upper`` (percentile bootstrap over images), ``relative`` (diff / a's mean in the
    band) and the ``orders`` used.
    """
    a = torch.as_tensor(per_image_a, dtype=torch.float64)
    b = torch.as_tensor(per_image_b, dtype=torch.float64)
    if a.shape != b.shape or a.dim() != 2:
        raise ValueError(
            f"need two [n_images, n_orders] tensors of one shape, got {tuple(a.shape)} and {tuple(b.shape)}"
        )
    orders_t = torch.as_tensor(orders)
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randint(a.shape[0], (n_boot, a.shape[0]), generator=gen)
    q = torch.tensor([(1 - level) / 2, 1 - (1 - level) / 2], dtype=torch.float64)
    out = {}
    for name, (lo, hi) in (bands or ORDER_BANDS).items():
        # the band's ends mapped to orders by the rule that maps ratios to orders, m = int((n-2) r)
        m_lo, m_hi = int((n_players - 2) * lo), int((n_players - 2) * hi)
        sel = ((orders_t >= m_lo) & (orders_t <= m_hi)).nonzero().flatten()
        if len(sel) == 0:
            raise ValueError(f"band {name!r} ({lo}-{hi}) holds none of the evaluated orders")
        d = (b[:, sel] - a[:, sel]).mean(1)
        lower, upper = torch.quantile(d[idx].mean(1), q)
        out[name] = dict(
            diff=float(d.mean()),
            lower=float(lower),
            upper=float(upper),
            relative=float(d.mean() / a[:, sel].mean()),
            orders=[int(o) for o in orders_t[sel]],
        )
    return out


# ----------------------------------------------------------------------------------------------
# command-line tool
# ----------------------------------------------------------------------------------------------
PROTOCOLS = {
    # the public reference code's protocol, reproduced exactly
    "reference": dict(
        method="independent",
        grid=14,
        pairs=50,
        contexts=50,
        ratios=REFERENCE_RATIOS,
        baseline="mean",
        output="log_odds",
    ),
    # same pairs, orders and budget per pair; contexts shared between pairs (fewer evaluations)
    "efficient": dict(
        method="shared", grid=14, pairs=50, contexts=50, ratios=REFERENCE_RATIOS, baseline="mean", output="log_odds"
    ),
}


def build_parser() -> argparse.ArgumentParser:
    from .cli import add_common_args, add_image_args, add_model_args

    p = argparse.ArgumentParser(
        prog="python -m moga_analysis.interactions",
        description="Multi-order interactions I^(m)(i,j) and J^(m) curves of timm classifiers (MogaNet included).",
        allow_abbrev=False,
    )
    add_model_args(p)
    add_image_args(p)
    g = p.add_argument_group("interactions")
    g.add_argument(
        "--imagenet-val",
        default=None,
        metavar="DIR",
        help="ImageNet validation folder (synset sub-folders, or flat with --labels)",
    )
    g.add_argument("--labels", default=None, help="labels file: 'filename label' lines or one label per line")
    g.add_argument(
        "--protocol",
        choices=sorted(PROTOCOLS),
        default="reference",
        help="reference: independent contexts per pair (the public code); efficient: shared contexts",
    )
    g.add_argument(
        "--method", choices=["shared", "independent"], default=None, help="override the protocol's estimator"
    )
    g.add_argument("--grid", type=int, default=None, help="players = grid x grid cells (default 14)")
    g.add_argument("--pairs", type=int, default=None, help="pairs per image (default 50)")
    g.add_argument("--contexts", type=int, default=None, help="contexts per pair and order (default 50)")
    g.add_argument("--ratios", type=float, nargs="+", default=None, help="order ratios r, m = int((n-2) r)")
    g.add_argument("--baseline", default=None, choices=["mean", "zero", "blur"], help="absent-player baseline")
    g.add_argument(
        "--value",
        dest="output",
        default=None,
        choices=["log_odds", "logit", "log_prob"],
        help="game value v(S) of the target class (default log_odds)",
    )
    g.add_argument("--image-size", type=int, default=None, help="square input size (default: the model's)")
    g.add_argument("--dtype", default="float32", help="model dtype: float32 (default), bfloat16, float16")
    g.add_argument("--channels-last", action="store_true", help="channels-last forward passes")
    g.add_argument("--compile", action="store_true", help="torch.compile the model (pays off on long GPU runs)")
    g.add_argument("--resume", action="store_true", help="keep finished per-image results in --out and do the rest")
    g.add_argument(
        "--normalization",
        choices=["evaluated", "all"],
        default="evaluated",
        help="J^(m) divides by the mean over the evaluated orders (reference) or over all orders",
    )
    g.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the figure's bands")
    g.add_argument("--no-figure", action="store_true")
    add_common_args(p)
    return p


def _settings(args) -> Dict[str, Any]:
    s = dict(PROTOCOLS[args.protocol])
    for key in ("method", "grid", "pairs", "contexts", "ratios", "baseline", "output"):
        if getattr(args, key, None) is not None:
            s[key] = getattr(args, key)
    s["ratios"] = [float(r) for r in s["ratios"]]
    s["protocol"] = args.protocol
    s["seed"] = int(args.seed)
    s["dtype"] = str(args.dtype)
    s["image_size"] = args.image_size
    if s["pairs"] < 1 or s["contexts"] < 2:
        raise ValueError("--pairs must be >= 1 and --contexts >= 2")
    return s


def _image_list(args) -> Tuple[List[Path], List[int]]:
    """(paths, labels) of the selected images; label -1 = none (the predicted class is used)."""
    from .data import SAMPLE_LABELS, LabeledImageFolder, list_images, sample_image_paths

    if args.imagenet_val and args.images:
        raise ValueError("give --images or --imagenet-val, not both")
    root = args.imagenet_val or args.images
    if root is None:
        paths = sample_image_paths()
        labels = [-1 if SAMPLE_LABELS.get(p.stem) is None else int(SAMPLE_LABELS[p.stem]) for p in paths]
    else:
        list_images(root)  # clear errors for a missing or empty folder
        ds = LabeledImageFolder(root, transform=lambda x: x, labels_file=args.labels)
        paths, labels = list(ds.files), [int(x) for x in ds.labels]
        if args.imagenet_val and all(lb < 0 for lb in labels):
            raise ValueError(f"no ImageNet labels found for {root}: use synset sub-folders or pass --labels")
    if args.num_images is not None:
        if args.num_images < 1:
            raise ValueError("--num-images must be >= 1")
        if args.imagenet_val and args.num_images < len(paths):
            pick = torch.randperm(len(paths), generator=torch.Generator().manual_seed(int(args.seed)))[
                : args.num_images
            ]
            pick = sorted(pick.tolist())
            paths, labels = [paths[i] for i in pick], [labels[i] for i in pick]
        else:
            paths, labels = paths[: args.num_images], labels[: args.num_images]
    return paths, labels


def _load_one(path: Path, transform) -> Optional[torch.Tensor]:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return transform(im.convert("RGB"))
    except (UnidentifiedImageError, OSError, ValueError) as err:
        log.warning("skipping unreadable image %s: %s", path, err)
        return None


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def _image_seed(seed: int, idx: int) -> int:
    return (int(seed) * 1_000_003 + int(idx)) % (2**62)


def run_model(
    name: str,
    args,
    settings: Dict[str, Any],
    paths: List[Path],
    labels: List[int],
    out: Path,
    rank: int = 0,
    world: int = 1,
    checkpoint: Optional[str] = None,
) -> None:
    """Compute and save the per-image results of one model (this rank's share of the images)."""
    from .data import load_model, transform_for
    from .games import ImageMaskingGame
    from .runtime import resolve_dtype

    device = _rank_device(args.device, world)
    # random weights (if any) are drawn from a generator seeded with --seed: reruns, resumed runs and
    # every rank of a distributed run see the same network
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(args.seed))
        model = load_model(
            name, checkpoint=checkpoint, device=device, pretrained=False if args.random_weights else None
        )
    model = model.to(resolve_dtype(args.dtype))
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    transform = transform_for(model, size=args.image_size)
    if args.compile:
        model = torch.compile(model)
    grid = int(settings["grid"])
    n = grid * grid
    orders = orders_from_ratios(settings["ratios"], n)
    folder = out / _safe(name)
    folder.mkdir(parents=True, exist_ok=True)
    mine = [i for i in range(len(paths)) if i % world == rank]
    batch = args.batch_size or (64 if torch.device(device).type == "cpu" else 256)
    bar = _progress(mine, enabled=not args.no_progress, desc=f"{name} images", unit="img")
    for idx in bar:
        file = folder / f"img_{idx:05d}.safetensors"
        config = dict(settings, model=name, image=str(paths[idx]), index=idx)
        if checkpoint is not None:
            config["checkpoint"] = str(checkpoint)
        if args.resume and file.exists():
            _, meta = load_tensors(file)
            old = meta.get("metadata", {}).get("config")
            if old != json_roundtrip(config):
                raise ValueError(f"{file} was made with other settings; use a new --out or drop --resume")
            log.debug("resume: %s done", file)
            continue
        image = _load_one(paths[idx], transform)
        if image is None:
            _write_skip(file, config, "unreadable image")
            continue
        target = labels[idx] if labels[idx] >= 0 else None
        game = ImageMaskingGame(
            model,
            image,
            target=target,
            grid=grid,
            baseline=settings["baseline"],
            output=settings["output"],
            batch_size=batch,
            channels_last=args.channels_last,
        )
        pairs = reference_pairs(
            grid, int(settings["pairs"]), generator=torch.Generator().manual_seed(_image_seed(args.seed, idx))
        )
        try:
            res = estimate_interactions(
                game,
                n,
                pairs,
                orders,
                int(settings["contexts"]),
                method=settings["method"],
                seed=_image_seed(args.seed, idx) + 1,
                progress=not args.no_progress,
            )
        except ValueError as err:
            raise ValueError(f"{name} on image {paths[idx]}: {err}") from None
        meta = dict(
            config=json_roundtrip(config),
            target=game.target,
            label=labels[idx],
            weights=getattr(model, "weights_source", None),
        )
        dataclasses.replace(res, metadata=meta).save(file)
        log.debug("%s: %s done (%d evaluations)", name, paths[idx].name, res.n_evaluations)


def json_roundtrip(obj):
    import json

    return json.loads(json.dumps(obj, default=str))


def _write_skip(file: Path, config: Dict[str, Any], reason: str) -> None:
    save_tensors(file, {"skipped": torch.zeros(1)}, {"skipped": reason, "metadata": {"config": json_roundtrip(config)}})


def _rank_device(device: str, world: int):
    from .runtime import resolve_device

    dev = resolve_device(device)
    if dev.type == "cuda" and world > 1 and dev.index is None:
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False  # fp32 second differences: no TF32
        torch.backends.cudnn.allow_tf32 = False
        torch.cuda.set_device(dev)
    return dev


def collect(
    name: str, settings: Dict[str, Any], paths: List[Path], out: Path, extra_meta: Dict[str, Any]
) -> Dict[str, Any]:
    """Stack the per-image files of one model into ``out/interactions_<model>.safetensors``."""
    from .runtime import environment_info

    folder = out / _safe(name)
    vals, errs, halves, pairs, targets, kept, skipped, evals = [], [], [], [], [], [], [], 0
    orders, weights = None, None
    for idx, path in enumerate(paths):
        tensors, meta = load_tensors(folder / f"img_{idx:05d}.safetensors")
        if "skipped" in meta:
            skipped.append([str(path), meta["skipped"]])
            continue
        vals.append(tensors["values"])
        errs.append(tensors["stderr"])
        halves.append(tensors["half_values"])
        pairs.append(tensors["pairs"])
        orders = tensors["orders"]
        targets.append(int(meta["metadata"]["target"]))
        kept.append(str(path))
        evals += int(meta["n_evaluations"])
        weights = meta["metadata"].get("weights")
    if not vals:
        raise ValueError(f"{name}: no image could be read")
    values = torch.stack(vals)
    n = int(settings["grid"]) ** 2
    per_image = values.abs().mean(-1)
    H = torch.stack(halves)
    rms_unb = (H[:, 0] * H[:, 1]).mean(-1).clamp_min(0).sqrt()
    floor = math.sqrt(2 / math.pi) * torch.stack(errs).mean(-1)
    tensors = {
        "orders": orders,
        "values": values,
        "stderr": torch.stack(errs),
        "half_values": H,
        "pairs": torch.stack(pairs),
        "targets": torch.tensor(targets),
        "mean_abs": per_image,
        "noise_floor": floor,
        "rms_unbiased": rms_unb,
        "J_evaluated": relative_strength(values, orders, n, normalization="evaluated"),
        "J_all": relative_strength(values, orders, n, normalization="all")
        if int(orders[0]) == 0 and int(orders[-1]) == n - 2
        else relative_strength(values),
    }
    meta = dict(
        model=name,
        weights=weights,
        settings=settings,
        images=kept,
        skipped=skipped,
        n_evaluations=evals,
        environment=environment_info(),
        **extra_meta,
    )
    save_tensors(out / f"interactions_{_safe(name)}.safetensors", tensors, meta)
    return {"name": name, "orders": orders, "per_image": per_image, "n_players": n}


def main(argv: Optional[Sequence[str]] = None) -> int:
    from .cli import model_specs, setup_from_args

    args = build_parser().parse_args(argv)
    setup_from_args(args)
    settings = _settings(args)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    dist = None
    if world > 1:
        import torch.distributed as dist

        backend = "nccl" if _rank_device(args.device, world).type == "cuda" else "gloo"
        dist.init_process_group(backend)
    try:
        out = Path(args.out or "runs/interactions")
        paths, labels = _image_list(args)
        specs = model_specs(args)
        models = [name for name, _ in specs]
        log.info("%d images, models %s, settings %s (rank %d/%d)", len(paths), models, settings, rank, world)
        for name, checkpoint in specs:
            run_model(name, args, settings, paths, labels, out, rank, world, checkpoint=checkpoint)
        if dist is not None:
            dist.barrier()
        if rank == 0:
            curves = [collect(name, settings, paths, out, {"models": models}) for name in models]
            if not args.no_figure:
                from .plotting.interactions import plot_relative_strength
                from .plotting.style import save_figure

                fig = plot_relative_strength(
                    curves, normalization=args.normalization, n_boot=args.bootstrap, seed=args.seed
                )
                for f in save_figure(fig, out / "interactions_J"):
                    log.info("wrote %s", f)
            for c in curves:
                J = relative_strength(
                    c["per_image"][:, :, None], c["orders"], c["n_players"], normalization=args.normalization
                )
                log.info("%s J^(m): %s", c["name"], " ".join(f"{x:.3f}" for x in J.tolist()))
            log.info("results in %s", out)
        if dist is not None:
            dist.barrier()
    finally:
        if dist is not None and dist.is_initialized():
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    from .cli import run_main

    run_main(main)
