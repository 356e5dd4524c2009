"""The wheel holds what a user needs: built from the sources, installed into a fresh virtual
environment, it runs the quick demo from another directory, on the weights, images and tables it
ships."""

import json
import os
import shutil
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: files the analyses read at run time, relative to the package
ASSETS = ("assets/fmnist", "assets/images", "assets/imagenet", "assets/weights")


def _run(cmd, **kw):
    done = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kw)
    shown = f"{' '.join(map(str, cmd))} exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    assert done.returncode == 0, shown
    return done


def _build_wheel(tmp: Path) -> Path:
    """The wheel of a copy of the sources (building in the checkout would leave build/ there)."""
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "moga_analysis", src / "moga_analysis", ignore=shutil.ignore_patterns("__pycache__"))
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", tmp / "dist", src])
    (wheel,) = (tmp / "dist").glob("moga_analysis-*.whl")
    return wheel


@pytest.mark.slow  # a few minutes (a fresh venv and the quick demo): make test-all
def test_wheel_installs_and_runs_the_quick_demo_elsewhere(tmp_path):
    wheel = _build_wheel(tmp_path)
    names = zipfile.ZipFile(wheel).namelist()
    for asset in ASSETS:
        assert any(n.startswith(f"moga_analysis/{asset}/") for n in names), f"{asset} is not in the wheel"

    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    py = env_dir / "bin" / "python"
    sources = _run([sys.executable, ROOT / "tools" / "pip_sources.py"]).stdout.split()
    try:  # uv as make venv does (it reuses the installed wheels' cache); pip where uv cannot be had
        _run([py, "-m", "pip", "install", "-q", "uv"])
        _run([env_dir / "bin" / "uv", "pip", "install", "-q", "--python", py, *sources, f"{wheel}[effnet,samples]"])
    except AssertionError:
        _run([py, "-m", "pip", "install", "-q", f"{wheel}[effnet,samples]"])

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    where = _run([py, "-c", "import moga_analysis; print(moga_analysis.__file__)"], cwd=elsewhere, env=env).stdout
    assert Path(where.strip()).is_relative_to(env_dir), where  # the installed copy, not the checkout
    console_script = env_dir / "bin" / "moga-analysis"
    assert "demo" in _run([console_script, "--help"], cwd=elsewhere, env=env).stdout
    _run([py, "-m", "moga_analysis.demo", "--quick", "--out", "out", "-q"], cwd=elsewhere, env=env)
    summary = json.loads((elsewhere / "out" / "summary.json").read_text())
    steps = {k: v["status"] for k, v in summary.items() if isinstance(v, dict) and "status" in v}
    assert steps and all(s == "ok" for s in steps.values()), steps
    assert "interactions_effnet" in steps  # the ImageNet model's weights came with the effnet extra
    assert (elsewhere / "out" / "interactions_fmnist" / "interactions_J.png").stat().st_size > 1000
