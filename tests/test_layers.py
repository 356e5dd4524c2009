"""MogaNet's depthwise convs skip the kernel taps that only read padding: the same numbers as the
full ``nn.Conv2d``, the same gradients, and fewer multiply-accumulates on small feature maps."""

import pytest
import timm
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from moga_analysis.models.layers import DepthwiseConv2d, _dead_taps, set_skip_dead_taps


@pytest.mark.parametrize("padding, dilation, size, dead", [
    (9, 3, 16, 0),  # 7x7, dilation 3 on a 16 px map: every tap reaches the input
    (9, 3, 9, 1),  # the outer taps read 9 pixels away: nothing on a 9 px map
    (9, 3, 8, 1),  # 5 live taps (offsets -6 .. 6)
    (9, 3, 4, 2),  # 3 live taps (offsets -3, 0, 3)
    (9, 3, 2, 3),  # the centre only
    (4, 2, 2, 2),  # 5x5, dilation 2 on a 2 px map: the centre only
    (2, 1, 2, 1),  # 5x5, dilation 1 on a 2 px map: 3x3 live
    (1, 1, 1, 1),  # 3x3 on a 1 px map: the centre only
])
def test_dead_taps_hand_counted(padding, dilation, size, dead):
    assert _dead_taps(padding, dilation, size) == dead
    k = 2 * padding // dilation + 1
    live = [t for t in range(k) if any(0 <= o + t * dilation - padding < size for o in range(size))]
    assert live == list(range(dead, k - dead))  # brute force: the live taps are the centre k - 2 dead


@pytest.mark.parametrize("kernel, dilation", [(3, 1), (5, 1), (5, 2), (7, 3)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_depthwise_conv_equals_the_full_conv(kernel, dilation, channels_last):
    gen = torch.Generator().manual_seed(kernel * 10 + dilation)
    pad = dilation * (kernel - 1) // 2
    ours = DepthwiseConv2d(6, kernel, padding=pad, dilation=dilation).double()
    full = nn.Conv2d(6, 6, kernel, padding=pad, dilation=dilation, groups=6).double()
    full.load_state_dict(ours.state_dict())
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    for h, w in [(1, 1), (2, 2), (3, 5), (4, 4), (7, 2), (8, 8), (9, 10), (16, 16)]:
        x = torch.randn(2, 6, h, w, generator=gen, dtype=torch.float64).contiguous(memory_format=fmt)
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        ya, yb = ours(xa), full(xb)
        torch.testing.assert_close(ya, yb, rtol=0, atol=1e-12)
        g = torch.randn(ya.shape, generator=gen, dtype=torch.float64)
        ya.backward(g)
        yb.backward(g)
        torch.testing.assert_close(xa.grad, xb.grad, rtol=0, atol=1e-12)
        torch.testing.assert_close(ours.weight.grad, full.weight.grad, rtol=0, atol=1e-12)
        torch.testing.assert_close(ours.bias.grad, full.bias.grad, rtol=0, atol=1e-12)
        ours.zero_grad()
        full.zero_grad()


def _macs(model, size):
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.zeros(1, 3, size, size, dtype=torch.float64))
    return counter.get_total_flops() // 2


def test_moganet_at_64_px_equals_the_full_kernels_and_skips_work():
    torch.manual_seed(0)
    model = timm.create_model("moganet_xtiny", num_classes=10).double().eval()
    for p in model.parameters():  # layer scales away from their tiny init so every branch counts
        p.data.add_(torch.randn_like(p) * 0.05)
    x = torch.randn(3, 3, 64, 64, dtype=torch.float64)
    convs = [m for m in model.modules() if isinstance(m, DepthwiseConv2d)]
    assert len(convs) == 4 * (3 + 3 + 10 + 2)  # DW_conv0/1/2 and the FFN's dwconv of every block (depths 3, 3, 10, 2)
    with torch.no_grad():
        skipped = model(x)
        set_skip_dead_taps(model, False)
        full = model(x)
    torch.testing.assert_close(skipped, full, rtol=0, atol=1e-10)
    macs_full = _macs(model, 64)
    shapes = {}
    hooks = [m.register_forward_pre_hook(lambda mod, args: shapes.__setitem__(mod, args[0].shape)) for m in convs]
    set_skip_dead_taps(model, True)
    saved = macs_full - _macs(model, 64)
    for h in hooks:
        h.remove()
    want = 0  # per conv: C * H * W * (taps of the full kernel - live taps), counted from the input shapes
    for m, (_, c, h, w) in shapes.items():
        k, d, p = m.kernel_size[0], m.dilation[0], m.padding[0]
        live = [t for t in range(k) if abs(t * d - p) < h], [t for t in range(k) if abs(t * d - p) < w]
        want += c * h * w * (k * k - len(live[0]) * len(live[1]))
    assert saved == want > 0  # stages 3 and 4 (4x4 and 2x2 maps) run fewer taps
