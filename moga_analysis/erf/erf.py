"""Effective receptive fields (ERF), following the RepLKNet protocol (Ding et al., CVPR 2022).

Protocol (the default here, step by step):

1. the model is put in **eval mode** (restored afterwards), so every sample is independent and one
   backward pass per batch gives every sample's own input gradient;
2. the feature map is the last stage's output (``forward_features`` for timm models, the output of
   a plain module), or the output of the module named by ``layer`` (``stage1``..``stage4`` on
   MogaNet mean ``norm1``..``norm4``; NHWC and token layouts are converted to NCHW);
3. the score is ``ReLU(F[:, :, h//2, w//2]).sum()`` over channels and samples (``h//2``: for an even
   size this is the pixel just below / right of the geometric centre, as in RepLKNet's code);
4. ``g = d score / d input``; the contribution map of a sample is ``ReLU(g)`` summed over colour
   channels; the ERF is the mean of those maps over the images (50 ImageNet validation images at
   1024 x 1024 in the papers).

:func:`area_ratio` computes the high-contribution area ratio of RepLKNet's Table 3 / MogaNet's ERF
figure.  Parameters are frozen during the computation: only the input gradient is computed.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import warnings
from typing import Any, Dict, Iterable, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from ..feature_maps import layer_output, resolve_layer, to_nchw
from ..results import SavableResult
from ..runtime import eval_mode

__all__ = [
    "ERFResult",
    "effective_receptive_field",
    "area_ratio",
    "looks_untrained",
    "eval_mode",
    "RandomWeightsWarning",
    "DEFAULT_THRESHOLDS",
]

log = logging.getLogger(__name__)

DEFAULT_THRESHOLDS = (0.2, 0.3, 0.5, 0.99)


class RandomWeightsWarning(UserWarning):
    """The ERF of a network with random weights says nothing about the trained network."""


@dataclasses.dataclass(frozen=True)
class ERFResult(SavableResult):
    """``map``: mean contribution map ``[H, W]`` (raw gradients, no log or scaling);
    ``n_images``: images averaged; ``layer``: where the feature map was read;
    ``feature_shape``: ``[C, h, w]`` of that feature map; ``center``: the ``(row, col)`` used;
    ``metadata``: what a pipeline records beside it (model, images, weights, settings)."""

    map: torch.Tensor
    n_images: int
    layer: str
    feature_shape: Tuple[int, int, int]
    center: Tuple[int, int]
    metadata: Dict[str, Any] = dataclasses.field(default_factory=dict)

    def area_ratio(self, thresholds: Sequence[float] = DEFAULT_THRESHOLDS) -> Dict[float, float]:
        return area_ratio(self.map, thresholds)

    def save(self, path, **metadata):
        """Save (``metadata`` keywords are added to the result's ``metadata``)."""
        res = dataclasses.replace(self, metadata={**self.metadata, **metadata}) if metadata else self
        return SavableResult.save(res, path)


# -------------------------------------------------------------------------------------- helpers
def looks_untrained(model: nn.Module) -> Optional[str]:
    """A reason to believe ``model`` has random weights, or None.

    Checks ``model.weights_source`` (set by :func:`moga_analysis.models.load_model`; None means random),
    BatchNorm running statistics at their initial values (mean 0, var 1), and layer-scale vectors
    still constant (timm/MogaNet initialise them to a constant such as 1e-5 or 1e-6).
    """
    if hasattr(model, "weights_source") and model.weights_source is None:
        return "the model was built with random weights (weights_source is None)"
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if bns and all(
        m.running_mean is not None and bool((m.running_mean == 0).all()) and bool((m.running_var == 1).all())
        for m in bns
    ):
        return "every BatchNorm layer still has its initial running statistics"
    scales = [
        p
        for n, p in model.named_parameters()
        if p.dim() == 1 and p.numel() > 1 and any(k in n.lower() for k in ("gamma", "layer_scale", "scale"))
    ]
    if scales and all(bool((p == p.flatten()[0]).all()) for p in scales):
        return "every layer-scale vector is still constant (its initialisation)"
    return None


def _resolve(model: nn.Module, layer: Optional[str]) -> Tuple[str, Optional[nn.Module]]:
    if layer is None:
        return ("forward_features" if hasattr(model, "forward_features") else "output"), None
    return resolve_layer(model, layer)


def _features(model: nn.Module, module: Optional[nn.Module], x: torch.Tensor) -> torch.Tensor:
    if module is None:
        f = model.forward_features(x) if hasattr(model, "forward_features") else model(x)
    else:
        f = layer_output(model, module, x)
    return to_nchw(f, x.shape[-2:], model)


def effective_receptive_field(
    model: nn.Module,
    images: Union[torch.Tensor, Iterable[torch.Tensor]],
    layer: Optional[str] = None,
    *,
    batch_size: Optional[int] = None,
    progress: bool = False,
    warn_random: bool = True,
) -> ERFResult:
    """Mean ERF contribution map ``[H, W]`` of ``model`` over ``images`` (see the module docstring).

    ``images``: a tensor ``[N, C, H, W]`` (split by ``batch_size``) or an iterable of batches
    (a DataLoader yielding tensors or ``(tensor, label)``).  One forward and one backward pass per
    batch.  Warns with :class:`RandomWeightsWarning` when the weights look random.
    """
    from ..data import iter_batches
    from ..runtime import frozen_parameters, model_device
    from ..runtime import progress as _progress

    if warn_random:
        why = looks_untrained(model)
        if why:
            msg = (
                f"ERF of {type(model).__name__} with random weights ({why}): layer scale and zero-init "
                "make random-weight ERFs collapse to a point; load trained weights"
            )
            warnings.warn(msg, RandomWeightsWarning, stacklevel=2)
    name, module = _resolve(model, layer)
    dev = model_device(model)
    total: Optional[torch.Tensor] = None
    n, fshape, center = 0, None, None
    total_batches = None
    if isinstance(images, torch.Tensor):
        total_batches = math.ceil(images.shape[0] / (batch_size or images.shape[0]))
    with eval_mode(model), frozen_parameters(model), torch.enable_grad():
        for x in _progress(
            iter_batches(images, batch_size), enabled=progress, total=total_batches, desc="erf", leave=False
        ):
            x = x.to(dev).detach().requires_grad_(True)
            f = _features(model, module, x)
            h, w = f.shape[-2:]
            center = (h // 2, w // 2)
            fshape = tuple(int(s) for s in f.shape[1:])
            score = torch.relu(f[:, :, center[0], center[1]]).sum()
            (g,) = torch.autograd.grad(score, x)
            contrib = torch.relu(g).sum(dim=(0, 1)).double()
            total = contrib if total is None else total + contrib
            n += x.shape[0]
    if total is None:
        raise ValueError("no images were given")
    return ERFResult(map=(total / n).float().cpu(), n_images=n, layer=name, feature_shape=fshape, center=center)


# ------------------------------------------------------------------------------------ area ratio
def _center_bounds(size: int) -> Tuple[int, int]:
    """Index range (inclusive) of the centre of a length: one pixel when odd, two when even."""
    return ((size - 1) // 2, size // 2)


def area_ratio(erf: torch.Tensor, thresholds: Sequence[float] = DEFAULT_THRESHOLDS) -> Dict[float, float]:
    """High-contribution area ratio of an ERF map (RepLKNet).

    The map is transformed with ``log10(x + 1)`` and scaled to maximum 1.  For each threshold ``t``
    in (0, 1) the result is ``area / (H * W)`` of the smallest centred square window whose share of
    the total exceeds ``t`` (strictly).  Windows grow by one pixel on every side, starting from the
    centre: a single pixel for an odd size, the central 2 pixels for an even size (so windows of an
    even map have even sides, as in RepLKNet's code); along a non-square map the window is clipped at
    the border.  When only the whole map exceeds ``t`` the ratio is 1.0.  An all-zero map gives
    NaN for every threshold (with a warning).
    """
    m = torch.as_tensor(erf).detach().double().cpu()
    if m.dim() != 2:
        raise ValueError(f"an ERF map is [H, W], got shape {tuple(m.shape)}")
    if (m < 0).any():
        raise ValueError("ERF maps are non-negative (ReLU'd gradients)")
    for t in thresholds:
        if not 0 < t < 1:
            raise ValueError(f"thresholds lie in (0, 1), got {t}")
    m = torch.log10(m + 1)
    H, W = m.shape
    peak = m.max()
    if not peak > 0:
        warnings.warn("area_ratio of an all-zero map is undefined", RuntimeWarning, stacklevel=2)
        return {float(t): float("nan") for t in thresholds}
    m = m / peak
    total = m.sum()
    # integral image for O(1) window sums
    S = torch.zeros(H + 1, W + 1, dtype=torch.float64)
    S[1:, 1:] = m.cumsum(0).cumsum(1)
    r0, r1 = _center_bounds(H)
    c0, c1 = _center_bounds(W)
    shares, areas = [], []
    for k in range(max(H, W)):
        top, bot = max(r0 - k, 0), min(r1 + k, H - 1)
        lef, rig = max(c0 - k, 0), min(c1 + k, W - 1)
        s = S[bot + 1, rig + 1] - S[top, rig + 1] - S[bot + 1, lef] + S[top, lef]
        shares.append(float(s / total))
        areas.append((bot - top + 1) * (rig - lef + 1) / (H * W))
        if top == 0 and lef == 0 and bot == H - 1 and rig == W - 1:
            break
    out = {}
    for t in thresholds:
        hit = next((a for s, a in zip(shares, areas) if s > t), 1.0)
        out[float(t)] = float(hit)
    return out
