"""Gate ablations of MogaNet at inference time: the interventions.

Interventions (:func:`ablate`, a context manager; nothing is changed outside it):

==================  =====================================================================
kind                what every selected :class:`~moga_analysis.models.layers.MogaBlock` computes
==================  =====================================================================
``gate``            ``proj_2(SiLU(value(y))) + x``: the gate branch ``SiLU(gate(y))`` becomes 1
``context``         ``proj_2(SiLU(gate(y))) + x``: the context branch ``SiLU(value(y))`` becomes 1
``single_order``    the multi-order DWConv keeps only its 5x5 conv: ``PW_conv(DW_conv0(y))``
``fd``              feature decomposition off: ``y = SiLU(proj_1(x))`` (= attn ``sigma`` at 0)
``ca``              channel aggregation off: ``fc2(h)`` (= mlp ``sigma`` at 0)
==================  =====================================================================

``mode="zero"`` (default) *removes* the branch: a multiplicative branch is replaced by its
neutral element 1, an additive one (FD, CA, the dilated convs) by nothing.  ``mode="mean"``
(``gate`` and ``context`` only) replaces the branch by its per-channel mean over calibration
images, measured on the unablated model: the block keeps the branch's average level and loses
only its dependence on the input (mean ablation).

Everything is done with forward hooks on the blocks' tap points and sub-modules, removed in a
``finally`` block: parameters, buffers and module flags are never touched.

The sweep over a data set is in :mod:`.evaluate`, the run with its folder in :mod:`.pipeline`.
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from ..data import iter_batches
from ..models.layers import MogaBlock
from ..runtime import eval_mode

__all__ = ["KINDS", "MODES", "ablate", "moga_blocks", "calibrate", "AblationSpec", "FULL", "parse_specs", "hooks"]

KINDS = ("gate", "context", "single_order", "fd", "ca")
MODES = ("zero", "mean")
_MEAN_KINDS = ("gate", "context")
_TAPS = {"gate": "attn.tap_gate", "context": "attn.tap_context"}
_BLOCK_RE = re.compile(r"(?:^|\.)blocks(\d+)\.(\d+)$")


# =========================================================================== model structure
def moga_blocks(model: nn.Module) -> Dict[str, Tuple[int, MogaBlock]]:
    """``{module name: (stage 1..4, block)}`` of every MogaBlock under ``blocks{i}.{j}``.

    Raises ``TypeError`` when ``model`` contains none (it is not a MogaNet).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"ablate needs a MogaNet nn.Module, got {type(model).__name__}")
    out: Dict[str, Tuple[int, MogaBlock]] = {}
    for name, mod in model.named_modules():
        if isinstance(mod, MogaBlock):
            m = _BLOCK_RE.search(name)
            if m is not None:
                out[name] = (int(m.group(1)), mod)
    if not out:
        raise TypeError(
            f"{type(model).__name__} is not a MogaNet: it has no MogaBlock under 'blocks<stage>.<index>' "
            f"(gate ablations exist only for MogaNet; build one with timm.create_model('moganet_xtiny'))"
        )
    return out


def _normalize_stages(stages: Any, available: Sequence[int]) -> Tuple[int, ...]:
    avail = sorted(set(available))
    if stages is None or (isinstance(stages, str) and stages.strip().lower() == "all"):
        return tuple(avail)
    if isinstance(stages, bool):
        raise ValueError(f"stages must be None, 'all', an int or ints in {avail}, got {stages!r}")
    if isinstance(stages, int):
        stages = (stages,)
    elif isinstance(stages, str):
        stages = [s for s in re.split(r"[+,\s]+", stages.strip()) if s]
    try:
        chosen = tuple(sorted({int(s) for s in stages}))
    except (TypeError, ValueError):
        raise ValueError(f"stages must be None, 'all', an int or ints in {avail}, got {stages!r}") from None
    bad = [s for s in chosen if s not in avail]
    if bad or not chosen:
        raise ValueError(f"stages {list(chosen)} not in this model's stages {avail} (numbered from 1)")
    return chosen


def _validate(kind: str, mode: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"unknown ablation kind {kind!r}; choose one of {', '.join(KINDS)}")
    if mode not in MODES:
        raise ValueError(f"unknown ablation mode {mode!r}; choose 'zero' or 'mean'")
    if mode == "mean" and kind not in _MEAN_KINDS:
        raise ValueError(f"mode='mean' applies to {' and '.join(_MEAN_KINDS)} only, not to {kind!r}")


def _selected(model: nn.Module, kind: str, stages: Any) -> Dict[str, MogaBlock]:
    blocks = moga_blocks(model)
    chosen = _normalize_stages(stages, [s for s, _ in blocks.values()])
    sel = {n: b for n, (s, b) in blocks.items() if s in chosen}
    for name, blk in sel.items():
        missing = {
            "gate": not blk.attn.use_gate,
            "fd": not blk.attn.use_fd,
            "ca": not blk.mlp.use_ca,
            "single_order": not blk.attn.value.multi_order,
        }.get(kind, False)
        if missing:
            raise ValueError(f"{name} was built without the part that {kind!r} removes (a training-time ablation)")
    return sel


# =========================================================================== calibration
def calibrate(
    model: nn.Module,
    kind: str,
    calibration: Any,
    stages: Any = None,
    batch_size: int = 64,
) -> Dict[str, torch.Tensor]:
    """Per-channel means of the ``gate`` or ``context`` branch of each selected block.

    ``calibration``: images ``[N,C,H,W]`` or an iterable of image batches / ``(images, labels)``
    tuples.  The model runs as it is (in eval mode, without gradients); the mean is over images
    and positions.  Returns ``{block name: float32 [1, C, 1, 1]}`` on the model's device, the
    form :func:`ablate` accepts as ``calibration=`` (also for a subset of these stages).
    """
    from ..hooks import capture
    from ..runtime import model_device

    _validate(kind, "mean")
    sel = _selected(model, kind, stages)
    taps = {f"{n}.{_TAPS[kind]}": n for n in sel}
    device = model_device(model)

    def reduce(t: torch.Tensor) -> torch.Tensor:
        s = t.detach().double().sum(dim=(0, 2, 3))
        return torch.cat([s, s.new_full((1,), float(t.shape[0] * t.shape[2] * t.shape[3]))])

    n_batches = 0
    with eval_mode(model), torch.no_grad(), capture(model, list(taps), reduce=reduce) as store:
        for x in iter_batches(calibration, batch_size):
            model(x.to(device))
            n_batches += 1
    if n_batches == 0:
        raise ValueError("mean ablation needs calibration images; the calibration data is empty")
    means = {}
    for tap, block in taps.items():
        total = torch.stack(store[tap]).sum(0)
        means[block] = (total[:-1] / total[-1]).float().view(1, -1, 1, 1)
    return means


# =========================================================================== the intervention
def _const_like(value: torch.Tensor) -> Callable:
    """Forward hook: the output becomes ``value`` broadcast to its shape (no copy)."""

    def hook(_mod, _inp, out):
        return value.to(device=out.device, dtype=out.dtype).expand_as(out)

    return hook


def _ones_hook(_mod, _inp, out):
    return out.new_ones(()).expand_as(out)


def _zeros_hook(_mod, _inp, out):
    return out.new_zeros(()).expand_as(out)


def _passthrough_hook(_mod, inp, _out):
    return inp[0]


@contextlib.contextmanager
def ablate(
    model: nn.Module,
    kind: str,
    stages: Any = None,
    mode: str = "zero",
    calibration: Any = None,
    batch_size: int = 64,
) -> Iterator[nn.Module]:
    """Run ``model`` with one MogaNet component switched off inside the ``with`` block.

    Args:
        model: a MogaNet (any module holding MogaBlocks under ``blocks<stage>.<index>``).
        kind: ``gate``, ``context``, ``single_order``, ``fd`` or ``ca`` (see the module docs).
        stages: ``None`` / ``"all"``, an int 1..4, or several (``[2, 3]``, ``"2+3"``).
        mode: ``"zero"`` removes the branch (multiplicative branches become 1); ``"mean"``
            (gate, context) replaces it by its per-channel mean over ``calibration``.
        calibration: for ``mode="mean"``: images / batches (see :func:`calibrate`; measured on
            the model as it is on entry), or the ``{block name: mean}`` dict it returns.

    Yields the model.  On exit, normal or by exception, every hook is removed; parameters,
    buffers and flags are never modified, so the model is exactly as before.
    """
    _validate(kind, mode)
    sel = _selected(model, kind, stages)
    means: Optional[Mapping[str, torch.Tensor]] = None
    if mode == "mean":
        if calibration is None:
            raise ValueError("mode='mean' needs calibration images (or the dict from calibrate())")
        if isinstance(calibration, Mapping):
            missing = [n for n in sel if n not in calibration]
            if missing:
                raise KeyError(f"calibration has no mean for {missing[:3]}{' ...' if len(missing) > 3 else ''}")
            means = calibration
        else:
            means = calibrate(model, kind, calibration, stages=stages, batch_size=batch_size)
    elif calibration is not None:
        raise ValueError("calibration is only used with mode='mean'")

    with hooks(_hook_plan(sel, kind, means)):
        yield model


def _hook_plan(sel: Mapping[str, MogaBlock], kind: str, means: Optional[Mapping[str, torch.Tensor]]):
    """``[(module, forward hook)]`` that ablate ``kind`` in the blocks ``sel``."""
    plan: List[Tuple[nn.Module, Callable]] = []
    for name, blk in sel.items():
        if kind in _MEAN_KINDS:
            tap = blk.attn.tap_gate if kind == "gate" else blk.attn.tap_context
            plan.append((tap, _ones_hook if means is None else _const_like(means[name])))
        elif kind == "single_order":
            plan.append((blk.attn.value.DW_conv1, _passthrough_hook))
            plan.append((blk.attn.value.DW_conv2, _passthrough_hook))
        elif kind == "fd":
            plan.append((blk.attn.sigma, _zeros_hook))
        else:  # ca
            plan.append((blk.mlp.sigma, _zeros_hook))
    return plan


@contextlib.contextmanager
def hooks(plan: Sequence[Tuple[nn.Module, Callable]]) -> Iterator[None]:
    """Register the forward hooks of ``plan`` (``[(module, hook)]``); all removed on exit."""
    handles = []
    try:
        for mod, fn in plan:
            handles.append(mod.register_forward_hook(fn))
        yield
    finally:
        for h in reversed(handles):
            h.remove()


# =========================================================================== specs
@dataclass(frozen=True)
class AblationSpec:
    """One row of an ablation sweep: ``kind`` (or ``"none"`` for the full model), stages, mode."""

    kind: str
    stages: Optional[Tuple[int, ...]] = None  # None: all stages
    mode: str = "zero"

    @property
    def stages_label(self) -> str:
        return "all" if self.stages is None else "+".join(map(str, self.stages))

    @property
    def name(self) -> str:
        if self.kind == "none":
            return "none"
        mode = "" if self.mode == "zero" else f"[{self.mode}]"
        return f"{self.kind}{mode}@{self.stages_label}"

    def plan(self, model: nn.Module, calibration: Any = None) -> List[Tuple[nn.Module, Callable]]:
        """The hooks of this ablation, resolved once (for sweeps that switch configs per batch)."""
        if self.kind == "none":
            return []
        _validate(self.kind, self.mode)
        sel = _selected(model, self.kind, self.stages)
        means = None
        if self.mode == "mean":
            if not isinstance(calibration, Mapping) or any(n not in calibration for n in sel):
                raise ValueError(f"{self.name} needs the calibration means of calibrate() for its blocks")
            means = calibration
        return _hook_plan(sel, self.kind, means)

    def context(self, model: nn.Module, calibration: Any = None):
        if self.kind == "none":
            return contextlib.nullcontext(model)
        cal = calibration if self.mode == "mean" else None
        return ablate(model, self.kind, self.stages, self.mode, calibration=cal)


FULL = AblationSpec("none")


def _split(text: Union[str, Sequence[str]]) -> List[str]:
    items = text.split(",") if isinstance(text, str) else list(text)
    return [s.strip() for s in items if str(s).strip()]


def parse_specs(
    ablations: Union[str, Sequence[str]] = KINDS,
    stages: Union[str, Sequence[str]] = ("all",),
    modes: Union[str, Sequence[str]] = ("zero",),
) -> List[AblationSpec]:
    """The sweep ``ablations x stages x modes`` (``mean`` only for gate/context), full model first."""
    specs = [FULL]
    stage_choices = []
    for s in _split(stages):
        st = None if s.lower() == "all" else _normalize_stages(s, range(1, 5))
        if st == (1, 2, 3, 4):
            st = None
        stage_choices.append(st)
    mode_list = _split(modes)
    for mode in mode_list:
        if mode not in MODES:
            raise ValueError(f"unknown ablation mode {mode!r}; choose 'zero' or 'mean'")
    for kind in _split(ablations):
        if kind not in KINDS:
            raise ValueError(f"unknown ablation kind {kind!r}; choose from {', '.join(KINDS)}")
        for mode in mode_list:
            if mode == "mean" and kind not in _MEAN_KINDS:
                continue
            for st in stage_choices:
                spec = AblationSpec(kind, st, mode)
                if spec not in specs:
                    specs.append(spec)
    return specs


