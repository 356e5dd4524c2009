"""Plain batched inference of EfficientNet-Lite0 under each allocator x memory-format setting,
and what the library's defaults reach (the README's "CPU speed" table).

    python experiments/benchmarks/bench_fast_path.py --batch-size 256 --batches 3 --rounds 3

Every configuration runs in a fresh process (the allocator settings are per process), one after
another, and the whole list is repeated ``--rounds`` times, interleaved; the table shows medians and
each configuration's speed relative to the fastest.  Configurations:

* ``NCHW`` / ``channels_last``: the memory format of model and input;
* ``untuned``: glibc's defaults; ``mallopt``: :func:`moga_analysis.runtime.tune_malloc` at run time;
  ``env``: ``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=...`` set before the process starts;
* ``CLI default``: what ``python -m moga_analysis.<tool>`` gets without flags (it restarts itself
  with the allocator settings, :func:`moga_analysis.runtime.prepare_model` picks channels_last
  for a conv net): measured by starting the child the way ``cli.run_main`` does;
* ``notebook default``: a plain kernel that calls ``tune_malloc()`` and ``prepare_model``;
  ``moga-analysis kernel``: the kernel of ``python -m moga_analysis.kernel`` (env at start-up).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

CHILD = r"""
import json, sys, time, torch
cfg = json.loads(sys.argv[1])
torch.set_num_threads(cfg["threads"])
from moga_analysis.runtime import allocator_state, prepare_model, tune_malloc
if cfg["mallopt"]:
    tune_malloc()
from moga_analysis.data import load_model
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

CONFIGS = [
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


def run_one(cfg: dict, args) -> dict:
    from moga_analysis.cli import MALLOC_ENV

    env = {k: v for k, v in os.environ.items() if k not in MALLOC_ENV}
    if cfg["env"]:
        env.update(MALLOC_ENV)
    payload = json.dumps(dict(cfg, threads=args.threads, batch=args.batch_size, batches=args.batches))
    p = subprocess.run([sys.executable, "-c", CHILD, payload], capture_output=True, text=True, env=env, cwd=ROOT)
    if p.returncode:
        raise SystemExit(p.stderr[-2000:])
    return json.loads(p.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--batches", type=int, default=3)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="tiny sizes: check that the script runs")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--only", nargs="+", default=None, metavar="TEXT",
                   help="run only the configurations whose name contains one of these")
    args = p.parse_args(argv)
    configs = [(n, c) for n, c in CONFIGS if args.only is None or any(t in n for t in args.only)]
    if args.quick:
        args.batch_size, args.batches, args.rounds, args.threads = 4, 1, 1, 1
    speeds = {name: [] for name, _ in configs}
    states = {}
    for _ in range(args.rounds):
        for name, cfg in configs:
            r = run_one(cfg, args)
            speeds[name].append(r["images_per_s"])
            states[name] = r["allocator"]
    med = {k: statistics.median(v) for k, v in speeds.items()}
    best = max(med.values())
    print(f"EfficientNet-Lite0, batch {args.batch_size} at 224 px, {args.threads} threads, "
          f"median of {args.rounds} interleaved rounds of {args.batches} batches")
    print("| configuration | allocator | images/s | / best |")
    print("|---|---|---|---|")
    for name, _ in configs:
        print(f"| {name} | {states[name]} | {med[name]:.1f} | {med[name] / best:.2f} |")
    if args.json:
        args.json.write_text(json.dumps({"median": med, "runs": speeds, "allocator": states}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
