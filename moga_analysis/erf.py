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
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from .runtime import eval_mode

__all__ = [
    "ERFResult",
    "effective_receptive_field",
    "area_ratio",
    "looks_untrained",
    "eval_mode",
    "RandomWeightsWarning",
    "main",
]

log = logging.getLogger(__name__)

DEFAULT_THRESHOLDS = (0.2, 0.3, 0.5, 0.99)


class RandomWeightsWarning(UserWarning):
    """The ERF of a network with random weights says nothing about the trained network."""


@dataclasses.dataclass(frozen=True)
class ERFResult:
    """``map``: mean contribution map ``[H, W]`` (raw gradients, no log or scaling);
    ``n_images``: images averaged; ``layer``: where the feature map was read;
    ``feature_shape``: ``[C, h, w]`` of that feature map; ``center``: the ``(row, col)`` used."""

    map: torch.Tensor
    n_images: int
    layer: str
    feature_shape: Tuple[int, int, int]
    center: Tuple[int, int]

    def area_ratio(self, thresholds: Sequence[float] = DEFAULT_THRESHOLDS) -> Dict[float, float]:
        return area_ratio(self.map, thresholds)

    def save(self, path, **metadata):
        from .results import save_tensors

        meta = {
            "n_images": self.n_images,
            "layer": self.layer,
            "feature_shape": list(self.feature_shape),
            "center": list(self.center),
            **metadata,
        }
        return save_tensors(path, {"map": self.map}, meta)

    @classmethod
    def load(cls, path) -> "ERFResult":
        from .results import load_tensors

        t, m = load_tensors(path)
        return cls(t["map"], int(m["n_images"]), m["layer"], tuple(m["feature_shape"]), tuple(m["center"]))

    def plot(self, **kwargs):
        from .plotting.erf import plot_erf

        return plot_erf({self.layer: self}, **kwargs)


# -------------------------------------------------------------------------------------- helpers
def looks_untrained(model: nn.Module) -> Optional[str]:
    """A reason to believe ``model`` has random weights, or None.

    Checks ``model.weights_source`` (set by :func:`moga_analysis.data.load_model`; None means random),
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
    from .gradcam import resolve_layer

    return resolve_layer(model, layer)


class _Stop(Exception):
    """Raised in a hook to stop the forward pass once the feature map is captured."""


def _to_nchw(t: torch.Tensor, input_hw: Tuple[int, int], model: nn.Module) -> torch.Tensor:
    from .gradcam import infer_layout, infer_token_grid

    lay = infer_layout(t.shape, input_hw, getattr(model, "output_fmt", None))
    if lay == "nchw":
        return t
    if lay == "nhwc":
        return t.permute(0, 3, 1, 2)
    p, h, w = infer_token_grid(t.shape[1], input_hw, getattr(model, "num_prefix_tokens", None))
    return t[:, p:].transpose(1, 2).reshape(t.shape[0], t.shape[2], h, w)


def _features(model: nn.Module, module: Optional[nn.Module], x: torch.Tensor) -> torch.Tensor:
    if module is None:
        f = model.forward_features(x) if hasattr(model, "forward_features") else model(x)
        return _to_nchw(f, x.shape[-2:], model)
    box: List[torch.Tensor] = []

    def hook(_m, _i, out):
        box.append(out)
        raise _Stop

    h = module.register_forward_hook(hook)
    try:
        model(x)
    except _Stop:
        pass
    finally:
        h.remove()
    if not box:
        raise RuntimeError("the ERF layer was not called in the forward pass")
    return _to_nchw(box[0], x.shape[-2:], model)


def _batches(images: Union[torch.Tensor, Iterable[torch.Tensor]], batch_size: Optional[int]) -> Iterator[torch.Tensor]:
    if isinstance(images, torch.Tensor):
        if images.dim() != 4:
            raise ValueError(f"images must be [N, C, H, W], got {tuple(images.shape)}")
        bs = batch_size or images.shape[0]
        for s in range(0, images.shape[0], bs):
            yield images[s : s + bs]
    else:
        for b in images:
            b = b[0] if isinstance(b, (tuple, list)) else b
            if batch_size:
                yield from _batches(b, batch_size)
            else:
                yield b


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
    from .gradcam import frozen_parameters
    from .runtime import model_device
    from .runtime import progress as _progress

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
            _batches(images, batch_size), enabled=progress, total=total_batches, desc="erf", leave=False
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


# ------------------------------------------------------------------------------------------- CLI
def build_parser():
    import argparse

    from .cli import add_common_args, add_image_args, add_model_args

    p = argparse.ArgumentParser(
        prog="python -m moga_analysis.erf",
        description="Effective receptive fields (RepLKNet protocol) side by side, with area ratios.",
    )
    add_model_args(p, default_model="moganet_small")
    add_image_args(p)
    add_common_args(p)
    p.set_defaults(num_images=50)
    p.add_argument("--size", type=int, default=1024, help="input size (RepLKNet: 1024)")
    p.add_argument("--layer", default=None, help="feature layer (default: last stage; stage1..4 on MogaNet)")
    p.add_argument("--thresholds", type=float, nargs="+", default=list(DEFAULT_THRESHOLDS))
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    import json
    from pathlib import Path

    from .cli import images_from_args, models_from_args, setup_from_args
    from .data import load_images
    from .results import atomic_write_text
    from .runtime import environment_info, resolve_device

    args = build_parser().parse_args(argv)
    setup_from_args(args)
    out = Path(args.out or "erf_out")
    out.mkdir(parents=True, exist_ok=True)
    device = resolve_device(args.device)
    paths = images_from_args(args)
    results, rows = {}, []
    for name, model in models_from_args(args, device):
        x, kept, skipped = load_images(paths, model, size=args.size)
        res = effective_receptive_field(
            model, x, layer=args.layer, batch_size=args.batch_size, progress=not args.no_progress
        )
        results[name] = res
        ratios = res.area_ratio(args.thresholds)
        res.save(
            out / f"erf_{name.replace('/', '_')}.safetensors",
            model=name,
            weights=getattr(model, "weights_source", None),
            images=[str(p) for p in kept],
            settings=vars(args),
            env=environment_info(device),
        )
        rows.append(
            {
                "model": name,
                "layer": res.layer,
                "n_images": res.n_images,
                "weights": getattr(model, "weights_source", None),
                **{f"t={t:g}": r for t, r in ratios.items()},
            }
        )
        log.info("%s: %s", name, rows[-1])
        del model
    atomic_write_text(
        out / "area_ratio.json",
        json.dumps({"rows": rows, "settings": vars(args), "env": environment_info(device)}, indent=2, default=str),
    )
    keys = list(dict.fromkeys(k for r in rows for k in r))
    lines = [",".join(keys)] + [",".join(_cell(r.get(k, "")) for k in keys) for r in rows]
    atomic_write_text(out / "area_ratio.csv", "\n".join(lines) + "\n")
    from .plotting.erf import plot_erf
    from .plotting.style import paper_style, save_figure

    with paper_style():
        fig, _ = plot_erf(results, thresholds=args.thresholds)
        written = save_figure(fig, out / "erf")
    log.info("wrote %s", ", ".join(map(str, written)))
    return 0


def _cell(v) -> str:
    return f"{v:.6g}" if isinstance(v, float) else str(v)


if __name__ == "__main__":
    from .cli import run_main

    run_main(main)
