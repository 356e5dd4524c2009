"""Paper figures and tables: one JSON config per figure in ``experiments/configs/``.

    python experiments/make_figures.py                     # the offline figures (what `make figures` runs)
    python experiments/make_figures.py interactions_imagenet --imagenet-val /data/imagenet/val
    python experiments/make_figures.py --plot-only         # redraw from saved results

Each config names a tool (``interactions``, ``gradcam``, ``erf``, ``ablation``) and its arguments.
Step 1 runs the tool's command line once into ``runs/figures/<config>/`` (skipped when its results
are there, unless ``--recompute``). Step 2 draws the figure from the saved results only, with the
shared paper style, into ``experiments/figures/<config>.{png,pdf}``. Placeholders in arguments:
``{fmnist}`` (the shipped Fashion-MNIST test images, written out as PNG files) and
``{imagenet_val}`` (``--imagenet-val`` or the ``IMAGENET_VAL`` environment variable).
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
log = logging.getLogger("make_figures")


def missing_requirements(cfg):
    """``{file: command that makes it}`` for the files a config ``requires`` that are not there."""
    return {f: cmd for f, cmd in cfg.get("requires", {}).items() if not Path(f).exists()}


def load_configs(names=None, include_online=False):
    """Configs by name; by default the offline ones whose required files exist (the others are
    skipped with a note saying how to make their files)."""
    configs = {p.stem: json.loads(p.read_text()) for p in sorted((HERE / "configs").glob("*.json"))}
    if names:
        unknown = sorted(set(names) - set(configs))
        if unknown:
            raise SystemExit(f"unknown config(s) {unknown}; have {sorted(configs)}")
        for n in names:
            missing = missing_requirements(configs[n])
            if missing:
                raise SystemExit(f"{n} needs " + "; ".join(f"{f} (made by: {c})" for f, c in missing.items()))
        return {n: configs[n] for n in names}
    chosen = {}
    for n, c in configs.items():
        if not (c.get("offline") or include_online):
            continue
        if missing_requirements(c):
            log.info("%s skipped: it needs %s", n, ", ".join(missing_requirements(c)))
            continue
        chosen[n] = c
    return chosen


def _expand(args, placeholders):
    out = []
    for a in args:
        for key, value in placeholders.items():
            if "{" + key + "}" in a:
                if value is None:
                    raise SystemExit(f"this config needs {{{key}}}: pass --imagenet-val DIR or set IMAGENET_VAL")
                a = a.replace("{" + key + "}", str(value))
        out.append(a)
    return out


def compute(name, cfg, run_dir: Path, placeholders, recompute=False):
    done = run_dir / "DONE"
    if done.exists() and not recompute:
        log.info("%s: results exist in %s", name, run_dir)
        return
    tool = importlib.import_module(f"moga_analysis.{cfg['tool']}")
    argv = _expand(cfg["args"], placeholders) + ["--out", str(run_dir), "--seed", "0"]
    if "--resume" in tool.build_parser().format_help():
        argv.append("--resume")  # an interrupted computation continues where it stopped
    log.info("%s: python -m moga_analysis.%s %s", name, cfg["tool"], " ".join(argv))
    code = tool.main(argv)
    if code:
        raise SystemExit(f"{name}: the {cfg['tool']} tool exited with {code}")
    (run_dir / "config.json").write_text(json.dumps({"name": name, **cfg, "argv": argv}, indent=2))
    done.write_text("ok\n")


# ----------------------------------------------------------------------------- plotting from saved results
def plot_interactions(run_dir: Path):
    from moga_analysis.interactions.plot import plot_relative_strength
    from moga_analysis.results import load_tensors

    curves, order = [], []
    for f in sorted(run_dir.glob("interactions_*.safetensors")):
        t, meta = load_tensors(f)
        curves.append({"name": meta["model"], "orders": t["orders"], "per_image": t["mean_abs"],
                       "n_players": int(meta["settings"]["grid"]) ** 2})
        order = meta.get("models", order)  # --model first, then --compare
    curves.sort(key=lambda c: order.index(c["name"]) if c["name"] in order else len(order))
    fig = plot_relative_strength(curves, n_boot=1000, seed=0)
    return fig if not isinstance(fig, tuple) else fig[0]


def plot_gradcam(run_dir: Path):
    import timm
    import torch

    from moga_analysis.data import class_names_for, load_images, transform_for
    from moga_analysis.gradcam import CAMResult
    from moga_analysis.plotting.gradcam import plot_cam_grid
    from moga_analysis.results import load_tensors

    results, first = {}, None
    for f in sorted(run_dir.glob("cam_*.safetensors")):
        t, meta = load_tensors(f)
        results[meta["model"]] = CAMResult(t["raw"], t["maps"], t["targets"], t["scores"], t["probs"],
                                           meta["layer"], meta["layout"])
        first = first or meta
    models = json.loads((run_dir / "config.json").read_text())["argv"]
    order = [a for a in models if a in results]  # command-line order: --model first, then --compare
    results = {k: results[k] for k in order + [k for k in results if k not in order]}
    name = next(iter(results))
    with torch.device("meta"):
        ref = timm.create_model(name.removesuffix(".pypi"), pretrained=False)
    size = int(first["settings"]["size"])
    x, _, _ = load_images(first["images"], transform=transform_for(ref, size=size))
    cfg = ref.pretrained_cfg
    mean = torch.tensor(cfg["mean"]).view(1, -1, 1, 1)
    std = torch.tensor(cfg["std"]).view(1, -1, 1, 1)
    fig, _ = plot_cam_grid((x * std + mean).clamp(0, 1), results, class_names=class_names_for(ref))
    return fig


def plot_erf(run_dir: Path):
    from moga_analysis.erf import ERFResult
    from moga_analysis.plotting.erf import plot_erf as _plot

    results = {}
    from moga_analysis.results import load_tensors

    for f in sorted(run_dir.glob("erf_*.safetensors")):
        _, meta = load_tensors(f)
        results[meta.get("model", f.stem)] = ERFResult.load(f)
    fig, _ = _plot(results)
    return fig


def plot_ablation(run_dir: Path):
    from moga_analysis.plotting.ablation import plot_accuracy_drop

    metrics = json.loads((run_dir / "ablation_results.json").read_text())["metrics"]
    fig, _ = plot_accuracy_drop(metrics)
    return fig


PLOTTERS = {"interactions": plot_interactions, "gradcam": plot_gradcam, "erf": plot_erf, "ablation": plot_ablation}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("configs", nargs="*", help="config names (default: every offline config)")
    p.add_argument("--all", action="store_true", help="also the configs that need the internet")
    p.add_argument("--runs", default="runs/figures", help="where results are computed")
    p.add_argument("--figures", default=str(HERE / "figures"), help="where figures are written")
    p.add_argument("--imagenet-val", default=os.environ.get("IMAGENET_VAL"))
    p.add_argument("--recompute", action="store_true")
    p.add_argument("--plot-only", action="store_true")
    args = p.parse_args(argv)
    from moga_analysis.runtime import setup_logging

    setup_logging(0)

    import matplotlib

    matplotlib.use("Agg")
    from moga_analysis.fmnist import write_fmnist_folder
    from moga_analysis.plotting.style import paper_style, save_figure
    from moga_analysis.runtime import tune_malloc

    tune_malloc()
    runs, figures = Path(args.runs), Path(args.figures)
    figures.mkdir(parents=True, exist_ok=True)
    configs = load_configs(args.configs, include_online=args.all)
    placeholders = {"imagenet_val": args.imagenet_val}
    if any("{fmnist}" in " ".join(c["args"]) for c in configs.values()):
        placeholders["fmnist"] = write_fmnist_folder(runs / "data" / "fmnist")
    for name, cfg in configs.items():
        run_dir = runs / name
        if not args.plot_only:
            compute(name, cfg, run_dir, placeholders, args.recompute)
        with paper_style():
            fig = PLOTTERS[cfg["tool"]](run_dir)
            for path in save_figure(fig, figures / name):
                log.info("%s: wrote %s", name, path)
        for table in ("ablation_results.md", "metrics.csv", "area_ratio.csv"):
            if (run_dir / table).exists():  # the tables beside the figures
                (figures / f"{name}{Path(table).suffix}").write_text((run_dir / table).read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
