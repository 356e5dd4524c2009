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
    p.add_argument("-v", "--verbose", action="count", default=0)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    setup_logging(args.verbose)
    tune_malloc()
    if args.threads:
        torch.set_num_threads(args.threads)
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
