"""Building blocks of MogaNet, written from the paper's equations.

Module and parameter names follow the official state-dict layout
(``attn.proj_1``, ``attn.value.DW_conv0``, ``mlp.decompose``, ``attn.sigma.scale`` ...), so an
official checkpoint loads strictly.  Every block also carries parameter-free
:class:`TapPoint` modules at the places analyses care about:

========================  =====================================================================
tap point                 tensor that passes through it
========================  =====================================================================
``attn.tap_fd``           output of feature decomposition (FD) after its SiLU: the input ``y``
                          of the gate and context branches
``attn.tap_gate``         gate branch ``SiLU(gate(y))``
``attn.tap_context``      context branch ``SiLU(value(y))`` (multi-order DWConv)
``attn.tap_gated``        their product, before ``proj_2``
``mlp.tap_ca``            output of channel aggregation (CA) inside the FFN, before ``fc2``
========================  =====================================================================

Forward hooks on a tap point read the tensor; a hook that returns a tensor replaces it.  They
add no parameters and cost nothing when no hook is registered.
"""

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from timm.layers import DropPath, register_notrace_module
from torch import nn

__all__ = [
    "TapPoint",
    "ElementScale",
    "DepthwiseConv2d",
    "set_skip_dead_taps",
    "MultiOrderDWConv",
    "MultiOrderGatedAggregation",
    "ChannelAggregationFFN",
    "MogaBlock",
    "BlockList",
    "StemPatchEmbed",
    "ConvPatchEmbed",
    "multi_order_split",
]


class TapPoint(nn.Identity):
    """A named identity: the place where analyses capture or replace an activation."""


class ElementScale(nn.Module):
    """Learnable per-channel scale ``x * scale`` (official name: ``sigma`` with ``.scale``)."""

    def __init__(self, channels: int, init_value: float = 1e-5):
        super().__init__()
        self.scale = nn.Parameter(torch.full((1, channels, 1, 1), float(init_value)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


def _dead_taps(padding: int, dilation: int, size: int) -> int:
    """Kernel taps at each end that read only zero padding for an input ``size`` long (stride 1).

    Tap ``t`` reads input ``o + t * dilation - padding`` for output ``o`` in ``[0, size)``: it can
    reach the input only when ``|t * dilation - padding| < size``.
    """
    if padding < size:
        return 0
    return (padding - size) // dilation + 1


@register_notrace_module  # FX: a leaf (the taps it skips depend on the input's size)
class DepthwiseConv2d(nn.Conv2d):
    """A depthwise ``nn.Conv2d`` (stride 1, symmetric zero padding) that skips the kernel taps
    which only ever multiply padding: on feature maps smaller than the kernel's reach (a 7x7
    conv with dilation 3 reaches 9 pixels each way; a 64 px input leaves MogaNet maps of 2-8
    pixels) it runs the live centre of the kernel with the padding shrunk to match.  The taps it
    drops add exact zeros, so the output is the full convolution's up to float rounding of the
    summation order; parameters and state-dict keys are those of ``nn.Conv2d``.
    ``skip_dead_taps = False`` runs the full kernel (what MAC counts of the architecture count).
    """

    __constants__ = nn.Conv2d.__constants__ + ["_pad_h", "_pad_w", "_dil_h", "_dil_w", "skip_dead_taps"]

    def __init__(self, channels: int, kernel_size: int, padding: int, dilation: int = 1):
        super().__init__(channels, channels, kernel_size, padding=padding, dilation=dilation, groups=channels)
        self._pad_h, self._pad_w = padding, padding
        self._dil_h, self._dil_w = dilation, dilation
        self.skip_dead_taps = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.skip_dead_taps:
            return self._conv_forward(x, self.weight, self.bias)
        ch = _dead_taps(self._pad_h, self._dil_h, x.shape[-2])
        cw = _dead_taps(self._pad_w, self._dil_w, x.shape[-1])
        if ch == 0 and cw == 0:
            return self._conv_forward(x, self.weight, self.bias)
        kh, kw = self.weight.shape[-2], self.weight.shape[-1]
        weight = self.weight[:, :, ch : kh - ch, cw : kw - cw]
        padding = [self._pad_h - ch * self._dil_h, self._pad_w - cw * self._dil_w]
        return F.conv2d(x, weight, self.bias, 1, padding, [self._dil_h, self._dil_w], self.groups)


def set_skip_dead_taps(model: nn.Module, skip: bool) -> None:
    """Set ``skip_dead_taps`` on every :class:`DepthwiseConv2d` of ``model`` (False: full kernels)."""
    for m in model.modules():
        if isinstance(m, DepthwiseConv2d):
            m.skip_dead_taps = skip


def multi_order_split(channels: int, ratio: tuple[int, int, int] = (1, 3, 4)) -> tuple[int, int, int]:
    """Channels given to the (order-0, dilation-2, dilation-3) branches of the context conv.

    The two dilated branches take ``int(C * r_k / sum(r))`` channels each; the first branch keeps
    the rest, so the split always sums to ``C`` (e.g. 96 -> (12, 36, 48), 320 -> (40, 120, 160)).
    """
    total = sum(ratio)
    c1 = int(ratio[1] / total * channels)
    c2 = int(ratio[2] / total * channels)
    return channels - c1 - c2, c1, c2


class MultiOrderDWConv(nn.Module):
    """Multi-order depthwise context: a 5x5 DWConv, then two dilated DWConvs *cascaded* on
    channel groups of its output, concatenated and mixed by a 1x1 conv.

    ``multi_order=False`` keeps only the 5x5 conv (``PW_conv(DW_conv0(x))``), the single-order
    variant used for training-time ablations; it has no ``DW_conv1`` / ``DW_conv2`` parameters.
    """

    __constants__ = ["multi_order"]  # for TorchScript: the branch without the convs is compiled away

    def __init__(
        self,
        channels: int,
        dilations: tuple[int, int, int] = (1, 2, 3),
        channel_split: tuple[int, int, int] = (1, 3, 4),
        multi_order: bool = True,
    ):
        super().__init__()
        self.channels = channels
        self.split = list(multi_order_split(channels, channel_split))
        self.multi_order = multi_order
        c0, c1, c2 = self.split
        d0, d1, d2 = dilations
        # padding = dilation * (kernel - 1) / 2 keeps the spatial size
        self.DW_conv0 = DepthwiseConv2d(channels, 5, padding=2 * d0, dilation=d0)
        if multi_order:
            self.DW_conv1 = DepthwiseConv2d(c1, 5, padding=2 * d1, dilation=d1)
            self.DW_conv2 = DepthwiseConv2d(c2, 7, padding=3 * d2, dilation=d2)
        self.PW_conv = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.DW_conv0(x)
        if self.multi_order:
            x0, x1, x2 = torch.split(x, self.split, dim=1)  # channel groups (views, as slicing would give)
            x = torch.cat([x0, self.DW_conv1(x1), self.DW_conv2(x2)], dim=1)
        return self.PW_conv(x)


class MultiOrderGatedAggregation(nn.Module):
    """Spatial aggregation: FD, then SiLU(gate(y)) * SiLU(value(y)), projected, plus the input.

    Feature decomposition (FD): ``z = proj_1(x)``; ``y = SiLU(z + sigma * (z - GAP(z)))``.
    Only the plain gating path is implemented: SiLU is applied once to each branch.  (The
    official ``attn_force_fp32=True`` path applies it a second time; it is not reproduced.)

    ``gate=False`` drops the gate branch (``proj_2(SiLU(value(y))) + x``; no ``gate`` parameters),
    ``use_fd=False`` drops FD's re-weighting (no ``sigma``): both exist for training-time ablations.
    """

    __constants__ = ["use_gate", "use_fd"]  # for TorchScript: branches on absent modules are compiled away

    def __init__(
        self,
        channels: int,
        dilations: tuple[int, int, int] = (1, 2, 3),
        channel_split: tuple[int, int, int] = (1, 3, 4),
        init_value: float = 1e-5,
        gate: bool = True,
        multi_order: bool = True,
        use_fd: bool = True,
    ):
        super().__init__()
        self.use_gate = gate
        self.use_fd = use_fd
        self.proj_1 = nn.Conv2d(channels, channels, 1)
        if gate:
            self.gate = nn.Conv2d(channels, channels, 1)
        self.value = MultiOrderDWConv(channels, dilations, channel_split, multi_order=multi_order)
        self.proj_2 = nn.Conv2d(channels, channels, 1)
        self.act_value = nn.SiLU()
        self.act_gate = nn.SiLU()
        if use_fd:
            self.sigma = ElementScale(channels, init_value)
        self.tap_fd = TapPoint()
        self.tap_gate = TapPoint()
        self.tap_context = TapPoint()
        self.tap_gated = TapPoint()

    def feat_decompose(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj_1(x)
        if self.use_fd:
            x = x + self.sigma(x - F.adaptive_avg_pool2d(x, 1))
        return self.tap_fd(self.act_value(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.feat_decompose(x)
        context = self.tap_context(self.act_gate(self.value(y)))
        if self.use_gate:
            context = context * self.tap_gate(self.act_gate(self.gate(y)))
        return self.proj_2(self.tap_gated(context)) + x


class ChannelAggregationFFN(nn.Module):
    """Inverted bottleneck FFN with channel aggregation (CA).

    ``h = GELU(DWConv3x3(fc1(x)))``; CA: ``h + sigma * (h - GELU(decompose(h)))`` where
    ``decompose`` squeezes all channels into one; then ``fc2``.
    """

    __constants__ = ["use_ca"]  # for TorchScript: the branch on the absent CA modules is compiled away

    def __init__(self, channels: int, hidden: int, drop: float = 0.0, init_value: float = 1e-5,
                 use_ca: bool = True):
        super().__init__()
        self.use_ca = use_ca
        self.fc1 = nn.Conv2d(channels, hidden, 1)
        self.dwconv = DepthwiseConv2d(hidden, 3, padding=1)
        self.act = nn.GELU()
        self.fc2 = nn.Conv2d(hidden, channels, 1)
        self.drop = nn.Dropout(drop)
        if use_ca:
            self.decompose = nn.Conv2d(hidden, 1, 1)
            self.sigma = ElementScale(hidden, init_value)
            self.decompose_act = nn.GELU()
        self.tap_ca = TapPoint()

    def feat_decompose(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_ca:
            x = x + self.sigma(x - self.decompose_act(self.decompose(x)))
        return self.tap_ca(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.drop(self.act(self.dwconv(self.fc1(x))))
        x = self.feat_decompose(x)
        return self.drop(self.fc2(x))


class MogaBlock(nn.Module):
    """``x + ls1 * attn(BN(x))`` then ``x + ls2 * mlp(BN(x))``, with stochastic depth."""

    def __init__(
        self,
        channels: int,
        ffn_ratio: float = 4.0,
        drop: float = 0.0,
        drop_path: float = 0.0,
        init_value: float = 1e-5,
        dilations: tuple[int, int, int] = (1, 2, 3),
        channel_split: tuple[int, int, int] = (1, 3, 4),
        gate: bool = True,
        multi_order: bool = True,
        use_fd: bool = True,
        use_ca: bool = True,
    ):
        super().__init__()
        self.norm1 = nn.BatchNorm2d(channels)
        self.attn = MultiOrderGatedAggregation(
            channels, dilations, channel_split, init_value, gate=gate, multi_order=multi_order, use_fd=use_fd
        )
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.BatchNorm2d(channels)
        self.mlp = ChannelAggregationFFN(channels, int(channels * ffn_ratio), drop, init_value, use_ca=use_ca)
        self.layer_scale_1 = nn.Parameter(torch.full((1, channels, 1, 1), float(init_value)))
        self.layer_scale_2 = nn.Parameter(torch.full((1, channels, 1, 1), float(init_value)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.layer_scale_1 * self.attn(self.norm1(x)))
        x = x + self.drop_path(self.layer_scale_2 * self.mlp(self.norm2(x)))
        return x


class BlockList(nn.ModuleList):
    """The blocks of one stage: a ``ModuleList`` (keys ``blocks{i}.{j}.*`` as in the official code)
    that also runs them in order, with optional activation checkpointing in training."""

    def __init__(self, blocks=None):
        super().__init__(blocks)
        self.grad_checkpointing = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for blk in self:
            if self.grad_checkpointing and not torch.jit.is_scripting():
                x = torch.utils.checkpoint.checkpoint(blk, x, use_reentrant=False)
            else:
                x = blk(x)
        return x


class StemPatchEmbed(nn.Module):
    """Stage-1 stem: two stride-2 3x3 convs (C/2 then C channels) with BN, GELU between."""

    def __init__(self, in_chans: int, channels: int):
        super().__init__()
        self.projection = nn.Sequential(
            nn.Conv2d(in_chans, channels // 2, 3, stride=2, padding=1),
            nn.BatchNorm2d(channels // 2),
            nn.GELU(),
            nn.Conv2d(channels // 2, channels, 3, stride=2, padding=1),
            nn.BatchNorm2d(channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.projection(x)


class ConvPatchEmbed(nn.Module):
    """Down-sampling between stages: stride-2 3x3 conv and BN."""

    def __init__(self, in_chans: int, channels: int):
        super().__init__()
        self.projection = nn.Conv2d(in_chans, channels, 3, stride=2, padding=1)
        self.norm = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.projection(x))
