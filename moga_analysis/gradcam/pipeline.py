"""Grad-CAM over models x images: the pipeline that the CLI, the notebooks and the figures share.

>>> stack = compute_cams(["moganet_small", "resnet50"], images=None, settings=CAMSettings())
>>> stack = CAMStack.load("runs/gradcam")          # the same object from a finished run folder
>>> fig, axes = plot_cam_grid(stack)                # moga_analysis.gradcam.plot

A run folder holds ``cam_<model>.safetensors`` (a :class:`CAMResult` whose metadata carries the
model, images, weights, faithfulness summary and preprocessing), ``display_images.safetensors``
(the images as shown, uint8), ``metrics.{csv,md,json}`` and ``run.json`` (see
:mod:`moga_analysis.runs`).  ``resume=True`` keeps the models already done.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

import torch

from ..results import SavableResult, load_result, write_table
from ..runs import RunFolder, safe_name, weights_record
from .cam import CAMResult, grad_cam

__all__ = ["CAMSettings", "CAMStack", "compute_cams"]

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class CAMSettings:
    """What a Grad-CAM run computes.

    ``layers``: ``{model name: layer}`` (default: each family's layer, see
    :func:`moga_analysis.feature_maps.default_layer`); ``image_size``: one input size for every
    model so the maps line up; ``steps``: deletion/insertion steps (RISE used one per 224 pixels);
    ``metrics``: faithfulness metrics; ``sanity``: the model-randomisation check (seeded by ``seed``);
    ``target``: the explained class, ``"prediction"`` (each model's) or ``"label"`` (the images'
    labels, the prediction where an image has none).
    """

    image_size: Optional[int] = 224
    layers: Mapping[str, str] = dataclasses.field(default_factory=dict)
    steps: int = 50
    metrics: bool = True
    sanity: bool = False
    seed: int = 0
    target: str = "prediction"

    def __post_init__(self):
        if self.target not in ("prediction", "label"):
            raise ValueError(f"target must be 'prediction' or 'label', got {self.target!r}")

    def fingerprint(self) -> Dict[str, Any]:
        return dataclasses.asdict(self) | {"layers": dict(self.layers)}


@dataclasses.dataclass(frozen=True)
class _Display(SavableResult):
    """The images of a Grad-CAM run as shown (uint8 ``[B, 3, H, W]``) and their names."""

    images: torch.Tensor
    names: Tuple[str, ...]


class CAMStack:
    """Grad-CAM results of several models on the same images.

    ``results``: ``{model: CAMResult}`` (in the order computed); ``display``: float ``[B, 3, H, W]``
    in [0, 1]; ``images``: names of the images; ``class_names``: of the first model, or None.
    """

    def __init__(
        self,
        results: Mapping[str, CAMResult],
        display: torch.Tensor,
        images: List[str],
        class_names: Optional[List[str]] = None,
    ):
        self.results = dict(results)
        self.display = display
        self.images = list(images)
        self.class_names = class_names

    @property
    def models(self) -> List[str]:
        return list(self.results)

    def rows(self) -> List[Dict[str, Any]]:
        """One row per model: model, layer, weights and the faithfulness (and sanity) summary."""
        out = []
        for name, res in self.results.items():
            meta = res.metadata
            row = {"model": name, "layer": res.layer, "weights": (meta.get("weights") or {}).get("location")}
            row.update(meta.get("faithfulness") or {})
            row.update({f"sanity_{k}": v for k, v in (meta.get("sanity") or {}).items() if not isinstance(v, list)})
            out.append(row)
        return out

    def save_tables(self, out: Union[str, os.PathLike]) -> List[Path]:
        return write_table(self.rows(), Path(out) / "metrics", metadata={"images": self.images})

    @classmethod
    def load(cls, folder: Union[str, os.PathLike]) -> "CAMStack":
        """The stack of a run folder, models in the order they were computed."""
        folder = Path(folder)
        record = RunFolder.read_record(folder) or {}
        files = sorted(folder.glob("cam_*.safetensors"))
        results = {}
        for f in files:
            res = load_result(f)
            results[res.metadata.get("model", f.stem[4:])] = res
        order = (record.get("summary") or {}).get("models") or list(results)
        results = {k: results[k] for k in order if k in results} | results
        if not results:
            raise FileNotFoundError(f"no Grad-CAM results (cam_*.safetensors) in {folder}")
        disp = load_result(folder / "display_images.safetensors")
        names = (record.get("summary") or {}).get("class_names")
        return cls(results, disp.images.float() / 255.0, list(disp.names), names)


def _faithfulness(model, x, cam: CAMResult, settings: CAMSettings, batch_size, progress) -> Dict[str, Any]:
    from .faithfulness import faithfulness_metrics

    m = faithfulness_metrics(model, x, cam.maps, cam.targets, steps=settings.steps, batch_size=batch_size,
                             progress=progress)
    return m.summary()


def _cam_of_model(spec, model, images, settings: CAMSettings, batch_size, progress) -> Tuple[CAMResult, Any]:
    """Grad-CAM (and metrics) of one model on the image set; returns (result, preprocessed batch)."""
    from ..data import data_config_for, transform_for
    from ..runtime import make_generator
    from .faithfulness import randomization_check

    transform = transform_for(model, size=settings.image_size) if images.from_files else None
    x, kept = images.load_all(transform)
    layer = settings.layers.get(spec.name)
    target = None
    if settings.target == "label" and any(images.labels[i] >= 0 for i in kept):
        with torch.no_grad():
            predicted = model(x).argmax(-1).tolist() if any(images.labels[i] < 0 for i in kept) else None
        target = [images.labels[i] if images.labels[i] >= 0 else predicted[k] for k, i in enumerate(kept)]
    cam = grad_cam(model, x, target=target, layer=layer, batch_size=batch_size, progress=progress)
    cfg = data_config_for(model, settings.image_size)
    meta: Dict[str, Any] = {
        "model": spec.name,
        "images": [images.names[i] for i in kept],
        "weights": weights_record(model),
        "data_config": {k: cfg[k] for k in ("mean", "std", "input_size")},
        "settings": settings.fingerprint(),
    }
    if settings.metrics:
        meta["faithfulness"] = _faithfulness(model, x, cam, settings, batch_size, progress)
    if settings.sanity:
        meta["sanity"] = randomization_check(model, x, layer=cam.layer, generator=make_generator(settings.seed))
    return dataclasses.replace(cam, metadata=meta), x


def _display(model, images, settings: CAMSettings, x: Optional[torch.Tensor]) -> torch.Tensor:
    """The images in [0, 1] as ``model`` sees them (its crop and size, normalisation undone)."""
    from ..data import data_config_for, transform_for
    from ..imaging import denormalize

    if x is None:
        x, _ = images.load_all(transform_for(model, size=settings.image_size) if images.from_files else None)
    cfg = data_config_for(model, settings.image_size)
    return denormalize(x, cfg["mean"], cfg["std"])


def compute_cams(
    models: Any,
    images: Any = None,
    settings: Optional[CAMSettings] = None,
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
) -> CAMStack:
    """Grad-CAM maps of every model on the same images, with faithfulness metrics.

    ``models``: names, ``NAME=CHECKPOINT``, modules... (:func:`moga_analysis.specs.model_specs`);
    ``images``: None (the shipped photos), a folder, files, a tensor or a dataset
    (:func:`moga_analysis.data.image_set`; ``num_images``: the one subset rule).  ``out``: a run
    folder to write (and, with ``resume``, to continue).  The explained class is each model's
    prediction.  Returns a :class:`CAMStack`.
    ``fast_path``: False leaves the allocator alone (:func:`moga_analysis.runtime.fast_path`).
    """
    from ..data import class_names_for, image_set
    from ..runtime import fast_path as _fast_path
    from ..specs import iter_models, model_specs

    _fast_path(fast_path)
    settings = settings or CAMSettings()
    specs = model_specs(models, random_weights=random_weights)
    imgs = image_set(images, labels, num_images=num_images, seed=settings.seed)
    fingerprint = {**settings.fingerprint(), "images": imgs.names}
    run = RunFolder(out, "gradcam", fingerprint, resume=resume) if out is not None else None
    results: Dict[str, CAMResult] = {}
    display, class_names = None, None
    for spec, model in iter_models(specs, device, settings.seed):
        key, x = f"cam_{safe_name(spec.name)}", None
        if run is not None:
            run.check_weights(spec.name, weights_record(model))
        if run is not None and run.done(key, {"model": spec.name}):
            results[spec.name] = run.load_item(key)
            log.info("resume: %s done", spec.name)
        else:
            cam, x = _cam_of_model(spec, model, imgs, settings, batch_size, progress)
            results[spec.name] = cam
            if run is not None:
                run.save_item(key, dataclasses.replace(cam, metadata={**cam.metadata, "item": {"model": spec.name}}))
        if display is None:  # the images as the first model sees them
            display, class_names = _display(model, imgs, settings, x), class_names_for(model)
        faith = results[spec.name].metadata.get("faithfulness")
        if faith is not None:
            log.info("%s: faithfulness %s", spec.name, faith)
    stack = CAMStack(results, display, results[specs[0].name].metadata["images"], class_names)
    if run is not None:
        _finish_run(run, stack)
    return stack


def _finish_run(run: RunFolder, stack: CAMStack) -> None:
    """The display images (uint8) and the tables into the run folder, which is then complete."""
    _Display((stack.display * 255).round().to(torch.uint8), tuple(stack.images)).save(
        run.path / "display_images.safetensors"
    )
    stack.save_tables(run.path)
    run.mark_complete(models=stack.models, class_names=stack.class_names)
