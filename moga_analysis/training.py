"""Train MogaNet (or any classifier) on Fashion-MNIST at 64 x 64: data, recipe, loops, checkpoints.

Data
    Fashion-MNIST (Xiao et al. 2017, MIT licence) is read with ``torchvision.datasets.FashionMNIST``
    from ``<root>/FashionMNIST/raw`` (``download=False`` unless asked; the Debian package
    ``dataset-fashion-mnist`` installs the gzipped files, see ``docs/trained_models.md``).
    Images stay ``uint8 [N, 28, 28]`` in memory; each batch is preprocessed on the fly by
    :func:`preprocess`: scaled to [0, 1], bilinearly upsampled to 64 x 64, normalised with
    :data:`FMNIST_MEAN` / :data:`FMNIST_STD` and replicated to **3 channels**.  Three identical
    channels keep the models drop-in compatible with every RGB tool of the toolkit (timm
    preprocessing, masking games, Grad-CAM, ERF); the cost is only in the first conv.

Recipe (the defaults of :class:`TrainConfig`)
    AdamW (lr 2e-3, weight decay 0.05, no decay on norms/biases/scales), linear warm-up then cosine
    decay per step, batch 128, cross-entropy with label smoothing 0.1, augmentation by random
    horizontal flip and a random shift of up to 2 pixels (at 28 x 28), no drop-path.

Determinism
    No global seeding.  The model is initialised inside ``torch.random.fork_rng`` with the seed;
    every epoch's shuffling and every step's augmentation draw from their own generators seeded
    from ``(seed, epoch)`` and ``(seed, step)``, so a resumed run sees exactly the batches the
    uninterrupted run would have seen.

Checkpoints
    ``{model, optimizer, scheduler, step, config, history}`` written atomically (temporary file
    + rename) every ``checkpoint_every`` steps and at each epoch end; ``resume=True`` continues
    from the last one.  They are read back with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from .fmnist import (  # noqa: F401  (re-exported: the training API names them)
    FMNIST_CLASSES,
    FMNIST_MEAN,
    FMNIST_SAMPLES,
    FMNIST_STD,
    IMAGE_SIZE,
    load_fashion_mnist,
    load_fmnist_samples,
    preprocess,
)
from .runtime import make_generator, progress, resolve_device

__all__ = [
    "FMNIST_CLASSES",
    "FMNIST_MEAN",
    "FMNIST_STD",
    "IMAGE_SIZE",
    "VARIANTS",
    "TrainConfig",
    "load_fashion_mnist",
    "preprocess",
    "augment",
    "build_model",
    "evaluate",
    "train",
    "save_checkpoint",
    "load_training_checkpoint",
    "export_weights",
    "load_fmnist_samples",
    "FMNIST_SAMPLES",
]

log = logging.getLogger(__name__)

#: training-time ablations: variant name -> MogaNet constructor options
VARIANTS: Dict[str, Dict[str, bool]] = {
    "full": {},
    "no_gate": {"gate": False},
    "single_order": {"multi_order": False},
    "no_fd": {"use_fd": False},
    "no_ca": {"use_ca": False},
}


@dataclass
class TrainConfig:
    """Everything that defines a training run (stored in every checkpoint)."""

    model: str = "moganet_xtiny"
    variant: str = "full"
    epochs: float = 2.0  # fractional epochs allowed: the run stops after ceil(epochs * steps/epoch) steps
    subset: Optional[int] = None  # train on this many images (a seeded random subset) instead of 60,000
    batch_size: int = 128
    lr: float = 2e-3
    min_lr: float = 1e-5
    weight_decay: float = 0.05
    warmup_steps: int = 100
    label_smoothing: float = 0.1
    drop_path_rate: float = 0.0
    augment: bool = True
    max_shift: int = 2
    image_size: int = IMAGE_SIZE
    in_chans: int = 3
    seed: int = 0
    channels_last: bool = False
    eval_batch_size: int = 500
    checkpoint_every: int = 50

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


# --------------------------------------------------------------------------- data
def augment(images: torch.Tensor, generator: torch.Generator, max_shift: int = 2) -> torch.Tensor:
    """Random horizontal flip and random shift (zero padding) of ``uint8 [N, H, W]`` images."""
    n, h, w = images.shape
    flip = torch.rand(n, generator=generator) < 0.5
    out = torch.where(flip[:, None, None], images.flip(-1), images)
    if max_shift > 0:
        padded = F.pad(out, (max_shift,) * 4)
        offs = torch.randint(0, 2 * max_shift + 1, (n, 2), generator=generator)
        out = torch.stack([padded[i, dy : dy + h, dx : dx + w] for i, (dy, dx) in enumerate(offs.tolist())])
    return out


# --------------------------------------------------------------------------- model
def build_model(
    variant: str = "full",
    model: str = "moganet_xtiny",
    seed: int = 0,
    num_classes: int = 10,
    in_chans: int = 3,
    drop_path_rate: float = 0.0,
    **kwargs: Any,
) -> nn.Module:
    """A freshly initialised model for ``variant`` (see :data:`VARIANTS`), seeded without touching
    the global random state."""
    import timm

    from . import models  # noqa: F401  (registers moganet_*)

    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; choose one of {sorted(VARIANTS)}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return timm.create_model(
            model,
            num_classes=num_classes,
            in_chans=in_chans,
            drop_path_rate=drop_path_rate,
            **VARIANTS[variant],
            **kwargs,
        )


def _param_groups(model: nn.Module, weight_decay: float) -> List[Dict[str, Any]]:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 or name.endswith(".scale") else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _lr_factor(step: int, total: int, warmup: int, base: float, min_lr: float) -> float:
    if step < warmup:
        return (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return (min_lr + 0.5 * (base - min_lr) * (1 + math.cos(math.pi * min(1.0, t)))) / base


# --------------------------------------------------------------------------- checkpoints
def save_checkpoint(path: Union[str, os.PathLike], state: Dict[str, Any]) -> Path:
    """``torch.save`` to a temporary file beside ``path``, then rename over it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def load_training_checkpoint(path: Union[str, os.PathLike]) -> Dict[str, Any]:
    return torch.load(str(path), map_location="cpu", weights_only=True)


def export_weights(
    model: nn.Module, path: Union[str, os.PathLike], dtype: torch.dtype = torch.float16, metadata: Optional[dict] = None
) -> Path:
    """Write the model's state dict as safetensors (floating tensors cast to ``dtype``), atomically."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sd = {
        k: (v.to(dtype) if v.is_floating_point() else v).detach().cpu().contiguous()
        for k, v in model.state_dict().items()
    }
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(sd, tmp, metadata={k: str(v) for k, v in (metadata or {}).items()})
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


# --------------------------------------------------------------------------- loops
@torch.no_grad()
def evaluate(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    batch_size: int = 500,
    image_size: int = IMAGE_SIZE,
    channels: int = 3,
    device: Union[str, torch.device, None] = None,
    show_progress: bool = False,
    preprocessed: bool = False,
) -> Dict[str, float]:
    """Top-1 accuracy and mean cross-entropy of ``model`` on uint8 ``images`` (or preprocessed
    float images with ``preprocessed=True``).  Restores the model's train/eval mode."""
    dev = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    correct, loss_sum = 0, 0.0
    try:
        for s in progress(range(0, len(images), batch_size), show_progress, desc="eval", leave=False):
            xb = images[s : s + batch_size]
            x = xb.float() if preprocessed else preprocess(xb, image_size, channels)
            y = labels[s : s + batch_size].to(dev)
            logits = model(x.to(dev)).float()
            loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
            correct += (logits.argmax(1) == y).sum().item()
    finally:
        model.train(was_training)
    n = len(images)
    return {"accuracy": correct / n, "loss": loss_sum / n, "n": n}


def _subset_indices(n: int, subset: Optional[int], seed: int) -> torch.Tensor:
    if subset is None or subset >= n:
        return torch.arange(n)
    return torch.randperm(n, generator=make_generator(seed + 7_777_777))[:subset].sort().values


def _optimizer(model: nn.Module, config: TrainConfig, total: int):
    opt = torch.optim.AdamW(_param_groups(model, config.weight_decay), lr=config.lr, betas=(0.9, 0.999))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: _lr_factor(s, total, config.warmup_steps, config.lr, config.min_lr)
    )
    return opt, sched


def _restore(checkpoint, config: TrainConfig, model, opt, sched, history, total: int):
    """``(step, history)`` of a checkpoint made with the same config (else an error listing the
    differences, through :func:`moga_analysis.runs.require_same`)."""
    from .runs import require_same

    state = load_training_checkpoint(checkpoint)
    require_same(state["config"], config.to_dict(), checkpoint, "config")
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    sched.load_state_dict(state["scheduler"])
    log.info("resumed from %s at step %d/%d", checkpoint, int(state["step"]), total)
    return int(state["step"]), state["history"]


def _schedule(train_data, config: TrainConfig):
    """``(images, labels, steps per epoch, total steps)`` of the (sub)set trained on."""
    idx = _subset_indices(len(train_data[0]), config.subset, config.seed)
    images, labels = train_data[0][idx], train_data[1][idx]
    steps_per_epoch = len(images) // config.batch_size  # drop the last partial batch: constant batch shape
    if steps_per_epoch == 0:
        raise ValueError(f"batch_size {config.batch_size} is larger than the {len(images)} training images")
    return images, labels, steps_per_epoch, max(1, math.ceil(config.epochs * steps_per_epoch))


class _Batches:
    """Training batch ``step``: a seeded permutation per epoch, seeded augmentation per step."""

    def __init__(self, images, labels, config: TrainConfig, steps_per_epoch: int, device):
        self.images, self.labels, self.config, self.spe, self.device = images, labels, config, steps_per_epoch, device
        self.perm, self.epoch = None, -1

    def __call__(self, step: int):
        cfg = self.config
        epoch, k = divmod(step, self.spe)
        if epoch != self.epoch:
            self.perm = torch.randperm(len(self.images), generator=make_generator(cfg.seed * 1000 + epoch + 1))
            self.epoch = epoch
        bi = self.perm[k * cfg.batch_size : (k + 1) * cfg.batch_size]
        xb, yb = self.images[bi], self.labels[bi]
        if cfg.augment:
            xb = augment(xb, make_generator(cfg.seed * 1_000_003 + step + 17), cfg.max_shift)
        x = preprocess(xb, cfg.image_size, cfg.in_chans).to(self.device)
        if cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, yb.to(self.device)


def train(
    model: nn.Module,
    config: TrainConfig,
    train_data: Tuple[torch.Tensor, torch.Tensor],
    test_data: Optional[Tuple[torch.Tensor, torch.Tensor]] = None,
    checkpoint: Union[str, os.PathLike, None] = None,
    resume: bool = False,
    device: Union[str, torch.device, None] = "auto",
    show_progress: bool = True,
    max_steps: Optional[int] = None,
    on_step: Optional[Callable[[int, float], None]] = None,
) -> Dict[str, Any]:
    """Train ``model`` in place; returns the history ``{"steps": [...], "loss": [...], "epochs": [...]}``.

    ``max_steps`` stops early (the schedule still spans the full run): used to interrupt runs in
    tests.  ``checkpoint`` is written every ``config.checkpoint_every`` steps, at epoch ends and at
    the end; with ``resume=True`` an existing checkpoint there is continued from.
    """
    dev = resolve_device(device)
    model.to(dev)
    if config.channels_last:
        model.to(memory_format=torch.channels_last)
    images, labels, steps_per_epoch, total = _schedule(train_data, config)
    opt, sched = _optimizer(model, config, total)
    history: Dict[str, Any] = {"steps": [], "loss": [], "epochs": [], "config": config.to_dict(), "seconds": 0.0}
    step = 0
    if resume and checkpoint is not None and Path(checkpoint).exists():
        step, history = _restore(checkpoint, config, model, opt, sched, history, total)
    stop = total if max_steps is None else min(total, max_steps)
    batches = _Batches(images, labels, config, steps_per_epoch, dev)
    model.train()
    bar = progress(range(step, stop), show_progress, desc=f"train {config.variant}", initial=step, total=stop)
    t0, running = time.perf_counter(), None
    for step_ in bar:
        x, y = batches(step_)
        loss = F.cross_entropy(model(x), y, label_smoothing=config.label_smoothing)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        step, lv = step_ + 1, loss.item()
        history["steps"].append(step)
        history["loss"].append(lv)
        running = lv if running is None else 0.95 * running + 0.05 * lv
        if show_progress and hasattr(bar, "set_postfix"):
            bar.set_postfix(loss=f"{running:.3f}", lr=f"{sched.get_last_lr()[0]:.2e}")
        if on_step is not None:
            on_step(step, lv)
        epoch_end = step % steps_per_epoch == 0 or step == total
        if epoch_end and test_data is not None:
            _evaluate_epoch(model, test_data, config, history, step, steps_per_epoch)
        if checkpoint is not None and (epoch_end or step % config.checkpoint_every == 0 or step == stop):
            t0 = _save_state(checkpoint, model, opt, sched, step, config, history, t0)
    history["seconds"] = history.get("seconds", 0.0) + (time.perf_counter() - t0)
    history.update(done=step >= total, total_steps=total, steps_per_epoch=steps_per_epoch)
    return history


def _save_state(checkpoint, model, opt, sched, step: int, config: TrainConfig, history, t0: float) -> float:
    """Write the resumable training state (time so far in the history); returns the new clock start."""
    history["seconds"] = history.get("seconds", 0.0) + (time.perf_counter() - t0)
    save_checkpoint(checkpoint, {"model": model.state_dict(), "optimizer": opt.state_dict(),
                                 "scheduler": sched.state_dict(), "step": step, "config": config.to_dict(),
                                 "history": history})
    return time.perf_counter()


def _evaluate_epoch(model, test_data, config: TrainConfig, history, step: int, steps_per_epoch: int) -> None:
    metrics = evaluate(model, *test_data, batch_size=config.eval_batch_size, image_size=config.image_size,
                       channels=config.in_chans)
    history["epochs"].append({"step": step, "epoch": step / steps_per_epoch, **metrics})
    log.info("step %d (epoch %.2f): test accuracy %.4f loss %.4f", step, step / steps_per_epoch,
             metrics["accuracy"], metrics["loss"])
