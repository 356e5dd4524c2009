"""Interactions over models x images: the pipeline that the CLI, the notebooks and the figures share.

>>> settings = InteractionSettings.reference()            # or .efficient(grid=8), .precise(0.1)
>>> stack = compute_interactions(["moganet_small", "resnet50"], images, settings=settings,
...                              out="runs/interactions", resume=True)
>>> stack = InteractionStack.load("runs/interactions")    # the same object from a finished run
>>> stack.relative_strength(), stack["moganet_small"].noise_floor()
>>> stack.band_difference("moganet_small", "resnet50")
>>> fig, ax = plot_relative_strength(stack)                # moga_analysis.interactions.plot

A run folder (:class:`moga_analysis.runs.RunFolder`) holds ``run.json``, one
``<model>/img_<index>.safetensors`` per model and image (an :class:`InteractionResult`, written
as soon as it is computed, so an interrupted run resumes where it stopped), and per model the
stacked ``interactions_<model>.safetensors`` (a :class:`ModelInteractions`) plus
``interactions_precision.{csv,md,json}``: the noise floor, its ratio to mean |I| and the unbiased
E[I^2]-based strength per order, beside the raw mean |I| and J^(m); with two or more models,
``interactions_band_differences.{csv,md,json}`` (:meth:`InteractionStack.band_difference_rows`).

Under ``torchrun`` the images are sharded over the ranks (rank ``r`` takes images ``r, r+w, ...``);
rank 0 stacks the results.  Image ``i`` uses pairs seeded by ``image_seed(seed, i)`` and
contexts by that seed + 1, so every split of the work gives bit-identical results.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import torch

from ..results import SavableResult, load_tensors, save_tensors, write_table
from ..runs import RunFolder, SkippedItem, safe_name, weights_record
from .design import REFERENCE_RATIOS, orders_from_ratios, reference_pairs
from .estimators import FixedContexts, InteractionResult, PrecisionTarget, estimator_from_dict
from .games import BASELINES, OUTPUTS, ImageMaskingGame
from .sampling import noise_floor
from .strength import ORDER_BANDS, bootstrap_relative_strength, paired_band_difference, relative_strength

__all__ = [
    "InteractionSettings",
    "ModelInteractions",
    "InteractionStack",
    "compute_interactions",
    "InteractionPlan",
    "plan_interactions",
    "image_game",
    "image_interactions",
    "image_seed",
    "PAIR_RULES",
]

log = logging.getLogger(__name__)

#: how the pairs of an image are chosen: the reference rule (random cell, neighbour within 2), or
#: ``"map"``: every cell with its neighbours (:func:`~.design.map_pairs`), for per-cell maps
PAIR_RULES = ("reference", "map")


def image_seed(seed: int, index: int) -> int:
    """The seed of image ``index`` of a run seeded with ``seed`` (its pairs; its contexts: + 1)."""
    return (int(seed) * 1_000_003 + int(index)) % (2**62)


# ============================================================================================ settings
@dataclasses.dataclass(frozen=True)
class InteractionSettings:
    """Everything that defines an interaction run's numbers (its resume fingerprint).

    Players are the cells of a ``grid x grid`` partition; per image ``pairs`` pairs by
    ``pair_rule`` and the orders m = int((n - 2) r) of ``ratios``; ``baseline`` and ``output``
    define the game (:class:`~moga_analysis.interactions.games.ImageMaskingGame`); ``estimator``
    how I^(m)(i,j) is estimated: :class:`~.estimators.FixedContexts` (a number of contexts per
    pair and order) or :class:`~.estimators.PrecisionTarget` (a noise target per order).
    ``dtype``/``memory_format``: how the model runs (``"auto"``: channels_last for conv nets,
    model and input together); ``image_size``: None for the model's own.  The presets
    :meth:`reference`, :meth:`efficient`, :meth:`precise` and :meth:`maps` cover the usual runs.
    """

    estimator: Any = FixedContexts(50, "shared")
    grid: int = 14
    pairs: int = 50
    ratios: Tuple[float, ...] = REFERENCE_RATIOS
    baseline: str = "mean"
    output: str = "log_odds"
    pair_rule: str = "reference"
    image_size: Optional[int] = None
    dtype: str = "float32"
    memory_format: str = "auto"
    seed: int = 0
    protocol: str = "custom"
    map_radius: int = 1
    map_neighbourhood: str = "right_down"

    def __post_init__(self):
        object.__setattr__(self, "ratios", tuple(float(r) for r in self.ratios))
        if isinstance(self.estimator, dict):
            object.__setattr__(self, "estimator", estimator_from_dict(self.estimator))
        if not isinstance(self.estimator, (FixedContexts, PrecisionTarget)):
            raise TypeError(f"estimator must be FixedContexts(...) or PrecisionTarget(...), got {self.estimator!r}")
        if int(self.pairs) < 1:
            raise ValueError("pairs must be >= 1")
        if int(self.grid) < 2:
            raise ValueError("grid must be >= 2 (players are grid x grid cells)")
        if self.baseline not in BASELINES or self.output not in OUTPUTS:
            raise ValueError(f"baseline must be one of {BASELINES} and output one of {OUTPUTS}")
        if self.pair_rule not in PAIR_RULES:
            raise ValueError(f"unknown pair rule {self.pair_rule!r}; choose one of {', '.join(PAIR_RULES)}")
        if any(not 0.0 <= r <= 1.0 for r in self.ratios) or not self.ratios:
            raise ValueError(f"ratios must lie in [0, 1], got {list(self.ratios)}")

    @classmethod
    def reference(cls, contexts: int = 50, **overrides: Any) -> "InteractionSettings":
        """The public reference code's protocol: 14 x 14 cells, 50 pairs, 50 independent contexts
        per pair and order, the 13 reference orders, mean baseline, log-odds."""
        return cls(**{"estimator": FixedContexts(contexts, "independent"), "protocol": "reference", **overrides})

    @classmethod
    def efficient(cls, contexts: int = 50, **overrides: Any) -> "InteractionSettings":
        """The reference pairs, orders and samples per pair, with contexts shared between pairs
        (the same samples in fewer evaluations)."""
        return cls(**{"estimator": FixedContexts(contexts, "shared"), "protocol": "efficient", **overrides})

    @classmethod
    def precise(cls, target_noise: float = 0.1, max_evaluations: Optional[int] = None,
                **overrides: Any) -> "InteractionSettings":
        """The reference grid, pairs and orders with a precision target instead of a context count:
        noise floor / mean |I^(m)| <= ``target_noise`` at every order, at least cost
        (``max_evaluations``: a cap per image; orders it leaves above the target are reported)."""
        est = PrecisionTarget(target_noise, max_evaluations)
        return cls(**{"estimator": est, "protocol": "precise", **overrides})

    @classmethod
    def maps(cls, grid: int = 8, contexts: int = 16, **overrides: Any) -> "InteractionSettings":
        """Per-cell maps (:mod:`.maps`): every cell with its right and lower neighbours
        (``map_radius``, ``map_neighbourhood``), shared contexts, the reference orders inside the
        low / middle / high bands."""
        from .strength import ORDER_BANDS

        ratios = tuple(r for r in REFERENCE_RATIOS if any(lo <= r <= hi for lo, hi in ORDER_BANDS.values()))
        return cls(**{"estimator": FixedContexts(contexts, "shared"), "protocol": "maps", "pair_rule": "map",
                      "grid": grid, "ratios": ratios, **overrides})

    @property
    def n_players(self) -> int:
        return int(self.grid) ** 2

    @property
    def orders(self) -> List[int]:
        return orders_from_ratios(self.ratios, self.n_players)

    @property
    def target_noise(self) -> Optional[float]:
        """The precision target, or None for a fixed number of contexts."""
        return getattr(self.estimator, "target_noise", None)

    def fingerprint(self) -> Dict[str, Any]:
        """The settings that define the numbers (the map fields only for map pairs, the number of
        pairs only for the reference rule)."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["estimator"] = self.estimator.to_dict()
        d["ratios"] = list(self.ratios)
        if self.pair_rule != "map":
            d.pop("map_radius")
            d.pop("map_neighbourhood")
        else:
            d.pop("pairs")
        return d


# ======================================================================================= one image
def image_pairs(settings: InteractionSettings, seed: int) -> torch.Tensor:
    """The pairs of an image whose seed is ``seed`` (see :func:`image_seed`; map pairs are fixed)."""
    if settings.pair_rule == "map":
        from .design import map_pairs

        return map_pairs(settings.grid, settings.map_radius, settings.map_neighbourhood)
    return reference_pairs(settings.grid, int(settings.pairs), generator=torch.Generator().manual_seed(seed))


def image_game(model: torch.nn.Module, image: torch.Tensor, settings: InteractionSettings, *,
               target: Optional[int] = None, batch_size: int = 64) -> ImageMaskingGame:
    """The masking game of ``model`` on one preprocessed ``image [C, H, W]`` under ``settings``."""
    return ImageMaskingGame(model, image, target=target, grid=settings.grid, baseline=settings.baseline,
                            output=settings.output, batch_size=batch_size)


def image_interactions(
    model: torch.nn.Module,
    image: torch.Tensor,
    settings: InteractionSettings,
    *,
    target: Optional[int] = None,
    seed: int = 0,
    batch_size: int = 64,
    counter: Optional[Callable[[int], Any]] = None,
) -> InteractionResult:
    """I^(m)(i,j) of ``model`` on one preprocessed ``image [C, H, W]`` (``target`` None: the
    predicted class): the game, pairs and estimator of ``settings``, pairs seeded by ``seed`` and
    contexts by ``seed + 1``.  ``counter(k)`` is called with the masks of every game call (a
    progress bar's ``update``).  ``metadata`` holds the explained ``target``."""
    game = image_game(model, image, settings, target=target, batch_size=batch_size)
    played = game if counter is None else _Counted(game, counter)
    res = settings.estimator.estimate(played, settings.n_players, image_pairs(settings, seed), settings.orders,
                                      seed=seed + 1)
    return dataclasses.replace(res, metadata={**res.metadata, "target": game.target})


class _Counted:
    """A game that reports the masks of every call to ``counter``."""

    def __init__(self, game, counter: Callable[[int], Any]):
        self.game, self.counter = game, counter

    def __call__(self, masks: torch.Tensor) -> torch.Tensor:
        out = self.game(masks)
        self.counter(int(masks.shape[0]))
        return out


# ===================================================================================== stacked results
@dataclasses.dataclass(frozen=True)
class ModelInteractions(SavableResult):
    """One model's interactions on a set of images, stacked (``interactions_<model>.safetensors``).

    ``values``/``stderr``: ``[n_images, n_orders, n_pairs]``; ``half_values``: ``[n_images, 2,
    n_orders, n_pairs]``; ``pairs``: ``[n_images, n_pairs, 2]``; ``targets``: explained classes;
    ``images``: their names; ``skipped``: ``[name, reason]`` of unreadable images; ``weights``:
    where the weights came from; ``provenance``: the full weights record (file, SHA-256).
    """

    model: str
    orders: torch.Tensor
    n_players: int
    values: torch.Tensor
    stderr: torch.Tensor
    half_values: torch.Tensor
    pairs: torch.Tensor
    targets: torch.Tensor
    images: List[str]
    skipped: List[Any] = dataclasses.field(default_factory=list)
    n_evaluations: int = 0
    weights: Optional[str] = None
    provenance: Optional[Dict[str, Any]] = None
    settings: Dict[str, Any] = dataclasses.field(default_factory=dict)
    metadata: Dict[str, Any] = dataclasses.field(default_factory=dict)

    # -- statistics per image and order (each [n_images, n_orders]) --------------------------------
    def mean_abs(self) -> torch.Tensor:
        """Raw E_(i,j)|I^(m)(i,j)| (biased upwards by estimator noise)."""
        return self.values.abs().mean(-1)

    def noise_floor(self) -> torch.Tensor:
        """E_(i,j) sqrt(2/pi) stderr: the mean |I| that estimator noise alone would give."""
        return noise_floor(self.stderr)

    def noise_ratio(self) -> torch.Tensor:
        """Noise floor / mean |I| (the precision reached; 0 at the exact end orders)."""
        return self.noise_floor() / self.mean_abs().clamp_min(torch.finfo(torch.float64).tiny)

    def rms_unbiased(self) -> torch.Tensor:
        """sqrt of the unbiased E_(i,j)[I^2] (product of independent half estimates; noise-free)."""
        return (self.half_values[:, 0] * self.half_values[:, 1]).mean(-1).clamp_min(0).sqrt()

    @property
    def ratios(self) -> torch.Tensor:
        """m / (n - 2) of the evaluated orders."""
        return self.orders.double() / (self.n_players - 2)

    @property
    def covers_all_orders(self) -> bool:
        """Whether the orders include 0 and n - 2 (needed by the ``"all"`` normalisation)."""
        return int(self.orders[0]) == 0 and int(self.orders[-1]) == self.n_players - 2

    def relative_strength(self, normalization: str = "evaluated", statistic: str = "mean_abs") -> torch.Tensor:
        """J^(m) ``[n_orders]`` (see :func:`moga_analysis.interactions.relative_strength`)."""
        per_image = self.mean_abs() if statistic == "mean_abs" else self.rms_unbiased()
        return relative_strength(per_image[:, :, None], self.orders, self.n_players, normalization=normalization)

    def bootstrap(self, normalization: str = "evaluated", n_boot: int = 1000, level: float = 0.95, seed: int = 0):
        """``(J, lower, upper)``: percentile bootstrap over images."""
        return bootstrap_relative_strength(self.mean_abs(), self.orders, self.n_players, normalization=normalization,
                                           n_boot=n_boot, level=level, seed=seed)

    def precision_rows(self) -> List[Dict[str, Any]]:
        """Per order: mean |I|, noise floor, their ratio (worst image too), unbiased RMS and J."""
        J = self.relative_strength()
        rows = []
        for o, m in enumerate(self.orders.tolist()):
            rows.append({
                "model": self.model, "order": m, "ratio": round(m / (self.n_players - 2), 4),
                "mean_abs": float(self.mean_abs()[:, o].mean()), "noise_floor": float(self.noise_floor()[:, o].mean()),
                "noise_ratio": float(self.noise_ratio()[:, o].mean()),
                "worst_noise_ratio": float(self.noise_ratio()[:, o].max()),
                "rms_unbiased": float(self.rms_unbiased()[:, o].mean()), "J": float(J[o]),
            })
            if self.metadata.get("target_noise") is not None:
                tau = float(self.metadata["target_noise"])
                rows[-1].update(target=tau, target_met=rows[-1]["worst_noise_ratio"] <= tau)
        return rows

    # -- files --------------------------------------------------------------------------------------
    def save(self, path: Union[str, os.PathLike]) -> Path:
        """The stacked file: the fields, plus the derived per-image statistics and J^(m) for
        readers without this package (``J_all`` only when the orders include 0 and n - 2)."""
        tensors = {f: getattr(self, f) for f in ("orders", "values", "stderr", "half_values", "pairs", "targets")}
        tensors.update(mean_abs=self.mean_abs(), noise_floor=self.noise_floor(), rms_unbiased=self.rms_unbiased(),
                       J_evaluated=self.relative_strength("evaluated"))
        if self.covers_all_orders:
            tensors["J_all"] = self.relative_strength("all")
        meta = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in tensors}
        meta.update(meta.pop("metadata"))  # environment, models...: top-level keys, as readers expect
        return save_tensors(path, tensors, {"__class__": type(self).__name__, **meta})

    @classmethod
    def _from_parts(cls, tensors, meta):
        meta = dict(meta)
        meta.setdefault("n_players", int(meta.get("settings", {}).get("grid", 0)) ** 2)  # files before 0.2
        known = {f.name for f in dataclasses.fields(cls)}
        extra = {k: v for k, v in meta.items() if k not in known}  # environment, models (older files)
        if extra and "metadata" not in meta:
            meta["metadata"] = extra
        return cls(**{k: v for k, v in {**meta, **tensors}.items() if k in known})

    @classmethod
    def load(cls, path: Union[str, os.PathLike]) -> "ModelInteractions":
        tensors, meta = load_tensors(path)
        meta.pop("__class__", None)
        return cls._from_parts(tensors, meta)

    @classmethod
    def stack(cls, model: str, results: Sequence[InteractionResult], images: Sequence[str],
              skipped: Sequence[Any] = (), **fields: Any) -> "ModelInteractions":
        """Stack per-image results (same orders, pairs per image may differ)."""
        if not results:
            raise ValueError(f"{model}: no image could be read")
        return cls(
            model=model, orders=results[0].orders, n_players=results[0].n_players,
            values=torch.stack([r.values for r in results]), stderr=torch.stack([r.stderr for r in results]),
            half_values=torch.stack([r.half_values for r in results]), pairs=torch.stack([r.pairs for r in results]),
            targets=torch.tensor([int(r.metadata["target"]) for r in results]), images=list(images),
            skipped=[list(s) for s in skipped], n_evaluations=sum(int(r.n_evaluations) for r in results), **fields,
        )


class InteractionStack(Mapping[str, ModelInteractions]):
    """The interactions of several models on the same images: ``stack[model]`` is a
    :class:`ModelInteractions`, in the order the models were given (``stack.models``).
    ``maps``: ``{model: InteractionMaps}`` of a run on map pairs (:meth:`InteractionSettings.maps`)."""

    def __init__(self, results: Union[Mapping[str, ModelInteractions], Sequence[ModelInteractions]],
                 maps: Optional[Mapping[str, Any]] = None):
        items = results.values() if isinstance(results, Mapping) else results
        self._results = {r.model: r for r in items}
        self.maps = dict(maps or {})

    def __getitem__(self, model: str) -> ModelInteractions:
        try:
            return self._results[model]
        except KeyError:
            raise KeyError(f"no results for {model!r}; have {self.models}") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._results)

    def __len__(self) -> int:
        return len(self._results)

    @property
    def models(self) -> List[str]:
        return list(self._results)

    def relative_strength(
        self, normalization: str = "evaluated", statistic: str = "mean_abs"
    ) -> Dict[str, torch.Tensor]:
        """``{model: J^(m)}``."""
        return {m: r.relative_strength(normalization, statistic) for m, r in self._results.items()}

    def noise_floor(self) -> Dict[str, torch.Tensor]:
        """``{model: noise floor per order}`` (mean over images)."""
        return {m: r.noise_floor().mean(0) for m, r in self._results.items()}

    def band_difference(self, a: str, b: str, bands: Optional[Mapping[str, Tuple[float, float]]] = None,
                        n_boot: int = 4000, level: float = 0.95, seed: int = 0) -> Dict[str, Dict[str, Any]]:
        """Model ``b`` against ``a`` in mean |I^(m)| per band of orders, paired over images (see
        :func:`moga_analysis.interactions.paired_band_difference`); they must share images and pairs."""
        ra, rb = self[a], self[b]
        if ra.images != rb.images or not torch.equal(ra.pairs, rb.pairs) or not torch.equal(ra.orders, rb.orders):
            raise ValueError(f"{a} and {b} were not run on the same images, pairs and orders; no paired difference")
        return paired_band_difference(ra.mean_abs(), rb.mean_abs(), ra.orders, ra.n_players, dict(bands or ORDER_BANDS),
                                      n_boot=n_boot, level=level, seed=seed)

    def band_difference_rows(self, n_boot: int = 4000, level: float = 0.95, seed: int = 0) -> List[Dict[str, Any]]:
        """Each model after the first against the first (the run's ``--model``), per band of
        :data:`ORDER_BANDS` that holds an evaluated order: rows of ``reference, model, band, orders,
        diff, lower, upper, relative`` (:meth:`band_difference`).  Empty with one model."""
        from .maps import band_orders

        if len(self.models) < 2:
            return []
        a = self.models[0]
        first = self[a]

        def holds_an_order(name: str) -> bool:  # the band-to-orders rule of paired_band_difference
            try:
                return bool(band_orders(first.orders, first.n_players, {name: ORDER_BANDS[name]}))
            except ValueError:
                return False

        bands = {k: v for k, v in ORDER_BANDS.items() if holds_an_order(k)}
        rows = []
        for b in self.models[1:]:
            for band, d in self.band_difference(a, b, bands, n_boot=n_boot, level=level, seed=seed).items():
                rows.append(dict(reference=a, model=b, band=band, orders=f"{d['orders'][0]}-{d['orders'][-1]}",
                                 diff=d["diff"], lower=d["lower"], upper=d["upper"], relative=d["relative"]))
        return rows

    def map_difference(self, a: str, b: str, statistic: str = "mean_abs", n_boot: int = 2000, seed: int = 0):
        """Per-cell ``b - a`` of the two models' maps, paired over images (:func:`.maps.map_difference`)."""
        from .maps import map_difference

        if a not in self.maps or b not in self.maps:
            raise ValueError("no maps in this run: compute it with InteractionSettings.maps()")
        return map_difference(self.maps[a], self.maps[b], statistic, n_boot=n_boot, seed=seed)

    def precision_rows(self) -> List[Dict[str, Any]]:
        return [row for r in self._results.values() for row in r.precision_rows()]

    def save(self, folder: Union[str, os.PathLike]) -> List[Path]:
        folder = Path(folder)
        written = [r.save(folder / f"interactions_{safe_name(m)}.safetensors") for m, r in self._results.items()]
        written += [mp.save(folder / f"maps_{safe_name(m)}.safetensors") for m, mp in self.maps.items()]
        written += write_table(self.precision_rows(), folder / "interactions_precision")
        rows = self.band_difference_rows()
        if rows:  # paired over the same images, pairs and contexts
            written += write_table(rows, folder / "interactions_band_differences")
        return written

    @classmethod
    def load(cls, folder: Union[str, os.PathLike]) -> "InteractionStack":
        """The stacked results of a run folder, models in the order the run was given them."""
        folder = Path(folder)
        found = [ModelInteractions.load(f) for f in sorted(folder.glob("interactions_*.safetensors"))]
        if not found:
            raise FileNotFoundError(f"no stacked interaction results (interactions_*.safetensors) in {folder}")
        order = found[0].metadata.get("models") or [r.model for r in found]
        found.sort(key=lambda r: order.index(r.model) if r.model in order else len(order))
        from .maps import InteractionMaps

        maps = [InteractionMaps.load(f) for f in sorted(folder.glob("maps_*.safetensors"))]
        return cls(found, {m.model: m for m in maps})


# ======================================================================================== the plan
@dataclasses.dataclass(frozen=True)
class InteractionPlan:
    """What a run will cost, known before it is paid (:func:`plan_interactions`).

    ``evaluations_per_image``: game evaluations (masked forward passes) per model and image,
    exact for a fixed number of contexts (``exact=True``: the mean over the images) and the
    pilot's projection for a precision target; ``seconds_per_evaluation``: measured per model on
    the first image, in full batches after a warm-up call; ``total_evaluations`` and
    ``eta_seconds`` over all models and images.
    """

    models: List[str]
    images: int
    evaluations_per_image: int
    exact: bool
    seconds_per_evaluation: Dict[str, float]
    device: str
    settings: Dict[str, Any]

    @property
    def total_evaluations(self) -> int:
        return self.evaluations_per_image * self.images * len(self.models)

    @property
    def eta_seconds(self) -> float:
        return sum(self.evaluations_per_image * self.images * s for s in self.seconds_per_evaluation.values())

    def to_dict(self) -> Dict[str, Any]:
        d = dataclasses.asdict(self)
        d.update(total_evaluations=self.total_evaluations, eta_seconds=round(self.eta_seconds, 1))
        return d

    def save(self, folder: Union[str, os.PathLike]) -> Path:
        """``folder/plan.json``."""
        import json

        from ..results import atomic_write_text

        path = Path(folder) / "plan.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    def describe(self) -> str:
        """The plan in words (one paragraph)."""
        how = "exactly" if self.exact else "projected from a pilot on the first image:"
        rates = ", ".join(f"{m} {s * 1e3:.2f} ms" for m, s in self.seconds_per_evaluation.items())
        text = (f"plan: {len(self.models)} model(s) x {self.images} image(s), {how} {self.evaluations_per_image:,} "
                f"evaluations per image, {self.total_evaluations:,} in all; per evaluation on {self.device}: "
                f"{rates}; expected time {_duration(self.eta_seconds)}.")
        if self.eta_seconds > 3600:
            text += (" That is over an hour: a precision target with a cap (InteractionSettings.precise(0.3, "
                     "max_evaluations=...); CLI --target-noise 0.3 --max-evaluations N), a smaller grid, fewer "
                     "pairs or a GPU cut it down.")
        return text


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _seconds_per_evaluation(model, image, settings: InteractionSettings, batch: int) -> float:
    """Seconds per game evaluation of ``model`` on ``image``: the faster of two full batches of
    random masks, after a warm-up call of the same size (the first calls at a batch size pay for
    kernels and memory; timed after a 4-mask warm-up, EfficientNet-Lite0 at 224 px read 46 ms per
    evaluation where the run took 8.4)."""
    import time

    game = image_game(model, image, settings, batch_size=batch)
    gen = torch.Generator().manual_seed(0)
    masks = torch.rand(batch, settings.n_players, generator=gen) < 0.5
    game(masks)
    best = float("inf")
    for _ in range(2):
        t0 = time.perf_counter()
        game(masks)
        best = min(best, time.perf_counter() - t0)
    return best / batch


def _evaluations_per_image(model, image, imgs, settings: InteractionSettings, batch: int) -> Tuple[int, bool]:
    """Evaluations per image: exact for fixed contexts (the mean over the images' own plans), the
    pilot's projection on ``image`` for a precision target."""
    est = settings.estimator
    if isinstance(est, PrecisionTarget):
        seed = image_seed(settings.seed, imgs.indices[0])
        game = image_game(model, image, settings, batch_size=batch)
        proj = est.project(game, settings.n_players, image_pairs(settings, seed), settings.orders, seed=seed + 1)
        return int(proj["projected_evaluations"]), False
    counts = []
    for idx in imgs.indices:
        seed = image_seed(settings.seed, idx)
        counts.append(est.planned_evaluations(settings.n_players, image_pairs(settings, seed), settings.orders,
                                              seed=seed + 1))
    return int(round(sum(counts) / len(counts))), True


# ======================================================================================== the pipeline
def _distributed() -> Tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _barrier(world: int) -> None:
    if world > 1:
        import torch.distributed as dist

        dist.barrier()


def _prepared(spec, device, settings: InteractionSettings, compile: bool):
    from ..runtime import prepare_model
    from ..specs import load_spec

    model = prepare_model(load_spec(spec, device, settings.seed), settings.dtype, settings.memory_format)
    return (torch.compile(model) if compile else model), model


def _first_image(imgs, plain, settings: InteractionSettings) -> torch.Tensor:
    from ..data import transform_for

    transform = transform_for(plain, size=settings.image_size) if imgs.from_files else None
    for i in range(len(imgs)):
        image = imgs.load(i, transform)
        if image is not None:
            return image
    raise ValueError("no image could be read")


def _batch(batch_size: Optional[int], device) -> int:
    return batch_size or (64 if torch.device(device).type == "cpu" else 256)


def _run_model(spec, model, plain, imgs, settings: InteractionSettings, run: Optional[RunFolder], rank: int,
               world: int, batch: int, bar) -> Dict[int, SavableResult]:
    """This rank's per-image results of one model (computed, or kept from the run folder)."""
    from ..data import transform_for

    weights = weights_record(plain)
    if run is not None:
        run.check_weights(spec.name, weights)
    transform = transform_for(plain, size=settings.image_size) if imgs.from_files else None
    config = dict(settings.fingerprint(), model=spec.name)
    if spec.checkpoint is not None:
        config["checkpoint"] = spec.checkpoint
    out: Dict[int, SavableResult] = {}
    for i in [i for i in range(len(imgs)) if i % world == rank]:
        idx = imgs.indices[i]
        key = f"{safe_name(spec.name)}/img_{idx:05d}"
        identity = {"model": spec.name, "image": imgs.names[i], "index": idx}  # weights: run.check_weights (SHA-256)
        bar.set_postfix_str(f"{spec.name}, {imgs.names[i]}", refresh=False)
        if run is not None and run.done(key, identity):
            out[i] = run.load_item(key)
            bar.total = max(bar.total - bar.per_image, bar.n)
            continue
        image = imgs.load(i, transform)
        meta = {"item": identity, "config": dict(config, image=imgs.names[i], index=idx), "label": imgs.labels[i],
                "weights": (weights or {}).get("location"), "provenance": weights}
        if image is None:
            out[i] = SkippedItem("unreadable image", meta)
            bar.total = max(bar.total - bar.per_image, bar.n)
        else:
            target = imgs.labels[i] if imgs.labels[i] >= 0 else None
            try:
                res = image_interactions(model, image, settings, target=target, seed=image_seed(settings.seed, idx),
                                         batch_size=batch, counter=bar.update)
            except ValueError as err:
                raise ValueError(f"{spec.name} on image {imgs.names[i]}: {err}") from None
            out[i] = dataclasses.replace(res, metadata={**meta, **res.metadata})
        if run is not None:
            run.save_item(key, out[i])
    return out


def _stack_model(spec, results: Mapping[int, SavableResult], imgs, settings, models: List[str]) -> ModelInteractions:
    from ..runtime import environment_info

    kept = [(i, r) for i, r in sorted(results.items()) if isinstance(r, InteractionResult)]
    skipped = [[imgs.names[i], r.reason] for i, r in sorted(results.items()) if isinstance(r, SkippedItem)]
    first = kept[0][1].metadata if kept else {}
    meta = {"models": models, "environment": environment_info()}
    if settings.target_noise is not None:
        meta["target_noise"] = settings.target_noise
        meta["missed_orders"] = [r.metadata.get("missed_orders", []) for _, r in kept]
        meta["budget_capped"] = [bool(r.metadata.get("budget_capped")) for _, r in kept]
    return ModelInteractions.stack(
        spec.name, [r for _, r in kept], [imgs.names[i] for i, _ in kept], skipped,
        weights=first.get("weights"), provenance=first.get("provenance"), settings=settings.fingerprint(),
        metadata=meta,
    )


def _maps(specs, per_model, imgs, settings: InteractionSettings) -> Dict[str, Any]:
    """``{model: InteractionMaps}`` of a run on map pairs (else empty)."""
    if settings.pair_rule != "map":
        return {}
    from .maps import InteractionMaps, maps_from_result

    out = {}
    for spec in specs:
        kept = [(i, r) for i, r in sorted(per_model[spec.name].items()) if isinstance(r, InteractionResult)]
        parts = [maps_from_result(r, settings.grid, model=spec.name, target=int(r.metadata["target"]),
                                  n_contexts=int(r.n_samples.max())) for _, r in kept]
        out[spec.name] = dataclasses.replace(InteractionMaps.stack(parts), metadata={
            "settings": settings.fingerprint(), "image_ids": [imgs.names[i] for i, _ in kept],
            "image_indices": [imgs.indices[i] for i, _ in kept]})
    return out


def _load_share(run: RunFolder, spec, imgs) -> Dict[int, SavableResult]:
    return {i: run.load_item(f"{safe_name(spec.name)}/img_{imgs.indices[i]:05d}") for i in range(len(imgs))}


def _warn_missed_targets(stack: InteractionStack) -> None:
    for r in stack.values():
        missed = sorted({int(m) for per_image in r.metadata.get("missed_orders", []) for m in per_image})
        if missed:
            log.warning("%s: the noise target %.3g was missed at orders %s on %d of %d images (budget or "
                        "context cap reached; see interactions_precision.md)", r.model, r.metadata["target_noise"],
                        missed, sum(bool(x) for x in r.metadata["missed_orders"]), len(r.images))


def _inputs(models, images, settings, labels, labels_file, labels_format, num_images, require_labels,
            random_weights):
    from ..data import image_set
    from ..specs import model_specs

    specs = model_specs(models, random_weights=random_weights)
    imgs = image_set(images, labels, labels_file=labels_file, labels_format=labels_format, num_images=num_images,
                     seed=settings.seed, require_labels=require_labels)
    return specs, imgs


def _logged_plan(plain, name: str, imgs, settings: InteractionSettings, batch: int, names: List[str], mine: int,
                 device, progress: bool):
    """Log the plan of a run, timed on its first model and image, and return its progress bar
    (evaluations, with ``per_image`` for the images resumed or skipped)."""
    from tqdm.auto import tqdm

    image = _first_image(imgs, plain, settings)
    per_image, exact = _evaluations_per_image(plain, image, imgs, settings, batch)
    rate = _seconds_per_evaluation(plain, image, settings, batch)
    plan = InteractionPlan(models=names, images=mine, evaluations_per_image=per_image, exact=exact,
                           seconds_per_evaluation={n: rate for n in names}, device=str(device),
                           settings=settings.fingerprint())
    log.info("%s (every model timed as %s)", plan.describe(), name)
    bar = tqdm(total=plan.total_evaluations, disable=not progress, desc="interactions", unit="eval",
               unit_scale=True, smoothing=0.05)
    bar.per_image = per_image
    return bar


def plan_interactions(
    models: Any,
    images: Any = None,
    settings: Optional[InteractionSettings] = None,
    *,
    labels: Optional[Sequence[Optional[int]]] = None,
    labels_file: Optional[Union[str, os.PathLike]] = None,
    labels_format: str = "auto",
    num_images: Optional[int] = None,
    device: Union[str, torch.device, None] = "auto",
    batch_size: Optional[int] = None,
    random_weights: bool = False,
    fast_path: bool = True,
) -> InteractionPlan:
    """What :func:`compute_interactions` with the same arguments will cost, without running it:
    evaluations per image (exact, or a pilot's projection for a precision target) and seconds per
    evaluation measured on every model (one batch on the first image)."""
    from ..runtime import analysis_device
    from ..runtime import fast_path as _fast_path

    _fast_path(fast_path)
    settings = settings or InteractionSettings.efficient()
    device = analysis_device(device)
    specs, imgs = _inputs(models, images, settings, labels, labels_file, labels_format, num_images, False,
                          random_weights)
    batch, rates, per_image, exact = _batch(batch_size, device), {}, 0, True
    for k, spec in enumerate(specs):
        model, plain = _prepared(spec, device, settings, False)
        image = _first_image(imgs, plain, settings)
        if k == 0:
            per_image, exact = _evaluations_per_image(model, image, imgs, settings, batch)
        rates[spec.name] = _seconds_per_evaluation(model, image, settings, batch)
        del model, plain
    return InteractionPlan(models=[s.name for s in specs], images=len(imgs), evaluations_per_image=per_image,
                           exact=exact, seconds_per_evaluation=rates, device=str(device),
                           settings=settings.fingerprint())


def compute_interactions(
    models: Any,
    images: Any = None,
    settings: Optional[InteractionSettings] = None,
    *,
    labels: Optional[Sequence[Optional[int]]] = None,
    labels_file: Optional[Union[str, os.PathLike]] = None,
    labels_format: str = "auto",
    num_images: Optional[int] = None,
    require_labels: bool = False,
    out: Optional[Union[str, os.PathLike]] = None,
    resume: bool = False,
    device: Union[str, torch.device, None] = "auto",
    batch_size: Optional[int] = None,
    random_weights: bool = False,
    compile: bool = False,
    progress: bool = True,
    fast_path: bool = True,
) -> InteractionStack:
    """I^(m)(i,j) of every model on every image, stacked per model.

    ``models``: names, ``NAME=CHECKPOINT``, ``(name, checkpoint)``, modules or ``{name: module}``
    (:func:`moga_analysis.specs.model_specs`; ``random_weights=True`` is the only way to random
    weights).  ``images``: None (the shipped photos), a folder, files, a source name such as
    ``"imagenet-samples"``, a preprocessed tensor or a dataset (:func:`moga_analysis.data.image_set`,
    with ``labels``/``labels_file``/``labels_format``, ``num_images`` by the one subset rule); a
    label is the explained class, none (-1) the predicted one.  ``out``: a run folder, written per
    image (``resume=True`` keeps what is done there, refusing other settings, inputs or weights).
    Under ``torch.distributed`` the images are sharded over the ranks (``out`` is then required).

    Before the long work the plan is logged (evaluations per image, exact or projected, and the
    expected time from a measured batch; :func:`plan_interactions`), and the progress bar counts
    evaluations.  ``fast_path``: set the allocator for speed first
    (:func:`moga_analysis.runtime.fast_path`; False leaves the process as it is).
    Returns an :class:`InteractionStack`.
    """
    from ..runtime import analysis_device
    from ..runtime import fast_path as _fast_path

    _fast_path(fast_path)
    settings = settings or InteractionSettings.efficient()
    rank, world = _distributed()
    if world > 1 and out is None:
        raise ValueError("a distributed run needs an output folder (out=...) to gather its results")
    device = analysis_device(device, world)
    specs, imgs = _inputs(models, images, settings, labels, labels_file, labels_format, num_images, require_labels,
                          random_weights)
    run = RunFolder(out, "interactions", settings.fingerprint(), resume=resume, primary=rank == 0) if out else None
    batch, names = _batch(batch_size, device), [s.name for s in specs]
    mine = len([i for i in range(len(imgs)) if i % world == rank])
    shares, bar = {}, None
    for spec in specs:
        model, plain = _prepared(spec, device, settings, compile)
        if bar is None:  # the plan, from the first model
            bar = _logged_plan(plain, spec.name, imgs, settings, batch, names, mine, device, progress)
        shares[spec.name] = _run_model(spec, model, plain, imgs, settings, run, rank, world, batch, bar)
        del model, plain
    bar.close()
    return _gathered(specs, shares, imgs, settings, run, rank, world)


def _gathered(specs, shares, imgs, settings: InteractionSettings, run: Optional[RunFolder], rank: int,
              world: int) -> InteractionStack:
    """Every rank's results stacked per model (each rank holds the whole stack); rank 0 saves it,
    marks the run complete and reports the orders that missed their target."""
    _barrier(world)
    names = [s.name for s in specs]
    per_model = {s.name: shares[s.name] if world == 1 else _load_share(run, s, imgs) for s in specs}
    stack = InteractionStack([_stack_model(s, per_model[s.name], imgs, settings, names) for s in specs],
                             _maps(specs, per_model, imgs, settings))
    if run is not None and rank == 0:
        stack.save(run.path)
        run.mark_complete(models=names, images=len(imgs))
    _barrier(world)
    if rank == 0:
        _warn_missed_targets(stack)
    return stack
