"""experiments/benchmarks/timing.py: the one timing helper of the benchmarks and the device check."""

import importlib.util
import sys
from pathlib import Path

import pytest

TIMING = Path(__file__).resolve().parents[1] / "experiments" / "benchmarks" / "timing.py"


@pytest.fixture(scope="module")
def timing():
    spec = importlib.util.spec_from_file_location("bench_timing", TIMING)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["bench_timing"] = mod  # dataclasses look their module up there
    try:
        spec.loader.exec_module(mod)
        yield mod
    finally:
        sys.modules.pop("bench_timing", None)


def test_interleaved_runs_each_method_once_per_round_in_turn(timing):
    calls = []
    t = timing.interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, 3, warmup=1)
    assert calls == ["a", "b"] * 4  # one warm-up round, then three timed rounds
    assert t.rounds == 3 and set(t.peak_mb.values()) == {None}
    t.times = {"a": [1.0, 2.0, 4.0], "b": [2.0, 2.0, 2.0]}
    assert t.median("a") == 2.0 and t.min("a") == 1.0 and t.medians() == {"a": 2.0, "b": 2.0}
    assert t.ratio("a", "b") == 1.0  # the median of the per-round ratios 0.5, 1, 2


def test_a_deadline_stops_after_two_rounds(timing):
    import time

    t = timing.interleaved({"a": lambda: time.sleep(0.01)}, 100, warmup=0, deadline=time.perf_counter())
    assert t.rounds == 2


def test_tables(timing):
    md = timing.markdown_table(["name", "s"], [["x", 1.23456], ["y", 1234.5]], "lr")
    assert md.splitlines() == ["| name | s |", "|---|---:|", "| x | 1.235 |", "| y | 1,234 |"]
    assert timing.fmt(None) == "-" and timing.fmt(float("nan")) == "-"
    rt = timing.ratio_table({"fast": 1.0, "slow": 2.0})
    assert "| slow | 2.000 | 2.00 |" in rt and "/ fast" in rt


def test_run_fresh_returns_the_last_json_line(timing):
    code = "import json, sys; print('noise'); print(json.dumps({'got': json.loads(sys.argv[1])}))"
    assert timing.run_fresh(code, [1, 2]) == {"got": [1, 2]}
    with pytest.raises(RuntimeError, match="benchmark child failed"):
        timing.run_fresh("raise SystemExit(3)", None)
