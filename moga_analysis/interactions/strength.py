"""Relative interaction strength J^(m), bootstrap bands and paired band differences.

J^(m) = E_x E_(i,j) |I^(m)(i,j)|, divided by its mean over orders (see :func:`relative_strength`).
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

import torch

from .estimators import InteractionResult

__all__ = [
    "relative_strength",
    "strength_per_image",
    "bootstrap_relative_strength",
    "paired_band_difference",
    "strength_normaliser",
    "ORDER_BANDS",
]


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


def strength_normaliser(
    curve: torch.Tensor, orders: Optional[torch.Tensor], n_players: Optional[int], normalization: str
) -> torch.Tensor:
    """The divisor of J^(m) for mean |I| curves ``[..., n_orders]``, ``[..., 1]``: their mean over the
    evaluated orders (``"evaluated"``), or over all orders 0..n-2 (``"all"``, trapezoidal between the
    evaluated ones, which must include 0 and n - 2)."""
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
    return curve / strength_normaliser(curve, orders, n_players, normalization)[..., 0]


def _resample(n_images: int, n_boot: int, seed: int) -> torch.Tensor:
    """``[n_boot, n_images]`` image indices drawn with replacement (seeded generator)."""
    return torch.randint(n_images, (n_boot, n_images), generator=torch.Generator().manual_seed(seed))


def _percentile_interval(replicates: torch.Tensor, level: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """(lower, upper) percentile interval of bootstrap ``replicates`` along dim 0."""
    q = torch.tensor([(1 - level) / 2, 1 - (1 - level) / 2], dtype=torch.float64)
    lo, hi = torch.quantile(replicates, q, dim=0)
    return lo, hi


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
    J = curve / strength_normaliser(curve, orders, n_players, normalization)[0]
    curves = per_image[_resample(X, n_boot, seed)].mean(1)  # [B, O]
    lo, hi = _percentile_interval(curves / strength_normaliser(curves, orders, n_players, normalization), level)
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
    idx = _resample(a.shape[0], n_boot, seed)
    out = {}
    for name, (lo, hi) in (bands or ORDER_BANDS).items():
        # the band's ends mapped to orders by the rule that maps ratios to orders, m = int((n-2) r)
        m_lo, m_hi = int((n_players - 2) * lo), int((n_players - 2) * hi)
        sel = ((orders_t >= m_lo) & (orders_t <= m_hi)).nonzero().flatten()
        if len(sel) == 0:
            raise ValueError(f"band {name!r} ({lo}-{hi}) holds none of the evaluated orders")
        d = (b[:, sel] - a[:, sel]).mean(1)
        lower, upper = _percentile_interval(d[idx].mean(1), level)
        out[name] = dict(
            diff=float(d.mean()),
            lower=float(lower),
            upper=float(upper),
            relative=float(d.mean() / a[:, sel].mean()),
            orders=[int(o) for o in orders_t[sel]],
        )
    return out
