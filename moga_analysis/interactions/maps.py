"""Where interactions live: per-cell maps of I^(m)(i,j) by band of orders.

For a ``grid x grid`` game whose pairs cover every cell (:func:`~.design.map_pairs`), the map of a
band of orders gives each cell c the mean of |I^(m)(i,j)| over the pairs (i,j) that c belongs to
and over the band's evaluated orders m.  Beside it:

* ``signed``: the same mean of the signed I^(m)(i,j);
* ``noise_floor``: ``sqrt(2/pi) * stderr`` averaged the same way, the mean |I| that a cell whose
  interactions are all zero would show from estimator noise alone (0 where the values are exact);
* ``mean_square_unbiased``: the mean of ``half_values[0] * half_values[1]``, an unbiased estimate
  of the cell's mean I^2 (the estimator noise of the two halves cancels).

Bands are ranges of m/(n-2) (default :data:`~.strength.ORDER_BANDS`), their ends mapped to orders
as :func:`~.strength.paired_band_difference` maps them: ``m_lo = int((n-2) lo)``,
``m_hi = int((n-2) hi)``, inclusive.

* :func:`maps_from_result`: the maps of one :class:`~.estimators.InteractionResult`;
* maps of models on images come from :func:`~.pipeline.compute_interactions` with
  :meth:`~.pipeline.InteractionSettings.maps` (``stack.maps``);
* :class:`InteractionMaps`: the result, ``[n_images, n_bands, grid, grid]``, saves, loads, stacks;
* :func:`map_difference` / :class:`MapDifference`: two models on the same images, pairs and
  contexts, paired per image and cell.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch

from ..results import SavableResult
from .design import REFERENCE_RATIOS, orders_from_ratios, pair_incidence
from .estimators import InteractionResult
from .sampling import SQRT_2_PI
from .strength import ORDER_BANDS

__all__ = [
    "InteractionMaps",
    "MapDifference",
    "band_orders",
    "map_orders",
    "maps_from_result",
    "map_difference",
]

log = logging.getLogger(__name__)

Bands = Mapping[str, Tuple[float, float]]


# ---------------------------------------------------------------------------------------- bands
def _normal_bands(bands: Optional[Bands]) -> Dict[str, Tuple[float, float]]:
    out = {}
    for name, rng in (ORDER_BANDS if bands is None else bands).items():
        lo, hi = (float(x) for x in rng)
        if not 0.0 <= lo <= hi <= 1.0:
            raise ValueError(f"band {name!r} = ({lo}, {hi}) must satisfy 0 <= lo <= hi <= 1")
        out[str(name)] = (lo, hi)
    if not out:
        raise ValueError("no bands given")
    return out


def band_orders(orders, n_players: int, bands: Optional[Bands] = None) -> Dict[str, List[int]]:
    """For each band ``{name: (lo, hi)}`` (m/(n-2), default :data:`ORDER_BANDS`), the positions in
    ``orders`` of the evaluated orders it holds: ``int((n-2) lo) <= m <= int((n-2) hi)``, the rule of
    :func:`~.strength.paired_band_difference`.  A band that holds none is a ``ValueError``."""
    o = torch.as_tensor(orders, dtype=torch.long).flatten()
    out = {}
    for name, (lo, hi) in _normal_bands(bands).items():
        m_lo, m_hi = int((n_players - 2) * lo), int((n_players - 2) * hi)
        sel = ((o >= m_lo) & (o <= m_hi)).nonzero().flatten().tolist()
        if not sel:
            raise ValueError(
                f"band {name!r} ({lo}-{hi}, orders {m_lo}..{m_hi}) holds none of the evaluated orders {o.tolist()}"
            )
        out[name] = sel
    return out


def map_orders(n_players: int, bands: Optional[Bands] = None, ratios: Optional[Sequence[float]] = None) -> List[int]:
    """The orders a map run evaluates: those of ``ratios`` (default :data:`REFERENCE_RATIOS`) that
    fall in some band, in increasing order (orders 0 and n-2 are left out unless a band holds them)."""
    b = _normal_bands(bands)
    orders = orders_from_ratios(REFERENCE_RATIOS if ratios is None else ratios, n_players)
    keep = sorted(
        {m for m in orders for lo, hi in b.values() if int((n_players - 2) * lo) <= m <= int((n_players - 2) * hi)}
    )
    if not keep:
        raise ValueError(f"none of the orders {orders} falls in a band of {b}")
    band_orders(keep, n_players, b)  # every band must hold an order
    return keep


# ---------------------------------------------------------------------------------- result type
def _grid_of(n_players: int) -> int:
    g = int(round(math.sqrt(n_players)))
    if g * g != n_players:
        raise ValueError(f"{n_players} players are not a square grid; pass grid")
    return g


@dataclasses.dataclass(frozen=True)
class InteractionMaps(SavableResult):
    """Per-cell interaction maps of one model on ``n_images`` images.

    Maps, float64 ``[n_images, n_bands, grid, grid]`` (cells row-major, as the game's players):

    * ``mean_abs``: mean |I^(m)(i,j)| over the cell's pairs and the band's orders (raw: biased
      upwards by estimator noise, compare with ``noise_floor``);
    * ``signed``: the same mean of the signed values;
    * ``noise_floor``: ``sqrt(2/pi) * stderr`` averaged the same way (what a cell without
      interactions would show; 0 for exact values);
    * ``mean_square_unbiased``: unbiased mean I^2 from the two half estimates (may be < 0 by noise).

    Cells in no pair are NaN.  ``n_pairs_per_cell`` LongTensor ``[grid, grid]``; ``pairs``
    ``[n_pairs, 2]``; ``orders`` ``[n_orders]`` (evaluated); ``pair_values`` / ``pair_stderr``
    ``[n_images, n_orders, n_pairs]`` and ``pair_half_values`` ``[n_images, 2, n_orders, n_pairs]``:
    the estimates the maps average (so other bands can be drawn later, :meth:`with_bands`);
    ``bands`` ``{name: (lo, hi)}`` in m/(n-2) and ``band_orders``
    ``{name: [orders]}``; ``targets`` ``[n_images]``; ``n_evaluations`` ``[n_images]`` (masked
    game evaluations per image); ``seeds`` ``[n_images]`` (the estimator's seed per image, -1 for
    exact values); ``model`` (name); ``method``; ``n_contexts`` (per pair and order, 0 for exact);
    ``metadata`` (settings, weights, image ids, versions).
    """

    mean_abs: torch.Tensor
    signed: torch.Tensor
    noise_floor: torch.Tensor
    mean_square_unbiased: torch.Tensor
    n_pairs_per_cell: torch.Tensor
    pairs: torch.Tensor
    orders: torch.Tensor
    pair_values: torch.Tensor
    pair_stderr: torch.Tensor
    pair_half_values: torch.Tensor
    targets: torch.Tensor
    n_evaluations: torch.Tensor
    seeds: torch.Tensor
    bands: Dict[str, Tuple[float, float]]
    band_orders: Dict[str, List[int]]
    grid: int
    n_players: int
    model: str = ""
    method: str = ""
    n_contexts: int = 0
    metadata: Dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        # JSON gives bands back as lists: normalise to tuples (and orders to ints)
        object.__setattr__(self, "bands", {str(k): (float(v[0]), float(v[1])) for k, v in self.bands.items()})
        object.__setattr__(self, "band_orders", {str(k): [int(m) for m in v] for k, v in self.band_orders.items()})
        shape = (self.n_images, len(self.bands), self.grid, self.grid)
        for name in ("mean_abs", "signed", "noise_floor", "mean_square_unbiased"):
            if tuple(getattr(self, name).shape) != shape:
                raise ValueError(f"{name} has shape {list(getattr(self, name).shape)}, expected {list(shape)}")

    # -- views ------------------------------------------------------------------------------
    @property
    def n_images(self) -> int:
        return int(self.mean_abs.shape[0])

    @property
    def band_names(self) -> List[str]:
        return list(self.bands)

    def band_index(self, band: Union[str, int]) -> int:
        if isinstance(band, int):
            return band
        try:
            return self.band_names.index(band)
        except ValueError:
            raise KeyError(f"no band {band!r}; bands are {self.band_names}") from None

    def above_floor(self, factor: float = 1.0) -> torch.Tensor:
        """bool ``[n_images, n_bands, grid, grid]``: mean |I| above ``factor`` times the noise floor
        (NaN cells are False)."""
        return self.mean_abs > factor * self.noise_floor

    def excess(self) -> torch.Tensor:
        """``mean_abs - noise_floor``: what a cell shows beyond pure noise (can be < 0)."""
        return self.mean_abs - self.noise_floor

    def rms_unbiased(self) -> torch.Tensor:
        """Root of the unbiased mean I^2 (clamped at 0): a noise-corrected strength per cell."""
        return self.mean_square_unbiased.clamp_min(0).sqrt()

    def signed_stderr_bound(self) -> torch.Tensor:
        """An upper bound on the standard error of ``signed`` (and of ``mean_abs``) per cell: the mean
        stderr of the cell's values, ``noise_floor / sqrt(2/pi)``.  A bound because the sd of a mean
        never exceeds the mean of the sds, however the estimates correlate (shared contexts)."""
        return self.noise_floor / SQRT_2_PI

    def select(self, index) -> "InteractionMaps":
        """The maps of some images (``index``: int, slice, list or LongTensor)."""
        idx = torch.arange(self.n_images)[index].reshape(-1)
        meta = dict(self.metadata)
        if isinstance(meta.get("image_ids"), list) and len(meta["image_ids"]) == self.n_images:
            meta["image_ids"] = [meta["image_ids"][i] for i in idx.tolist()]
        per_image = {
            f: getattr(self, f)[idx]
            for f in ("mean_abs", "signed", "noise_floor", "mean_square_unbiased", "pair_values", "pair_stderr",
                      "pair_half_values", "targets", "n_evaluations", "seeds")
        }
        return dataclasses.replace(self, **per_image, metadata=meta)

    def with_bands(self, bands: Bands) -> "InteractionMaps":
        """The same estimates averaged over other bands (no new evaluations)."""
        res = [self._result(x) for x in range(self.n_images)]
        parts = [
            maps_from_result(r, self.grid, bands, model=self.model, target=int(t), n_contexts=self.n_contexts)
            for r, t in zip(res, self.targets.tolist())
        ]
        out = InteractionMaps.stack(parts)
        return dataclasses.replace(out, metadata=dict(self.metadata))

    def _result(self, x: int) -> InteractionResult:
        return InteractionResult(
            orders=self.orders, pairs=self.pairs, values=self.pair_values[x], stderr=self.pair_stderr[x],
            half_values=self.pair_half_values[x], n_samples=torch.zeros(len(self.orders), dtype=torch.long),
            n_evaluations=int(self.n_evaluations[x]), n_players=self.n_players, method=self.method,
            seed=int(self.seeds[x]),
        )  # fmt: skip

    @classmethod
    def stack(cls, parts: Sequence["InteractionMaps"]) -> "InteractionMaps":
        """Maps of several runs of one model and one design, concatenated over images (``image_ids``
        in the metadata are concatenated too; the other metadata are the first part's)."""
        parts = list(parts)
        if not parts:
            raise ValueError("nothing to stack")
        first = parts[0]
        for p in parts[1:]:
            _check_same_design(first, p, same_model=True)
        cat = {
            f: torch.cat([getattr(p, f) for p in parts])
            for f in ("mean_abs", "signed", "noise_floor", "mean_square_unbiased", "pair_values", "pair_stderr",
                      "pair_half_values", "targets", "n_evaluations", "seeds")
        }
        meta = dict(first.metadata)
        ids = [p.metadata.get("image_ids") for p in parts]
        if all(isinstance(i, list) for i in ids):
            meta["image_ids"] = [x for i in ids for x in i]
        return dataclasses.replace(first, **cat, metadata=meta)


def _check_same_design(a: InteractionMaps, b: InteractionMaps, same_model: bool = False) -> None:
    problems = []
    if a.grid != b.grid or a.n_players != b.n_players:
        problems.append(f"grid {a.grid} vs {b.grid}")
    if a.pairs.shape != b.pairs.shape or not torch.equal(a.pairs, b.pairs):
        problems.append("different pairs")
    if a.orders.shape != b.orders.shape or not torch.equal(a.orders, b.orders):
        problems.append(f"orders {a.orders.tolist()} vs {b.orders.tolist()}")
    if a.bands != b.bands:
        problems.append(f"bands {a.bands} vs {b.bands}")
    if a.method != b.method or a.n_contexts != b.n_contexts:
        problems.append(f"estimator {a.method}/{a.n_contexts} vs {b.method}/{b.n_contexts}")
    if same_model and a.model != b.model:
        problems.append(f"model {a.model!r} vs {b.model!r}")
    if problems:
        raise ValueError("the maps were not made with one design: " + "; ".join(problems))


# ---------------------------------------------------------------------------------- computation
def _cell_means(per_pair: torch.Tensor, inc: torch.Tensor, deg: torch.Tensor) -> torch.Tensor:
    """Mean of ``per_pair [..., P]`` over each cell's pairs: ``[..., n_cells]`` (NaN without pairs)."""
    total = per_pair @ inc.T.to(per_pair.dtype)
    return total / deg.to(per_pair.dtype)


def maps_from_result(
    result: InteractionResult,
    grid: Optional[int] = None,
    bands: Optional[Bands] = None,
    *,
    model: str = "",
    target: Optional[int] = None,
    n_contexts: Optional[int] = None,
    metadata: Optional[Dict[str, Any]] = None,
) -> InteractionMaps:
    """The maps of one game (one image): an :class:`InteractionMaps` with ``n_images = 1``.

    ``result``: any :class:`InteractionResult` whose players are the cells of a ``grid x grid``
    partition (default: ``sqrt(n_players)``); its pairs need not cover every cell (uncovered cells
    are NaN), :func:`~.design.map_pairs` do.  ``bands``: ``{name: (lo, hi)}`` in m/(n-2), default
    :data:`~.strength.ORDER_BANDS`; each must hold an evaluated order.
    """
    n = int(result.n_players)
    g = _grid_of(n) if grid is None else int(grid)
    if g * g != n:
        raise ValueError(f"grid {g} does not fit {n} players")
    b = _normal_bands(bands)
    sel = band_orders(result.orders, n, b)
    inc = pair_incidence(result.pairs, n)
    deg = inc.sum(1)
    vals = result.values.to(torch.float64)
    err = result.stderr.to(torch.float64)
    halves = result.half_values.to(torch.float64)
    sq = halves[0] * halves[1]
    out = {k: [] for k in ("mean_abs", "signed", "noise_floor", "mean_square_unbiased")}
    for name, idx in sel.items():
        out["mean_abs"].append(_cell_means(vals[idx].abs().mean(0), inc, deg))
        out["signed"].append(_cell_means(vals[idx].mean(0), inc, deg))
        out["noise_floor"].append(SQRT_2_PI * _cell_means(err[idx].mean(0), inc, deg))
        out["mean_square_unbiased"].append(_cell_means(sq[idx].mean(0), inc, deg))
    maps = {k: torch.stack(v).view(1, len(b), g, g) for k, v in out.items()}
    if n_contexts is None:
        n_contexts = 0 if result.method == "exact" else int(result.n_samples.max()) if len(result.n_samples) else 0
    return InteractionMaps(
        **maps,
        n_pairs_per_cell=deg.view(g, g).long(),
        pairs=result.pairs.clone(),
        orders=result.orders.clone(),
        pair_values=vals[None].clone(),
        pair_stderr=err[None].clone(),
        pair_half_values=halves[None].clone(),
        targets=torch.tensor([-1 if target is None else int(target)], dtype=torch.long),
        n_evaluations=torch.tensor([int(result.n_evaluations)], dtype=torch.long),
        seeds=torch.tensor([-1 if result.seed is None else int(result.seed)], dtype=torch.long),
        bands=b,
        band_orders={k: [int(result.orders[i]) for i in v] for k, v in sel.items()},
        grid=g,
        n_players=n,
        model=str(model),
        method=str(result.method),
        n_contexts=int(n_contexts),
        metadata=dict(metadata or {}),
    )


# ---------------------------------------------------------------------------- paired difference
@dataclasses.dataclass(frozen=True)
class MapDifference(SavableResult):
    """Model b minus model a, per cell, on the same images, pairs and contexts.

    ``per_image`` ``[n_images, n_bands, grid, grid]``: b - a of the maps' ``statistic``
    (``"mean_abs"`` or ``"signed"``) per image; ``diff`` ``[n_bands, grid, grid]``: its mean over
    images; ``stderr``: the paired standard error over images (std / sqrt(n_images); NaN for one
    image); ``lower`` / ``upper``: percentile bootstrap interval over images (``level``);
    ``estimator_stderr``: the estimators' share of the noise of ``diff``, from each cell's stderr
    bound (``sqrt(sa^2 + sb^2)`` per image, as if the two models' estimates were independent; the
    shared contexts usually correlate them positively, which makes the true value smaller).
    ``relative``: ``diff`` / a's mean over images (NaN where a's is 0).
    """

    per_image: torch.Tensor
    diff: torch.Tensor
    stderr: torch.Tensor
    lower: torch.Tensor
    upper: torch.Tensor
    estimator_stderr: torch.Tensor
    relative: torch.Tensor
    model_a: str
    model_b: str
    statistic: str
    bands: Dict[str, Tuple[float, float]]
    band_orders: Dict[str, List[int]]
    grid: int
    n_boot: int
    level: float
    seed: int
    metadata: Dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        object.__setattr__(self, "bands", {str(k): (float(v[0]), float(v[1])) for k, v in self.bands.items()})
        object.__setattr__(self, "band_orders", {str(k): [int(m) for m in v] for k, v in self.band_orders.items()})

    @property
    def n_images(self) -> int:
        return int(self.per_image.shape[0])

    @property
    def band_names(self) -> List[str]:
        return list(self.bands)

    def significant(self) -> torch.Tensor:
        """bool ``[n_bands, grid, grid]``: cells whose difference is clear of zero: the bootstrap
        interval over images excludes 0 (two or more images) and ``|diff|`` exceeds twice the
        estimator stderr; with one image only the second test."""
        est = self.diff.abs() > 2 * self.estimator_stderr
        if self.n_images < 2:
            return est
        return est & ((self.lower > 0) | (self.upper < 0))


def map_difference(
    a: InteractionMaps,
    b: InteractionMaps,
    statistic: str = "mean_abs",
    *,
    n_boot: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> MapDifference:
    """Paired difference map b - a of two models' :class:`InteractionMaps` on the same images,
    pairs, orders and contexts (same seeds; checked, together with ``image_ids`` when both have
    them).  ``statistic``: ``"mean_abs"`` (default), ``"signed"`` or ``"excess"``
    (mean |I| minus the noise floor)."""
    _check_same_design(a, b)
    if a.n_images != b.n_images:
        raise ValueError(f"{a.n_images} images against {b.n_images}: a paired difference needs the same images")
    if not torch.equal(a.seeds, b.seeds):
        raise ValueError("the two runs used different seeds, so different contexts; rerun with the same seed")
    ia, ib = a.metadata.get("image_ids"), b.metadata.get("image_ids")
    if ia is not None and ib is not None and list(ia) != list(ib):
        raise ValueError("the two runs are not on the same images (image_ids differ)")
    if statistic == "excess":
        va, vb = a.excess(), b.excess()
    elif statistic in ("mean_abs", "signed"):
        va, vb = getattr(a, statistic), getattr(b, statistic)
    else:
        raise ValueError(f"unknown statistic {statistic!r}; choose 'mean_abs', 'signed' or 'excess'")
    d = (vb - va).double()
    X = d.shape[0]
    diff = d.mean(0)
    stderr = d.std(0, unbiased=True) / math.sqrt(X) if X > 1 else torch.full_like(diff, float("nan"))
    idx = torch.randint(X, (int(n_boot), X), generator=torch.Generator().manual_seed(int(seed)))
    reps = d[idx].mean(1)  # [n_boot, B, g, g]
    q = torch.tensor([(1 - level) / 2, 1 - (1 - level) / 2], dtype=torch.float64)
    flat = reps.flatten(1)
    lo, hi = torch.quantile(flat, q, dim=0)
    est = ((a.signed_stderr_bound() ** 2 + b.signed_stderr_bound() ** 2).sum(0)).sqrt() / X
    ref = va.double().mean(0)
    rel = torch.where(ref != 0, diff / ref, torch.full_like(diff, float("nan")))
    return MapDifference(
        per_image=d,
        diff=diff,
        stderr=stderr,
        lower=lo.view_as(diff),
        upper=hi.view_as(diff),
        estimator_stderr=est,
        relative=rel,
        model_a=a.model,
        model_b=b.model,
        statistic=statistic,
        bands=a.bands,
        band_orders=a.band_orders,
        grid=a.grid,
        n_boot=int(n_boot),
        level=float(level),
        seed=int(seed),
        metadata=dict(image_ids=ia, seeds=a.seeds.tolist(), targets_a=a.targets.tolist(), targets_b=b.targets.tolist()),
    )
