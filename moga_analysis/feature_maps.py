"""Where an analysis reads a network's feature map: default layers per family, layer lookup, and
the NCHW / NHWC / token layouts of timm models (shared by Grad-CAM and the ERF).

* :func:`default_layer` / :func:`resolve_layer`: MogaNet ``norm4`` (``stage1`` .. ``stage4`` mean
  ``norm1`` .. ``norm4``), ResNet ``layer4``, ConvNeXt and Swin the last stage, ViT/DeiT the last
  block's ``norm1``, EfficientNet ``bn2``, else timm's last ``feature_info`` module.
* :func:`infer_layout`, :func:`infer_token_grid`, :func:`to_nchw`: a layer output as an NCHW map
  (Swin stages are NHWC, ViT blocks ``[B, N, C]`` token sequences with prefix tokens).
* :func:`nchw_adapter`: routes a layer's output through an identity module that sees it in NCHW
  layout (what captum hooks for Grad-CAM), the original layout rebuilt downstream.
* :func:`layer_output`: the output of one module in a forward pass that stops right after it.
"""

from __future__ import annotations

import contextlib
import math
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import torch
from torch import nn

from .hooks import resolve_modules

__all__ = [
    "LAYOUTS",
    "default_layer",
    "resolve_layer",
    "infer_layout",
    "infer_token_grid",
    "to_nchw",
    "nchw_adapter",
    "layer_output",
]

LAYOUTS = ("auto", "nchw", "nhwc", "tokens")


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
def nchw_adapter(model: nn.Module, module: nn.Module, layout: str, input_hw: Tuple[int, int]) -> Iterator[Dict]:
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




def to_nchw(t: torch.Tensor, input_hw: Tuple[int, int], model: nn.Module) -> torch.Tensor:
    """A layer output (NCHW, NHWC or tokens, inferred as :func:`infer_layout` does) as NCHW."""
    lay = infer_layout(t.shape, input_hw, getattr(model, "output_fmt", None))
    if lay == "nchw":
        return t
    if lay == "nhwc":
        return t.permute(0, 3, 1, 2)
    p, h, w = infer_token_grid(t.shape[1], input_hw, getattr(model, "num_prefix_tokens", None))
    return t[:, p:].transpose(1, 2).reshape(t.shape[0], t.shape[2], h, w)


class _Stop(Exception):
    """Raised in a hook to stop the forward pass once the layer output is captured."""


def layer_output(model: nn.Module, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The output of ``module`` when ``model`` runs on ``x`` (the pass stops right after it)."""
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
        raise RuntimeError("the layer was not called in the forward pass")
    return box[0]
