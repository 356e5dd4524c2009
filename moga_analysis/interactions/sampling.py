"""Contexts and the rows they need: the sampling that every estimator of :mod:`.estimators` shares.

A sample of the interaction of pair (i, j) at order m is a second difference
``Delta(i,j,S) = v(S+ij) - v(S+i) - v(S+j) + v(S)`` with S uniform among the subsets of size m of
N minus {i, j}.  Two ways to draw them:

* :func:`independent_samples`: every pair draws its own contexts (the reference protocol),
  4 rows per sample;
* :func:`shared_samples`: one context serves every pair it can.  At low orders an anchor S
  (|S| = m) is drawn from all of N and serves the pairs disjoint from it (v(S) and v(S+i) are
  shared); at high orders the present set R (|R| = m+2) is drawn and serves the pairs inside it
  (v(R) and v(R-i) are shared).  Each pair keeps the first anchors that serve it; conditional on
  serving a pair, an anchor is uniform over that pair's contexts, so each pair's samples are
  i.i.d. and unbiased.

Both return the rows (bool masks ``[rows, n]``) and, per sample, the indices ``(a, b, c, d)`` of
the rows whose values give ``Delta = v[a] - v[b] - v[c] + v[d]``.  :func:`evaluate` plays the game
on the rows; :func:`pair_statistics` turns samples into per-pair means, stderrs and split halves;
:func:`noise_floor` is the mean |I| that estimator noise alone would give.
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Tuple

import torch

__all__ = [
    "Game",
    "SQRT_2_PI",
    "check_masks",
    "check_pairs",
    "check_orders",
    "evaluate",
    "noise_floor",
    "random_subsets",
    "independent_samples",
    "shared_samples",
    "shared_plan",
    "pair_statistics",
]

#: a game: bool masks ``[k, n_players]`` -> values ``[k]``
Game = Callable[[torch.Tensor], torch.Tensor]

#: E|Z| for a standard normal Z: the mean |x| of pure noise of standard deviation s is sqrt(2/pi) s
SQRT_2_PI = math.sqrt(2 / math.pi)


def noise_floor(stderr: torch.Tensor, dim=-1) -> torch.Tensor:
    """``sqrt(2/pi) * mean(stderr)`` over ``dim`` (the pairs): the mean |I| that estimator noise
    alone would give (an estimate ``x = I + e`` with ``I = 0`` and ``e ~ N(0, s^2)`` has
    ``E|x| = sqrt(2/pi) s``)."""
    return SQRT_2_PI * stderr.mean(dim)


def check_masks(masks, n_players: int) -> torch.Tensor:
    """``masks`` as a bool tensor ``[k, n_players]`` (what every game takes), or a clear error."""
    masks = torch.as_tensor(masks)
    if masks.dtype != torch.bool:
        raise TypeError(f"masks must be a bool tensor, got {masks.dtype}")
    if masks.dim() != 2 or masks.shape[1] != n_players:
        raise ValueError(f"masks must be [k, {n_players}], got {list(masks.shape)}")
    return masks


def check_pairs(pairs, n_players: int) -> torch.Tensor:
    """``pairs`` as a LongTensor ``[n_pairs, 2]`` of two different players in ``[0, n_players)``."""
    pairs = torch.as_tensor(pairs, dtype=torch.long)
    if pairs.dim() != 2 or pairs.shape[1] != 2 or len(pairs) == 0:
        raise ValueError(f"pairs must be a non-empty [n_pairs, 2] integer tensor, got shape {list(pairs.shape)}")
    if (pairs < 0).any() or (pairs >= n_players).any():
        raise ValueError(f"pair indices must lie in [0, {n_players})")
    if (pairs[:, 0] == pairs[:, 1]).any():
        raise ValueError("a pair needs two different players")
    return pairs


def check_orders(orders, n_players: int) -> torch.Tensor:
    """``orders`` as a flat LongTensor of orders in ``[0, n_players - 2]``."""
    orders = torch.as_tensor(
        list(orders) if not isinstance(orders, torch.Tensor) else orders, dtype=torch.long
    ).flatten()
    if len(orders) == 0 or (orders < 0).any() or (orders > n_players - 2).any():
        raise ValueError(f"orders must lie in [0, {n_players - 2}], got {orders.tolist()}")
    return orders


def evaluate(game: Game, masks: torch.Tensor, batch_size: Optional[int] = None) -> torch.Tensor:
    """Game values of ``masks`` in calls of at most ``batch_size`` rows (None: one call), as float64
    on the CPU; a non-finite value is an error."""
    k = masks.shape[0]
    step = max(k if not batch_size else int(batch_size), 1)
    out = []
    for s in range(0, k, step):
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


def random_subsets(
    count: int, n: int, size: int, gen: torch.Generator, exclude: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """``count`` uniform random subsets of ``size`` players as bool ``[count, n]`` rows;
    ``exclude [count, n]`` (bool): players that must not be drawn in that row."""
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


def independent_samples(n: int, pairs: torch.Tensor, m: int, k: int, gen: torch.Generator):
    """``k`` contexts of order ``m`` drawn for every pair on its own: ``(rows, (a, b, c, d))`` with
    index tensors ``[P, k]``."""
    P = len(pairs)
    pi = pairs[:, 0].repeat_interleave(k)
    pj = pairs[:, 1].repeat_interleave(k)
    excl = torch.zeros(P * k, n, dtype=torch.bool)
    r = torch.arange(P * k)
    excl[r, pi] = True
    excl[r, pj] = True
    S = random_subsets(P * k, n, m, gen, excl)
    Si, Sj = _flip(S, pi), _flip(S, pj)
    Sij = _flip(Si, pj)
    rows = torch.cat([Sij, Si, Sj, S])
    base = torch.arange(P * k).view(P, k)
    R = P * k
    return rows, (base, base + R, base + 2 * R, base + 3 * R)


def shared_samples(n: int, pairs: torch.Tensor, m: int, need: torch.Tensor, gen: torch.Generator):
    """Shared-context samples of order ``m``: pair ``p`` gets ``need[p]`` of them.

    Returns ``(rows, (a, b, c, d), pair_of)``: the rows to evaluate, and for every sample (flat,
    sorted by pair, then by context) the row indices whose values give
    ``Delta = v[a] - v[b] - v[c] + v[d]`` and the pair it belongs to.  A pair's samples are its
    first ``need[p]`` anchors among i.i.d. uniform anchors (see the module docstring).
    """
    pi, pj = pairs[:, 0], pairs[:, 1]
    low = (n - m) * (n - m - 1) >= (m + 2) * (m + 1)
    size = m if low else m + 2
    p_serve = ((n - m) * (n - m - 1) if low else (m + 2) * (m + 1)) / (n * (n - 1))
    need = need.clone()
    anchors, takes = [], []
    while int(need.max()) > 0:
        count = int(math.ceil(int(need.max()) / p_serve * 1.1)) + 4
        A = random_subsets(count, n, size, gen)
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
    a = off_double + order
    b = off_single + inv_i[order]
    c = off_single + inv_j[order]
    d = c_idx[order]
    if low:  # rows: S+ij, S+i, S+j, S
        return rows, (a, b, c, d), p_idx[order]
    # rows: R, R-j, R-i, R-ij  -> Delta = v(R) - v(R-i) - v(R-j) + v(R-ij)
    return rows, (d, c, b, a), p_idx[order]


def shared_plan(n: int, pairs: torch.Tensor, m: int, k: int, gen: torch.Generator):
    """:func:`shared_samples` with ``k`` samples for every pair: ``(rows, (a, b, c, d))`` with
    index tensors ``[P, k]``."""
    P = len(pairs)
    rows, idx, _ = shared_samples(n, pairs, m, torch.full((P,), k, dtype=torch.long), gen)
    return rows, tuple(t.view(P, k) for t in idx)


def pair_statistics(delta: torch.Tensor, pair_of: torch.Tensor, n_pairs: int) -> Tuple[torch.Tensor, ...]:
    """Per pair, from samples sorted by pair: ``(mean, stderr, halves [2, P], count)``, the halves
    being the means of the first half of a pair's samples (in their order) and of the rest."""
    P = n_pairs
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
