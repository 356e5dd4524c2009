"""The gate-ablation experiment as a pipeline: sweep, run folder and resume, optional analyses.

```python
settings = AblationSettings(ablations=("gate", "context"), stages=("all", "3"), dtype="bfloat16")
report = run_ablation("moganet_small", "/data/imagenet/val", settings, out="runs/ablation", resume=True)
report.metrics["gate@all"]["top1_drop"]
report = AblationReport.load("runs/ablation")          # the same object from a finished run
fig, ax = plot_accuracy_drop(report.metrics)             # moga_analysis.ablation.plot
```

The run folder holds ``run.json`` (settings, images, weights), ``ablation_state.safetensors`` (the
per-ablation sums, saved every ``checkpoint_every_s`` seconds and on an interruption, so that
``resume=True`` continues from the last saved image and new ablations run alone) and
``ablation_results.{json,csv,md}``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch

from ..results import SavableResult, atomic_write_text, write_table
from ..runs import RunFolder, weights_record
from .evaluate import (
    MARKDOWN_COLUMNS,
    METRIC_COLUMNS,
    STAT_COLUMNS,
    AblationEvaluation,
    evaluate_ablations,
    metric_rows,
)
from .interventions import KINDS, AblationSpec, calibrate, moga_blocks, parse_specs

__all__ = ["AblationSettings", "AnalysisSettings", "AblationReport", "run_ablation", "ablation_analyses"]

log = logging.getLogger(__name__)

_STATE = "ablation_state"


@dataclasses.dataclass(frozen=True)
class AblationSettings:
    """The sweep ``ablations x stages x modes`` (full model first, see :func:`parse_specs`) and how
    it runs: mean-mode calibration images, input size, ``dtype`` (``bfloat16``/``float16``:
    autocast), memory format and the image-subset ``seed``."""

    ablations: Tuple[str, ...] = KINDS
    stages: Tuple[str, ...] = ("all",)
    modes: Tuple[str, ...] = ("zero",)
    calibration_images: int = 256
    image_size: Optional[int] = None
    dtype: str = "float32"
    memory_format: str = "auto"
    seed: int = 0

    def specs(self) -> List[AblationSpec]:
        return parse_specs(list(self.ablations), list(self.stages), list(self.modes))

    def amp_dtype(self) -> Optional[torch.dtype]:
        from ..runtime import resolve_dtype

        dt = resolve_dtype(self.dtype)
        return None if dt == torch.float32 else dt

    def fingerprint(self) -> Dict[str, Any]:
        """What the saved sums depend on (the ablation list may grow on resume)."""
        return {"calibration_images": self.calibration_images, "image_size": self.image_size, "dtype": self.dtype,
                "memory_format": self.memory_format, "seed": self.seed}


@dataclasses.dataclass(frozen=True)
class AnalysisSettings:
    """Optional analyses of every ablated model on the first ``images`` images, explaining the
    full model's prediction: J^(m) curves (``interactions``: their settings), ERF area ratios,
    Grad-CAM deletion/insertion faithfulness with ``gradcam_steps`` steps."""

    interactions: Optional[Any] = None
    erf: bool = False
    gradcam_steps: Optional[int] = None
    images: int = 4

    @property
    def any(self) -> bool:
        return self.interactions is not None or self.erf or self.gradcam_steps is not None


@dataclasses.dataclass(frozen=True)
class SweepState(SavableResult):
    """Per-ablation sums of an unfinished or finished sweep (rows of ``columns``)."""

    stats: torch.Tensor
    specs: List[str]
    columns: List[str]


@dataclasses.dataclass
class AblationReport:
    """``metrics``: ``{ablation: {kind, stages, mode, n_images, top1, top1_drop, ...}}``;
    ``metadata``: model, weights, images, timing, environment, optional ``analyses``."""

    metrics: Dict[str, Dict[str, Any]]
    metadata: Dict[str, Any]

    def rows(self) -> List[Dict[str, Any]]:
        return metric_rows(self.metrics)

    def save(self, folder: Union[str, os.PathLike]) -> List[Path]:
        folder = Path(folder)
        doc = json.dumps({"metadata": self.metadata, "metrics": self.metrics}, indent=2, default=str)
        written = [atomic_write_text(folder / "ablation_results.json", doc)]
        written += write_table(self.rows(), folder / "ablation_results", METRIC_COLUMNS, formats=("csv",))
        written += write_table(self.rows(), folder / "ablation_results", MARKDOWN_COLUMNS, formats=("md",))
        return written

    @classmethod
    def load(cls, folder: Union[str, os.PathLike]) -> "AblationReport":
        doc = json.loads((Path(folder) / "ablation_results.json").read_text())
        return cls(doc["metrics"], doc["metadata"])


class _Files(torch.utils.data.Dataset):
    """``(image tensor, label)`` of an :class:`~moga_analysis.data.ImageSet` (for a DataLoader)."""

    def __init__(self, images, transform):
        self.images, self.transform = images, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        x = self.images.load(i, self.transform)
        if x is None:
            raise ValueError(f"cannot read image {self.images.names[i]}")
        return x, self.images.labels[i]


def _digest(names: Sequence[str]) -> Dict[str, Any]:
    return {"n": len(names), "sha256": hashlib.sha256("\n".join(names).encode()).hexdigest()}


def _resume_point(saved: Mapping[str, torch.Tensor], specs: Sequence[AblationSpec], n: int):
    """``(done rows, pending specs, start image, initial sums)`` from a saved state."""
    col_n = STAT_COLUMNS.index("n")
    done = {s.name: saved[s.name] for s in specs if s.name in saved and int(saved[s.name][col_n]) >= n}
    pending = [s for s in specs if s.name not in done]
    starts = {int(saved[s.name][col_n]) if s.name in saved else 0 for s in pending}
    start = starts.pop() if len(starts) == 1 else 0
    if starts:
        log.warning("--resume: the unfinished ablations stopped at different images; they restart from image 0")
    initial = torch.stack([saved[s.name] for s in pending]) if (pending and start > 0) else None
    if done:
        log.info("--resume: %d ablations already complete, %d to run from image %d", len(done), len(pending), start)
    return done, pending, start, initial


def _calibrations(model, dataset, n: int, settings: AblationSettings, kinds, loader_for) -> Dict[str, Any]:
    if not kinds:
        return {}
    batches = [b[0] for b in loader_for(list(range(max(1, min(settings.calibration_images, n)))))]
    return {kind: calibrate(model, kind, batches) for kind in kinds}


def _loader_factory(dataset, batch_size: int, workers: int, device: torch.device):
    from torch.utils.data import DataLoader, Subset

    def loader_for(idx: List[int]) -> DataLoader:
        return DataLoader(Subset(dataset, idx), batch_size=batch_size, shuffle=False, num_workers=workers,
                          pin_memory=device.type == "cuda", persistent_workers=False)

    return loader_for


def _sweep(model, dataset, specs, settings, run, resume, loader_for, checkpoint_every_s, progress):
    """The sums of every spec (resumed where the state allows) and the timing of the pass."""
    n = len(dataset)
    state_file = run.item_path(_STATE) if run is not None else None
    saved = {}
    if resume and state_file is not None and state_file.exists():
        st = run.load_item(_STATE)
        saved = {name: st.stats[i] for i, name in enumerate(st.specs)}
    done, pending, start, initial = _resume_point(saved, specs, n)
    t0 = time.perf_counter()
    calibration = _calibrations(model, dataset, n, settings, sorted({s.kind for s in pending if s.mode == "mean"}),
                                loader_for)
    names = [s.name for s in specs]

    def write_state(pending_stats: torch.Tensor) -> None:
        rows = dict(done, **{s.name: pending_stats[i] for i, s in enumerate(pending)})
        kept = [nm for nm in names if nm in rows]
        run.save_item(_STATE, SweepState(torch.stack([rows[nm] for nm in kept]), kept, list(STAT_COLUMNS)))

    t1 = time.perf_counter()
    rows = dict(done)
    if pending:
        result = evaluate_ablations(
            model, loader_for(list(range(start, n))), pending, calibration=calibration,
            amp_dtype=settings.amp_dtype(), channels_last=_channels_last(model), initial=initial,
            checkpoint=write_state if run is not None else None, checkpoint_every_s=checkpoint_every_s,
            total=n - start, show_progress=progress)
        rows.update({s.name: result.stats[i] for i, s in enumerate(pending)})
    wall = time.perf_counter() - t1
    processed = n - start if pending else 0
    timing = {"calibration_s": t1 - t0, "sweep_s": wall, "images_processed": processed,
              "forward_passes_per_image": len(pending) + (0 if any(s.kind == "none" for s in pending) else 1),
              "images_per_s": processed / wall if processed and wall > 0 else None,
              "resumed_from_image": start if resume else None}
    return AblationEvaluation(tuple(specs), torch.stack([rows[s.name] for s in specs])), timing, calibration


def _channels_last(model) -> bool:
    from ..runtime import uses_channels_last

    return uses_channels_last(model)


def _moganet(spec, device, settings: AblationSettings):
    """The spec's model, checked to be a MogaNet before any data is read, in the run's memory format."""
    from ..runtime import prepare_model
    from ..specs import load_spec

    net = load_spec(spec, device, settings.seed)
    try:
        moga_blocks(net)
    except TypeError as err:
        raise ValueError(str(err)) from None
    return prepare_model(net, None, settings.memory_format)


def _metadata(spec, net, images, labels_file, imgs, n_dataset, settings, specs, batch_size, timing, device):
    from ..runtime import environment_info

    mean = any(s.mode == "mean" for s in specs)
    return {
        "tool": "moga_analysis.ablation", "model": spec.name, "weights": weights_record(net),
        "data": str(images), "labels_file": None if labels_file is None else str(labels_file),
        "n_images": len(imgs), "n_dataset": n_dataset, "subset_seed": settings.seed if len(imgs) < n_dataset else None,
        "settings": dataclasses.asdict(settings), "channels_last": _channels_last(net),
        "calibration_images": min(settings.calibration_images, len(imgs)) if mean else 0, "batch_size": batch_size,
        "specs": [{"name": s.name, "kind": s.kind, "stages": s.stages_label, "mode": s.mode} for s in specs],
        "timing": timing, "environment": environment_info(device),
    }


def _analyses(net, dataset, specs, settings, calibration, analyses, loader_for, batch_size):
    """The mechanism analyses on the first ``analyses.images`` images, with the mean-mode
    calibrations the sweep did not make."""
    mean_kinds = sorted({s.kind for s in specs if s.mode == "mean"} - set(calibration))
    calibration.update(_calibrations(net, dataset, len(dataset), settings, mean_kinds, loader_for))
    x = torch.stack([dataset[i][0] for i in range(min(analyses.images, len(dataset)))])
    return ablation_analyses(net, x, specs, calibration, analyses, batch_size=batch_size)


def run_ablation(
    model: Any,
    images: Any,
    settings: Optional[AblationSettings] = None,
    *,
    labels_file: Optional[Union[str, os.PathLike]] = None,
    labels_format: str = "auto",
    num_images: Optional[int] = None,
    analyses: Optional[AnalysisSettings] = None,
    out: Optional[Union[str, os.PathLike]] = None,
    resume: bool = False,
    device: Union[str, torch.device, None] = "auto",
    batch_size: Optional[int] = None,
    workers: Optional[int] = None,
    checkpoint_every_s: float = 120.0,
    random_weights: bool = False,
    progress: bool = True,
    fast_path: bool = True,
) -> AblationReport:
    """Every ablation of ``settings`` on one MogaNet over ``images`` in one pass (see :mod:`.evaluate`).

    ``model``: a name, ``NAME=CHECKPOINT``, ``(name, checkpoint)`` or a module; ``images``: a folder
    (synset folders, a flat folder with ``labels_file`` read as ``labels_format``, or unlabelled images), files or an
    :class:`~moga_analysis.data.ImageSet`; ``num_images``: the one subset rule.  ``out``: the run
    folder (``resume=True`` continues it).  Returns an :class:`AblationReport` (saved in ``out``).
    ``fast_path``: False leaves the allocator alone (:func:`moga_analysis.runtime.fast_path`).
    """
    from ..data import image_set, transform_for
    from ..runtime import fast_path as _fast_path
    from ..runtime import resolve_device
    from ..specs import model_specs

    _fast_path(fast_path)
    settings = settings or AblationSettings()
    specs = settings.specs()
    (spec,) = model_specs(model, random_weights=random_weights)
    dev = resolve_device(device)
    net = _moganet(spec, dev, settings)
    imgs_all = image_set(images, labels_file=labels_file, labels_format=labels_format)
    imgs = image_set(imgs_all, num_images=num_images, seed=settings.seed)
    dataset = _Files(imgs, transform_for(net, size=settings.image_size))
    fingerprint = {**settings.fingerprint(), "model": spec.name, "images": _digest(imgs.names),  # weights: by SHA-256
                   "labels": _digest([str(x) for x in imgs.labels])}
    run = RunFolder(out, "ablation", fingerprint, resume=resume) if out is not None else None
    if run is not None:
        run.check_weights(spec.name, weights_record(net))
    workers = workers if workers is not None else min(8, torch.multiprocessing.cpu_count())
    bs = batch_size or (64 if dev.type == "cuda" else 16)
    loader_for = _loader_factory(dataset, bs, workers, dev)
    evaluation, timing, calibration = _sweep(net, dataset, specs, settings, run, resume, loader_for,
                                             checkpoint_every_s, progress)
    meta = _metadata(spec, net, images, labels_file, imgs, len(imgs_all), settings, specs, bs, timing, dev)
    if analyses is not None and analyses.any:
        meta["analyses"] = _analyses(net, dataset, specs, settings, calibration, analyses, loader_for, batch_size)
    report = AblationReport(evaluation.metrics(), meta)
    if run is not None:
        report.save(run.path)
        run.mark_complete(ablations=[s.name for s in specs])
    return report


def ablation_analyses(
    model: torch.nn.Module,
    images: torch.Tensor,
    specs: Sequence[AblationSpec],
    calibration: Mapping[str, Any],
    settings: AnalysisSettings,
    batch_size: Optional[int] = None,
) -> Dict[str, Dict[str, Any]]:
    """The optional analyses of every ablated model, through the other pipelines.

    Each spec's model (``with spec.context(...)``) explains the full model's predicted class on
    ``images`` (preprocessed), so that the numbers compare like with like.  Returns
    ``{"interactions": {spec: {orders, n_players, ratios, J}}, "erf": {spec: {t: ratio}},
    "gradcam": {spec: faithfulness summary}}`` for the analyses asked for.
    """
    from ..erf.pipeline import ERFSettings, compute_erfs
    from ..gradcam.pipeline import CAMSettings, compute_cams
    from ..interactions.pipeline import compute_interactions
    from ..runtime import eval_mode, model_device

    images = images.to(model_device(model))
    with eval_mode(model), torch.no_grad():
        targets = model(images).argmax(-1).tolist()
    out: Dict[str, Dict[str, Any]] = {}
    for spec in specs:
        log.info("analyses of %s", spec.name)
        with spec.context(model, calibration.get(spec.kind)):
            one = {spec.name: model}
            if settings.erf:
                stack = compute_erfs(one, images, ERFSettings(image_size=images.shape[-1]), batch_size=batch_size,
                                     progress=False)
                ratios = stack.results[spec.name].area_ratio()
                out.setdefault("erf", {})[spec.name] = {str(t): v for t, v in ratios.items()}
            if settings.gradcam_steps is not None:
                cams = compute_cams(one, images, CAMSettings(image_size=images.shape[-1], steps=settings.gradcam_steps,
                                                             target="label"), labels=targets, batch_size=batch_size,
                                    progress=False)
                out.setdefault("gradcam", {})[spec.name] = cams.results[spec.name].metadata["faithfulness"]
            if settings.interactions is not None:
                res = compute_interactions(one, images, settings.interactions, labels=targets, batch_size=batch_size,
                                           progress=False)[spec.name]
                out.setdefault("interactions", {})[spec.name] = {
                    "orders": res.orders.tolist(), "n_players": res.n_players, "ratios": res.ratios.tolist(),
                    "J": res.relative_strength().tolist()}
    return out
