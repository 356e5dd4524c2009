"""Benchmark: Grad-CAM and ERF cost against the passes they cannot avoid, and against pytorch-grad-cam.

    .venv/bin/python experiments/benchmarks/bench_gradcam_erf.py --model moganet_tiny --batch 8 --size 224

Rows (medians over ``--repeats`` rounds; in every round each method runs once, in turn, so the
ratios compare runs measured side by side under the same machine load):

* ``forward (no grad)``: plain inference, for scale;
* ``forward+backward (param grads)``: one training-style pass, the Grad-CAM reference;
* ``grad_cam (ours)``: :func:`moga_analysis.gradcam.grad_cam` at the default layer (MogaNet ``norm4``);
* ``pytorch-grad-cam GradCAM``: the ``grad-cam`` package on the same layer, batch and targets;
* ``forward+input-grad backward``: ``forward_features`` then ``autograd.grad`` of the ERF score
  with respect to the input (parameters left trainable, as a user would write it), the ERF reference;
* ``effective_receptive_field (ours)``: the same batch through :func:`effective_receptive_field`.

Weights are random (timing does not depend on them); the ERF random-weight warning is silenced.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import timm  # noqa: E402

import moga_analysis  # noqa: E402,F401
from moga_analysis.erf import RandomWeightsWarning, effective_receptive_field  # noqa: E402
from moga_analysis.gradcam import grad_cam, resolve_layer  # noqa: E402
from moga_analysis.runtime import environment_info, tune_malloc  # noqa: E402


def _timer(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="moganet_tiny")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--erf-batch", type=int, default=4)
    p.add_argument("--erf-size", type=int, default=384, help="ERF input size (RepLKNet: 1024)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", default=None, help="also write the numbers here")
    args = p.parse_args(argv)

    tuned = tune_malloc()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = timm.create_model(args.model).eval()
    x = torch.randn(args.batch, 3, args.size, args.size)
    xe = torch.randn(args.erf_batch, 3, args.erf_size, args.erf_size)
    with torch.no_grad():
        targets = model(x).argmax(1)
    layer_name, layer = resolve_layer(model, None)

    def fwd():
        with torch.no_grad():
            model(x)

    def fwd_bwd():
        model.zero_grad(set_to_none=True)
        model(x).gather(1, targets[:, None]).sum().backward()
        model.zero_grad(set_to_none=True)

    def ours():
        grad_cam(model, x, target=targets)

    methods = {
        "forward (no grad)": fwd,
        "forward+backward (param grads)": fwd_bwd,
        "grad_cam (ours)": ours,
    }
    try:
        from pytorch_grad_cam import GradCAM
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        pgc = GradCAM(model=model, target_layers=[layer])
        pgc_targets = [ClassifierOutputTarget(int(t)) for t in targets]

        def theirs():
            pgc(input_tensor=x, targets=pgc_targets)
            model.zero_grad(set_to_none=True)

        methods["pytorch-grad-cam GradCAM"] = theirs
    except ImportError:
        pgc = None
        print("grad-cam (pytorch-grad-cam) not installed: skipping its row", file=sys.stderr)

    def erf_ref():
        xi = xe.clone().requires_grad_(True)
        f = model.forward_features(xi)
        h, w = f.shape[-2:]
        score = torch.relu(f[:, :, h // 2, w // 2]).sum()
        (g,) = torch.autograd.grad(score, xi)
        torch.relu(g).sum(dim=(0, 1))

    def erf_ours():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RandomWeightsWarning)
            effective_receptive_field(model, xe)

    methods["forward+input-grad backward (ERF ref)"] = erf_ref
    methods["effective_receptive_field (ours)"] = erf_ours

    times = {k: [] for k in methods}
    for _ in range(args.warmup):
        for fn in methods.values():
            fn()
    for r in range(args.repeats):
        for k, fn in methods.items():
            times[k].append(_timer(fn))
        print(
            f"round {r + 1}/{args.repeats}: " + ", ".join(f"{k} {v[-1]:.2f}s" for k, v in times.items()),
            file=sys.stderr,
            flush=True,
        )
        if args.json:  # partial results survive an interrupted run
            Path(args.json).write_text(json.dumps({"args": vars(args), "times": times, "partial": True}, indent=2))
    if pgc is not None:
        pgc.activations_and_grads.release()
    med = {k: statistics.median(v) for k, v in times.items()}
    best = {k: min(v) for k, v in times.items()}

    def round_ratio(a, b):  # median over rounds of the ratio measured within each round
        return statistics.median(x / y for x, y in zip(times[a], times[b]))

    FB, ERF_REF = "forward+backward (param grads)", "forward+input-grad backward (ERF ref)"
    rows = [
        ("forward (no grad)", args.batch, FB, ""),
        (FB, args.batch, FB, "Grad-CAM reference"),
        ("grad_cam (ours)", args.batch, FB, "target <= 0.35"),
    ]
    if "pytorch-grad-cam GradCAM" in med:
        sp = round_ratio("pytorch-grad-cam GradCAM", "grad_cam (ours)")
        rows.append(("pytorch-grad-cam GradCAM", args.batch, FB, f"ours {sp:.2f}x faster, per round (target >= 2.5)"))
    rows.append((ERF_REF, args.erf_batch, ERF_REF, "ERF reference"))
    rows.append(("effective_receptive_field (ours)", args.erf_batch, ERF_REF, "target <= 1.1"))

    env = environment_info(torch.device("cpu"))
    print(
        f"# {args.model}, Grad-CAM layer {layer_name}, batch {args.batch} @ {args.size}px; ERF batch "
        f"{args.erf_batch} @ {args.erf_size}px; {args.repeats} interleaved rounds; "
        f"torch {env['torch']}, {env['threads']} threads, malloc tuned: {tuned}"
    )
    print(
        "| method | batch | median s/batch | min s/batch | ms/image (median) "
        "| ratio to reference (median per round) | ratio (min/min) | note |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    for name, b, refname, note in rows:
        print(
            f"| {name} | {b} | {med[name]:.3f} | {best[name]:.3f} | {1000 * med[name] / b:.1f} | "
            f"{round_ratio(name, refname):.3f} | {best[name] / best[refname]:.3f} | {note} |"
        )
    if args.json:
        Path(args.json).write_text(
            json.dumps({"args": vars(args), "times": times, "median": med, "env": env}, indent=2)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
