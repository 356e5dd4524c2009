"""Shared fixtures: golden reference data from the official MogaNet code (../shared/reference)."""

import os
from pathlib import Path

import pytest
import torch

import moga_analysis  # noqa: F401  (registers the models)

REPO = Path(__file__).resolve().parents[1]


def pytest_configure(config):
    # pytest-xdist runs one worker per core: two torch threads per worker would oversubscribe the
    # cores, and OpenMP's spinning then slows small kernels down by orders of magnitude
    if os.environ.get("PYTEST_XDIST_WORKER"):
        torch.set_num_threads(1)
        os.environ["OMP_NUM_THREADS"] = "1"  # for subprocesses (notebook kernels, CLI runs)


def _reference_dir():
    candidates = [
        os.environ.get("MOGA_REFERENCE_DIR"),
        REPO.parent / "shared" / "reference",
        REPO / "shared" / "reference",
    ]
    for c in candidates:
        if c and (Path(c) / "golden_io.safetensors").exists():
            return Path(c)
    return None


@pytest.fixture(scope="session")
def reference_dir():
    d = _reference_dir()
    if d is None:
        if os.environ.get("CI"):
            pytest.fail("golden reference data not found (expected ../shared/reference beside the repository)")
        pytest.skip("golden reference data not found; set MOGA_REFERENCE_DIR")
    return d


@pytest.fixture(autouse=True)
def _deterministic_threads():
    torch.manual_seed(0)
    yield
