"""Paper figures and tables: one JSON config per figure in ``experiments/configs/``.

    python experiments/make_figures.py                     # the offline figures (what `make figures` runs)
    python experiments/make_figures.py interactions_imagenet --imagenet-val /data/imagenet/val
    python experiments/make_figures.py --plot-only         # redraw from saved results

Each config names a tool (``interactions``, ``gradcam``, ``erf``, ``ablation``) and its arguments.
Step 1 runs the tool's command line once into ``runs/figures/<config>/`` (skipped when that run
folder is complete, unless ``--recompute``; with ``--resume``, so an interrupted computation
continues). Step 2 draws the figure from the saved results only, through
the library's readers (``InteractionStack``, ``CAMStack``, ``ERFStack``, ``AblationReport``) and
plot functions, into ``experiments/figures/<config>.{png,pdf}``. Placeholders in arguments:
``{fmnist}`` (the 300 shipped Fashion-MNIST test images written out as PNG files with
``labels.txt``), ``{fmnist:N}`` (the first N of them) and ``{imagenet_val}`` (``--imagenet-val``
or the ``IMAGENET_VAL`` environment variable).
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import re
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


_FMNIST = re.compile(r"\{fmnist(?::(\d+))?\}")


def _expand(args, placeholders):
    """Arguments with their placeholders filled in (``{fmnist:N}`` folders written on first use)."""
    out = []
    for a in args:
        for m in _FMNIST.finditer(a):
            key = m.group(0)[1:-1]
            if key not in placeholders:
                from moga_analysis.fmnist import write_fmnist_folder

                n = int(m.group(1)) if m.group(1) else None
                placeholders[key] = write_fmnist_folder(placeholders["_runs"] / "data" / key.replace(":", "_"), n)
        for key, value in placeholders.items():
            if "{" + key + "}" in a:
                if value is None:
                    raise SystemExit(f"this config needs {{{key}}}: pass --imagenet-val DIR or set IMAGENET_VAL")
                a = a.replace("{" + key + "}", str(value))
        out.append(a)
    return out


def compute(name, cfg, run_dir: Path, placeholders, recompute=False):
    from moga_analysis.runs import RunFolder

    if (RunFolder.is_complete(run_dir) or (run_dir / "DONE").exists()) and not recompute:
        log.info("%s: results exist in %s", name, run_dir)
        return
    cli = importlib.import_module(f"moga_analysis.{cfg['tool']}.cli")
    # --resume: an interrupted computation continues where it stopped (every tool resumes)
    argv = _expand(cfg["args"], placeholders) + ["--out", str(run_dir), "--seed", "0", "--resume"]
    log.info("%s: python -m moga_analysis.%s %s", name, cfg["tool"], " ".join(argv))
    code = cli.main(argv)
    if code:
        raise SystemExit(f"{name}: the {cfg['tool']} tool exited with {code}")
    (run_dir / "config.json").write_text(json.dumps({"name": name, **cfg, "argv": argv}, indent=2))


# ----------------------------------------------------------------------------- plotting from saved results
def plot_interactions(run_dir: Path):
    from moga_analysis.interactions import InteractionStack
    from moga_analysis.interactions.plot import plot_relative_strength

    stack = InteractionStack.load(run_dir)
    if stack.maps:  # --protocol maps: the maps beside the Grad-CAM the tool saved with them
        from moga_analysis.gradcam import CAMStack
        from moga_analysis.interactions.map_plot import plot_map_stack

        return plot_map_stack(stack, CAMStack.load(run_dir / "gradcam"), models=stack.models[:2])[0]
    return plot_relative_strength(stack, n_boot=1000, seed=0)[0]


def plot_gradcam(run_dir: Path):
    from moga_analysis.gradcam import CAMStack
    from moga_analysis.gradcam.plot import plot_cam_grid

    return plot_cam_grid(CAMStack.load(run_dir))[0]


def plot_erf(run_dir: Path):
    from moga_analysis.erf import ERFStack
    from moga_analysis.erf.plot import plot_erf as _plot

    return _plot(ERFStack.load(run_dir))[0]


def plot_ablation(run_dir: Path):
    from moga_analysis.ablation import AblationReport
    from moga_analysis.ablation.plot import plot_accuracy_drop

    return plot_accuracy_drop(AblationReport.load(run_dir).metrics)[0]


PLOTTERS = {"interactions": plot_interactions, "gradcam": plot_gradcam, "erf": plot_erf, "ablation": plot_ablation}
#: tables copied beside the figures
TABLES = ("ablation_results.md", "metrics.csv", "area_ratio.csv", "interactions_precision.md",
          "interactions_band_differences.md")


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
    from moga_analysis.plotting.style import save_figure
    from moga_analysis.runtime import tune_malloc

    tune_malloc()
    runs, figures = Path(args.runs), Path(args.figures)
    figures.mkdir(parents=True, exist_ok=True)
    configs = load_configs(args.configs, include_online=args.all)
    placeholders = {"imagenet_val": args.imagenet_val, "_runs": runs}
    for name, cfg in configs.items():
        run_dir = runs / name
        if not args.plot_only:
            compute(name, cfg, run_dir, placeholders, args.recompute)
        for path in save_figure(PLOTTERS[cfg["tool"]](run_dir), figures / name, close=True):
            log.info("%s: wrote %s", name, path)
        for table in TABLES:
            if (run_dir / table).exists():  # the tables beside the figures
                suffix = "_" + table.split("_", 1)[1] if table.startswith("interactions_") else Path(table).suffix
                (figures / f"{name}{suffix}").write_text((run_dir / table).read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
