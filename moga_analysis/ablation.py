"""Gate ablations of MogaNet at inference time, and the experiment runner.

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

Runner: ``python -m moga_analysis.ablation --model moganet_s --data DIR --ablations
gate,context,single_order,fd,ca --stages all,1,2,3,4 --out DIR`` (see ``docs/ablation.md``).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import logging
import math
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from .models.layers import MogaBlock
from .runtime import eval_mode

__all__ = [
    "KINDS",
    "MODES",
    "METRICS",
    "ablate",
    "moga_blocks",
    "calibrate",
    "AblationSpec",
    "parse_specs",
    "AblationEvaluation",
    "evaluate_ablations",
    "main",
]

log = logging.getLogger(__name__)

KINDS = ("gate", "context", "single_order", "fd", "ca")
MODES = ("zero", "mean")
_MEAN_KINDS = ("gate", "context")
_TAPS = {"gate": "attn.tap_gate", "context": "attn.tap_context"}
_BLOCK_RE = re.compile(r"(?:^|\.)blocks(\d+)\.(\d+)$")

#: per-config sums accumulated on the device (one row per ablation)
_STAT_COLUMNS = ("n", "n_labeled", "correct1", "correct5", "nll", "agree", "kl")
#: metrics reported per ablation
METRICS = ("top1", "top5", "nll", "agreement", "kl")


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
def _batches(calibration: Any, batch_size: int) -> Iterator[torch.Tensor]:
    if isinstance(calibration, torch.Tensor):
        if calibration.dim() == 3:
            calibration = calibration.unsqueeze(0)
        for i in range(0, calibration.shape[0], batch_size):
            yield calibration[i : i + batch_size]
        return
    for item in calibration:
        x = item[0] if isinstance(item, (tuple, list)) else item
        if not isinstance(x, torch.Tensor):
            raise TypeError(
                f"calibration batches must be image tensors or (images, ...) tuples, got {type(x).__name__}"
            )
        yield x


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
    from .hooks import capture
    from .runtime import model_device

    _validate(kind, "mean")
    sel = _selected(model, kind, stages)
    taps = {f"{n}.{_TAPS[kind]}": n for n in sel}
    device = model_device(model)

    def reduce(t: torch.Tensor) -> torch.Tensor:
        s = t.detach().double().sum(dim=(0, 2, 3))
        return torch.cat([s, s.new_full((1,), float(t.shape[0] * t.shape[2] * t.shape[3]))])

    n_batches = 0
    with eval_mode(model), torch.no_grad(), capture(model, list(taps), reduce=reduce) as store:
        for x in _batches(calibration, batch_size):
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

    with _hooks(_hook_plan(sel, kind, means)):
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
def _hooks(plan: Sequence[Tuple[nn.Module, Callable]]) -> Iterator[None]:
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


# =========================================================================== evaluation
@dataclass(frozen=True)
class AblationEvaluation:
    """Sums over the evaluated images, one row per spec (columns ``_STAT_COLUMNS``)."""

    specs: Tuple[AblationSpec, ...]
    stats: torch.Tensor  # float64 [n_specs, len(_STAT_COLUMNS)], on CPU

    def metrics(self) -> Dict[str, Dict[str, Optional[float]]]:
        """``{spec name: {n_images, n_labeled, top1, top5, nll, agreement, kl, top1_drop}}``."""
        out: Dict[str, Dict[str, Optional[float]]] = {}
        col = {c: i for i, c in enumerate(_STAT_COLUMNS)}
        for spec, row in zip(self.specs, self.stats.tolist()):
            n, nl = row[col["n"]], row[col["n_labeled"]]
            out[spec.name] = {
                "kind": spec.kind,
                "stages": spec.stages_label if spec.kind != "none" else "-",
                "mode": spec.mode if spec.kind != "none" else "-",
                "n_images": int(n),
                "n_labeled": int(nl),
                "top1": 100.0 * row[col["correct1"]] / nl if nl else None,
                "top5": 100.0 * row[col["correct5"]] / nl if nl else None,
                "nll": row[col["nll"]] / nl if nl else None,
                "agreement": 100.0 * row[col["agree"]] / n if n else None,
                "kl": row[col["kl"]] / n if n else None,
            }
        full = out.get("none")
        for m in out.values():
            ok = full is not None and full["top1"] is not None and m["top1"] is not None
            m["top1_drop"] = full["top1"] - m["top1"] if ok else None
        return out


def _batch_stats(
    logp: torch.Tensor, labels: torch.Tensor, ref_top1: torch.Tensor, ref_logp: torch.Tensor
) -> torch.Tensor:
    """One row of ``_STAT_COLUMNS`` for a batch, computed on the device without host syncs."""
    valid = labels >= 0
    y = labels.clamp(min=0)
    k = min(5, logp.shape[-1])
    top = logp.topk(k, dim=-1).indices
    hit = top == y[:, None]
    nll = -logp.gather(1, y[:, None]).squeeze(1)
    zero = logp.new_zeros(())
    kl = F.kl_div(logp, ref_logp, reduction="sum", log_target=True)
    return torch.stack(
        [
            logp.new_full((), float(logp.shape[0])),
            valid.sum().to(logp.dtype),
            (hit[:, 0] & valid).sum().to(logp.dtype),
            (hit.any(dim=-1) & valid).sum().to(logp.dtype),
            torch.where(valid, nll, zero).sum(),
            (top[:, 0] == ref_top1).sum().to(logp.dtype),
            kl,
        ]
    )


def _chunk_stats(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    plans: Sequence[Sequence[Tuple[nn.Module, Callable]]],
    amp_dtype: Optional[torch.dtype],
) -> torch.Tensor:
    """Stats rows for every hook plan on one chunk (an empty plan is the full model, which is
    also the reference for agreement and KL)."""
    amp = torch.autocast(x.device.type, dtype=amp_dtype) if amp_dtype is not None else contextlib.nullcontext()

    def run(plan) -> torch.Tensor:
        with _hooks(plan), amp:
            return model(x).double().log_softmax(dim=-1)  # metrics in float64 (tiny KLs)

    ref = run([])
    ref_top1 = ref.argmax(dim=-1)
    rows = [ref if not plan else run(plan) for plan in plans]
    return torch.stack([_batch_stats(lp, y, ref_top1, ref) for lp in rows])


def _is_oom(err: BaseException) -> bool:
    if isinstance(err, torch.OutOfMemoryError):
        return True
    msg = str(err)
    return isinstance(err, RuntimeError) and ("out of memory" in msg or "can't allocate memory" in msg)


def evaluate_ablations(
    model: nn.Module,
    loader: Iterable,
    specs: Sequence[AblationSpec],
    *,
    calibration: Optional[Mapping[str, Mapping[str, torch.Tensor]]] = None,
    amp_dtype: Optional[torch.dtype] = None,
    channels_last: bool = True,
    chunk_size: Optional[int] = None,
    initial: Optional[torch.Tensor] = None,
    checkpoint: Optional[Callable[[torch.Tensor], None]] = None,
    checkpoint_every_s: float = 120.0,
    total: Optional[int] = None,
    show_progress: bool = True,
) -> AblationEvaluation:
    """Top-1/top-5/NLL of each spec, and agreement / KL(full || ablated) with the full model.

    One pass over ``loader`` (batches of ``(images, labels)``, label -1 = unlabeled): every batch
    runs through the full model and then each ablated model, and only per-spec sums stay on the
    device (no host sync in the loop; ``checkpoint(stats)`` is called every
    ``checkpoint_every_s`` seconds, on an interruption, and at the end).  On out-of-memory the
    batch is processed in halves, and that chunk size is kept.  ``calibration``: ``{kind:
    {block: mean}}`` for mean-mode specs (from :func:`calibrate`).  ``initial``: sums to continue
    from (resume).  ``amp_dtype``: e.g. ``torch.bfloat16`` for autocast.
    """
    from .runtime import model_device, progress

    specs = tuple(specs)
    device = model_device(model)
    calibration = dict(calibration or {})
    for s in specs:
        if s.mode == "mean" and s.kind not in calibration:
            raise ValueError(f"{s.name} needs calibration means for {s.kind!r} (see calibrate())")
    plans = [s.plan(model, calibration.get(s.kind)) for s in specs]
    acc = torch.zeros(len(specs), len(_STAT_COLUMNS), dtype=torch.float64, device=device)
    if initial is not None:
        acc += initial.to(device=device, dtype=torch.float64)
    chunk = chunk_size
    last_save = time.monotonic()
    n_batches = len(loader) if hasattr(loader, "__len__") else None  # type: ignore[arg-type]
    batches = progress(loader, enabled=show_progress, total=n_batches, unit="batch",
                       desc=f"{len(specs)} configs x {total if total is not None else '?'} images")
    try:
        with eval_mode(model), torch.inference_mode():
            for batch in batches:
                x, y = batch[0], batch[1]
                if not isinstance(y, torch.Tensor):
                    y = torch.as_tensor(y)
                x = x.to(device, non_blocking=True)
                if channels_last and x.dim() == 4:
                    x = x.contiguous(memory_format=torch.channels_last)
                y = y.to(device, non_blocking=True).long()
                b = x.shape[0]
                step = b if chunk is None else min(chunk, b)
                i = 0
                while i < b:
                    oom = False
                    try:
                        stats = _chunk_stats(model, x[i : i + step], y[i : i + step], plans, amp_dtype)
                    except (RuntimeError, torch.OutOfMemoryError) as err:
                        if not _is_oom(err) or step == 1:
                            raise
                        oom = True
                    if oom:  # outside the except block, so the failed frames are released
                        step = max(1, step // 2)
                        chunk = step
                        if device.type == "cuda":
                            torch.cuda.empty_cache()
                        log.warning("out of memory: continuing with %d images per forward pass", step)
                        continue
                    acc.add_(stats)
                    i += step
                if checkpoint is not None and time.monotonic() - last_save > checkpoint_every_s:
                    checkpoint(acc.cpu())
                    last_save = time.monotonic()
    except BaseException:
        if checkpoint is not None:
            checkpoint(acc.cpu())
        raise
    finally:
        close = getattr(batches, "close", None)
        if close is not None:
            close()
    result = AblationEvaluation(specs, acc.cpu())
    if checkpoint is not None:
        checkpoint(result.stats)
    return result


# =========================================================================== tables
_COLUMNS = ("ablation", "kind", "stages", "mode", "n_images", "n_labeled", "top1", "top1_drop", "top5", "nll",
            "agreement", "kl")


def _fmt(v: Any, digits: int = 4) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.{digits}f}"
    return str(v)


def metrics_csv(metrics: Mapping[str, Mapping[str, Any]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(_COLUMNS)
    for name, m in metrics.items():
        w.writerow([name] + [_fmt(m.get(c), 6) for c in _COLUMNS[1:]])
    return buf.getvalue()


def metrics_markdown(metrics: Mapping[str, Mapping[str, Any]]) -> str:
    head = ["ablation", "stages", "mode", "top-1 %", "Δ top-1", "top-5 %", "NLL", "agree %", "KL(full‖abl.)"]
    keys = ["kind", "stages", "mode", "top1", "top1_drop", "top5", "nll", "agreement", "kl"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m in metrics.values():
        cells = [_fmt(m.get(k), 2 if k in ("top1", "top1_drop", "top5", "agreement") else 4) for k in keys]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# =========================================================================== runner
def build_parser() -> argparse.ArgumentParser:
    from .cli import add_common_args, add_model_args

    p = argparse.ArgumentParser(
        prog="python -m moga_analysis.ablation",
        description="Gate-ablation sweep of a MogaNet over an image folder: accuracy, NLL, agreement, KL.",
    )
    add_model_args(p)
    g = p.add_argument_group("data")
    g.add_argument("--data", required=True, help="ImageNet synset folders, a flat folder (+ --labels) or any images")
    g.add_argument("--labels", default=None, help="labels file for a flat validation folder")
    g.add_argument("--num-images", type=int, default=None, help="evaluate a seeded random subset of this size")
    g.add_argument("--img-size", type=int, default=None, help="input size (default: the model's pretrained cfg)")
    g.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: min(8, CPUs))")
    a = p.add_argument_group("ablations")
    a.add_argument("--ablations", default=",".join(KINDS), help=f"comma list of {', '.join(KINDS)}")
    a.add_argument("--stages", default="all", help="comma list of stage choices: all, 1..4, or 2+3")
    a.add_argument("--modes", default="zero", help="zero and/or mean (mean: gate/context only)")
    a.add_argument("--calibration-images", type=int, default=256,
                   help="images (the first of the evaluated subset) for mean-mode channel means")
    a.add_argument("--amp", choices=["none", "bf16", "fp16"], default="none", help="autocast dtype")
    a.add_argument("--no-channels-last", action="store_true")
    a.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    a.add_argument("--checkpoint-every", type=float, default=120.0, help="seconds between state saves")
    a.add_argument("--no-figures", action="store_true")
    x = p.add_argument_group("optional analyses of each ablated model (through the other modules)")
    x.add_argument("--interactions", action="store_true", help="J^(m) curves (moga_analysis.interactions)")
    x.add_argument("--erf", action="store_true", help="ERF area ratios (moga_analysis.erf)")
    x.add_argument("--gradcam", action="store_true", help="Grad-CAM deletion faithfulness (moga_analysis.gradcam)")
    x.add_argument("--analysis-images", type=int, default=4, help="images for the optional analyses")
    x.add_argument("--interaction-grid", type=int, default=8, help="players: grid x grid cells")
    x.add_argument("--interaction-pairs", type=int, default=8)
    x.add_argument("--interaction-contexts", type=int, default=16, help="sampled contexts per order and pair")
    x.add_argument("--faithfulness-steps", type=int, default=20, help="deletion/insertion steps")
    add_common_args(p)
    return p


def _fingerprint(args: argparse.Namespace, n_images: int) -> Dict[str, Any]:
    return {
        "model": args.model,
        "checkpoint": args.checkpoint,
        "random_weights": bool(args.random_weights),
        "data": str(Path(args.data).resolve()),
        "labels": args.labels,
        "n_images": n_images,
        "img_size": args.img_size,
        "seed": args.seed,
        "amp": args.amp,
        "calibration_images": args.calibration_images,
    }


def _load_state(path: Path, fingerprint: Mapping[str, Any]) -> Dict[str, torch.Tensor]:
    """Rows saved by an earlier run with the same settings: ``{spec name: stats row}``."""
    from .results import load_tensors

    if not path.exists():
        return {}
    tensors, meta = load_tensors(path)
    if meta.get("fingerprint") != dict(fingerprint):
        diff = {k: (meta.get("fingerprint", {}).get(k), v) for k, v in fingerprint.items()
                if meta.get("fingerprint", {}).get(k) != v}
        raise ValueError(f"--resume: {path} was written with other settings {diff}; use another --out or drop --resume")
    return {name: tensors["stats"][i] for i, name in enumerate(meta["specs"])}


def _save_state(path: Path, names: Sequence[str], stats: torch.Tensor, fingerprint: Mapping[str, Any]) -> None:
    from .results import save_tensors

    save_tensors(path, {"stats": stats}, {"specs": list(names), "columns": list(_STAT_COLUMNS),
                                          "fingerprint": dict(fingerprint)})


def main(argv: Optional[Sequence[str]] = None) -> int:
    from torch.utils.data import DataLoader, Subset

    from .cli import setup_from_args
    from .data import LabeledImageFolder, load_model, transform_for
    from .results import atomic_write_text
    from .runtime import environment_info, resolve_device, resolve_dtype

    args = build_parser().parse_args(argv)
    setup_from_args(args)
    specs = parse_specs(args.ablations, args.stages, args.modes)
    out = Path(args.out or "runs/ablation")
    out.mkdir(parents=True, exist_ok=True)
    device = resolve_device(args.device)
    amp_dtype = None if args.amp == "none" else resolve_dtype(args.amp)

    model = load_model(args.model, checkpoint=args.checkpoint, device=device,
                       pretrained=False if args.random_weights else None)
    try:
        moga_blocks(model)  # a clear error before any data is read
    except TypeError as err:
        raise ValueError(str(err)) from None
    if not args.no_channels_last:
        model = model.to(memory_format=torch.channels_last)
    dataset = LabeledImageFolder(args.data, transform_for(model, size=args.img_size), labels_file=args.labels)
    n_total = len(dataset)
    if args.num_images is not None and args.num_images < n_total:
        g = torch.Generator().manual_seed(args.seed)
        indices = torch.randperm(n_total, generator=g)[: args.num_images].sort().values.tolist()
    else:
        indices = list(range(n_total))
    n = len(indices)
    fingerprint = _fingerprint(args, n)
    state_path = out / "ablation_state.safetensors"
    saved = _load_state(state_path, fingerprint) if args.resume else {}

    # which specs still need images, and from where the pass starts
    col_n = _STAT_COLUMNS.index("n")
    done = {s.name: saved[s.name] for s in specs if s.name in saved and int(saved[s.name][col_n]) >= n}
    pending = [s for s in specs if s.name not in done]
    starts = {int(saved[s.name][col_n]) if s.name in saved else 0 for s in pending}
    start = starts.pop() if len(starts) == 1 else 0
    if len(starts) > 0:
        log.warning("--resume: the unfinished ablations stopped at different images; they restart from image 0")
    initial = torch.stack([saved[s.name] for s in pending]) if (pending and start > 0) else None
    if done:
        log.info("--resume: %d ablations already complete, %d to run from image %d", len(done), len(pending), start)

    workers = args.workers if args.workers is not None else min(8, torch.multiprocessing.cpu_count())
    bs = args.batch_size or (64 if device.type == "cuda" else 16)

    def loader_for(idx: List[int]) -> DataLoader:
        return DataLoader(Subset(dataset, idx), batch_size=bs, shuffle=False, num_workers=workers,
                          pin_memory=device.type == "cuda", persistent_workers=False)

    calibration: Dict[str, Dict[str, torch.Tensor]] = {}
    t0 = time.perf_counter()
    analyses = args.interactions or args.erf or args.gradcam
    mean_kinds = sorted({s.kind for s in (specs if analyses else pending) if s.mode == "mean"})
    if mean_kinds:
        cal_loader = loader_for(indices[: max(1, min(args.calibration_images, n))])
        cal_batches = [b[0] for b in cal_loader]
        for kind in mean_kinds:
            calibration[kind] = calibrate(model, kind, cal_batches)
        del cal_batches

    all_names = [s.name for s in specs]

    def write_state(pending_stats: torch.Tensor) -> None:
        rows = dict(done)
        rows.update({s.name: pending_stats[i] for i, s in enumerate(pending)})
        names = [nm for nm in all_names if nm in rows]
        _save_state(state_path, names, torch.stack([rows[nm] for nm in names]), fingerprint)

    t1 = time.perf_counter()
    if pending:
        result = evaluate_ablations(
            model, loader_for(indices[start:]), pending, calibration=calibration, amp_dtype=amp_dtype,
            channels_last=not args.no_channels_last, initial=initial, checkpoint=write_state,
            checkpoint_every_s=args.checkpoint_every, total=n - start, show_progress=not args.no_progress,
        )
        rows = dict(done)
        rows.update({s.name: result.stats[i] for i, s in enumerate(pending)})
    else:
        rows = dict(done)
    wall = time.perf_counter() - t1
    evaluation = AblationEvaluation(tuple(specs), torch.stack([rows[s.name] for s in specs]))
    metrics = evaluation.metrics()

    processed = n - start if pending else 0
    meta = {
        "tool": "moga_analysis.ablation",
        "model": args.model,
        "weights": getattr(model, "weights_source", None),
        "data": str(Path(args.data).resolve()),
        "labels_file": args.labels,
        "n_images": n,
        "n_dataset": n_total,
        "subset_seed": args.seed if n < n_total else None,
        "img_size": args.img_size,
        "amp": args.amp,
        "channels_last": not args.no_channels_last,
        "calibration_images": min(args.calibration_images, n) if any(s.mode == "mean" for s in specs) else 0,
        "batch_size": bs,
        "specs": [{"name": s.name, "kind": s.kind, "stages": s.stages_label, "mode": s.mode} for s in specs],
        "timing": {
            "calibration_s": t1 - t0,
            "sweep_s": wall,
            "images_processed": processed,
            "forward_passes_per_image": len(pending) + (0 if any(s.kind == "none" for s in pending) else 1),
            "images_per_s": processed / wall if processed and wall > 0 else None,
            "resumed_from_image": start if args.resume else None,
        },
        "environment": environment_info(device),
        "argv": list(argv) if argv is not None else None,
    }
    extras = _optional_analyses(args, model, dataset, indices, specs, calibration, out)
    if extras:
        meta["analyses"] = extras
    atomic_write_text(out / "ablation_results.json", json.dumps({"metadata": meta, "metrics": metrics}, indent=2))
    atomic_write_text(out / "ablation_results.csv", metrics_csv(metrics))
    atomic_write_text(out / "ablation_results.md", metrics_markdown(metrics))
    if not args.no_figures:
        try:
            from .plotting.ablation import plot_accuracy_drop
            from .plotting.style import paper_style, save_figure

            with paper_style():
                fig, _ = plot_accuracy_drop(metrics)
                save_figure(fig, out / "ablation_accuracy_drop")
                import matplotlib.pyplot as plt

                plt.close(fig)
        except ValueError as err:  # e.g. no labels: nothing to plot
            log.warning("no accuracy figure: %s", err)
    log.info("wrote %s", out / "ablation_results.md")
    if not args.quiet:
        print(metrics_markdown(metrics), end="")
    return 0


def _optional_analyses(args, model, dataset, indices, specs, calibration, out) -> Dict[str, Any]:
    """``--interactions/--erf/--gradcam``: each ablated model through the other modules.

    Run on the first ``--analysis-images`` images of the evaluated subset; the explained class is
    the full model's prediction for every spec, so the numbers compare like with like.
    """
    wanted = [k for k in ("interactions", "erf", "gradcam") if getattr(args, k)]
    if not wanted:
        return {}
    import importlib

    from .runtime import model_device

    for name in wanted:
        try:
            importlib.import_module(f"moga_analysis.{name}")
        except ImportError as err:
            raise RuntimeError(f"--{name} needs moga_analysis.{name}, which is not available: {err}") from err
    device = model_device(model)
    images = torch.stack([dataset[i][0] for i in indices[: args.analysis_images]]).to(device)
    with eval_mode(model), torch.no_grad():
        targets = model(images).argmax(-1)
    results: Dict[str, Any] = {k: {} for k in wanted}
    for spec in specs:
        log.info("analyses of %s", spec.name)
        with spec.context(model, calibration.get(spec.kind)):
            if "erf" in wanted:
                from .erf import effective_receptive_field

                erf = effective_receptive_field(model, images, batch_size=args.batch_size, warn_random=False)
                results["erf"][spec.name] = {str(t): v for t, v in erf.area_ratio().items()}
            if "gradcam" in wanted:
                from .faithfulness import faithfulness_metrics
                from .gradcam import grad_cam

                cam = grad_cam(model, images, target=targets)
                fm = faithfulness_metrics(model, images, cam.maps, targets, steps=args.faithfulness_steps)
                results["gradcam"][spec.name] = fm.summary()
            if "interactions" in wanted:
                results["interactions"][spec.name] = _interaction_curve(model, images, targets, args)
    if "interactions" in wanted:
        try:
            from .plotting.ablation import plot_interaction_curves
            from .plotting.style import paper_style, save_figure

            with paper_style():
                fig, _ = plot_interaction_curves(results["interactions"])
                save_figure(fig, out / "ablation_interactions")
                import matplotlib.pyplot as plt

                plt.close(fig)
        except ValueError as err:
            log.warning("no interaction figure: %s", err)
    return results


def _interaction_curve(model, images, targets, args) -> Dict[str, Any]:
    """J^(m) of the (ablated) model over ``images`` (sampled estimator, shared contexts)."""
    from .games import ImageMaskingGame
    from .interactions import estimate_interactions, orders_from_ratios, reference_pairs, relative_strength

    grid = args.interaction_grid
    n = grid * grid
    orders = orders_from_ratios((0.0, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0), n)
    pairs = reference_pairs(grid, args.interaction_pairs, generator=torch.Generator().manual_seed(args.seed))
    per_image = []
    for img, t in zip(images, targets.tolist()):
        game = ImageMaskingGame(model, img, target=int(t), grid=grid, batch_size=args.batch_size or 64)
        per_image.append(estimate_interactions(game, n, pairs, orders, args.interaction_contexts, seed=args.seed))
    J = relative_strength(per_image)
    return {"orders": list(orders), "n_players": n, "ratios": [m / (n - 2) for m in orders], "J": J.tolist()}


if __name__ == "__main__":  # pragma: no cover
    from .cli import run_main

    run_main(main)
