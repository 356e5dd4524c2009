"""Effect of low-precision forward passes (bf16, fp16) on I^(m)(i,j) and J^(m); prints a table.

The same images, pairs and contexts (same seeds, ``InteractionSettings.efficient()`` through
:func:`moga_analysis.interactions.image_interactions`) are evaluated with the model in float32 and
in each lower dtype, so the differences are purely numerical. Reported per order: J^(m) per dtype,
the mean |I_low - I_fp32| over images and pairs, and the estimator's noise floor at that order
(``InteractionResult.noise_floor``), the scale against which a numerical error matters.

    python experiments/benchmarks/bench_interactions_dtype.py                    # CPU: fp32 vs bf16
    python experiments/benchmarks/bench_interactions_dtype.py --device cuda --dtypes bfloat16 float16
"""

from __future__ import annotations

import argparse
import copy
import time

import torch


def main(argv=None):
    from moga_analysis.data import shipped_examples
    from moga_analysis.interactions import InteractionSettings, image_interactions, relative_strength
    from moga_analysis.models.loading import load_model
    from moga_analysis.runtime import environment_info, fast_path, prepare_model, resolve_device, resolve_dtype

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="moganet_xtiny.fmnist_64")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtypes", nargs="+", default=["bfloat16"])
    p.add_argument("--images", type=int, default=4)
    p.add_argument("--grid", type=int, default=8)
    p.add_argument("--pairs", type=int, default=12)
    p.add_argument("--contexts", type=int, default=12)
    p.add_argument("--batch-size", type=int, default=256)
    args = p.parse_args(argv)
    fast_path()
    dev = resolve_device(args.device)
    if dev.type == "cuda":  # fp32 reference without TF32, as the CLI does
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    base = prepare_model(load_model(args.model, device=dev))
    items = shipped_examples(base, args.images)
    values, floors, secs = {}, {}, {}
    for name in ["float32", *args.dtypes]:
        model = copy.deepcopy(base).to(resolve_dtype(name))
        settings = InteractionSettings.efficient(contexts=args.contexts, grid=args.grid, pairs=args.pairs, dtype=name)
        vals, errs, t0 = [], [], time.perf_counter()
        for k, (image, label) in enumerate(items):
            # the target is fixed from fp32 labels (or the fp32 prediction) so every dtype plays one game
            if label is None:
                with torch.inference_mode():
                    label = int(base(image[None].to(dev)).argmax())
                items[k] = (image, label)
            r = image_interactions(model, image.to(dev), settings, target=label, seed=k, batch_size=args.batch_size)
            vals.append(r.values)
            errs.append(r.noise_floor())
        values[name], floors[name], secs[name] = torch.stack(vals), torch.stack(errs), time.perf_counter() - t0
    ref, orders, n = values["float32"], r.orders.tolist(), r.n_players
    J = {name: relative_strength(v, orders, n) for name, v in values.items()}
    floor = floors["float32"].mean(0)
    env = environment_info(dev)
    print(f"model {args.model}, device {dev}, {len(items)} images x {args.pairs} pairs x {args.contexts} contexts, "
          f"grid {args.grid}, torch {env['torch']}")
    print("time (s): " + ", ".join(f"{k} {v:.1f}" for k, v in secs.items()))
    head = ["order m", "m/(n-2)"] + [f"J {k}" for k in J] + [f"mean |I_{k} - I_fp32|" for k in args.dtypes]
    print("| " + " | ".join(head + ["noise floor"]) + " |")
    print("|" + "---|" * (len(head) + 1))
    for o, m in enumerate(orders):
        cells = [str(m), f"{m / (n - 2):.2f}"] + [f"{float(J[k][o]):.3f}" for k in J]
        cells += [f"{float((values[k][:, o] - ref[:, o]).abs().mean()):.2e}" for k in args.dtypes]
        print("| " + " | ".join(cells + [f"{float(floor[o]):.2e}"]) + " |")
    for k in args.dtypes:
        print(f"max |J_{k} - J_fp32| = {float((J[k] - J['float32']).abs().max()):.4f}")


if __name__ == "__main__":
    main()
