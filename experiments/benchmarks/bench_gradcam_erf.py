"""Benchmark: Grad-CAM and ERF cost against the passes they cannot avoid, and against pytorch-grad-cam.

    .venv/bin/python experiments/benchmarks/bench_gradcam_erf.py --model moganet_tiny --batch 8 --size 224

Rows (medians over ``--repeats`` interleaved rounds, :mod:`timing`; the ratios are medians of the
ratio within each round):

* ``forward (no grad)``: plain inference, for scale;
* ``forward+backward (param grads)``: one training-style pass, the Grad-CAM reference;
* ``grad_cam (ours)``: :func:`moga_analysis.gradcam.grad_cam` at the default layer (MogaNet ``norm4``);
* ``pytorch-grad-cam GradCAM``: the ``grad-cam`` package on the same layer, batch and targets (its
  hooks registered for its own call only);
* ``forward+input-grad backward (ERF ref)``: ``forward_features`` then ``autograd.grad`` of the ERF
  score with respect to the input (parameters left trainable, as a user would write it);
* ``effective_receptive_field (ours)``: the same batch through :func:`effective_receptive_field`.

:func:`gradcam_methods` and :func:`erf_methods` are what ``experiments/device_check.py`` times.
Weights are random (timing does not depend on them).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Callable, Dict

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from timing import interleaved, markdown_table  # noqa: E402

FWD, FB, OURS_CAM, PGC = ("forward (no grad)", "forward+backward (param grads)", "grad_cam (ours)",
                          "pytorch-grad-cam GradCAM")
ERF_REF, OURS_ERF = "forward+input-grad backward (ERF ref)", "effective_receptive_field (ours)"


def gradcam_methods(model: torch.nn.Module, x: torch.Tensor, targets: torch.Tensor,
                    pytorch_grad_cam: bool = True) -> Dict[str, Callable[[], None]]:
    """``{FB, OURS_CAM[, PGC]}``: callables on the batch ``x`` explaining ``targets``; PGC only when
    ``pytorch_grad_cam`` and the package imports (``ImportError`` is raised when asked and missing)."""
    from moga_analysis.gradcam import grad_cam

    layer_name = grad_cam(model, x[:1], target=targets[:1]).layer
    layer = dict(model.named_modules())[layer_name]

    def fwd_bwd():
        model.zero_grad(set_to_none=True)
        model(x).gather(1, targets[:, None]).sum().backward()
        model.zero_grad(set_to_none=True)

    methods = {FB: fwd_bwd, OURS_CAM: lambda: grad_cam(model, x, target=targets)}
    if pytorch_grad_cam:
        from pytorch_grad_cam import GradCAM
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        pgc_targets = [ClassifierOutputTarget(int(t)) for t in targets.tolist()]

        def theirs():
            cam = GradCAM(model=model, target_layers=[layer])  # its hooks copy to the host: for its call only
            try:
                cam(input_tensor=x, targets=pgc_targets)
            finally:
                cam.activations_and_grads.release()
                model.zero_grad(set_to_none=True)

        methods[PGC] = theirs
    return methods


def erf_methods(model: torch.nn.Module, xe: torch.Tensor) -> Dict[str, Callable[[], None]]:
    """``{ERF_REF, OURS_ERF}`` on the batch ``xe``."""
    from moga_analysis.erf import effective_receptive_field

    def reference():
        xi = xe.clone().requires_grad_(True)
        f = model.forward_features(xi)
        h, w = f.shape[-2:]
        (g,) = torch.autograd.grad(torch.relu(f[:, :, h // 2, w // 2]).sum(), xi)
        torch.relu(g).sum(dim=(0, 1))

    return {ERF_REF: reference, OURS_ERF: lambda: effective_receptive_field(model, xe, warn_random=False)}


def main(argv=None) -> int:
    import timm

    import moga_analysis  # noqa: F401  (registers the models)
    from moga_analysis.runtime import environment_info, fast_path

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

    allocator = fast_path()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = timm.create_model(args.model).eval()
    x = torch.randn(args.batch, 3, args.size, args.size)
    xe = torch.randn(args.erf_batch, 3, args.erf_size, args.erf_size)
    with torch.no_grad():
        targets = model(x).argmax(1)

    def fwd():
        with torch.no_grad():
            model(x)

    try:
        cam = gradcam_methods(model, x, targets)
    except ImportError:
        print("grad-cam (pytorch-grad-cam) not installed: skipping its row", file=sys.stderr)
        cam = gradcam_methods(model, x, targets, pytorch_grad_cam=False)
    t = interleaved({FWD: fwd, **cam, **erf_methods(model, xe)}, args.repeats, warmup=args.warmup,
                    log=lambda line: print(line, file=sys.stderr, flush=True))

    rows = [(FWD, args.batch, FB, ""), (FB, args.batch, FB, "Grad-CAM reference"),
            (OURS_CAM, args.batch, FB, "target <= 0.35")]
    if PGC in t.times:
        rows.append((PGC, args.batch, FB, f"ours {t.ratio(PGC, OURS_CAM):.2f}x faster, per round (target >= 2.5)"))
    rows += [(ERF_REF, args.erf_batch, ERF_REF, "ERF reference"), (OURS_ERF, args.erf_batch, ERF_REF, "target <= 1.1")]
    env = environment_info(torch.device("cpu"))
    print(f"# {args.model}, Grad-CAM batch {args.batch} @ {args.size}px; ERF batch {args.erf_batch} @ "
          f"{args.erf_size}px; {t.rounds} interleaved rounds; torch {env['torch']}, {env['threads']} threads, "
          f"allocator {allocator}")
    print(markdown_table(
        ["method", "batch", "median s/batch", "min s/batch", "ms/image (median)",
         "ratio to reference (median per round)", "ratio (min/min)", "note"],
        [[name, b, f"{t.median(name):.3f}", f"{t.min(name):.3f}", f"{1000 * t.median(name) / b:.1f}",
          f"{t.ratio(name, ref):.3f}", f"{t.min(name) / t.min(ref):.3f}", note] for name, b, ref, note in rows],
        "lrrrrrrl"))
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "times": t.times, "median": t.medians(),
                                               "env": env}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
