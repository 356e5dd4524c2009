"""Benchmark of the interaction engine; prints a markdown table.

1. Masked-evaluation overhead: the image-masking game on ``k`` masks against plain batched
   inference of as many rows (same model, batch size, device), interleaved rounds (:mod:`timing`).
2. Peak memory of CLI runs on 1 and 4 images (it should not grow with the number of images).
3. Evaluations per image of the reference protocol with independent contexts
   (``InteractionSettings.reference()``) and with shared ones (``.efficient()``), counted on a
   tiny network, and the ceiling of any design that shares one context among all pairs.
4. Shared against independent at equal RMSE of I^(m)(i,j) on a trained network (default: the
   shipped Fashion-MNIST MogaNet, 64 px, 8 x 8 grid): both presets draw i.i.d. second differences
   of the same distribution per pair, so the variance of each estimate is stderr^2; the evaluation
   ratio at equal RMSE is (evals_ind * mean stderr_ind^2) / (evals_sh * mean stderr_sh^2).

    python experiments/benchmarks/bench_interactions.py --only-overhead --reps 9
    python experiments/benchmarks/bench_interactions.py --reps 5

:func:`masked_methods` and :func:`time_interactions` are what ``experiments/device_check.py`` times.
The estimators are reached through the settings presets only (``reference``, ``efficient``,
``precise``) and :func:`moga_analysis.interactions.image_interactions`.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from timing import ROOT, interleaved, markdown_table, sync  # noqa: E402

PLAIN, MASKED = "plain inference", "masked game"


def masked_methods(model: torch.nn.Module, image: torch.Tensor, grid: int, batch_size: int,
                   batches: int, seed: int = 0) -> Dict[str, Callable[[], Any]]:
    """``{PLAIN, MASKED}``: ``batches`` batches of ``batch_size`` masked images through the model,
    and the game on as many random masks (inputs follow the model's memory format)."""
    from moga_analysis.interactions import ImageMaskingGame

    game = ImageMaskingGame(model, image.contiguous(), grid=grid, batch_size=batch_size)
    masks = torch.rand(batches * batch_size, grid**2, generator=torch.Generator().manual_seed(seed)) < 0.5
    x = game.masked_images(masks[:batch_size])
    p = next(iter(model.parameters()))
    if p.dim() == 4 and p.is_contiguous(memory_format=torch.channels_last):
        x = x.contiguous(memory_format=torch.channels_last)

    def plain():
        with torch.inference_mode():
            for _ in range(batches):
                model(x)

    return {PLAIN: plain, MASKED: lambda: game(masks)}


def time_interactions(model: torch.nn.Module, image: torch.Tensor, settings, *, batch_size: int = 64,
                      seed: int = 0, target=None) -> Dict[str, Any]:
    """One image's I^(m)(i,j) under ``settings`` (a preset of ``InteractionSettings``):
    ``{"wall_s", "evaluations", "result"}``."""
    from moga_analysis.interactions import image_interactions

    dev = next(iter(model.parameters())).device
    sync(dev)
    t = time.perf_counter()
    res = image_interactions(model, image, settings, target=target, seed=seed, batch_size=batch_size)
    sync(dev)
    return {"wall_s": time.perf_counter() - t, "evaluations": int(res.n_evaluations), "result": res}


def peak_memory(n_images: int, device: str):
    """(peak RSS, peak CUDA memory) in MB of ``python -m moga_analysis.interactions`` on ``n_images``
    shipped photos (MogaNet-XT, random weights, 112 px, 14 x 14 grid, 8 pairs, 4 contexts)."""
    with tempfile.TemporaryDirectory() as out:
        argv = ["--model", "moganet_xtiny", "--random-weights", "--image-size", "112", "--grid", "14",
                "--pairs", "8", "--contexts", "4", "--num-images", str(n_images), "--device", device,
                "--out", out, "--no-figures", "--no-progress", "-q"]
        code = (
            "import json, resource, torch\n"
            "from moga_analysis.interactions import main\n"
            f"main({json.dumps(argv)})\n"
            "cuda = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else 0.0\n"
            "print(json.dumps([resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, cuda]))\n"
        )
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    rss, cuda = json.loads(done.stdout.strip().splitlines()[-1])
    return rss, cuda


def counted_evaluations(grid: int = 14, pairs: int = 50, contexts: int = 50) -> Dict[str, int]:
    """Evaluations per image of ``reference()`` and ``efficient()`` (a tiny network: only the count matters)."""
    from moga_analysis.interactions import InteractionSettings

    net = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(3, 10)).eval()
    image = torch.randn(3, 2 * grid, 2 * grid)
    presets = {"independent": InteractionSettings.reference, "shared": InteractionSettings.efficient}
    return {k: time_interactions(net, image, f(contexts=contexts, grid=grid, pairs=pairs), batch_size=4096,
                                 target=0)["evaluations"] for k, f in presets.items()}


def main(argv=None):
    from moga_analysis.data import load_images, sample_image_paths, shipped_examples
    from moga_analysis.interactions import InteractionSettings, reference_pairs
    from moga_analysis.models.loading import load_model
    from moga_analysis.runtime import environment_info, fast_path, prepare_model, resolve_device

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="moganet_xtiny")
    reference = ROOT.parent / "shared" / "reference"
    p.add_argument("--checkpoint", default=str(reference / "moganet_xtiny_seed0.safetensors"))
    p.add_argument("--device", default="auto")
    p.add_argument("--size", type=int, default=224, help="input size for the overhead measurement")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--batches", type=int, default=3)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--rmse-model", default="moganet_xtiny.fmnist_64",
                   help="trained model of the equal-RMSE measurement ('' = --model)")
    p.add_argument("--rmse-images", type=int, default=2)
    p.add_argument("--only-overhead", action="store_true", help="skip the estimator comparisons")
    p.add_argument("--rmse-grid", type=int, default=8)
    p.add_argument("--rmse-pairs", type=int, default=16)
    p.add_argument("--rmse-contexts", type=int, default=16)
    p.add_argument("--memory-images", type=int, nargs="*", default=[1, 4],
                   help="peak memory of CLI runs on this many shipped photos each (none: skip)")
    args = p.parse_args(argv)
    fast_path()
    dev = resolve_device(args.device)
    checkpoint = args.checkpoint if Path(args.checkpoint).exists() else None
    model = prepare_model(load_model(args.model, checkpoint, dev, pretrained=False if checkpoint is None else None))
    rows = []
    img, _, _ = load_images(sample_image_paths()[:1], model, size=args.size)
    k = args.batch_size * args.batches
    t = interleaved(masked_methods(model, img[0].to(dev), 14, args.batch_size, args.batches), args.reps, device=dev)
    rows += [
        [f"plain inference, {k} rows @ {args.size}px (s)", f"{t.median(PLAIN):.3f}  ({k / t.median(PLAIN):.1f} img/s)"],
        [f"masked game, {k} rows @ {args.size}px (s)", f"{t.median(MASKED):.3f}  ({k / t.median(MASKED):.1f} img/s)"],
        ["masked / plain time (median per round)", f"{t.ratio(MASKED, PLAIN):.3f}"],
    ]
    if not args.only_overhead:
        for n_img in args.memory_images:  # 2. peak memory against the number of images
            rss, cuda = peak_memory(n_img, args.device)
            rows.append([f"peak memory of a CLI run on {n_img} image(s): RSS / CUDA (MB)", f"{rss:.0f} / {cuda:.0f}"])
        ev = counted_evaluations()  # 3. the reference protocol, counted
        pairs = reference_pairs(14, 50, generator=torch.Generator().manual_seed(0))
        U, P = len(torch.unique(pairs)), len(pairs)
        rows += [
            ["evaluations / image, independent (reference protocol)", f"{ev['independent']}"],
            ["evaluations / image, shared (efficient preset)", f"{ev['shared']}"],
            ["independent / shared evaluations (same samples per pair)", f"{ev['independent'] / ev['shared']:.2f}"],
            [f"ceiling of sharing one context: 4P/(1+U+P), P={P} pairs, U={U} players",
             f"{4 * P / (1 + U + P):.2f}"],
        ]
        # 4. equal RMSE on a trained network
        rmse_model = prepare_model(load_model(args.rmse_model, device=dev)) if args.rmse_model else model
        items = shipped_examples(rmse_model, args.rmse_images)
        kw = dict(contexts=args.rmse_contexts, grid=args.rmse_grid, pairs=args.rmse_pairs)
        presets = {"independent": InteractionSettings.reference(**kw), "shared": InteractionSettings.efficient(**kw)}
        evals, secs, var = {m: 0 for m in presets}, {m: 0.0 for m in presets}, {m: [] for m in presets}
        for i, (image, label) in enumerate(items):
            for m, settings in presets.items():
                r = time_interactions(rmse_model, image.to(dev), settings, batch_size=args.batch_size, seed=1 + i,
                                      target=label)
                evals[m] += r["evaluations"]
                secs[m] += r["wall_s"]
                var[m].append(r["result"].stderr[1:-1] ** 2)
        vi, vs = torch.stack(var["independent"]).mean(), torch.stack(var["shared"]).mean()
        ratio = (evals["independent"] * vi) / (evals["shared"] * vs)
        tag = f"{args.rmse_model or args.model} @ grid {args.rmse_grid}, {len(items)} img x {args.rmse_pairs} pairs"
        rows += [
            [f"{tag}: independent evals / time (s)", f"{evals['independent']} / {secs['independent']:.1f}"],
            [f"{tag}: shared evals / time (s)", f"{evals['shared']} / {secs['shared']:.1f}"],
            ["mean stderr^2 independent / shared", f"{float(vi):.4g} / {float(vs):.4g}"],
            ["evaluations ratio at equal RMSE (independent / shared)", f"{float(ratio):.2f}"],
        ]
    info = environment_info(dev)
    print(f"model {args.model} ({checkpoint or 'random weights'}), device {dev}, threads {info['threads']}, "
          f"torch {info['torch']}, {t.rounds} interleaved rounds, allocator {info['allocator']}")
    print(markdown_table(["setting", "value"], rows))


if __name__ == "__main__":
    main()
