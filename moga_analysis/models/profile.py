"""Parameter and MAC counts, computed on the meta device (no memory, no arithmetic)."""

from __future__ import annotations

from typing import Dict

import torch

__all__ = ["count_params", "count_macs", "model_table"]


def count_params(name: str, **kwargs) -> int:
    import timm

    with torch.device("meta"):
        model = timm.create_model(name, **kwargs)
    return sum(p.numel() for p in model.parameters())


def count_macs(name: str, input_size: int = 224, **kwargs) -> int:
    """Multiply-accumulates of convolutions and linear layers for one image (biases not counted).

    Half of ``torch.utils.flop_counter.FlopCounterMode``'s total, the same convention as the
    golden manifest (``macs_conv_linear_224``): the architecture's full kernels, including the taps
    of MogaNet's depthwise convs that only read padding and are skipped when it runs
    (:class:`~moga_analysis.models.layers.DepthwiseConv2d`).
    """
    import timm
    from torch.utils.flop_counter import FlopCounterMode

    from .layers import set_skip_dead_taps

    with torch.device("meta"):
        model = timm.create_model(name, **kwargs).eval()
        x = torch.empty(1, 3, input_size, input_size)
    set_skip_dead_taps(model, False)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x)
    return counter.get_total_flops() // 2


def model_table(names, input_size: int = 224) -> Dict[str, Dict[str, float]]:
    """``{name: {"params_M": ..., "gmacs": ...}}`` for a README table."""
    return {n: {"params_M": count_params(n) / 1e6, "gmacs": count_macs(n, input_size) / 1e9} for n in names}
