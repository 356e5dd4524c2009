"""The fast path by default: CLIs restart with the allocator settings, notebooks get a kernel
that starts with them, library pipelines set it themselves (once, with two opt-outs), and the
environment of every result says which allocator ran."""

import json
import os
import subprocess
import sys

import pytest

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


@pytest.mark.slow  # a fresh process each: make test-all
def test_cli_respects_no_tune_malloc(tmp_path):
    assert _allocator_of_run(tmp_path, "--no-tune-malloc") == "default"


@pytest.mark.slow  # a fresh process each: make test-all
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


# ------------------------------------------------------------------------------ tune_malloc at run time
_RSS_AFTER_FREE = r"""
import os, sys, torch
from moga_analysis.runtime import tune_malloc
if sys.argv[1] == "tuned":
    assert tune_malloc()
page = os.sysconf("SC_PAGE_SIZE")
rss = lambda: int(open("/proc/self/statm").read().split()[1]) * page
base = rss()
x = torch.ones(64 << 20, dtype=torch.uint8)  # 64 MiB, touched
del x
print((rss() - base) >> 20)
"""


def _rss_kept_after_free(mode):
    p = subprocess.run([sys.executable, "-c", _RSS_AFTER_FREE, mode], capture_output=True, text=True,
                       env=_clean_env(), timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    return int(p.stdout.strip())


@pytest.mark.slow  # a fresh process each: make test-all
def test_runtime_tune_malloc_keeps_freed_memory():
    """glibc returns a freed 64 MiB block at once by default; after tune_malloc() it keeps it (the
    16 GiB threshold of an earlier version reached mallopt as 0 and trimmed after every free)."""
    assert _rss_kept_after_free("default") < 16
    assert _rss_kept_after_free("tuned") >= 60


def test_tune_malloc_passes_c_ints(monkeypatch):
    import ctypes

    from moga_analysis import runtime

    calls = []

    class FakeMallopt:
        argtypes = restype = None

        def __call__(self, param, value):
            calls.append((param, value))
            return 1

    class FakeLibc:
        def __init__(self, name):
            self.mallopt = fake

    fake = FakeMallopt()
    monkeypatch.setattr(runtime.ctypes, "CDLL", FakeLibc)
    monkeypatch.setattr(runtime.sys, "platform", "linux")
    monkeypatch.setattr(runtime, "_MALLOC_TUNED", False)
    for k in MALLOC_ENV:
        monkeypatch.delenv(k, raising=False)
    assert runtime.tune_malloc() and runtime.allocator_state() == "mallopt"
    assert calls == [(-4, 0), (-1, -1)] and fake.argtypes == [ctypes.c_int, ctypes.c_int]
    calls.clear()
    assert runtime.tune_malloc(1 << 20) and calls[-1] == (-1, 1 << 20)
    with pytest.raises(ValueError, match="C int"):
        runtime.tune_malloc(16 << 30)
    calls.clear()
    for k, v in MALLOC_ENV.items():
        monkeypatch.setenv(k, v)
    assert runtime.tune_malloc() and calls == []  # set at start-up: left alone


# ------------------------------------------------------------------ the library pipelines' fast path
_PIPELINES = r"""
import json, sys
from moga_analysis import runtime
from moga_analysis.data import sample_image_paths

calls = []
tune = runtime.tune_malloc
runtime.tune_malloc = lambda *a, **k: calls.append(1) or tune(*a, **k)


def cams(**kw):
    from moga_analysis.gradcam import CAMSettings, compute_cams
    compute_cams("moganet_xtiny", sample_image_paths()[:1], CAMSettings(image_size=32, metrics=False),
                 random_weights=True, device="cpu", progress=False, **kw)


def erfs(**kw):
    import warnings
    from moga_analysis.erf import ERFSettings, compute_erfs
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        compute_erfs("moganet_xtiny", sample_image_paths()[:1], ERFSettings(image_size=32), random_weights=True,
                     device="cpu", progress=False, **kw)


def ablation(**kw):
    from moga_analysis.ablation import AblationSettings, run_ablation
    run_ablation("moganet_xtiny", sample_image_paths()[:1], AblationSettings(ablations=("gate",), image_size=32,
                 calibration_images=1), random_weights=True, device="cpu", batch_size=1, workers=0, progress=False,
                 **kw)


def interactions(**kw):
    from moga_analysis.interactions import InteractionSettings, compute_interactions
    compute_interactions("moganet_xtiny", sample_image_paths()[:1], InteractionSettings.efficient(
        contexts=2, grid=2, pairs=1, image_size=32), random_weights=True, device="cpu", progress=False, **kw)


pipelines, kw = sys.argv[1].split(","), json.loads(sys.argv[2])
states = []
for name in pipelines:
    globals()[name](**kw)
    states.append(runtime.allocator_state())
print(json.dumps({"states": states, "tune_calls": len(calls)}))
"""


def _pipelines_in_a_fresh_process(pipelines, env_extra=None, **kw):
    env = {k: v for k, v in _clean_env().items() if k != "MOGA_ANALYSIS_FAST_PATH"}
    env.update(env_extra or {})
    p = subprocess.run([sys.executable, "-c", _PIPELINES, ",".join(pipelines), json.dumps(kw)],
                       capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    return json.loads(p.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(sys.platform != "linux", reason="mallopt is glibc's")
@pytest.mark.parametrize("pipeline", [pytest.param(p, marks=pytest.mark.slow) for p in ("cams", "erfs", "ablation")]
                         + ["interactions"])
def test_each_pipeline_sets_the_fast_path_once(pipeline):
    """A plain script gets the allocator settings from the pipeline itself, applied once."""
    r = _pipelines_in_a_fresh_process([pipeline, pipeline])
    assert r == {"states": ["mallopt", "mallopt"], "tune_calls": 1}


@pytest.mark.skipif(sys.platform != "linux", reason="mallopt is glibc's")
def test_pipelines_respect_the_keyword_opt_out():
    r = _pipelines_in_a_fresh_process(["cams", "erfs", "ablation", "interactions"], fast_path=False)
    assert r == {"states": ["default"] * 4, "tune_calls": 0}


@pytest.mark.skipif(sys.platform != "linux", reason="mallopt is glibc's")
@pytest.mark.slow  # a fresh process per pipeline: make test-all
def test_pipelines_respect_the_environment_opt_out():
    r = _pipelines_in_a_fresh_process(["cams", "erfs", "ablation", "interactions"], {"MOGA_ANALYSIS_FAST_PATH": "0"})
    assert r == {"states": ["default"] * 4, "tune_calls": 0}


def test_fast_path_is_idempotent_and_leaves_an_environment_start_alone(monkeypatch):
    from moga_analysis import runtime

    calls = []
    monkeypatch.setattr(runtime, "tune_malloc", lambda *a: calls.append(a) or True)
    monkeypatch.setattr(runtime, "_FAST_PATH_TRIED", False)
    monkeypatch.delenv(runtime.FAST_PATH_ENV, raising=False)
    for k, v in MALLOC_ENV.items():
        monkeypatch.setenv(k, v)
    assert runtime.fast_path() == "environment" and calls == []  # glibc read them at start-up
    for k in MALLOC_ENV:
        monkeypatch.delenv(k)
    monkeypatch.setattr(runtime, "_FAST_PATH_TRIED", False)
    monkeypatch.setattr(runtime, "_MALLOC_TUNED", False)
    for value in ("0", "false", "off"):
        monkeypatch.setenv(runtime.FAST_PATH_ENV, value)
        assert runtime.fast_path() == "default" and calls == []
    monkeypatch.setenv(runtime.FAST_PATH_ENV, "1")
    assert runtime.fast_path(enabled=False) == "default" and calls == []
    runtime.fast_path()
    runtime.fast_path()
    assert len(calls) == 1
