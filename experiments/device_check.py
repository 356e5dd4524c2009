"""One prepared device check: the gpu tests and the GPU benchmark table, in one short call.

    python experiments/device_check.py --out runs/device_check            # one CUDA GPU, <= 8 minutes
    python experiments/device_check.py --out /tmp/device_check --quick    # tiny sizes, CPU, < 1 minute

Writes ``OUT/report.md`` and ``OUT/report.json`` (raw numbers), beside ``OUT/gpu_tests.xml`` (the
junit file of ``pytest -m gpu tests/test_gpu.py``, run as a subprocess), ``OUT/gpu_tests.log`` and
``OUT/gpu_record.json`` (what the gpu tests measured).  The report is rewritten after every section,
so a run stopped from outside still leaves one.

Sections, each timed against its budget and caught on failure (the exit status is non-zero when a
section failed, a gpu test failed, or a measurement could not be taken):

* ``environment``: GPU, driver, CUDA, cuDNN, torch, timm, package versions, git commit;
* ``gpu_tests``: ``pytest -m gpu tests/test_gpu.py`` (all skipped without CUDA);
* ``masked_eval``: ``ImageMaskingGame`` throughput against plain batched inference of as many rows
  (same model, batch size, dtype; channels_last), float32 and bfloat16 (goal >= 0.95);
* ``ablation_sweep``: ``evaluate_ablations`` over the full model + 5 ablations (6 forward passes per
  image), bf16 autocast, channels_last: forward passes/s against plain inference images/s (>= 0.9);
* ``gradcam``: ``grad_cam`` against a forward+backward with parameter gradients (<= 0.35) and
  against pytorch-grad-cam's ``GradCAM`` on the same device (>= 2.5x);
* ``erf``: ``effective_receptive_field`` against a forward + input-gradient backward (<= 1.1);
* ``interactions``: wall time of one image's reference-protocol J^(m) (50 pairs x 50 contexts x 13
  orders) with independent contexts, shared contexts and the adaptive estimator (when the library
  has it), float32 and bfloat16; a configuration that does not fit in the time left runs on a
  subset of the pairs and is extrapolated by its evaluation count (the row says so).

Every timing is bracketed by ``torch.cuda.synchronize()``; methods compared in a row run in turn
within each round (interleaved repeats) and the row's ratio is the median over rounds of the ratio
within the round.  Peak memory is ``torch.cuda.max_memory_allocated`` (reset before each run, model
included).  TF32 is off (as in the interactions CLI).  Weights are random (``pretrained=False``,
then perturbed like the golden reference's weights so that blocks are not identities): speed does
not depend on them.  Images are the photos shipped with the package; the sweep, Grad-CAM and ERF
run on them as in-memory batches.  ``--quick`` runs the same rows with MogaNet-XT at 32 px, a 4 x 4
grid and a few pairs and contexts.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime
import importlib
import importlib.metadata
import inspect
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
import traceback
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from moga_analysis.models.loading import perturb_weights_  # noqa: E402

SECTIONS = ("environment", "gpu_tests", "masked_eval", "ablation_sweep", "gradcam", "erf", "interactions")


# ------------------------------------------------------------------------------------- settings
@dataclass(frozen=True)
class Settings:
    mode: str
    model: str
    size: int  # input size of the masked evaluation, the sweep, Grad-CAM and J^(m)
    grid: int
    pairs: int
    contexts: int
    batch: int  # masked evaluation and plain inference
    sweep_batch: int
    cam_batch: int
    erf_batch: int
    erf_size: int
    measure_s: float  # target length of one timed call
    repeats: int
    budget_s: float  # the whole check
    tests_timeout_s: float
    section_s: Dict[str, float] = field(default_factory=dict)
    pilot_s: float = 10.0  # time kept for each later J^(m) configuration
    adaptive: Dict[str, Any] = field(default_factory=dict)  # extra arguments of estimate_adaptive


FULL = Settings(
    mode="full", model="moganet_small", size=224, grid=14, pairs=50, contexts=50, batch=256, sweep_batch=128,
    cam_batch=32, erf_batch=16, erf_size=224, measure_s=0.6, repeats=5, budget_s=450.0, tests_timeout_s=170.0,
    section_s={"masked_eval": 50.0, "ablation_sweep": 35.0, "gradcam": 30.0, "erf": 20.0}, pilot_s=10.0,
)
QUICK = Settings(
    mode="quick", model="moganet_xtiny", size=32, grid=2, pairs=2, contexts=2, batch=8, sweep_batch=4,
    cam_batch=2, erf_batch=2, erf_size=32, measure_s=0.02, repeats=2, budget_s=120.0, tests_timeout_s=90.0,
    section_s={"masked_eval": 8.0, "ablation_sweep": 6.0, "gradcam": 6.0, "erf": 4.0}, pilot_s=1.0,
    adaptive={"pilot_contexts": 2, "min_contexts": 2, "max_contexts": 2, "pilot_rounds": 0},
)

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}

#: (key, benchmark, what the ratio is, goal: (">=" | "<=", threshold, "ratio" | "value") or None)
ROWS = [
    ("masked_fp32", "masked evaluation / plain batched inference, float32, channels_last",
     "images/s ratio", (">=", 0.95, "ratio")),
    ("masked_bf16", "masked evaluation / plain batched inference, bfloat16, channels_last",
     "images/s ratio", (">=", 0.95, "ratio")),
    ("sweep_bf16", "ablation sweep / plain inference, bf16 autocast, channels_last",
     "forward passes/s over plain images/s", (">=", 0.9, "ratio")),
    ("gradcam", "Grad-CAM (ours) / forward+backward with parameter gradients", "time ratio", ("<=", 0.35, "ratio")),
    ("gradcam_vs_pgc", "pytorch-grad-cam GradCAM / Grad-CAM (ours), same device", "time ratio (our speed-up)",
     (">=", 2.5, "ratio")),
    ("erf", "ERF (ours) / forward + input-gradient backward", "time ratio", ("<=", 1.1, "ratio")),
    ("J_independent_fp32", "J^(m) of one image, reference protocol, independent contexts, float32",
     "wall / plain inference of its evaluations", ("<=", 15.0, "value")),
    ("J_independent_bf16", "J^(m) of one image, reference protocol, independent contexts, bfloat16",
     "wall / plain inference of its evaluations", None),
    ("J_shared_fp32", "J^(m) of one image, shared contexts, float32", "wall / plain inference of its evaluations",
     None),
    ("J_shared_bf16", "J^(m) of one image, shared contexts, bfloat16", "wall / plain inference of its evaluations",
     None),
    ("J_adaptive_fp32", "J^(m) of one image, adaptive estimator, float32", "wall / plain inference of its evaluations",
     None),
    ("J_adaptive_bf16", "J^(m) of one image, adaptive estimator, bfloat16",
     "wall / plain inference of its evaluations", None),
    ("J_reference_count", "the reference code's evaluation count (pairs x contexts x 13 orders x 4) at our plain "
     "float32 rate", "our independent float32 wall / that time", None),
]
ROW_KEYS = [r[0] for r in ROWS]
#: rows that may say "not available" without failing the check (a library feature still missing)
OPTIONAL_ROWS = ("J_adaptive_fp32", "J_adaptive_bf16")


# -------------------------------------------------------------------------------------- helpers
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Peak:
    """``with Peak(device) as p: ...``; then ``p.mb``: peak CUDA memory allocated (None on CPU)."""

    def __init__(self, device: torch.device):
        self.device, self.mb = device, None

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.mb = torch.cuda.max_memory_allocated(self.device) / 2**20
        return False


def timed(fn: Callable[[], Any], device: torch.device) -> float:
    sync(device)
    t = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t


def interleaved(fns: Dict[str, Callable[[], Any]], repeats: int, device: torch.device, deadline: float,
                warmup: int = 1):
    """Run every method once per round, in turn; ``(times {name: [s]}, peaks {name: MB or None})``.

    Stops after the round that would make the next one end past ``deadline`` (at least 2 rounds)."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: Dict[str, List[float]] = {k: [] for k in fns}
    peaks: Dict[str, Optional[float]] = {k: None for k in fns}
    for r in range(repeats):
        start = time.perf_counter()
        for k, fn in fns.items():
            with Peak(device) as p:
                times[k].append(timed(fn, device))
            if p.mb is not None:
                peaks[k] = max(peaks[k] or 0.0, p.mb)
        took = time.perf_counter() - start
        if r >= 1 and time.perf_counter() + took > deadline:
            break
    return times, peaks


def per_round(times: Dict[str, List[float]], a: str, b: str) -> float:
    """Median over rounds of ``time[a] / time[b]`` measured within the same round."""
    return statistics.median(x / y for x, y in zip(times[a], times[b]))


def median(xs: List[float]) -> float:
    return statistics.median(xs)


perturb_ = perturb_weights_  # blocks away from the identity (see its docstring)


def _fmt(v: Optional[float], digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    return f"{v:.{digits}f}"


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


# ----------------------------------------------------------------------------------- the check
@dataclass
class Row:
    key: str
    benchmark: str
    ratio_is: str
    goal: Optional[tuple]
    status: str = "not measured"  # measured | extrapolated | not available | failed | not run
    value: Optional[float] = None
    unit: str = ""
    baseline: Optional[float] = None
    baseline_unit: str = ""
    ratio: float = float("nan")
    peak_mb: Optional[float] = None
    baseline_peak_mb: Optional[float] = None
    note: str = ""
    raw: Dict[str, Any] = field(default_factory=dict)

    def met(self, judged: bool) -> Optional[bool]:
        if self.goal is None or not judged or self.status not in ("measured", "extrapolated"):
            return None
        op, thr, on = self.goal
        x = self.ratio if on == "ratio" else self.value
        if x is None or not math.isfinite(x):
            return None
        return x >= thr if op == ">=" else x <= thr

    @property
    def goal_text(self) -> str:
        if self.goal is None:
            return "-"
        op, thr, on = self.goal
        return f"{'≥' if op == '>=' else '≤'} {thr:g}" + (" s" if on == "value" else "")


class Check:
    def __init__(self, settings: Settings, device: torch.device, out: Path, argv: List[str],
                 only: Optional[List[str]] = None, inject: Optional[List[str]] = None,
                 tests: str = "tests/test_gpu.py"):
        self.S, self.device, self.out, self.argv = settings, device, out, argv
        self.only = list(only) if only else list(SECTIONS)
        self.inject = set(inject or ())
        self.tests = tests
        self.t0 = time.perf_counter()
        self.started = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
        self.deadline = self.t0 + settings.budget_s
        self.rows: Dict[str, Row] = {k: Row(k, b, r, g) for k, b, r, g in ROWS}
        self.sections: Dict[str, Dict[str, Any]] = {}
        self.environment: Dict[str, Any] = {}
        self.gpu_tests: Dict[str, Any] = {}
        self.gpu_record: Dict[str, Any] = {}
        self.raw: Dict[str, Any] = {}
        self.rates: Dict[tuple, float] = {}
        self._models: Dict[str, torch.nn.Module] = {}
        self._photos: Dict[int, torch.Tensor] = {}

    # -- bookkeeping -----------------------------------------------------------------------
    def log(self, msg: str) -> None:
        now = datetime.datetime.now().strftime("%H:%M:%S")
        print(f"[{now} +{time.perf_counter() - self.t0:6.1f}s] {msg}", flush=True)

    def left(self) -> float:
        return self.deadline - time.perf_counter()

    def run_section(self, name: str, fn: Callable[["Check", float], None], budget: float) -> None:
        if name not in self.only:
            self.sections[name] = {"status": "not run", "seconds": 0.0, "budget_s": budget, "error": "not in --only"}
            return
        budget = max(1.0, min(budget, self.left()))
        self.log(f"{name}: start (budget {budget:.0f} s, {self.left():.0f} s left in the check)")
        start = time.perf_counter()
        entry: Dict[str, Any] = {"status": "ok", "budget_s": round(budget, 1), "error": None}
        try:
            if name in self.inject:
                raise RuntimeError(f"injected failure of section {name!r} (--inject-failure)")
            fn(self, budget)
        except Exception as err:  # noqa: BLE001  (a failed section is recorded, the check goes on)
            entry["status"] = "failed"
            entry["error"] = f"{type(err).__name__}: {err}"
            entry["traceback"] = traceback.format_exc()
            self.log(f"{name}: FAILED: {entry['error']}")
        entry["seconds"] = round(time.perf_counter() - start, 2)
        if entry["seconds"] > budget * 1.2 + 2:
            entry["over_budget"] = True
        self.sections[name] = entry
        if entry["status"] == "ok":
            self.log(f"{name}: done in {entry['seconds']:.1f} s")
        self.write()

    # -- shared inputs ---------------------------------------------------------------------
    def model(self, dtype: str = "fp32") -> torch.nn.Module:
        """The benchmark model (perturbed random weights, eval, channels_last) in ``dtype``, cached."""
        if dtype not in self._models:
            if "fp32" not in self._models:
                import timm

                import moga_analysis  # noqa: F401  (registers the models)

                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(0)
                    m = timm.create_model(self.S.model, pretrained=False)
                m = perturb_(m, 0).eval().to(self.device).to(memory_format=torch.channels_last)
                self._models["fp32"] = m
            if dtype != "fp32":
                self._models[dtype] = copy.deepcopy(self._models["fp32"]).to(DTYPES[dtype])
        return self._models[dtype]

    def photos(self, n: int, size: int) -> torch.Tensor:
        """``n`` shipped photos (repeated as needed), preprocessed at ``size`` px, on the CPU."""
        if size not in self._photos:
            from moga_analysis.data import load_images, sample_image_paths

            self._photos[size] = load_images(sample_image_paths(), self.model("fp32"), size=size)[0]
        x = self._photos[size]
        return x.repeat((n + len(x) - 1) // len(x), 1, 1, 1)[:n].contiguous()

    def image(self) -> torch.Tensor:
        return self.photos(1, self.S.size)[0]

    def rate(self, kind: str, dtype: str) -> float:
        """Images/s of plain inference (``kind="plain"``) or of the game (``"game"``) at ``dtype``,
        from the masked-evaluation section, or measured now (a short run) when it has none."""
        if (kind, dtype) not in self.rates:
            from moga_analysis.games import ImageMaskingGame

            model = self.model(dtype)
            game = ImageMaskingGame(model, self.image(), grid=self.S.grid, batch_size=self.S.batch,
                                    channels_last=True)
            masks = torch.rand(2 * self.S.batch, self.S.grid**2, generator=torch.Generator().manual_seed(5)) < 0.5
            x = game.masked_images(masks[: self.S.batch]).contiguous(memory_format=torch.channels_last)

            def plain():
                with torch.inference_mode():
                    model(x)
                    model(x)

            plain()
            game(masks)
            self.rates[("plain", dtype)] = 2 * self.S.batch / timed(plain, self.device)
            self.rates[("game", dtype)] = 2 * self.S.batch / timed(lambda: game(masks), self.device)
        return self.rates[(kind, dtype)]

    # -- results ---------------------------------------------------------------------------
    def exit_status(self) -> int:
        return 1 if self.problems() else 0

    def problems(self) -> List[str]:
        out = []
        for name, s in self.sections.items():
            if s["status"] == "failed":
                out.append(f"section {name} failed: {s['error']}")
        ran = {name for name, s in self.sections.items() if s["status"] != "not run"}
        owner = {k: _row_section(k) for k in ROW_KEYS}
        for k, row in self.rows.items():
            if owner[k] not in ran:
                continue
            if row.status == "not available" and k in OPTIONAL_ROWS:
                continue
            if row.status not in ("measured", "extrapolated") or not math.isfinite(row.ratio):
                out.append(f"row {k}: {row.status}{': ' + row.note if row.note else ''}")
        return out

    def to_json(self) -> Dict[str, Any]:
        judged = self.S.mode == "full" and self.device.type == "cuda"
        rows = []
        for r in self.rows.values():
            d = {k: v for k, v in r.__dict__.items() if k != "goal"}
            d["goal"] = r.goal_text
            d["met"] = r.met(judged)
            d["ratio"] = r.ratio if math.isfinite(r.ratio) else None
            rows.append(d)
        return {
            "mode": self.S.mode,
            "argv": self.argv,
            "started": self.started,
            "wall_s": round(time.perf_counter() - self.t0, 2),
            "budget_s": self.S.budget_s,
            "device": str(self.device),
            "settings": self.S.__dict__,
            "environment": self.environment,
            "gpu_tests": self.gpu_tests,
            "rows": rows,
            "sections": self.sections,
            "gpu_record": self.gpu_record,
            "raw": self.raw,
            "problems": self.problems(),
            "exit_status": self.exit_status(),
        }

    def write(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        data = self.to_json()
        for name, text in (("report.json", json.dumps(data, indent=1, default=str)), ("report.md", render(data))):
            tmp = self.out / f".{name}.tmp"
            tmp.write_text(text)
            os.replace(tmp, self.out / name)


def _row_section(key: str) -> str:
    if key.startswith("masked"):
        return "masked_eval"
    if key.startswith("sweep"):
        return "ablation_sweep"
    if key.startswith("gradcam"):
        return "gradcam"
    if key == "erf":
        return "erf"
    return "interactions"


# ------------------------------------------------------------------------------------- sections
def section_environment(check: Check, budget: float) -> None:
    import timm

    import moga_analysis

    dev = check.device
    env: Dict[str, Any] = {
        "python": f"{platform.python_version()} ({sys.executable})",
        "platform": platform.platform(),
        "torch": torch.__version__,
        "cuda (torch build)": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "timm": timm.__version__,
        "moga_analysis": moga_analysis.__version__,
        "captum": _version("captum"),
        "pytorch-grad-cam": _version("grad-cam"),
        "numpy": _version("numpy"),
        "cpu count": os.cpu_count(),
        "torch threads": torch.get_num_threads(),
        "device": str(dev),
        "tf32": "off (matmul and cuDNN)" if dev.type == "cuda" else "n/a",
    }
    if dev.type == "cuda":
        p = torch.cuda.get_device_properties(dev)
        env.update({"gpu": p.name, "gpu memory (GiB)": round(p.total_memory / 2**30, 1),
                    "multiprocessors": p.multi_processor_count, "compute capability": f"{p.major}.{p.minor}"})
        try:
            q = subprocess.run(["nvidia-smi", "--query-gpu=driver_version,clocks.max.sm,power.limit",
                                "--format=csv,noheader"], capture_output=True, text=True, timeout=20)
            parts = [s.strip() for s in q.stdout.strip().splitlines()[0].split(",")] if q.returncode == 0 else []
            if parts:
                env["driver"] = parts[0]
                env["max SM clock"] = parts[1] if len(parts) > 1 else None
                env["power limit"] = parts[2] if len(parts) > 2 else None
        except (OSError, subprocess.SubprocessError, IndexError) as err:
            env["driver"] = f"unknown (nvidia-smi: {err})"
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, timeout=10)
        if head.returncode == 0:
            env["git commit"] = head.stdout.strip() + (" (modified)" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        pass
    env.setdefault("git commit", "unknown (no git checkout)")
    check.environment = env


def parse_junit(path: Path) -> Dict[str, Any]:
    """Counts and one line per test from a junit XML file written by pytest."""
    root = ET.parse(path).getroot()
    tests = []
    for case in root.iter("testcase"):
        outcome, message = "passed", ""
        for child in case:
            if child.tag in ("failure", "error", "skipped"):
                outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[child.tag]
                text = (child.get("message") or child.text or "").strip()
                message = text.splitlines()[0][:400] if text else ""
                if outcome != "skipped":
                    break
        name = case.get("name", "?")
        cls = case.get("classname", "")
        tests.append({"name": f"{cls.split('.')[-1]}::{name}" if cls else name, "outcome": outcome,
                      "seconds": round(float(case.get("time") or 0.0), 2), "message": message})
    counts = {k: sum(t["outcome"] == k for t in tests) for k in ("passed", "failed", "error", "skipped")}
    return {"total": len(tests), **counts, "tests": tests}


def section_gpu_tests(check: Check, budget: float) -> None:
    out = check.out
    xml, record, log = out / "gpu_tests.xml", out / "gpu_record.json", out / "gpu_tests.log"
    for p in (xml, record):
        p.unlink(missing_ok=True)
    env = dict(os.environ, MOGA_GPU_RECORD=str(record.resolve()), PYTHONUNBUFFERED="1")
    for var in ("PYTEST_XDIST_WORKER", "PYTEST_XDIST_WORKER_COUNT", "PYTEST_XDIST_TESTRUNUID"):
        env.pop(var, None)  # when the check itself runs inside a pytest-xdist worker
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    shipped_ref = REPO / "data" / "reference"
    if "MOGA_REFERENCE_DIR" not in env and (shipped_ref / "golden_io.safetensors").exists():
        env["MOGA_REFERENCE_DIR"] = str(shipped_ref)
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-rfEs", "-p", "no:cacheprovider",
           f"--junitxml={xml.resolve()}", check.tests]
    check.log(f"gpu_tests: {' '.join(cmd[1:])}")
    start = time.perf_counter()
    timed_out = False
    with open(log, "w") as f:
        try:
            rc: Optional[int] = subprocess.run(cmd, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT,
                                               timeout=budget).returncode
        except subprocess.TimeoutExpired:
            rc, timed_out = None, True
    summary: Dict[str, Any] = parse_junit(xml) if xml.exists() else {"total": 0, "tests": []}
    summary.update(command=" ".join(["python"] + cmd[1:]).replace(str(xml.resolve()), "OUT/gpu_tests.xml"),
                   returncode=rc, timed_out=timed_out, seconds=round(time.perf_counter() - start, 1),
                   cuda_available=torch.cuda.is_available(),
                   reference_dir=env.get("MOGA_REFERENCE_DIR", "default (../shared/reference)"))
    tail = log.read_text(errors="replace").strip().splitlines()
    summary["last_line"] = tail[-1] if tail else ""
    check.gpu_tests = summary
    if record.exists():
        with contextlib.suppress(ValueError):
            check.gpu_record = json.loads(record.read_text())
    check.log(f"gpu_tests: {summary['last_line']}")
    if timed_out:
        raise RuntimeError(f"the gpu tests did not finish within {budget:.0f} s (see gpu_tests.log)")
    if rc != 0:
        raise RuntimeError(f"pytest -m gpu exited with {rc}: {summary.get('failed', '?')} failed, "
                           f"{summary.get('error', '?')} errors (see gpu_tests.log)")


def section_masked_eval(check: Check, budget: float) -> None:
    from moga_analysis.games import ImageMaskingGame

    S, dev = check.S, check.device
    n = S.grid**2
    end = time.perf_counter() + budget
    image = check.image()
    for i, dtype in enumerate(("fp32", "bf16")):
        row = check.rows[f"masked_{dtype}"]
        row.status = "failed"
        model = check.model(dtype)
        game = ImageMaskingGame(model, image, grid=S.grid, batch_size=S.batch, channels_last=True)
        probe = torch.rand(S.batch, n, generator=torch.Generator().manual_seed(1)) < 0.5
        x = game.masked_images(probe).contiguous(memory_format=torch.channels_last)

        def one_batch():
            with torch.inference_mode():
                model(x)

        game(probe)
        one_batch()
        t1 = timed(one_batch, dev)
        k = int(min(64, max(2, round(S.measure_s / max(t1, 1e-6)))))
        masks = torch.rand(k * S.batch, n, generator=torch.Generator().manual_seed(2)) < 0.5

        def plain():
            with torch.inference_mode():
                for _ in range(k):
                    model(x)

        def masked():
            game(masks)

        sub_end = time.perf_counter() + (end - time.perf_counter()) / (2 - i)
        times, peaks = interleaved({"plain": plain, "masked": masked}, S.repeats, dev, sub_end)
        rows_n = k * S.batch
        plain_rate, game_rate = rows_n / median(times["plain"]), rows_n / median(times["masked"])
        check.rates[("plain", dtype)], check.rates[("game", dtype)] = plain_rate, game_rate
        row.status = "measured"
        row.value, row.unit = game_rate, "img/s"
        row.baseline, row.baseline_unit = plain_rate, "img/s"
        row.ratio = per_round(times, "plain", "masked")  # time plain / time masked = throughput ratio
        row.peak_mb, row.baseline_peak_mb = peaks["masked"], peaks["plain"]
        row.note = f"{rows_n} rows per call, batch {S.batch}, {len(times['plain'])} rounds, {S.grid}x{S.grid} grid"
        row.raw = {"times": times, "rows": rows_n}
        check.log(f"masked_eval {dtype}: game {game_rate:.1f} img/s, plain {plain_rate:.1f} img/s, "
                  f"ratio {row.ratio:.3f}")


def section_ablation_sweep(check: Check, budget: float) -> None:
    from moga_analysis.ablation import evaluate_ablations, parse_specs

    S, dev = check.S, check.device
    row = check.rows["sweep_bf16"]
    row.status = "failed"
    model = check.model("fp32")
    amp = torch.bfloat16
    x = check.photos(S.sweep_batch, S.size).to(dev).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 1000, (S.sweep_batch,), generator=torch.Generator().manual_seed(3)).to(dev)
    specs = parse_specs()
    passes = len(specs)  # the full model is the first spec and also the reference of agreement / KL

    def one_batch():
        with torch.inference_mode(), torch.autocast(dev.type, dtype=amp):
            model(x)

    one_batch()
    t1 = timed(one_batch, dev)
    k = int(min(16, max(1, round(S.measure_s / max(passes * t1, 1e-6)))))
    loader = [(x, y)] * k

    def plain():
        with torch.inference_mode(), torch.autocast(dev.type, dtype=amp):
            for _ in range(k):
                model(x)

    def sweep():
        evaluate_ablations(model, loader, specs, amp_dtype=amp, channels_last=True, show_progress=False)

    times, peaks = interleaved({"plain": plain, "sweep": sweep}, S.repeats, dev, time.perf_counter() + budget)
    n_img = k * S.sweep_batch
    sweep_ips, plain_ips = n_img / median(times["sweep"]), n_img / median(times["plain"])
    row.status = "measured"
    row.value, row.unit = sweep_ips * passes, "passes/s"
    row.baseline, row.baseline_unit = plain_ips, "img/s"
    row.ratio = passes * per_round(times, "plain", "sweep")
    row.peak_mb, row.baseline_peak_mb = peaks["sweep"], peaks["plain"]
    row.note = (f"{passes} forward passes per image ({', '.join(s.name for s in specs)}); sweep {sweep_ips:.1f} img/s; "
                f"batch {S.sweep_batch} in memory, {k} batches per call")
    row.raw = {"times": times, "images": n_img, "passes": passes}
    check.log(f"ablation_sweep: {sweep_ips:.1f} img/s x {passes} passes vs plain {plain_ips:.1f} img/s, "
              f"ratio {row.ratio:.3f}")


def section_gradcam(check: Check, budget: float) -> None:
    from moga_analysis.gradcam import grad_cam

    S, dev = check.S, check.device
    cam_row, pgc_row = check.rows["gradcam"], check.rows["gradcam_vs_pgc"]
    cam_row.status = pgc_row.status = "failed"
    model = check.model("fp32")
    x = check.photos(S.cam_batch, S.size).to(dev).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():  # not inference_mode: the targets are saved for backward by gather
        targets = model(x).argmax(1)
    layer_name = grad_cam(model, x[:1], target=targets[:1]).layer
    layer = dict(model.named_modules())[layer_name]

    def fwd_bwd():
        model.zero_grad(set_to_none=True)
        model(x).gather(1, targets[:, None]).sum().backward()
        model.zero_grad(set_to_none=True)

    def ours():
        grad_cam(model, x, target=targets)

    methods = {"forward+backward": fwd_bwd, "ours": ours}
    try:
        from pytorch_grad_cam import GradCAM
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        pgc_targets = [ClassifierOutputTarget(int(t)) for t in targets.tolist()]

        def theirs():
            # its hooks copy activations and gradients to the host: registered only for its own call
            cam = GradCAM(model=model, target_layers=[layer])
            try:
                cam(input_tensor=x, targets=pgc_targets)
            finally:
                cam.activations_and_grads.release()
                model.zero_grad(set_to_none=True)

        methods["pytorch-grad-cam"] = theirs
        pgc_error = None
    except ImportError as err:
        pgc_error = f"pytorch_grad_cam is not importable here ({err})"

    times, peaks = interleaved(methods, S.repeats, dev, time.perf_counter() + budget)
    cam_row.status = "measured"
    cam_row.value, cam_row.unit = median(times["ours"]), "s/batch"
    cam_row.baseline, cam_row.baseline_unit = median(times["forward+backward"]), "s/batch"
    cam_row.ratio = per_round(times, "ours", "forward+backward")
    cam_row.peak_mb, cam_row.baseline_peak_mb = peaks["ours"], peaks["forward+backward"]
    cam_row.note = f"batch {S.cam_batch} @ {S.size} px, layer {layer_name}, {len(times['ours'])} rounds"
    cam_row.raw = {"times": times}
    if pgc_error is None:
        pgc_row.status = "measured"
        pgc_row.value, pgc_row.unit = median(times["pytorch-grad-cam"]), "s/batch"
        pgc_row.baseline, pgc_row.baseline_unit = median(times["ours"]), "s/batch"
        pgc_row.ratio = per_round(times, "pytorch-grad-cam", "ours")
        pgc_row.peak_mb, pgc_row.baseline_peak_mb = peaks["pytorch-grad-cam"], peaks["ours"]
        pgc_row.note = f"pytorch-grad-cam {_version('grad-cam')}, GradCAM on {layer_name}, same batch and targets"
    else:
        pgc_row.note = pgc_error
    check.log(f"gradcam: ours/fwd+bwd {cam_row.ratio:.3f}; pytorch-grad-cam/ours {_fmt(pgc_row.ratio)}")
    if pgc_error:
        raise RuntimeError(pgc_error)


def section_erf(check: Check, budget: float) -> None:
    from moga_analysis.erf import effective_receptive_field

    S, dev = check.S, check.device
    row = check.rows["erf"]
    row.status = "failed"
    model = check.model("fp32")
    xe = check.photos(S.erf_batch, S.erf_size).to(dev).contiguous(memory_format=torch.channels_last)

    def reference():
        xi = xe.clone().requires_grad_(True)
        f = model.forward_features(xi)
        h, w = f.shape[-2:]
        (g,) = torch.autograd.grad(torch.relu(f[:, :, h // 2, w // 2]).sum(), xi)
        torch.relu(g).sum(dim=(0, 1))

    def ours():
        effective_receptive_field(model, xe, warn_random=False)

    times, peaks = interleaved({"reference": reference, "ours": ours}, S.repeats, dev, time.perf_counter() + budget)
    row.status = "measured"
    row.value, row.unit = median(times["ours"]), "s/batch"
    row.baseline, row.baseline_unit = median(times["reference"]), "s/batch"
    row.ratio = per_round(times, "ours", "reference")
    row.peak_mb, row.baseline_peak_mb = peaks["ours"], peaks["reference"]
    row.note = (f"batch {S.erf_batch} @ {S.erf_size} px, {len(times['ours'])} rounds "
                "(the reference leaves parameters trainable)")
    row.raw = {"times": times}
    check.log(f"erf: ours/reference {row.ratio:.3f}")


def _noise_ratio(res) -> Optional[float]:
    """Worst (largest) noise floor / mean |I| over the sampled orders of a result."""
    nf, ma = res.noise_floor(), res.mean_abs()
    sampled = res.stderr.abs().sum(1) > 0
    if not bool(sampled.any()):
        return None
    r = nf[sampled] / ma[sampled].clamp_min(1e-30)
    return float(r.max())


def section_interactions(check: Check, budget: float) -> None:
    from moga_analysis import interactions
    from moga_analysis.games import ImageMaskingGame
    from moga_analysis.interactions import (
        REFERENCE_RATIOS,
        estimate_interactions,
        orders_from_ratios,
        reference_pairs,
        relative_strength,
    )

    S, dev = check.S, check.device
    end = time.perf_counter() + budget
    n = S.grid**2
    pairs = reference_pairs(S.grid, S.pairs, generator=torch.Generator().manual_seed(0))
    orders = orders_from_ratios(REFERENCE_RATIOS, n)
    image = check.image()
    target = ImageMaskingGame(check.model("fp32"), image, grid=S.grid).target
    zero = lambda m: torch.zeros(m.shape[0], dtype=torch.float64)  # counts a design's evaluations

    def count(method: str, p) -> int:
        return estimate_interactions(zero, n, p, orders, S.contexts, method=method, seed=0).n_evaluations

    evals = {m: count(m, pairs) for m in ("independent", "shared")}
    ref_count = S.pairs * S.contexts * len(REFERENCE_RATIOS) * 4
    adaptive = getattr(interactions, "estimate_adaptive", None)
    configs = [(m, d) for m in ("independent", "shared", "adaptive") for d in ("fp32", "bf16")]
    check.raw["interactions"] = {"n_players": n, "orders": orders, "pairs": S.pairs, "contexts": S.contexts,
                                 "evaluations": evals, "reference_count": ref_count, "target": target, "runs": {}}
    tau: Optional[float] = None

    def predicted(method: str, dtype: str) -> float:
        e = evals.get(method, evals["independent"])
        return 1.1 * e / check.rate("game", dtype) + 0.5

    def run(method: str, dtype: str, p, **kw):
        model = check.model(dtype)
        with Peak(dev) as pk:
            sync(dev)
            t = time.perf_counter()
            game = ImageMaskingGame(model, image, target=target, grid=S.grid, batch_size=S.batch, channels_last=True)
            if method == "adaptive":
                res = adaptive(game, n, p, orders, **kw)
            else:
                res = estimate_interactions(game, n, p, orders, S.contexts, method=method, seed=0)
            sync(dev)
            wall = time.perf_counter() - t
        return res, wall, pk.mb

    failures = []
    for i, (method, dtype) in enumerate(configs):
        key = f"J_{method}_{dtype}"
        row = check.rows[key]
        if method == "adaptive" and adaptive is None:
            row.status = "not available"
            row.note = "moga_analysis.interactions.estimate_adaptive is not in this version of the library"
            continue
        row.status = "failed"
        try:
            later = [c for c in configs[i + 1:] if c[0] != "adaptive" or adaptive is not None]
            reserve = sum(min(S.pilot_s, predicted(*c)) for c in later)
            avail = end - time.perf_counter() - reserve
            extra: Dict[str, Any] = {}
            if method == "adaptive":
                params = inspect.signature(adaptive).parameters
                tau_used = tau if tau is not None else 0.25
                kw: Dict[str, Any] = {k: v for k, v in S.adaptive.items() if k in params}
                cap = None
                if S.mode == "full":  # the budget cap follows the time left, but not below half of shared
                    by_time = int(max(avail, S.pilot_s) * check.rate("game", dtype) / 1.1)
                    cap = max(evals["shared"] // 2, min(evals["independent"], by_time))
                for name, value in (("target_noise", tau_used), ("seed", 0)):
                    if name in params:
                        kw[name] = value
                capped = (lambda c: {"max_evaluations": c}) if "max_evaluations" in params else (lambda c: {})
                try:
                    res, wall, peak = run(method, dtype, pairs, **kw, **capped(cap))
                except ValueError as err:  # the cap is below its pilot + minimum: the shared run's budget
                    if cap is None or cap >= evals["shared"] or "too small" not in str(err):
                        raise
                    check.log(f"interactions {key}: {err}; again with max_evaluations={evals['shared']}")
                    cap = evals["shared"]
                    res, wall, peak = run(method, dtype, pairs, **kw, **capped(cap))
                full_wall, status = wall, "measured"
                src = "the worst order of the shared fp32 run" if tau is not None else "default"
                meta = getattr(res, "metadata", None) or {}
                note = (f"target_noise {tau_used:.3g} ({src}), max_evaluations {cap}: used {res.n_evaluations}"
                        + (f", target met: {not meta.get('missed_orders')}" if "missed_orders" in meta else ""))
                e_full = res.n_evaluations
            else:
                pred = predicted(method, dtype)
                if pred <= avail:
                    res, wall, peak = run(method, dtype, pairs)
                    full_wall, status, e_full = wall, "measured", res.n_evaluations
                    note = f"{res.n_evaluations} evaluations"
                else:
                    keep = int(min(S.pairs - 1, max(2, S.pairs * max(avail, S.pilot_s) / pred)))
                    res, wall, peak = run(method, dtype, pairs[:keep])
                    e_full = evals[method]
                    full_wall, status = wall * e_full / res.n_evaluations, "extrapolated"
                    note = (f"{e_full} evaluations; extrapolated from {keep} of {S.pairs} pairs "
                            f"({res.n_evaluations} evaluations in {wall:.1f} s): not enough time left")
                    extra = {"subset_pairs": keep, "subset_wall_s": wall, "subset_evaluations": res.n_evaluations}
            plain = e_full / check.rate("plain", dtype)
            J = relative_strength(res)
            nr = _noise_ratio(res)
            row.status = status
            row.value, row.unit = full_wall, "s"
            row.baseline, row.baseline_unit = plain, "s"
            row.ratio = full_wall / plain
            row.peak_mb = peak
            row.note = note + (f"; worst noise floor / mean abs I {nr:.2f}" if nr is not None else "")
            row.raw = {"wall_s": full_wall, "evaluations": e_full, "evaluations_per_s": e_full / full_wall,
                       "J": J.tolist(), "worst_noise_ratio": nr, **extra}
            check.raw["interactions"]["runs"][key] = row.raw
            if method == "shared" and dtype == "fp32":
                tau = nr
            check.log(f"interactions {key}: {full_wall:.2f} s ({status}), {e_full} evaluations, "
                      f"{e_full / full_wall:.0f} evaluations/s")
        except Exception as err:  # noqa: BLE001  (one configuration failing leaves the others measured)
            row.note = f"{type(err).__name__}: {err}"
            failures.append(f"{key}: {row.note}")
            check.log(f"interactions {key}: FAILED: {row.note}")
        check.write()

    ref = check.rows["J_reference_count"]
    ind = check.rows["J_independent_fp32"]
    ref.value, ref.unit = ref_count / check.rate("plain", "fp32"), "s"
    ref.note = f"{ref_count} evaluations (ours, independent: {evals['independent']}; shared: {evals['shared']})"
    if ind.status in ("measured", "extrapolated"):
        ref.status = "measured"
        ref.baseline, ref.baseline_unit = ind.value, "s"
        ref.ratio = ind.value / ref.value
    else:
        ref.status = "failed"
        ref.note += "; no independent float32 run to compare"
    if failures:
        raise RuntimeError("; ".join(failures))


SECTION_FUNCS = {
    "environment": section_environment,
    "gpu_tests": section_gpu_tests,
    "masked_eval": section_masked_eval,
    "ablation_sweep": section_ablation_sweep,
    "gradcam": section_gradcam,
    "erf": section_erf,
    "interactions": section_interactions,
}


# --------------------------------------------------------------------------------------- report
def render(data: Dict[str, Any]) -> str:
    L: List[str] = []
    quick = data["mode"] == "quick"
    judged = data["mode"] == "full" and data["device"].startswith("cuda")
    L += [f"# Device check ({data['mode']})", ""]
    L += [f"- command: `python experiments/device_check.py {' '.join(data['argv'])}`",
          f"- started {data['started']}, wall {data['wall_s']:.1f} s (budget {data['budget_s']:.0f} s), "
          f"exit status **{data['exit_status']}**",
          f"- device: {data['device']}" + (f" ({gpu})" if (gpu := data["environment"].get("gpu")) else ""),
          f"- model: `{data['settings']['model']}`, random weights (`timm.create_model(..., pretrained=False)`, "
          "seed 0, perturbed like the golden reference so that blocks are not identities); speed does not "
          "depend on the weights, J^(m) values here mean nothing",
          f"- images: the photos shipped with the package (`moga_analysis.data.sample_image_paths()`) at "
          f"{data['settings']['size']} px; no network, no dataset",
          "- timings: `torch.cuda.synchronize()` around every timed call; the methods of a row run in turn "
          "within each round; ratio = median over rounds of the ratio within a round; TF32 off; peak memory = "
          "`torch.cuda.max_memory_allocated` (reset before each call, model included)"]
    if quick:
        L.append("- **quick mode**: tiny sizes so that the script cannot rot; no goal is judged")
    elif not judged:
        L.append("- not on CUDA: goals are not judged")
    if data["problems"]:
        L += ["", "**Problems:**", ""] + [f"- {p}" for p in data["problems"]]

    L += ["", "## Environment", "", "| | |", "|---|---|"]
    L += [f"| {k} | {v} |" for k, v in data["environment"].items()]

    gt = data.get("gpu_tests") or {}
    L += ["", "## GPU tests", ""]
    if gt:
        why = ""
        if gt.get("total") and gt.get("skipped") == gt.get("total"):
            why = " (no CUDA: every test skipped)" if not gt.get("cuda_available") else " (every test skipped)"
        L.append(f"`{gt.get('command')}`: **{gt.get('passed', 0)} passed, {gt.get('failed', 0)} failed, "
                 f"{gt.get('error', 0)} errors, {gt.get('skipped', 0)} skipped**{why} of {gt.get('total', 0)}, "
                 f"in {gt.get('seconds', 0):.1f} s, exit code {gt.get('returncode')}"
                 + (", **timed out**" if gt.get("timed_out") else ""))
        L.append("")
        L.append(f"Golden reference data: {gt.get('reference_dir')}.")
        shown = [t for t in gt.get("tests", []) if not (quick and t["outcome"] == "skipped")]
        if shown:
            L += ["", "| test | outcome | s | message |", "|---|---|---:|---|"]
            L += [f"| `{t['name']}` | {t['outcome']} | {t['seconds']:.2f} | {t['message'].replace('|', '/')} |"
                  for t in shown]
        elif gt.get("tests"):
            reasons = sorted({t["message"] for t in gt["tests"]})
            L.append("")
            L.append("Skip reasons: " + "; ".join(f"`{r}`" for r in reasons))
    else:
        L.append("not run")

    L += ["", "## Benchmarks", "",
          "| benchmark | measured | baseline (same run) | ratio | goal | met | peak MB (method / baseline) | status "
          "| note |",
          "|---|---:|---:|---:|---|---|---:|---|---|"]
    for r in data["rows"]:
        measured = f"{_fmt(r['value'], 2)} {r['unit']}".strip() if r["value"] is not None else "-"
        base = f"{_fmt(r['baseline'], 2)} {r['baseline_unit']}".strip() if r["baseline"] is not None else "-"
        met = {True: "yes", False: "**no**", None: "-"}[r["met"]]
        peak = f"{_fmt(r['peak_mb'], 0)} / {_fmt(r['baseline_peak_mb'], 0)}" if r["peak_mb"] is not None else "-"
        L.append(f"| {r['benchmark']} | {measured} | {base} | {_fmt(r['ratio'])} ({r['ratio_is']}) | {r['goal']} | "
                 f"{met} | {peak} | {r['status']} | {r['note'].replace('|', '/')} |")

    rec = data.get("gpu_record") or {}
    if rec:
        L += ["", "## Measured inside the GPU tests", ""]
        simple = {k: v for k, v in rec.items() if k != "low_precision_J"}
        L += ["| measurement | values |", "|---|---|"]
        for k, v in simple.items():
            text = json.dumps(v, default=str)
            L.append(f"| {k} | `{text[:600]}` |")
        lp = rec.get("low_precision_J")
        if lp:
            names = list(lp["J"])
            L += ["", f"Effect of bf16 / fp16 on J^(m) (MogaNet-XT, perturbed random weights, {lp['images']} shipped "
                  f"photos at 64 px, {lp['n_players']} players, {lp['pairs']} pairs, {lp['contexts']} shared "
                  "contexts; the same images, pairs and contexts for every precision):", ""]
            head = ["m"] + [f"J {k}" for k in names] + [f"mean abs dI {k}" for k in names[1:]] + ["noise floor"]
            L += ["| " + " | ".join(head) + " |", "|" + "---:|" * len(head)]
            for o, m in enumerate(lp["orders"]):
                cells = [str(m)] + [f"{lp['J'][k][o]:.3f}" for k in names]
                cells += [f"{lp[f'mean_abs_dI_{k}'][o]:.2e}" for k in names[1:]]
                cells.append(f"{lp['noise_floor'][o]:.2e}")
                L.append("| " + " | ".join(cells) + " |")
            L.append("")
            L.append("max abs dJ against float32: " + ", ".join(f"{k} {lp[f'max_abs_dJ_{k}']:.4f}" for k in names[1:]))

    L += ["", "## Sections", "", "| section | status | s | budget s | error |", "|---|---|---:|---:|---|"]
    for name, s in data["sections"].items():
        err = (s.get("error") or "").replace("|", "/")
        over = " (over budget)" if s.get("over_budget") else ""
        L.append(f"| {name} | {s['status']}{over} | {s['seconds']:.1f} | {s['budget_s']:.0f} | {err} |")
    tbs = [(n, s["traceback"]) for n, s in data["sections"].items() if s.get("traceback")]
    for name, tb in tbs:
        L += ["", f"<details><summary>traceback of {name}</summary>", "", "```", tb.rstrip(), "```", "", "</details>"]
    return "\n".join(L) + "\n"


# ----------------------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="folder for report.md, report.json and the gpu tests' files")
    p.add_argument("--quick", action="store_true", help="tiny sizes (MogaNet-XT at 32 px): CPU, under a minute")
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:N")
    p.add_argument("--budget-s", type=float, default=None,
                   help="time for the whole check (default 450 s; quick 120 s, which it does not need)")
    p.add_argument("--only", default=None, help=f"comma list of sections to run ({', '.join(SECTIONS)})")
    p.add_argument("--skip-tests", action="store_true", help="do not run the gpu tests")
    p.add_argument("--tests", default="tests/test_gpu.py", help=argparse.SUPPRESS)
    p.add_argument("--inject-failure", default=None, help=argparse.SUPPRESS)  # comma list: sections that raise
    return p


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    settings = QUICK if args.quick else FULL
    if args.budget_s is not None:
        scale = args.budget_s / settings.budget_s
        settings = Settings(**{**settings.__dict__, "budget_s": args.budget_s,
                               "tests_timeout_s": settings.tests_timeout_s * min(1.0, scale),
                               "section_s": {k: v * min(1.0, scale) for k, v in settings.section_s.items()}})
    from moga_analysis.runtime import resolve_device

    device = resolve_device(args.device)
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)
    if not args.quick and device.type != "cuda":
        print("device_check: the full check needs a CUDA device; use --quick on a CPU", file=sys.stderr)
        return 2
    only = [s.strip() for s in args.only.split(",") if s.strip()] if args.only else list(SECTIONS)
    bad = [s for s in only if s not in SECTIONS]
    if bad:
        print(f"device_check: unknown sections {bad}; choose from {', '.join(SECTIONS)}", file=sys.stderr)
        return 2
    if args.skip_tests and "gpu_tests" in only:
        only.remove("gpu_tests")
    inject = [s.strip() for s in (args.inject_failure or "").split(",") if s.strip()]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    check = Check(settings, device, out, argv, only=only, inject=inject, tests=args.tests)
    b = torch.backends
    saved = (b.cuda.matmul.allow_tf32, b.cudnn.allow_tf32)
    b.cuda.matmul.allow_tf32 = b.cudnn.allow_tf32 = False  # float32 second differences: no TF32
    check.log(f"device check ({settings.mode}) on {device}, budget {settings.budget_s:.0f} s, out {out}")
    try:
        for name in SECTIONS:
            budget = {"environment": 30.0, "gpu_tests": settings.tests_timeout_s,
                      "interactions": check.left() - 3.0}.get(name, settings.section_s.get(name, 30.0))
            check.run_section(name, SECTION_FUNCS[name], budget)
    finally:
        b.cuda.matmul.allow_tf32, b.cudnn.allow_tf32 = saved
        check.write()
    problems = check.problems()
    check.log(f"wrote {out / 'report.md'}; " + ("all sections ok" if not problems else f"{len(problems)} problems:"))
    for prob in problems:
        check.log(f"  - {prob}")
    return check.exit_status()


if __name__ == "__main__":
    sys.exit(main())
