"""Grad-CAM for MogaNet and any timm classifier, built on captum's ``LayerGradCam``.

>>> res = grad_cam(model, images)            # target=None: the predicted class
>>> res.raw.shape, res.maps.shape            # [B, h, w] signed, [B, H, W] in [0, 1]

What this module adds to captum:

* **Default target layers per family** (:func:`default_layer`): MogaNet ``norm4`` (and the aliases
  ``stage1`` .. ``stage4`` for ``norm1`` .. ``norm4``), ResNet ``layer4``, ConvNeXt the last stage,
  Swin the last stage, ViT/DeiT the last block's ``norm1`` (its input tokens: with a class-token head
  the *output* tokens of the last block other than the class token get no gradient at all).
* **Layouts**: captum averages gradients over dims ``2:`` and sums over dim 1, which is right only for
  NCHW.  Swin stages are NHWC and ViT blocks are ``[B, N, C]`` token sequences; here the layer output
  is routed through an identity "adapter" module in NCHW layout (prefix tokens dropped, grid inferred
  from the input size), captum hooks the adapter, and the original layout is rebuilt downstream.
* **One forward pass**: the forward function hands captum the score of the explained class per
  sample, so ``target=None`` needs no extra pass to find the predicted class.
* **Backpropagation only to the target layer**: parameters are frozen for the call (restored in
  ``finally``), so autograd records nothing before the layer and computes no parameter gradients.

Default layers and layouts live in :mod:`moga_analysis.feature_maps` (shared with the ERF);
faithfulness metrics in :mod:`.faithfulness`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from typing import Any, Dict, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from ..feature_maps import LAYOUTS, nchw_adapter, resolve_layer
from ..results import SavableResult
from ..runtime import frozen_parameters

__all__ = ["CAMResult", "grad_cam", "normalize_targets", "upsample_maps", "TargetLike"]

log = logging.getLogger(__name__)

TargetLike = Union[None, int, Sequence[int], torch.Tensor]


# ----------------------------------------------------------------------------------------- result
@dataclasses.dataclass(frozen=True)
class CAMResult(SavableResult):
    """Grad-CAM maps of one batch (``.save(path)`` / ``CAMResult.load(path)``).

    ``raw``: signed map at the layer's resolution ``[B, h, w]`` (sum_k alpha_k A_k, no ReLU, no scaling).
    ``maps``: ``ReLU(raw)`` upsampled bilinearly to the input size and divided by its per-image maximum,
    ``[B, H, W]`` in [0, 1] (an all-zero map stays zero).  ``targets``: explained classes ``[B]``;
    ``scores``: their logits; ``probs``: their softmax probabilities.  ``layer``/``layout``: where
    and how the map was read.  ``metadata``: what a pipeline records beside the maps (model, images,
    weights, faithfulness summary).
    """

    raw: torch.Tensor
    maps: torch.Tensor
    targets: torch.Tensor
    scores: torch.Tensor
    probs: torch.Tensor
    layer: str
    layout: str
    metadata: Dict[str, Any] = dataclasses.field(default_factory=dict)

    def __len__(self) -> int:
        return self.raw.shape[0]


# ------------------------------------------------------------------------------------ layer choice
# ---------------------------------------------------------------------------------------- targets
def normalize_targets(target: TargetLike, batch: int, num_classes: Optional[int] = None) -> Optional[torch.Tensor]:
    """``None`` (predicted class) or a LongTensor ``[batch]``; every mismatch is a ``ValueError``."""
    if target is None:
        return None
    if isinstance(target, bool):
        raise ValueError("target must be an int, a list of ints, a tensor or None, not a bool")
    if isinstance(target, int):
        t = torch.full((batch,), int(target), dtype=torch.long)
    else:
        if isinstance(target, torch.Tensor):
            if target.is_floating_point() or target.dtype == torch.bool:
                raise ValueError(f"target tensor must hold integers, not {target.dtype}")
            t = target.detach().to("cpu", torch.long).reshape(-1).clone()  # also an inference-mode tensor
            if target.dim() == 0:
                t = t.expand(batch).clone()
        else:
            vals = list(target)
            if not all(isinstance(v, int) and not isinstance(v, bool) for v in vals):
                raise ValueError(f"target list must hold ints, got {vals[:5]}")
            t = torch.tensor(vals, dtype=torch.long)
        if t.numel() != batch:
            raise ValueError(f"{t.numel()} targets given for a batch of {batch} images")
    if (t < 0).any() or (num_classes is not None and (t >= num_classes).any()):
        raise ValueError(f"targets must lie in [0, {num_classes}); got {t.tolist()}")
    return t


# ---------------------------------------------------------------------------------------- layouts
def upsample_maps(raw: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    """``ReLU(raw)`` bilinearly upsampled to ``size`` and scaled to max 1 per image."""
    m = F.interpolate(F.relu(raw)[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
    peak = m.flatten(1).amax(1).clamp_min(torch.finfo(m.dtype).tiny)
    return (m / peak[:, None, None]).clamp_(0, 1)


def _cam_batch(model: nn.Module, module: nn.Module, x: torch.Tensor, t: Optional[torch.Tensor], layout: str):
    """``(raw map [b, h, w], logits, explained classes, layout)`` of one batch through captum."""
    from captum.attr import LayerGradCam

    store: Dict[str, torch.Tensor] = {}

    def forward(inp):
        logits = model(inp)
        if logits.dim() != 2:
            raise ValueError(f"model output must be [B, classes], got {tuple(logits.shape)}")
        cls = logits.detach().argmax(1) if t is None else t
        if t is not None and int(t.max()) >= logits.shape[1]:
            raise ValueError(f"targets must lie in [0, {logits.shape[1]}); got {t.tolist()}")
        store["logits"], store["cls"] = logits.detach(), cls
        return logits.gather(1, cls[:, None])[:, 0]

    with frozen_parameters(model), contextlib.ExitStack() as stack:
        if layout == "nchw":
            hooked = module
        else:
            info = stack.enter_context(nchw_adapter(model, module, layout, tuple(x.shape[-2:])))
            hooked = info["adapter"]
        attr = LayerGradCam(forward, hooked).attribute(x, target=None, relu_attributions=False)
        used = layout if layout == "nchw" else info["layout"]
    return attr[:, 0].detach(), store["logits"], store["cls"], used


def grad_cam(
    model: nn.Module,
    images: torch.Tensor,
    target: TargetLike = None,
    layer: Optional[str] = None,
    *,
    layout: str = "auto",
    batch_size: Optional[int] = None,
    progress: bool = False,
) -> CAMResult:
    """Grad-CAM of ``model`` on ``images [B, C, H, W]`` at ``layer`` (None: the family default).

    ``target``: None (predicted class), an int (same class for all), a list/tensor of ``B`` ints.
    ``layout``: ``auto`` (from the output shape), ``nchw``, ``nhwc`` or ``tokens`` (prefix tokens
    dropped, grid inferred from the input size).  ``batch_size`` splits the batch (the result is the
    same; see the tests).  The model's train/eval mode is left as it is: call ``model.eval()``.
    """
    from ..runtime import model_device
    from ..runtime import progress as _progress

    if images.dim() != 4:
        raise ValueError(f"images must be [B, C, H, W], got shape {tuple(images.shape)}")
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    B, _, H, W = images.shape
    name, module = resolve_layer(model, layer)
    targets = normalize_targets(target, B, getattr(model, "num_classes", None))
    device = model_device(model)
    images = images.to(device)
    bs = batch_size or B

    raws, tgts, scores, probs = [], [], [], []
    used_layout = layout
    starts = range(0, B, bs)
    for s in _progress(starts, enabled=progress and len(starts) > 1, desc="grad-cam", leave=False):
        t = None if targets is None else targets[s : s + bs].to(device)
        attr, logits, cls, used_layout = _cam_batch(model, module, images[s : s + bs], t, layout)
        raws.append(attr)
        tgts.append(cls)
        scores.append(logits.gather(1, cls[:, None])[:, 0])
        probs.append(logits.float().softmax(1).gather(1, cls[:, None])[:, 0])
    raw = torch.cat(raws)
    return CAMResult(
        raw=raw,
        maps=upsample_maps(raw, (H, W)),
        targets=torch.cat(tgts).long(),
        scores=torch.cat(scores),
        probs=torch.cat(probs),
        layer=name,
        layout=used_layout if used_layout != "auto" else "nchw",
    )


