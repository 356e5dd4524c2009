"""The fast path by default: CLIs restart with the allocator settings, notebooks get a kernel
that starts with them, and the environment of every result says which allocator ran."""

import json
import os
import subprocess
import sys

from moga_analysis.cli import MALLOC_ENV


def _clean_env():
    env = {k: v for k, v in os.environ.items() if k not in MALLOC_ENV and k != "MOGA_ANALYSIS_REEXEC"}
    env["OMP_NUM_THREADS"] = "1"
    return env


def _allocator_of_run(tmp_path, *extra, env=None):
    out = tmp_path / "erf"
    cmd = [sys.executable, "-m", "moga_analysis.erf", "--model", "moganet_xtiny", "--random-weights",
           "--image-size", "32", "--num-images", "1", "--no-figures", "--no-progress", "-q", "--out", str(out), *extra]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env or _clean_env())
    assert p.returncode == 0, p.stderr[-2000:]
    return json.loads((out / "run.json").read_text())["environment"]["allocator"]


def test_cli_restarts_with_the_allocator_settings(tmp_path):
    assert _allocator_of_run(tmp_path) == "environment"


def test_cli_respects_no_tune_malloc(tmp_path):
    assert _allocator_of_run(tmp_path, "--no-tune-malloc") == "default"


def test_kernel_spec_sets_the_allocator_before_python_starts(tmp_path):
    from moga_analysis.kernel import install_kernel

    folder = install_kernel("moga-test", prefix=tmp_path)
    spec = json.loads((folder / "kernel.json").read_text())
    assert spec["env"] == MALLOC_ENV and spec["argv"][0] == sys.executable
    # the spec's command, with its environment, starts a Python whose allocator reads the settings
    env = dict(_clean_env(), **spec["env"])
    code = "from moga_analysis.runtime import allocator_state; print(allocator_state())"
    p = subprocess.run([spec["argv"][0], "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert p.stdout.strip() == "environment", p.stderr
