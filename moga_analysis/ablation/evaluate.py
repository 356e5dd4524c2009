"""The ablation sweep: every ablation of a MogaNet over a data set in one pass, metrics on the device.

Top-1/top-5/NLL per ablation and agreement / KL(full || ablated) with the full model, from per-spec
sums kept on the device (no host synchronisation in the batch loop), with an out-of-memory back-off.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..results import Column
from ..runtime import eval_mode
from .interventions import AblationSpec, hooks

__all__ = ["METRICS", "STAT_COLUMNS", "AblationEvaluation", "evaluate_ablations", "METRIC_COLUMNS", "metric_rows"]

log = logging.getLogger(__name__)

#: per-config sums accumulated on the device (one row per ablation)
STAT_COLUMNS = ("n", "n_labeled", "correct1", "correct5", "nll", "agree", "kl")
#: metrics reported per ablation
METRICS = ("top1", "top5", "nll", "agreement", "kl")


@dataclass(frozen=True)
class AblationEvaluation:
    """Sums over the evaluated images, one row per spec (columns ``STAT_COLUMNS``)."""

    specs: Tuple[AblationSpec, ...]
    stats: torch.Tensor  # float64 [n_specs, len(STAT_COLUMNS)], on CPU

    def metrics(self) -> Dict[str, Dict[str, Optional[float]]]:
        """``{spec name: {n_images, n_labeled, top1, top5, nll, agreement, kl, top1_drop}}``."""
        out: Dict[str, Dict[str, Optional[float]]] = {}
        col = {c: i for i, c in enumerate(STAT_COLUMNS)}
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
    """One row of ``STAT_COLUMNS`` for a batch, computed on the device without host syncs."""
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
        with hooks(plan), amp:
            return model(x).double().log_softmax(dim=-1)  # metrics in float64 (tiny KLs)

    ref = run([])
    # the same tie-breaking as _batch_stats' top-k (low-precision logits often tie at the top)
    ref_top1 = ref.topk(min(5, ref.shape[-1]), dim=-1).indices[:, 0]
    rows = [ref if not plan else run(plan) for plan in plans]
    return torch.stack([_batch_stats(lp, y, ref_top1, ref) for lp in rows])


def _is_oom(err: BaseException) -> bool:
    if isinstance(err, torch.OutOfMemoryError):
        return True
    msg = str(err)
    return isinstance(err, RuntimeError) and ("out of memory" in msg or "can't allocate memory" in msg)


def _to_device(batch, device: torch.device, channels_last: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    x, y = batch[0], batch[1]
    if not isinstance(y, torch.Tensor):
        y = torch.as_tensor(y)
    x = x.to(device, non_blocking=True)
    if channels_last and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, y.to(device, non_blocking=True).long()


def _accumulate(model, x, y, plans, amp_dtype, acc: torch.Tensor, chunk: Optional[int]) -> Optional[int]:
    """Add one batch's stats rows to ``acc`` in chunks of ``chunk`` images (None: the whole batch);
    on out-of-memory the chunk is halved and retried.  Returns the chunk size to keep."""
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
            if x.device.type == "cuda":
                torch.cuda.empty_cache()
            log.warning("out of memory: continuing with %d images per forward pass", step)
            continue
        acc.add_(stats)
        i += step
    return chunk


def _plans(model: nn.Module, specs: Sequence[AblationSpec], calibration: Mapping[str, Any]) -> list:
    for s in specs:
        if s.mode == "mean" and s.kind not in calibration:
            raise ValueError(f"{s.name} needs calibration means for {s.kind!r} (see calibrate())")
    return [s.plan(model, calibration.get(s.kind)) for s in specs]


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
    from ..runtime import model_device, progress

    specs = tuple(specs)
    device = model_device(model)
    plans = _plans(model, specs, dict(calibration or {}))
    acc = torch.zeros(len(specs), len(STAT_COLUMNS), dtype=torch.float64, device=device)
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
                x, y = _to_device(batch, device, channels_last)
                chunk = _accumulate(model, x, y, plans, amp_dtype, acc, chunk)
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




#: the ablation table: CSV keys (all), Markdown headers and decimals (see :func:`metric_rows`)
METRIC_COLUMNS = (
    Column("ablation"),
    Column("kind", "ablation"),
    Column("stages", "stages"),
    Column("mode", "mode"),
    Column("n_images"),
    Column("n_labeled"),
    Column("top1", "top-1 %", 2),
    Column("top1_drop", "Δ top-1", 2),
    Column("top5", "top-5 %", 2),
    Column("nll", "NLL", 4),
    Column("agreement", "agree %", 2),
    Column("kl", "KL(full‖abl.)", 4),
)
#: the columns shown in the Markdown table
MARKDOWN_COLUMNS = tuple(c for c in METRIC_COLUMNS if c.key not in ("ablation", "n_images", "n_labeled"))


def metric_rows(metrics: Mapping[str, Mapping[str, Any]]) -> list:
    """Table rows ``{"ablation": name, **metrics}`` in the order of ``metrics``."""
    return [{"ablation": name, **m} for name, m in metrics.items()]
