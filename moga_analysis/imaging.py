"""Image operations shared by the analyses: Gaussian blur and display (un-normalised) images."""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

__all__ = ["gaussian_blur", "denormalize"]


def gaussian_blur(
    x: torch.Tensor, sigma: float, radius: Optional[int] = None, padding: str = "reflect"
) -> torch.Tensor:
    """Separable depthwise Gaussian blur of ``x [B, C, H, W]`` (or ``[C, H, W]``).

    The kernel has ``2 * radius + 1`` taps (default ``radius = ceil(3 sigma)``) and is computed
    and normalised to sum 1 in ``x``'s dtype.  ``padding``: ``"reflect"`` (falls back
    to ``"replicate"`` when the image is not larger than the radius) or ``"replicate"``.
    Used for the RISE insertion substrate (radius 5, sigma 5) and the masking game's blur baseline.
    """
    if padding not in ("reflect", "replicate"):
        raise ValueError(f"padding must be 'reflect' or 'replicate', got {padding!r}")
    single = x.dim() == 3
    y = x[None] if single else x
    r = max(1, int(math.ceil(3 * sigma))) if radius is None else int(radius)
    k = torch.exp(-((torch.arange(2 * r + 1, device=y.device, dtype=y.dtype) - r) ** 2) / (2 * sigma**2))
    k = k / k.sum()
    mode = padding if padding == "replicate" or min(y.shape[-2:]) > r else "replicate"
    C = y.shape[1]
    y = F.conv2d(F.pad(y, (r, r, 0, 0), mode=mode), k.view(1, 1, 1, -1).expand(C, 1, 1, 2 * r + 1), groups=C)
    y = F.conv2d(F.pad(y, (0, 0, r, r), mode=mode), k.view(1, 1, -1, 1).expand(C, 1, 2 * r + 1, 1), groups=C)
    return y[0] if single else y


def denormalize(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Display images in [0, 1] (CPU) from normalised ``x [B, C, H, W]``: ``x * std + mean``."""
    m = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return (x * s + m).clamp(0, 1).cpu()
