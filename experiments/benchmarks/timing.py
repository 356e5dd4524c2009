"""The one timing helper of the benchmarks and of ``experiments/device_check.py``.

* :func:`interleaved`: every method once per round, in turn, for ``repeats`` rounds (load changes
  hit all methods alike), after warm-up calls; CUDA is synchronised around each call and its peak
  memory recorded.  Returns :class:`Timings` (medians, minima, per-round ratios).
* :func:`run_fresh`: one configuration in a fresh Python process (the allocator settings are per
  process); :func:`interleaved_processes` repeats a list of them in rounds.
* :func:`markdown_table`, :func:`ratio_table`: the tables the README and docs show.

Import it from a script in ``experiments/`` with ``sys.path`` holding ``experiments/benchmarks``
(each benchmark does this for itself, so ``python experiments/benchmarks/bench_x.py`` works).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

ROOT = Path(__file__).resolve().parents[2]


def is_cuda(device: Any) -> bool:
    return device is not None and str(getattr(device, "type", device)).split(":")[0] == "cuda"


def sync(device: Any = None) -> None:
    """``torch.cuda.synchronize`` on a CUDA device; nothing elsewhere."""
    if is_cuda(device):
        import torch

        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: Any = None) -> float:
    """Seconds of one call of ``fn``, synchronised on CUDA."""
    sync(device)
    t = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t


@dataclass
class Timings:
    """Seconds per call of each method, one entry per round, and peak CUDA memory (MB) per method."""

    times: Dict[str, List[float]]
    peak_mb: Dict[str, Optional[float]] = field(default_factory=dict)

    @property
    def rounds(self) -> int:
        return min((len(v) for v in self.times.values()), default=0)

    def median(self, name: str) -> float:
        return statistics.median(self.times[name])

    def min(self, name: str) -> float:
        return min(self.times[name])

    def medians(self) -> Dict[str, float]:
        return {k: statistics.median(v) for k, v in self.times.items()}

    def ratio(self, a: str, b: str) -> float:
        """Median over rounds of ``time[a] / time[b]`` measured within the same round."""
        return statistics.median(x / y for x, y in zip(self.times[a], self.times[b]))


def interleaved(
    fns: Mapping[str, Callable[[], Any]],
    repeats: int = 5,
    *,
    warmup: int = 1,
    device: Any = None,
    deadline: Optional[float] = None,
    log: Optional[Callable[[str], None]] = None,
) -> Timings:
    """Time every method of ``fns`` once per round, in turn, for ``repeats`` rounds.

    ``deadline`` (a ``time.perf_counter()`` value): stop after the round that would make the next
    one end past it (at least two rounds).  ``log``: called with a line after each round."""
    cuda = is_cuda(device)
    if cuda:
        import torch
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    out = Timings({k: [] for k in fns}, {k: None for k in fns})
    for r in range(repeats):
        start = time.perf_counter()
        for k, fn in fns.items():
            if cuda:
                torch.cuda.synchronize(device)
                torch.cuda.reset_peak_memory_stats(device)
            out.times[k].append(timed(fn, device))
            if cuda:
                mb = torch.cuda.max_memory_allocated(device) / 2**20
                out.peak_mb[k] = max(out.peak_mb[k] or 0.0, mb)
        if log is not None:
            log(f"round {r + 1}/{repeats}: " + ", ".join(f"{k} {v[-1]:.3f} s" for k, v in out.times.items()))
        took = time.perf_counter() - start
        if deadline is not None and r >= 1 and time.perf_counter() + took > deadline:
            break
    return out


# --------------------------------------------------------------------------------- fresh processes
def run_fresh(code: str, payload: Any, env: Optional[Mapping[str, str]] = None, timeout: float = 3600) -> Any:
    """Run ``python -c code json(payload)`` in a fresh process (repository root on ``PYTHONPATH``,
    ``env`` replacing the environment); returns the JSON of its last stdout line."""
    env = dict(os.environ if env is None else env)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    p = subprocess.run([sys.executable, "-c", code, json.dumps(payload)], capture_output=True, text=True, env=env,
                       cwd=ROOT, timeout=timeout)
    if p.returncode:
        raise RuntimeError(f"benchmark child failed ({p.returncode}):\n{p.stderr[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def interleaved_processes(
    configs: Mapping[str, Callable[[], Any]], rounds: int, log: Optional[Callable[[str], None]] = None
) -> Dict[str, List[Any]]:
    """Call each configuration (a function that runs one fresh process and returns its result) once
    per round, in turn, for ``rounds`` rounds; ``{name: [result per round]}``."""
    out: Dict[str, List[Any]] = {k: [] for k in configs}
    for r in range(rounds):
        for k, fn in configs.items():
            out[k].append(fn())
            if log is not None:
                log(f"round {r + 1}/{rounds}: {k}: {out[k][-1]}")
    return out


# ------------------------------------------------------------------------------------------ tables
def fmt(v: Any, digits: int = 3) -> str:
    """A number for a table: ``-`` for None or nan, thousands separators from 1000."""
    if v is None or (isinstance(v, float) and v != v):
        return "-"
    if isinstance(v, float):
        return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.{digits}f}"
    return str(v)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]], align: Optional[str] = None) -> str:
    """A markdown table; ``align``: one letter per column, ``l`` or ``r`` (default: all left)."""
    align = align or "l" * len(header)
    sep = ["---:" if a == "r" else "---" for a in align]
    lines = ["| " + " | ".join(map(str, header)) + " |", "|" + "|".join(sep) + "|"]
    lines += ["| " + " | ".join(fmt(c) if isinstance(c, float) else str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def ratio_table(medians: Mapping[str, float], reference: Optional[str] = None, unit: str = "s",
                higher_is_better: bool = False, extra: Optional[Mapping[str, Sequence[Any]]] = None,
                extra_header: Sequence[str] = ()) -> str:
    """One row per configuration: its median and its ratio to ``reference`` (default: the best)."""
    if reference is None:
        reference = (max if higher_is_better else min)(medians, key=medians.get)
    ref = medians[reference]
    rows = [[k, *(extra or {}).get(k, ()), f"{v:.3f}", f"{v / ref:.2f}"] for k, v in medians.items()]
    return markdown_table(["configuration", *extra_header, f"median ({unit})", f"/ {reference}"], rows,
                          "l" + "l" * len(extra_header) + "rr")
