"""Train moganet_xtiny (or a training-time ablation of it) on Fashion-MNIST at 64 x 64.

    python experiments/train_fashion_mnist.py --variant full --epochs 2 --out runs/fmnist/full
    python experiments/train_fashion_mnist.py --variant full --epochs 2 --out runs/fmnist/full --resume

Writes ``<out>/checkpoint.pt`` (resumable), ``<out>/model.safetensors`` (fp32 weights),
``<out>/model_fp16.safetensors`` and ``<out>/metrics.json`` (test accuracy in fp32 and fp16,
history, config, environment).  The recipe and data are described in ``moga_analysis.training``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import torch

from moga_analysis import training
from moga_analysis.results import atomic_write_text
from moga_analysis.runtime import environment_info, resolve_device, setup_logging, tune_malloc

log = logging.getLogger("train_fashion_mnist")


def parse_args(argv=None) -> argparse.Namespace:
    d = training.TrainConfig()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variant", default="full", choices=sorted(training.VARIANTS))
    p.add_argument("--model", default=d.model)
    p.add_argument("--epochs", type=float, default=d.epochs)
    p.add_argument("--subset", type=int, default=None, help="train on a seeded random subset of this size")
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--weight-decay", type=float, default=d.weight_decay)
    p.add_argument("--warmup-steps", type=int, default=d.warmup_steps)
    p.add_argument("--label-smoothing", type=float, default=d.label_smoothing)
    p.add_argument("--no-augment", action="store_true")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--resume", action="store_true", help="continue from <out>/checkpoint.pt")
    p.add_argument("--data", type=Path, default=Path("data"), help="folder holding FashionMNIST/raw")
    p.add_argument("--download", action="store_true", help="let torchvision download the data")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument("--max-steps", type=int, default=None, help="stop early (the schedule is unchanged)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--ship", metavar="NAME", default=None,
                   help="instead of training: copy <out>'s finished weights into the package as NAME "
                        "(moga_analysis/assets/weights/NAME.safetensors + NAME.md card) and record "
                        "experiments/results/fmnist/<variant>.json")
    p.add_argument("--record", action="store_true",
                   help="instead of training: record <out>'s finished results in "
                        "experiments/results/fmnist/<variant>.json, weights left in <out> (the twins not shipped)")
    p.add_argument("-v", "--verbose", action="count", default=0)
    return p.parse_args(argv)


REPO = Path(__file__).resolve().parents[1]
WEIGHTS = REPO / "moga_analysis" / "assets" / "weights"
RESULTS = REPO / "experiments" / "results" / "fmnist"
SHIPPED_VARIANTS = ("full", "no_gate")  # their fmnist_64 tags point at weights inside the package


def timm_name(variant: str) -> str:
    """The registered name (with the fmnist_64 tag) of the architecture a variant trains."""
    from moga_analysis.models.moganet import ABLATION_MODELS

    options = training.VARIANTS[variant]
    if not options:
        return "moganet_xtiny.fmnist_64"
    return next(f"{name}.fmnist_64" for name, (_, opts) in ABLATION_MODELS.items() if opts == options)


def shipped_tag(variant: str):
    return timm_name(variant) if variant in SHIPPED_VARIANTS else None


def _accuracy_on_shipped_samples(metrics, weights: Path) -> float:
    from moga_analysis.models.checkpoints import load_checkpoint

    model = training.build_model(metrics["variant"], metrics["model"], seed=metrics["config"]["seed"])
    load_checkpoint(model, weights)
    xs, ys = training.load_fmnist_samples()
    return training.evaluate(model, xs, ys, preprocessed=True, device="cpu")["accuracy"]


def record(out: Path) -> int:
    """Record a finished run that is not shipped (a training-time twin) in the results folder."""
    metrics = json.loads((out / "metrics.json").read_text())
    weights = out / "model.safetensors"
    acc = _accuracy_on_shipped_samples(metrics, weights)
    metrics["not_shipped"] = {
        "weights": str(weights),
        "timm_name": timm_name(metrics["variant"]),
        "accuracy_on_shipped_300": acc,
        "interactions": f"--compare {timm_name(metrics['variant'])}={weights}",
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    atomic_write_text(RESULTS / f"{metrics['variant']}.json", json.dumps(metrics, indent=2))
    log.info("recorded %s: test %.4f, shipped-300 %.4f", metrics["variant"], metrics["test_accuracy"], acc)
    return 0


def ship(out: Path, name: str) -> int:
    """Copy finished weights into the package with a model card, and record the results JSON."""
    import shutil

    metrics = json.loads((out / "metrics.json").read_text())
    variant = metrics["variant"]
    same = abs(metrics["test_accuracy_fp16_weights"] - metrics["test_accuracy"]) <= 0.001
    src = out / ("model_fp16.safetensors" if same else "model.safetensors")
    WEIGHTS.mkdir(parents=True, exist_ok=True)
    dest = WEIGHTS / f"{name}.safetensors"
    shutil.copyfile(src, dest)
    # accuracy of the shipped file on the 300 shipped test images (what tests can check offline)
    sample = {"accuracy": _accuracy_on_shipped_samples(metrics, dest)}
    metrics["shipped"] = {
        "file": f"moga_analysis/assets/weights/{name}.safetensors",
        "dtype": "float16" if same else "float32",
        "bytes": dest.stat().st_size,
        "timm_tag": shipped_tag(variant),
        "accuracy_on_shipped_300": sample["accuracy"],
    }
    cfg = metrics["config"]
    ep = cfg["epochs"]
    tag = shipped_tag(variant)
    load = (f'timm.create_model("{tag}", pretrained=True)' if tag else
            f"training.build_model({variant!r}) + load_checkpoint(model, PATH)")
    card = f"""# {name}

MogaNet-XTiny ({metrics["model"]}, variant `{variant}`, constructor options
`{metrics["constructor_options"]}`) trained from scratch by moga_analysis on Fashion-MNIST.

* **Load**: `import moga_analysis, timm; {load}`
* **Data**: Fashion-MNIST (Zalando, MIT licence), {metrics["train_images"]:,} training images seen per
  epoch, {ep} epoch(s) ({metrics["total_steps"]} steps of batch {cfg["batch_size"]}); 28x28 grayscale
  upsampled bilinearly to 64x64, normalised with mean 0.2860 / std 0.3530, replicated to 3 channels.
  Classes: {", ".join(training.FMNIST_CLASSES)}.
* **Recipe**: AdamW lr {cfg["lr"]} (warm-up {cfg["warmup_steps"]} steps, cosine to {cfg["min_lr"]}),
  weight decay {cfg["weight_decay"]}, label smoothing {cfg["label_smoothing"]}, random flip + shift
  <= {cfg["max_shift"]} px, drop-path {cfg["drop_path_rate"]}, seed {cfg["seed"]}, fp32 training on CPU
  ({metrics["train_seconds"] / 60:.0f} min on a shared 2-core CPU).
* **Test accuracy** (10,000 test images): {metrics["test_accuracy"]:.4f} with fp32 weights,
  {metrics["test_accuracy_fp16_weights"]:.4f} with the fp16 weights; shipped as
  {metrics["shipped"]["dtype"]} ({dest.stat().st_size / 1e6:.1f} MB). On the 300 test images shipped in
  `moga_analysis/assets/fmnist/`: {sample["accuracy"]:.4f}.
* **Command**: `{metrics["command"]}` then
  `python experiments/train_fashion_mnist.py --out {out} --ship {name}`.
* **Licence**: weights Apache-2.0 (this project); training data MIT (Fashion-MNIST).
"""
    atomic_write_text(WEIGHTS / f"{name}.md", card)
    RESULTS.mkdir(parents=True, exist_ok=True)
    atomic_write_text(RESULTS / f"{variant}.json", json.dumps(metrics, indent=2))
    log.info("shipped %s (%s, %.1f MB): test %.4f, shipped-300 %.4f", dest, metrics["shipped"]["dtype"],
             dest.stat().st_size / 1e6, metrics["test_accuracy"], sample["accuracy"])
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    setup_logging(args.verbose)
    tune_malloc()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.ship:
        return ship(args.out, args.ship)
    if args.record:
        return record(args.out)
    device = resolve_device(args.device)
    cfg = training.TrainConfig(
        model=args.model, variant=args.variant, epochs=args.epochs, subset=args.subset,
        batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
        warmup_steps=args.warmup_steps, label_smoothing=args.label_smoothing,
        augment=not args.no_augment, channels_last=args.channels_last, seed=args.seed,
    )
    train_data = training.load_fashion_mnist(args.data, train=True, download=args.download)
    test_data = training.load_fashion_mnist(args.data, train=False, download=args.download)
    model = training.build_model(cfg.variant, cfg.model, seed=cfg.seed, in_chans=cfg.in_chans,
                                 drop_path_rate=cfg.drop_path_rate)
    args.out.mkdir(parents=True, exist_ok=True)
    history = training.train(
        model, cfg, train_data, test_data, checkpoint=args.out / "checkpoint.pt", resume=args.resume,
        device=device, show_progress=not args.no_progress, max_steps=args.max_steps,
    )
    if not history.get("done"):
        log.info("stopped at step %d of %d; continue with --resume", history["steps"][-1], history["total_steps"])
        return 0
    model = model.float().to(memory_format=torch.contiguous_format)
    last = history["epochs"][-1] if history["epochs"] else None
    if last is not None and last["step"] == history["total_steps"]:
        fp32 = {k: last[k] for k in ("accuracy", "loss", "n")}  # already evaluated at the last step
    else:
        fp32 = training.evaluate(model, *test_data, device=device)
    training.export_weights(model, args.out / "model.safetensors", dtype=torch.float32)
    training.export_weights(model, args.out / "model_fp16.safetensors", dtype=torch.float16)
    half = training.build_model(cfg.variant, cfg.model, seed=cfg.seed, in_chans=cfg.in_chans).to(device)
    from moga_analysis.models.checkpoints import load_checkpoint

    load_checkpoint(half, args.out / "model_fp16.safetensors")
    fp16 = training.evaluate(half, *test_data, device=device)
    metrics = {
        "variant": cfg.variant,
        "model": cfg.model,
        "constructor_options": training.VARIANTS[cfg.variant],
        "test_accuracy": fp32["accuracy"],
        "test_loss": fp32["loss"],
        "test_accuracy_fp16_weights": fp16["accuracy"],
        "n_test": fp32["n"],
        "train_images": history["steps_per_epoch"] * cfg.batch_size,
        "total_steps": history["total_steps"],
        "train_seconds": history["seconds"],
        "config": cfg.to_dict(),
        "epochs": history["epochs"],
        "command": "python experiments/train_fashion_mnist.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "environment": environment_info(device),
    }
    atomic_write_text(args.out / "metrics.json", json.dumps(metrics, indent=2))
    log.info("%s: test accuracy %.4f (fp16 weights %.4f) after %.0f s", cfg.variant, fp32["accuracy"],
             fp16["accuracy"], history["seconds"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
