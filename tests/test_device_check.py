"""experiments/device_check.py: the quick run on CPU writes the whole report through the benchmarks'
functions; failures make it non-zero."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "experiments" / "device_check.py"


@pytest.fixture(scope="module")
def device_check():
    spec = importlib.util.spec_from_file_location("device_check", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["device_check"] = mod  # dataclasses look their module up there
    try:
        spec.loader.exec_module(mod)
        yield mod
    finally:
        sys.modules.pop("device_check", None)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("device_check")
    # one thread, and no CUDA even where there is one: the gpu tests must report "skipped"
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--device", "cpu", "--out", str(out)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    return proc, out


@pytest.mark.slow  # 45 s: make test-all
def test_quick_check_writes_the_whole_report(quick_run, device_check):
    proc, out = quick_run
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    report = json.loads((out / "report.json").read_text())
    md = (out / "report.md").read_text()
    assert report["mode"] == "quick" and report["exit_status"] == 0 and report["problems"] == []
    assert [r["key"] for r in report["rows"]] == device_check.ROW_KEYS
    for row in report["rows"]:
        assert row["benchmark"] in md
        if row["status"] == "skipped":  # torch.compile is timed on CUDA only
            assert row["key"] in device_check.OPTIONAL_ROWS, row
            continue
        assert row["status"] in ("measured", "extrapolated"), row
        assert row["ratio"] is not None and math.isfinite(row["ratio"]) and row["ratio"] > 0, row
        assert row["met"] is None  # quick mode judges no goal
    assert {r["key"] for r in report["rows"]} >= {"J_reference_fp32", "J_efficient_fp32", "J_precise_fp32", "compile"}
    assert all(s["status"] == "ok" for s in report["sections"].values()), report["sections"]
    assert list(report["sections"]) == list(device_check.SECTIONS)
    # the gpu tests ran as a subprocess and were all skipped for want of CUDA
    gt = report["gpu_tests"]
    assert (out / "gpu_tests.xml").exists() and (out / "gpu_tests.log").exists()
    assert gt["returncode"] == 0 and gt["total"] > 10
    assert gt["skipped"] == gt["total"] and gt["failed"] == gt["error"] == 0
    assert "no CUDA: every test skipped" in md
    for key in ("torch", "timm", "device", "python"):
        assert key in report["environment"]
    assert "[" in proc.stdout and "interactions" in proc.stdout  # timestamped progress lines


def test_a_failing_section_makes_the_exit_status_nonzero(tmp_path, device_check):
    argv = ["--quick", "--device", "cpu", "--out", str(tmp_path), "--only", "environment,erf",
            "--inject-failure", "erf"]
    assert device_check.main(argv) == 1
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["sections"]["erf"]["status"] == "failed"
    assert "injected failure" in report["sections"]["erf"]["error"]
    assert report["sections"]["environment"]["status"] == "ok"
    assert report["sections"]["masked_eval"]["status"] == "not run"
    assert report["exit_status"] == 1 and any("erf" in p for p in report["problems"])
    assert "injected failure" in (tmp_path / "report.md").read_text()


def test_a_failing_gpu_test_makes_the_exit_status_nonzero(tmp_path, device_check):
    tests = tmp_path / "test_fails.py"
    tests.write_text(
        "import pytest\n\n"
        "@pytest.mark.gpu\ndef test_fails():\n    assert 1 == 2\n\n"
        "@pytest.mark.gpu\ndef test_passes():\n    pass\n\n"
        "@pytest.mark.gpu\n@pytest.mark.skip(reason='why not')\ndef test_skipped():\n    pass\n"
    )
    out = tmp_path / "out"
    assert device_check.main(["--quick", "--device", "cpu", "--out", str(out), "--only", "gpu_tests",
                              "--tests", str(tests)]) == 1
    report = json.loads((out / "report.json").read_text())
    gt = report["gpu_tests"]
    assert (gt["total"], gt["passed"], gt["failed"], gt["skipped"]) == (3, 1, 1, 1)
    assert gt["returncode"] == 1 and report["sections"]["gpu_tests"]["status"] == "failed"
    outcomes = {t["name"].split("::")[-1]: t["outcome"] for t in gt["tests"]}
    assert outcomes == {"test_fails": "failed", "test_passes": "passed", "test_skipped": "skipped"}


def test_the_full_check_refuses_a_cpu(tmp_path, device_check, capsys):
    assert device_check.main(["--device", "cpu", "--out", str(tmp_path)]) == 2
    assert "needs a CUDA device" in capsys.readouterr().err
