"""Run the gpu tests (``pytest -m gpu tests/test_gpu.py``) in a subprocess and summarise their junit file.

    python experiments/gpu_tests.py --out DIR     # DIR/gpu_tests.xml, .log, .json and DIR/gpu_record.json

The ``gpu_tests`` section of ``experiments/device_check.py``; alone, a cheap rerun of the tests on a
device.  Without CUDA every test skips.  ``gpu_record.json``: what the tests measured (``MOGA_GPU_RECORD``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

REPO = Path(__file__).resolve().parents[1]
OUTCOMES = {"failure": "failed", "error": "error", "skipped": "skipped"}


def parse_junit(path: Path) -> Dict[str, Any]:
    """Counts and one line per test from a junit XML file written by pytest."""
    tests = []
    for case in ET.parse(path).getroot().iter("testcase"):
        bad = [c for c in case if c.tag in OUTCOMES]
        bad = next((c for c in bad if c.tag != "skipped"), bad[0] if bad else None)  # a failure outranks a skip
        text = "" if bad is None else (bad.get("message") or bad.text or "").strip()
        tests.append({"name": f"{case.get('classname', '').split('.')[-1]}::{case.get('name')}",
                      "outcome": "passed" if bad is None else OUTCOMES[bad.tag], "message": text.split("\n")[0][:400],
                      "seconds": round(float(case.get("time") or 0.0), 2)})
    counts = {k: sum(t["outcome"] == k for t in tests) for k in ("passed", "failed", "error", "skipped")}
    return {"total": len(tests), **counts, "tests": tests}


def run_gpu_tests(out: Path, tests: str = "tests/test_gpu.py",
                  timeout: Optional[float] = None) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """``(summary, record)``: the junit summary with the command, return code (None: timed out) and
    seconds, and what the tests recorded; ``out`` receives gpu_tests.xml, gpu_tests.log, gpu_record.json."""
    import torch

    out.mkdir(parents=True, exist_ok=True)
    xml, record, log = (out / n for n in ("gpu_tests.xml", "gpu_record.json", "gpu_tests.log"))
    for p in (xml, record):
        p.unlink(missing_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_XDIST")}  # when run inside xdist
    env.update(MOGA_GPU_RECORD=str(record.resolve()), PYTHONUNBUFFERED="1",
               PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")])))
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-rfEs", "-p", "no:cacheprovider",
           f"--junitxml={xml.resolve()}", tests]
    start, rc = time.perf_counter(), None
    with open(log, "w") as f:
        try:
            rc = subprocess.run(cmd, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT, timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            pass
    s = parse_junit(xml) if xml.exists() else {"total": 0, "tests": []}
    tail = log.read_text(errors="replace").strip().splitlines() or [""]
    s.update(command=" ".join(["python"] + cmd[1:]).replace(str(xml.resolve()), "OUT/gpu_tests.xml"), returncode=rc,
             timed_out=rc is None, seconds=round(time.perf_counter() - start, 1), last_line=tail[-1],
             cuda_available=torch.cuda.is_available(), reference_dir=env.get("MOGA_REFERENCE_DIR", "default"))
    return s, (json.loads(record.read_text()) if record.exists() else {})


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--tests", default="tests/test_gpu.py")
    p.add_argument("--timeout", type=float, default=None, help="seconds")
    args = p.parse_args(argv)
    summary, record = run_gpu_tests(args.out, args.tests, args.timeout)
    (args.out / "gpu_tests.json").write_text(json.dumps(summary, indent=1))
    print(summary["last_line"])
    return 0 if summary["returncode"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
