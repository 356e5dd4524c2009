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

Faithfulness metrics (deletion / insertion AUC, average drop, increase in confidence) and the
model-randomisation sanity check live in :mod:`moga_analysis.faithfulness`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
from typing import Dict, Iterator, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from .hooks import resolve_modules
from .results import SavableResult

__all__ = [
    "CAMResult",
    "grad_cam",
    "default_layer",
    "resolve_layer",
    "normalize_targets",
    "frozen_parameters",
    "infer_layout",
    "main",
]

log = logging.getLogger(__name__)

TargetLike = Union[None, int, Sequence[int], torch.Tensor]
LAYOUTS = ("auto", "nchw", "nhwc", "tokens")


# ----------------------------------------------------------------------------------------- result
@dataclasses.dataclass(frozen=True)
class CAMResult(SavableResult):
    """Grad-CAM maps of one batch (``.save(path)`` / ``CAMResult.load(path)``).

    ``raw``: signed map at the layer's resolution ``[B, h, w]`` (sum_k alpha_k A_k, no ReLU, no scaling).
    ``maps``: ``ReLU(raw)`` upsampled bilinearly to the input size and divided by its per-image maximum,
    ``[B, H, W]`` in [0, 1] (an all-zero map stays zero).  ``targets``: explained classes ``[B]``;
    ``scores``: their logits; ``probs``: their softmax probabilities.  ``layer``/``layout``: where
    and how the map was read.
    """

    raw: torch.Tensor
    maps: torch.Tensor
    targets: torch.Tensor
    scores: torch.Tensor
    probs: torch.Tensor
    layer: str
    layout: str

    def __len__(self) -> int:
        return self.raw.shape[0]

    def plot(self, images: torch.Tensor, **kwargs):
        """Overlay figure (see :func:`moga_analysis.plotting.gradcam.plot_cam_grid`)."""
        from .plotting.gradcam import plot_cam_grid

        return plot_cam_grid(images, {self.layer: self}, **kwargs)


# ------------------------------------------------------------------------------------ layer choice
def _is_moganet(model: nn.Module) -> bool:
    return hasattr(model, "norm4") and hasattr(model, "blocks4") or type(model).__name__ == "MogaNet"


def default_layer(model: nn.Module) -> str:
    """Module name of the default Grad-CAM layer for ``model``'s family."""
    names = dict(model.named_modules())
    cls = type(model).__name__.lower()
    if _is_moganet(model):
        n = getattr(model, "num_stages", 4)
        return f"norm{n}"
    if "layer4" in names and "resnet" in cls or ("layer4" in names and "fc" in names):
        return "layer4"
    if "swin" in cls and "layers" in names:
        return f"layers.{len(model.layers) - 1}"
    if "convnext" in cls and "stages" in names:
        return f"stages.{len(model.stages) - 1}"
    if hasattr(model, "blocks") and hasattr(model, "num_prefix_tokens") and isinstance(model.blocks, nn.Sequential):
        last = len(model.blocks) - 1
        return f"blocks.{last}.norm1" if f"blocks.{last}.norm1" in names else f"blocks.{last}"
    if "conv_head" in names and "bn2" in names:  # timm EfficientNet / MobileNet: last 1x1 conv + BN-act
        return "bn2"
    if "stages" in names:
        return f"stages.{len(model.stages) - 1}"
    if "layer4" in names:
        return "layer4"
    info = getattr(model, "feature_info", None)  # timm's last feature module, when it has one
    if isinstance(info, list) and info and isinstance(info[-1], dict) and info[-1].get("module") in names:
        return info[-1]["module"]
    # fall back: the last module producing a 4-D map is not knowable without a pass; ask the user
    raise ValueError(
        f"no default Grad-CAM layer for {type(model).__name__}; pass layer='<module name>' "
        f"(e.g. one of {[n for n in names if n][-5:]})"
    )


def resolve_layer(model: nn.Module, layer: Optional[str]) -> Tuple[str, nn.Module]:
    """``(name, module)`` for ``layer`` (None: the family default; ``stageN`` -> ``normN`` on MogaNet)."""
    if layer is None:
        layer = default_layer(model)
    if _is_moganet(model) and layer.startswith("stage") and layer[5:].isdigit():
        layer = f"norm{int(layer[5:])}"
    if layer.endswith(".-1") or ".-1." in layer:  # convenience: last child of a container
        head, _, tail = layer.partition(".-1")
        parent = dict(model.named_modules())[head]
        layer = f"{head}.{len(parent) - 1}{tail}"
    mods = resolve_modules(model, layer)
    if len(mods) != 1:
        raise ValueError(f"layer {layer!r} matches {len(mods)} modules; name exactly one")
    name, mod = next(iter(mods.items()))
    return name, mod


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
            t = target.detach().to("cpu", torch.long).reshape(-1)
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
def _plausible_grid(a: int, b: int, H: int, W: int) -> bool:
    return a >= 1 and b >= 1 and a * W == b * H and H % a == 0


def infer_layout(shape: Sequence[int], input_hw: Tuple[int, int], hint: Optional[str] = None) -> str:
    """``"nchw"``, ``"nhwc"`` or ``"tokens"`` for a layer output of ``shape`` given the input size.

    3-D outputs are tokens.  For 4-D outputs the spatial pair must have the input's aspect ratio
    and divide its height; when both readings fit (e.g. ``[B, 7, 7, 7]``) ``hint`` (a model's
    ``output_fmt``) decides, then NCHW.
    """
    H, W = input_hw
    if len(shape) == 3:
        return "tokens"
    if len(shape) != 4:
        raise ValueError(f"Grad-CAM needs a 4-D map or 3-D tokens at the layer, got shape {tuple(shape)}")
    nchw = _plausible_grid(shape[2], shape[3], H, W)
    nhwc = _plausible_grid(shape[1], shape[2], H, W)
    if nchw and nhwc:
        return "nhwc" if (hint or "").upper() == "NHWC" else "nchw"
    if nhwc:
        return "nhwc"
    if nchw:
        return "nchw"
    return "nhwc" if (hint or "").upper() == "NHWC" else "nchw"


def infer_token_grid(
    n_tokens: int, input_hw: Tuple[int, int], num_prefix: Optional[int] = None
) -> Tuple[int, int, int]:
    """``(num_prefix, h, w)``: prefix tokens and the patch grid of a ``[B, N, C]`` sequence."""
    H, W = input_hw
    candidates = [num_prefix] if num_prefix is not None else list(range(0, 9))
    for p in candidates:
        n = n_tokens - p
        if n <= 0:
            continue
        h = math.isqrt(max(1, round(n * H / W)))
        for hh in (h - 1, h, h + 1):
            if hh >= 1 and n % hh == 0 and hh * W == (n // hh) * H:
                return p, hh, n // hh
    raise ValueError(
        f"cannot infer a patch grid from {n_tokens} tokens for a {H}x{W} input "
        f"(num_prefix_tokens={num_prefix}); pass layout='nchw' with a 4-D layer instead"
    )


class _Adapter(nn.Identity):
    """Identity module captum hooks; it sees the layer output in NCHW layout."""


@contextlib.contextmanager
def _layout_adapter(model: nn.Module, module: nn.Module, layout: str, input_hw: Tuple[int, int]) -> Iterator[Dict]:
    """Route ``module``'s output through an NCHW :class:`_Adapter` and back (hook removed on exit)."""
    adapter = _Adapter()
    info: Dict = {"adapter": adapter, "layout": layout}
    hint = getattr(model, "output_fmt", None)
    num_prefix = getattr(model, "num_prefix_tokens", None)

    def hook(_m, _inp, out):
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"Grad-CAM layer returned {type(out).__name__}, expected a tensor")
        lay = info["layout"]
        if lay == "auto":
            lay = infer_layout(out.shape, input_hw, hint)
            info["layout"] = lay
        if lay == "nchw":
            return adapter(out)
        if lay == "nhwc":
            return adapter(out.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        # tokens [B, N, C]
        p, h, w = infer_token_grid(out.shape[1], input_hw, num_prefix)
        prefix, patches = out[:, :p], out[:, p:]
        grid = patches.transpose(1, 2).reshape(out.shape[0], out.shape[2], h, w)
        grid = adapter(grid)
        return torch.cat([prefix, grid.flatten(2).transpose(1, 2)], dim=1)

    handle = module.register_forward_hook(hook)
    try:
        yield info
    finally:
        handle.remove()


# ------------------------------------------------------------------------------------------ core
@contextlib.contextmanager
def frozen_parameters(model: nn.Module) -> Iterator[None]:
    """Set ``requires_grad=False`` on every parameter; restore the exact flags on exit."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        yield
    finally:
        for p, f in flags:
            p.requires_grad_(f)


def upsample_maps(raw: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    """``ReLU(raw)`` bilinearly upsampled to ``size`` and scaled to max 1 per image."""
    m = F.interpolate(F.relu(raw)[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
    peak = m.flatten(1).amax(1).clamp_min(torch.finfo(m.dtype).tiny)
    return (m / peak[:, None, None]).clamp_(0, 1)


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
    from captum.attr import LayerGradCam

    from .runtime import model_device
    from .runtime import progress as _progress

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
        x = images[s : s + bs]
        t = None if targets is None else targets[s : s + bs].to(device)
        store: Dict[str, torch.Tensor] = {}

        def forward(inp, _t=t):
            logits = model(inp)
            if logits.dim() != 2:
                raise ValueError(f"model output must be [B, classes], got {tuple(logits.shape)}")
            cls = logits.detach().argmax(1) if _t is None else _t
            if _t is not None and int(_t.max()) >= logits.shape[1]:
                raise ValueError(f"targets must lie in [0, {logits.shape[1]}); got {_t.tolist()}")
            store["logits"], store["cls"] = logits.detach(), cls
            return logits.gather(1, cls[:, None])[:, 0]

        with frozen_parameters(model), contextlib.ExitStack() as stack:
            if layout == "nchw":
                hooked = module
            else:
                info = stack.enter_context(_layout_adapter(model, module, layout, (H, W)))
                hooked = info["adapter"]
            attr = LayerGradCam(forward, hooked).attribute(x, target=None, relu_attributions=False)
            if layout != "nchw":
                used_layout = info["layout"]
        raws.append(attr[:, 0].detach())
        logits, cls = store["logits"], store["cls"]
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


# ------------------------------------------------------------------------------------------- CLI
def build_parser():
    import argparse

    from .cli import add_common_args, add_image_args, add_model_args

    p = argparse.ArgumentParser(
        prog="python -m moga_analysis.gradcam",
        description="Grad-CAM maps side by side across models, with faithfulness metrics.",
    )
    add_model_args(p, default_model="moganet_small")
    add_image_args(p)
    add_common_args(p)
    p.add_argument("--layer", default=None, help="layer of --model (default: family default; stage1..4 on MogaNet)")
    p.add_argument("--size", type=int, default=224, help="input size, the same for every model so maps line up")
    p.add_argument("--steps", type=int, default=50, help="deletion/insertion steps (RISE used one per 224 pixels)")
    p.add_argument("--no-metrics", action="store_true", help="skip the faithfulness metrics")
    p.add_argument("--sanity", action="store_true", help="also run the model-randomisation sanity check")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    import json
    from pathlib import Path

    from .cli import images_from_args, models_from_args, setup_from_args
    from .data import load_images
    from .faithfulness import faithfulness_metrics, randomization_check
    from .results import atomic_write_text
    from .runtime import environment_info, make_generator, resolve_device

    args = build_parser().parse_args(argv)
    setup_from_args(args)
    out = Path(args.out or "gradcam_out")
    out.mkdir(parents=True, exist_ok=True)
    device = resolve_device(args.device)
    paths = images_from_args(args)
    results, rows, display = {}, [], None
    sanity = {}
    for i, (name, model) in enumerate(models_from_args(args, device)):
        x, kept, _skipped = load_images(paths, model, size=args.size)
        if display is None:
            from .data import class_names_for

            label_names = class_names_for(model)
            cfg = getattr(model, "pretrained_cfg", None) or {}
            display = (x, (cfg.get("mean", (0.485, 0.456, 0.406)), cfg.get("std", (0.229, 0.224, 0.225))), kept)
        cam = grad_cam(
            model, x, layer=args.layer if i == 0 else None, batch_size=args.batch_size, progress=not args.no_progress
        )
        results[name] = cam
        cam_file = out / f"cam_{name.replace('/', '_')}.safetensors"
        from .results import save_tensors

        save_tensors(
            cam_file,
            {"raw": cam.raw, "maps": cam.maps, "targets": cam.targets, "scores": cam.scores, "probs": cam.probs},
            {
                "model": name,
                "layer": cam.layer,
                "layout": cam.layout,
                "images": [str(p) for p in kept],
                "weights": getattr(model, "weights_source", None),
                "settings": vars(args),
                "env": environment_info(device),
            },
        )
        row = {"model": name, "layer": cam.layer, "weights": getattr(model, "weights_source", None)}
        if not args.no_metrics:
            m = faithfulness_metrics(
                model,
                x,
                cam.maps,
                cam.targets,
                steps=args.steps,
                batch_size=args.batch_size,
                progress=not args.no_progress,
            )
            row.update(m.summary())
        if args.sanity:
            sc = randomization_check(model, x, layer=cam.layer, generator=make_generator(args.seed))
            sanity[name] = sc
            row.update({f"sanity_{k}": v for k, v in sc.items() if not isinstance(v, list)})
        rows.append(row)
        log.info("%s: %s", name, {k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()})
        del model

    meta = {"settings": vars(args), "images": [str(p) for p in display[2]], "env": environment_info(device)}
    atomic_write_text(out / "metrics.json", json.dumps({"rows": rows, "sanity": sanity, **meta}, indent=2, default=str))
    keys = list(dict.fromkeys(k for r in rows for k in r))
    csv = [",".join(keys)] + [",".join(_csv_cell(r.get(k, "")) for k in keys) for r in rows]
    atomic_write_text(out / "metrics.csv", "\n".join(csv) + "\n")

    from .plotting.gradcam import plot_cam_grid
    from .plotting.style import paper_style, save_figure

    x0, (mean, std), _ = display
    with paper_style():
        fig, _ = plot_cam_grid(_denorm(x0, mean, std), results, class_names=label_names)
        written = save_figure(fig, out / "gradcam_grid")
    log.info("wrote %s, metrics.json, metrics.csv", ", ".join(str(w) for w in written))
    return 0


def _csv_cell(v) -> str:
    s = f"{v:.6g}" if isinstance(v, float) else str(v)
    return f'"{s}"' if "," in s else s


def _denorm(x: torch.Tensor, mean, std) -> torch.Tensor:
    m = torch.tensor(mean, device=x.device)[:, None, None]
    s = torch.tensor(std, device=x.device)[:, None, None]
    return (x * s + m).clamp(0, 1).cpu()


if __name__ == "__main__":
    from .cli import run_main

    run_main(main)
