"""Faithfulness metrics for saliency maps and the model-randomisation sanity check.

Definitions (all on the model's input tensor, i.e. after normalisation):

* **Deletion AUC** (Petsiuk et al., RISE, 2018): pixels are removed in order of decreasing saliency,
  ``step`` pixels at a time, by replacing them with the *zero substrate* (the value 0 of the
  normalised input, i.e. the dataset-mean colour).  The curve is the softmax probability of the
  explained class after each step, from the intact image (fraction 0) to the fully removed one
  (fraction 1); the AUC is its trapezoidal area over [0, 1].  Lower is better.
* **Insertion AUC** (RISE): start from a *blurred* copy of the image (Gaussian, kernel 11, sigma 5,
  as in RISE) and insert the original pixels in the same order.  Higher is better.
* **Average drop** (Chattopadhyay et al., Grad-CAM++, 2018): ``100/N sum_i max(0, Y_i - O_i) / Y_i``
  with ``Y_i`` the class probability on the image and ``O_i`` on the image multiplied by its map
  (map in [0, 1], the "explanation map").  Lower is better.
* **Increase in confidence** (Grad-CAM++): ``100/N sum_i 1[Y_i < O_i]``.  Higher is better.

Ties in the ordering are broken by pixel index (stable sort), so results are deterministic.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from typing import Dict, Optional, Sequence

import torch
from torch import nn

from ..imaging import gaussian_blur

__all__ = [
    "FaithfulnessResult",
    "deletion_insertion",
    "average_drop_increase",
    "faithfulness_metrics",
    "rise_blur",
    "randomization_check",
    "spearman",
]

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class FaithfulnessResult:
    """Per-image curves and scores.  ``deletion``/``insertion``: ``[B, steps+1]`` probabilities;
    ``fractions``: ``[steps+1]``; ``*_auc``: ``[B]``; ``average_drop`` and ``increase_in_confidence``:
    percentages over the batch; ``drop``: per-image relative drop ``[B]`` (not x100)."""

    fractions: torch.Tensor
    deletion: torch.Tensor
    insertion: torch.Tensor
    deletion_auc: torch.Tensor
    insertion_auc: torch.Tensor
    drop: torch.Tensor
    increase: torch.Tensor

    @property
    def average_drop(self) -> float:
        return float(100 * self.drop.mean())

    @property
    def increase_in_confidence(self) -> float:
        return float(100 * self.increase.float().mean())

    def summary(self) -> Dict[str, float]:
        return {
            "deletion_auc": float(self.deletion_auc.mean()),
            "insertion_auc": float(self.insertion_auc.mean()),
            "average_drop": self.average_drop,
            "increase_in_confidence": self.increase_in_confidence,
            "n_images": int(self.deletion_auc.numel()),
        }


def rise_blur(x: torch.Tensor) -> torch.Tensor:
    """The RISE insertion substrate: Gaussian blur, kernel 11 (radius 5), sigma 5, reflect padding."""
    return gaussian_blur(x, sigma=5.0, radius=5, padding="reflect")


@torch.no_grad()
def _class_probs(model: nn.Module, x: torch.Tensor, cls: torch.Tensor, batch_size: int) -> torch.Tensor:
    out = []
    for s in range(0, x.shape[0], batch_size):
        logits = model(x[s : s + batch_size]).float()
        out.append(logits.softmax(1).gather(1, cls[s : s + batch_size, None])[:, 0])
    return torch.cat(out)


def _auc(curve: torch.Tensor) -> torch.Tensor:
    n = curve.shape[-1] - 1
    return (curve.sum(-1) - 0.5 * (curve[..., 0] + curve[..., -1])) / n


@torch.no_grad()
def deletion_insertion(
    model: nn.Module,
    images: torch.Tensor,
    saliency: torch.Tensor,
    targets: torch.Tensor,
    steps: int = 50,
    batch_size: Optional[int] = None,
    progress: bool = False,
):
    """``(fractions [steps+1], deletion [B, steps+1], insertion [B, steps+1])`` probability curves.

    Step ``k`` has the ``round(k * H * W / steps)`` most salient pixels removed (deletion) or
    inserted (insertion).  All ``steps+1`` images of one image are built on the device and
    evaluated in batches of ``batch_size`` (default ``steps+1``).
    """
    from ..runtime import model_device
    from ..runtime import progress as _progress

    dev = model_device(model)
    images, saliency, targets = images.to(dev), saliency.to(dev), targets.to(dev).long()
    B, C, H, W = images.shape
    if saliency.shape != (B, H, W):
        raise ValueError(f"saliency must be [B, H, W] = {(B, H, W)}, got {tuple(saliency.shape)}")
    if steps < 1:
        raise ValueError("steps must be >= 1")
    n = H * W
    counts = torch.round(torch.arange(steps + 1, device=dev, dtype=torch.float64) * n / steps).long()
    bs = batch_size or (steps + 1)
    dels, ins = [], []
    blurred_all = rise_blur(images)
    for i in _progress(range(B), enabled=progress, desc="deletion/insertion", leave=False):
        order = torch.argsort(saliency[i].flatten(), descending=True, stable=True)
        rank = torch.empty(n, dtype=torch.long, device=dev)
        rank[order] = torch.arange(n, device=dev)
        # keep[k, p]: pixel p is among the first counts[k] pixels
        top = (rank[None, :] < counts[:, None]).view(steps + 1, 1, H, W).to(images.dtype)
        img = images[i : i + 1]
        deleted = img * (1 - top)  # zero substrate
        inserted = blurred_all[i : i + 1] * (1 - top) + img * top
        cls = targets[i].expand(steps + 1)
        dels.append(_class_probs(model, deleted, cls, bs))
        ins.append(_class_probs(model, inserted, cls, bs))
    fractions = counts.double() / n
    return fractions.float().cpu(), torch.stack(dels).cpu(), torch.stack(ins).cpu()


@torch.no_grad()
def average_drop_increase(
    model: nn.Module,
    images: torch.Tensor,
    saliency: torch.Tensor,
    targets: torch.Tensor,
    batch_size: Optional[int] = None,
):
    """``(drop [B], increase [B] bool)``: relative drop ``max(0, Y-O)/Y`` and ``Y < O`` per image."""
    from ..runtime import model_device

    dev = model_device(model)
    images, saliency, targets = images.to(dev), saliency.to(dev), targets.to(dev).long()
    if saliency.min() < 0 or saliency.max() > 1:
        raise ValueError("saliency maps must lie in [0, 1] (use CAMResult.maps)")
    bs = batch_size or images.shape[0]
    y = _class_probs(model, images, targets, bs)
    o = _class_probs(model, images * saliency[:, None], targets, bs)
    return ((y - o).clamp_min(0) / y).cpu(), (y < o).cpu()


def faithfulness_metrics(
    model: nn.Module,
    images: torch.Tensor,
    saliency: torch.Tensor,
    targets: torch.Tensor,
    steps: int = 50,
    batch_size: Optional[int] = None,
    progress: bool = False,
) -> FaithfulnessResult:
    """All four metrics for maps ``saliency [B, H, W]`` in [0, 1] explaining ``targets [B]``."""
    fr, d, ins = deletion_insertion(model, images, saliency, targets, steps, batch_size, progress)
    drop, inc = average_drop_increase(model, images, saliency, targets, batch_size)
    return FaithfulnessResult(fr, d, ins, _auc(d), _auc(ins), drop, inc)


# ------------------------------------------------------------------------- sanity check (Adebayo)
def spearman(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Spearman rank correlation per row of two ``[B, ...]`` tensors (ties broken by index)."""
    a, b = a.flatten(1).double(), b.flatten(1).double()

    def ranks(x):
        r = torch.empty_like(x)
        r.scatter_(1, x.argsort(dim=1, stable=True), torch.arange(x.shape[1], dtype=x.dtype).expand_as(x).contiguous())
        return r

    ra, rb = ranks(a), ranks(b)
    ra, rb = ra - ra.mean(1, keepdim=True), rb - rb.mean(1, keepdim=True)
    return (ra * rb).sum(1) / (ra.norm(dim=1) * rb.norm(dim=1)).clamp_min(1e-12)


def _top_modules(model: nn.Module, n_top: int) -> Sequence[str]:
    """Names of the last ``n_top`` leaf modules holding parameters (model order)."""
    leaves = [n for n, m in model.named_modules() if n and any(True for _ in m.parameters(recurse=False))]
    return leaves[len(leaves) - n_top :] if n_top > 0 else []


def randomization_check(
    model: nn.Module,
    images: torch.Tensor,
    layer: Optional[str] = None,
    n_top: int = 10,
    generator: Optional[torch.Generator] = None,
    target=None,
) -> Dict[str, object]:
    """Model-randomisation test (Adebayo et al., 2018) for Grad-CAM.

    Re-initialises (normal, std 0.02, from ``generator``) the parameters of the last ``n_top``
    parameterised leaf modules of a *copy* of the model and compares Grad-CAM maps of the same
    targets (the trained model's predictions by default).  A map method that explains the model
    must change: the returned ``spearman`` (mean rank correlation of the upsampled maps) should be
    far below 1.  The original model is never modified.
    """
    from .cam import grad_cam

    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    ref = grad_cam(model, images, target=target, layer=layer)
    rand = copy.deepcopy(model)
    names = list(_top_modules(rand, n_top))
    mods = dict(rand.named_modules())
    with torch.no_grad():
        for n in names:
            for pname, p in mods[n].named_parameters(recurse=False):
                noise = torch.randn(p.shape, generator=gen, dtype=torch.float32).to(p) * 0.02
                # 1-D weights are norm scales: centre them on 1 like their initialisation
                p.copy_(noise + 1.0 if p.dim() == 1 and pname == "weight" else noise)
    after = grad_cam(rand, images, target=ref.targets, layer=ref.layer)
    rho = spearman(ref.maps, after.maps)
    return {
        "spearman": float(rho.mean()),
        "spearman_per_image": rho.tolist(),
        "randomised": names,
        "layer": ref.layer,
    }
