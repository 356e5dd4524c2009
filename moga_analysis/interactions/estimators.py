"""Estimators of multi-order game-theoretic interactions I^(m)(i,j).

Definitions (Deng et al., ICLR 2022), for a game v over players N (|N| = n):

* Delta(i,j,S) = v(S+ij) - v(S+i) - v(S+j) + v(S)  for S a subset of N minus {i,j};
* I^(m)(i,j) = E_{S subset of N\\{i,j}, |S| = m} Delta(i,j,S),  m = 0 .. n-2.

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

import dataclasses
import logging
import math
from typing import Any, Callable, Dict, Optional

import torch

from ..results import SavableResult
from ..runtime import progress as _progress

__all__ = ["InteractionResult", "exact_interactions", "estimate_interactions", "deconvolved_mean_abs", "Game"]

log = logging.getLogger(__name__)

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
    n_samples: LongTensor [n_orders], samples (contexts) per pair and order (the fewest any pair
    got, where pairs differ);
    n_evaluations: game evaluations used;  method: "exact", "shared", "independent" or "adaptive";
    samples_per_pair: LongTensor [n_orders, n_pairs] where the samples differ per pair (adaptive
    allocation), else None (files saved before it existed load with None).
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
    samples_per_pair: Optional[torch.Tensor] = None

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

    def noise_ratio(self) -> torch.Tensor:
        """Noise floor / raw mean |I| per order (0 where exact): the precision that
        :func:`~moga_analysis.interactions.estimate_adaptive` targets."""
        floor, signal = self.noise_floor(), self.mean_abs()
        return torch.where(floor > 0, floor / signal.clamp_min(torch.finfo(signal.dtype).tiny), torch.zeros_like(floor))

    def mean_abs_debiased(self) -> torch.Tensor:
        """E_(i,j)|I^(m)| per order corrected for estimator noise (see :func:`deconvolved_mean_abs`)."""
        return deconvolved_mean_abs(self.values, self.stderr)


def _npmle_scaled(x, s, c, noisy, grid_size: int, iterations: int):
    """NPMLE of G for theta_p = I_p / c_p (x_p ~ N(c_p theta_p, s_p^2)), by EM on a grid, per row.

    Returns (mean log-likelihood per noisy pair, up to a constant that does not depend on c;
    posterior mean of |I_p| [B, P])."""
    u = torch.where(noisy, x / c, torch.zeros_like(x))  # the grid spans the theta the data point at
    lo, hi = u.amin(-1).clamp(max=0.0), u.amax(-1).clamp(min=0.0)
    t = torch.linspace(0.0, 1.0, grid_size, dtype=torch.float64)
    grid = torch.cat([lo[:, None] + (hi - lo)[:, None] * t, torch.zeros_like(lo)[:, None]], 1)  # [B, G]
    logL = -0.5 * ((x[..., None] - c[..., None] * grid[:, None, :]) / s[..., None]) ** 2
    top = logL.amax(-1, keepdim=True)
    L = (logL - top).exp()  # [B, P, G]; the 1/s_p factor does not depend on c
    weight = noisy.double() / noisy.sum(-1, keepdim=True)  # the mean over noisy pairs
    w = torch.full(grid.shape, 1.0 / grid.shape[1], dtype=torch.float64)
    for _ in range(int(iterations)):
        f = (L * w[:, None, :]).sum(-1, keepdim=True)
        post = L * w[:, None, :] / f
        w = (post * weight[..., None]).sum(1)
    loglik = ((f[..., 0].log() + top[..., 0]) * weight).sum(-1)
    return loglik, c * (post * grid.abs()[:, None, :]).sum(-1)


def deconvolved_mean_abs(
    values: torch.Tensor,
    stderr: torch.Tensor,
    *,
    alphas=(0.0, 0.25, 0.5, 0.75, 1.0),
    grid_size: int = 80,
    iterations: int = 200,
) -> torch.Tensor:
    """Mean |I| over the last dimension (pairs), corrected for estimator noise.

    Model: each estimate is ``x_p = I_p + e_p`` with ``e_p ~ N(0, s_p^2)`` and ``s_p`` its stderr
    (the mean of many i.i.d. second differences is close to normal).  The raw mean |x| is biased
    upwards (by up to ``sqrt(2/pi) s`` where |I| << s), and no unbiased estimator of |I| exists for
    a normal observation (|I| is not smooth at 0), so the correction is an empirical-Bayes one:
    ``I_p = s_p^alpha theta_p`` with the theta_p drawn from one distribution G, estimated by
    nonparametric maximum likelihood (Kiefer-Wolfowitz NPMLE on a grid, fitted by EM), and the
    result is the mean over pairs of the posterior mean of |I_p|.  ``alpha`` says how the size of
    an interaction goes with its noise (0: the interactions are exchangeable whatever their stderr;
    1: their signal-to-noise ratios are; on a real network the pairs with large interactions are
    also the noisy ones); it is chosen per row among ``alphas`` by the marginal likelihood.
    Consistent as the number of pairs grows; its residual bias and spread are measured in
    docs/interactions.md and tested in tests/test_adaptive.py.  Exact entries (``s_p = 0``) enter
    as |x_p|.

    ``values``, ``stderr``: ``[..., n_pairs]``; returns ``[...]`` (float64).
    """
    x = torch.as_tensor(values, dtype=torch.float64)
    s = torch.as_tensor(stderr, dtype=torch.float64)
    if x.shape != s.shape or x.dim() == 0:
        raise ValueError(f"values and stderr must share a shape [..., n_pairs]: {tuple(x.shape)}, {tuple(s.shape)}")
    lead = x.shape[:-1]
    x, s = x.reshape(-1, x.shape[-1]), s.reshape(-1, s.shape[-1])
    noisy = s > 0
    out = torch.where(noisy, torch.zeros_like(x), x.abs()).sum(-1)
    rows = noisy.any(-1).nonzero().flatten()
    if len(rows):
        nr = noisy[rows]
        sr = torch.where(nr, s[rows], torch.ones_like(s[rows]))
        xr = torch.where(nr, x[rows], torch.zeros_like(sr))
        A, B = len(alphas), len(rows)
        # every alpha at once: rows stacked alpha-major
        c = torch.cat([sr ** float(a) for a in alphas])
        ll, post_abs = _npmle_scaled(xr.repeat(A, 1), sr.repeat(A, 1), c, nr.repeat(A, 1), grid_size, iterations)
        pick = ll.view(A, B).argmax(0)  # the first of equal likelihoods
        best = post_abs.view(A, B, -1)[pick, torch.arange(B)]
        out[rows] += torch.where(nr, best, torch.zeros_like(best)).sum(-1)
    return (out / x.shape[-1]).reshape(lead)


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


def _shared_samples(n: int, pairs: torch.Tensor, m: int, need: torch.Tensor, gen: torch.Generator):
    """Shared-context samples of order ``m``: pair ``p`` gets ``need[p]`` of them.

    Returns ``(rows, (a, b, c, d), pair_of)``: the rows to evaluate, and for every sample (flat,
    sorted by pair, then by context) the row indices whose values give
    ``Delta = v[a] - v[b] - v[c] + v[d]`` and the pair it belongs to.  A pair's samples are its
    first ``need[p]`` anchors among i.i.d. uniform anchors; given that an anchor serves a pair it
    is uniform over that pair's contexts, so each pair's samples are i.i.d. draws of Delta(i,j,S)
    with S uniform among the subsets of size ``m`` of N minus {i,j}.
    """
    pi, pj = pairs[:, 0], pairs[:, 1]
    low = (n - m) * (n - m - 1) >= (m + 2) * (m + 1)
    size = m if low else m + 2
    p_serve = ((n - m) * (n - m - 1) if low else (m + 2) * (m + 1)) / (n * (n - 1))
    need = need.clone()
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
    a = off_double + order
    b = off_single + inv_i[order]
    c = off_single + inv_j[order]
    d = c_idx[order]
    if low:  # rows: S+ij, S+i, S+j, S
        return rows, (a, b, c, d), p_idx[order]
    # rows: R, R-j, R-i, R-ij  -> Delta = v(R) - v(R-i) - v(R-j) + v(R-ij)
    return rows, (d, c, b, a), p_idx[order]


def _plan_shared(n: int, pairs: torch.Tensor, m: int, k: int, gen: torch.Generator):
    """Anchors serving many pairs, ``k`` samples per pair; rows and index tensors [P, k] (a - b - c + d)."""
    P = len(pairs)
    rows, idx, _ = _shared_samples(n, pairs, m, torch.full((P,), k, dtype=torch.long), gen)
    return rows, tuple(t.view(P, k) for t in idx)


def _plan_fixed(n: int, pairs: torch.Tensor, orders: torch.Tensor, k: int, method: str, gen: torch.Generator):
    """Rows of ``k`` contexts per pair at every order (one at the exact orders 0 and n-2) and,
    per order, (exact, sample indices into the rows)."""
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
    plans, masks = _plan_fixed(n, pairs, orders, k, method, torch.Generator().manual_seed(int(seed)))
    v = _evaluate(game, masks, batch_size, progress, f"{method} rows")
    values, stderr, halves, n_samples = _fixed_statistics(v, plans, len(orders), len(pairs))
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
