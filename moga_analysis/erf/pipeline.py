"""Effective receptive fields over models x images: the pipeline the CLI, notebooks and figures share.

>>> stack = compute_erfs(["moganet_small", "resnet50"], "val_images/", ERFSettings(), num_images=50)
>>> stack = ERFStack.load("runs/erf")            # the same object from a finished run folder
>>> fig, axes = plot_erf(stack)                   # moga_analysis.erf.plot

A run folder holds ``erf_<model>.safetensors`` (an :class:`ERFResult` whose metadata carries the
model, images, weights and settings), ``area_ratio.{csv,md,json}`` and ``run.json``.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

import torch

from ..results import load_result, write_table
from ..runs import RunFolder, safe_name, weights_record
from .erf import DEFAULT_THRESHOLDS, ERFResult, effective_receptive_field

__all__ = ["ERFSettings", "ERFStack", "compute_erfs"]

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class ERFSettings:
    """What an ERF run computes: input size (RepLKNet: 1024), ``layers`` ``{model: layer}``
    (default: each model's last stage), the area-ratio ``thresholds`` and the subset ``seed``."""

    image_size: int = 1024
    layers: Mapping[str, str] = dataclasses.field(default_factory=dict)
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS
    seed: int = 0

    def fingerprint(self) -> Dict[str, Any]:
        return {"image_size": self.image_size, "layers": dict(self.layers),
                "thresholds": [float(t) for t in self.thresholds], "seed": self.seed}


class ERFStack:
    """ERF results of several models (``results``: ``{model: ERFResult}``, in computed order)."""

    def __init__(self, results: Mapping[str, ERFResult], thresholds: Sequence[float] = DEFAULT_THRESHOLDS):
        self.results = dict(results)
        self.thresholds = tuple(float(t) for t in thresholds)

    @property
    def models(self) -> List[str]:
        return list(self.results)

    def rows(self) -> List[Dict[str, Any]]:
        """One row per model: layer, images, weights and the area ratio at each threshold."""
        out = []
        for name, res in self.results.items():
            row = {"model": name, "layer": res.layer, "n_images": res.n_images,
                   "weights": (res.metadata.get("weights") or {}).get("location")}
            row.update({f"t={t:g}": r for t, r in res.area_ratio(self.thresholds).items()})
            out.append(row)
        return out

    def save_tables(self, out: Union[str, os.PathLike]) -> List[Path]:
        return write_table(self.rows(), Path(out) / "area_ratio")

    @classmethod
    def load(cls, folder: Union[str, os.PathLike]) -> "ERFStack":
        folder = Path(folder)
        record = RunFolder.read_record(folder) or {}
        results = {}
        for f in sorted(folder.glob("erf_*.safetensors")):
            res = load_result(f) if _has_class(f) else ERFResult.load(f)
            results[res.metadata.get("model", f.stem[4:])] = res
        if not results:
            raise FileNotFoundError(f"no ERF results (erf_*.safetensors) in {folder}")
        order = (record.get("summary") or {}).get("models") or list(results)
        results = {k: results[k] for k in order if k in results} | results
        thresholds = (record.get("settings") or {}).get("thresholds", DEFAULT_THRESHOLDS)
        return cls(results, thresholds)


def _has_class(path: Path) -> bool:
    from ..results import load_tensors

    return "__class__" in load_tensors(path)[1]


def compute_erfs(
    models: Any,
    images: Any = None,
    settings: Optional[ERFSettings] = None,
    *,
    labels=None,
    num_images: Optional[int] = None,
    out: Optional[Union[str, os.PathLike]] = None,
    resume: bool = False,
    device: Union[str, torch.device, None] = "auto",
    batch_size: Optional[int] = None,
    random_weights: bool = False,
    progress: bool = True,
    fast_path: bool = True,
) -> ERFStack:
    """The mean ERF map of every model over the same images (RepLKNet protocol, see :mod:`.erf`).

    Arguments as :func:`moga_analysis.gradcam.compute_cams`.  A model whose weights look random
    raises a :class:`~moga_analysis.erf.RandomWeightsWarning`.
    ``fast_path``: False leaves the allocator alone (:func:`moga_analysis.runtime.fast_path`).
    """
    from ..data import image_set, transform_for
    from ..runtime import fast_path as _fast_path
    from ..specs import iter_models, model_specs

    _fast_path(fast_path)
    settings = settings or ERFSettings()
    specs = model_specs(models, random_weights=random_weights)
    imgs = image_set(images, labels, num_images=num_images, seed=settings.seed)
    run = RunFolder(out, "erf", {**settings.fingerprint(), "images": imgs.names}, resume=resume) if out else None
    results: Dict[str, ERFResult] = {}
    for spec, model in iter_models(specs, device, settings.seed):
        key = f"erf_{safe_name(spec.name)}"
        if run is not None:
            run.check_weights(spec.name, weights_record(model))
            if run.done(key, {"model": spec.name}):
                results[spec.name] = run.load_item(key)
                continue
        x, kept = imgs.load_all(transform_for(model, size=settings.image_size) if imgs.from_files else None)
        res = effective_receptive_field(model, x, layer=settings.layers.get(spec.name), batch_size=batch_size,
                                        progress=progress)
        res = dataclasses.replace(res, metadata={
            "model": spec.name, "images": [imgs.names[i] for i in kept], "weights": weights_record(model),
            "settings": settings.fingerprint(), "item": {"model": spec.name}})
        results[spec.name] = res
        if run is not None:
            run.save_item(key, res)
        log.info("%s: area ratios %s", spec.name, res.area_ratio(settings.thresholds))
    stack = ERFStack(results, settings.thresholds)
    if run is not None:
        stack.save_tables(run.path)
        run.mark_complete(models=stack.models)
    return stack
