"""One prepared device check: the gpu tests and the GPU benchmark table, in one short call.

    python experiments/device_check.py --out runs/device_check            # one CUDA GPU, <= 8 minutes
    python experiments/device_check.py --out /tmp/device_check --quick    # tiny sizes, CPU, < 1 minute

Writes ``OUT/report.md`` and ``OUT/report.json`` (tracebacks included; rewritten after every section)
beside the gpu tests' files (``experiments/gpu_tests.py``); exits non-zero when a section failed, a
gpu test failed or a row could not be measured.  It times the functions of ``experiments/benchmarks``
with its :mod:`timing`, ``torch.compile`` against eager forward passes (CUDA only), and one image's
I^(m) through ``InteractionSettings.reference()``, ``.efficient()`` and ``.precise(tau)`` (tau: the
efficient run's worst noise ratio; a preset that does not fit in the time left runs on fewer pairs,
extrapolated).  Random weights (perturbed), the shipped photos, channels_last, TF32 off.
``--quick``: MogaNet-XT at 32 px, a 2 x 2 grid, 2 pairs, 2 contexts.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Dict, List, Optional

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "experiments"), str(REPO / "experiments" / "benchmarks")]

import bench_ablation as BA  # noqa: E402
import bench_gradcam_erf as BG  # noqa: E402
import bench_interactions as BI  # noqa: E402
import torch  # noqa: E402
from gpu_tests import run_gpu_tests  # noqa: E402
from timing import fmt, interleaved, markdown_table, timed  # noqa: E402

SECTIONS = ("environment", "gpu_tests", "masked_eval", "ablation_sweep", "gradcam", "erf", "compile", "interactions")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
DTYPE_NAMES = {"fp32": "float32", "bf16": "bfloat16"}
#: size: input of all but the ERF; batch: masked evaluation, plain inference, torch.compile; measure_s: one timed
#: call; section_s: each benchmark section but the interactions (which get the time left)
FULL = dict(mode="full", model="moganet_small", size=224, grid=14, pairs=50, contexts=50, batch=256, sweep_batch=128,
            cam_batch=32, erf_batch=16, erf_size=224, measure_s=0.6, repeats=5, budget_s=450.0, tests_s=170.0,
            section_s=30.0, precise_cap=20000)
QUICK = dict(FULL, mode="quick", model="moganet_xtiny", size=32, grid=2, pairs=2, contexts=2, batch=8, sweep_batch=4,
             cam_batch=2, erf_batch=2, erf_size=32, measure_s=0.02, repeats=2, budget_s=120.0, tests_s=90.0,
             section_s=6.0, precise_cap=1500)
#: (preset, dtype) of the interaction rows, in the order they run (precise takes efficient's noise as its target)
INTERACTION_RUNS = [("reference", "fp32"), ("efficient", "fp32"), ("precise", "fp32"), ("reference", "bf16"),
                    ("efficient", "bf16")]
#: (key, section, benchmark, what the ratio is, goal: (">=" | "<=", threshold, on "ratio" | "value") or None)
ROWS = [(f"masked_{d}", "masked_eval", f"masked evaluation / plain batched inference, {DTYPE_NAMES[d]}",
         "images/s ratio", (">=", 0.95, "ratio")) for d in DTYPES] + [
    ("sweep_bf16", "ablation_sweep", "ablation sweep / plain inference, bf16 autocast",
     "forward passes/s over plain images/s", (">=", 0.9, "ratio")),
    ("gradcam", "gradcam", "Grad-CAM (ours) / forward+backward with parameter gradients", "time ratio",
     ("<=", 0.35, "ratio")),
    ("gradcam_vs_pgc", "gradcam", "pytorch-grad-cam GradCAM / Grad-CAM (ours)", "time ratio", (">=", 2.5, "ratio")),
    ("erf", "erf", "ERF (ours) / forward + input-gradient backward", "time ratio", ("<=", 1.1, "ratio")),
    ("compile", "compile", "torch.compile(model) / eager forward, float32", "speed-up", None)] + [
    (f"J_{p}_{d}", "interactions", f"I^(m) of one image, InteractionSettings.{p}(), {DTYPE_NAMES[d]}",
     "wall / plain inference of its evaluations", ("<=", 15.0, "value") if (p, d) == ("reference", "fp32") else None)
    for p, d in INTERACTION_RUNS]
ROW_KEYS = [r[0] for r in ROWS]
OPTIONAL_ROWS = ("compile",)  # may be "skipped" (torch.compile is timed on CUDA only)
MEASURED = ("measured", "extrapolated")


class Check:
    def __init__(self, S, device: torch.device, out: Path, argv: List[str], only: List[str], inject: List[str],
                 tests: str):
        self.S, self.device, self.out, self.argv, self.only, self.inject, self.tests = (
            S, device, out, argv, only, set(inject), tests)
        self.t0, self.deadline = time.perf_counter(), time.perf_counter() + S.budget_s
        out.mkdir(parents=True, exist_ok=True)
        self.started = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
        self.rows = {k: dict(key=k, section=s, benchmark=b, ratio_is=r, goal=g, status="not measured", value=None,
                             unit="", baseline=None, baseline_unit="", ratio=None, peak_mb=None, note="")
                     for k, s, b, r, g in ROWS}
        self.sections, self.environment, self.gpu_tests, self.gpu_record = {}, {}, {}, {}
        self.rates, self._models, self._photos = {}, {}, {}  # (plain | game, dtype) -> images/s; caches

    def log(self, msg: str) -> None:
        print(f"[{datetime.datetime.now():%H:%M:%S} +{time.perf_counter() - self.t0:6.1f}s] {msg}", flush=True)

    def set(self, key: str, **kw) -> None:
        self.rows[key].update(status=kw.pop("status", "measured"), **kw)

    def timed_row(self, key: str, t, a: str, b: str, note: str, n: Optional[int] = None, unit: str = "img/s",
                  factor: float = 1.0) -> None:
        """Row ``key`` from timings ``t`` of method ``a`` against baseline ``b``: times (s/batch), or with
        ``n`` rows per call throughputs (``factor``: passes per row of ``a``)."""
        if n is None:
            kw = dict(value=t.median(a), baseline=t.median(b), unit="s/batch", baseline_unit="s/batch",
                      ratio=t.ratio(a, b))
        else:
            kw = dict(value=factor * n / t.median(a), baseline=n / t.median(b), unit=unit, baseline_unit="img/s",
                      ratio=factor * t.ratio(b, a))
        self.set(key, peak_mb=t.peak_mb[a], note=f"{note}, {t.rounds} rounds", times=t.times, **kw)

    def model(self, dtype: str = "fp32") -> torch.nn.Module:
        """The benchmark model (random weights, perturbed so that blocks are not identities; eval,
        channels_last) in ``dtype``, cached."""
        if dtype not in self._models:
            from moga_analysis.models.loading import load_model, perturb_weights_

            m = perturb_weights_(load_model(self.S.model, device="cpu", pretrained=False), 0)  # seeded on the CPU
            self._models[dtype] = m.to(self.device, DTYPES[dtype]).to(memory_format=torch.channels_last)
        return self._models[dtype]

    def photos(self, n: int, size: int) -> torch.Tensor:
        """``n`` shipped photos (repeated as needed) at ``size`` px on the device, channels_last."""
        if size not in self._photos:
            from moga_analysis.data import load_images, sample_image_paths

            self._photos[size] = load_images(sample_image_paths(), self.model(), size=size)[0]
        x = self._photos[size].repeat((n + 3) // 4, 1, 1, 1)[:n]
        return x.to(self.device).contiguous(memory_format=torch.channels_last)

    def rate(self, kind: str, dtype: str) -> float:
        """Images/s of plain inference (``"plain"``) or of the game (``"game"``), from masked_eval."""
        if (kind, dtype) not in self.rates:
            section_masked_eval(self, 2 * self.S.section_s)
        return self.rates[(kind, dtype)]

    def batches_for(self, fn, passes: int = 1) -> int:
        """How many batches (of ``passes`` forward passes each) make one timed call last ``measure_s``."""
        fn()
        return int(min(64, max(1, round(self.S.measure_s / max(passes * timed(fn, self.device), 1e-6)))))

    def run_section(self, name: str, budget: float) -> None:
        budget = max(1.0, min(budget, self.deadline - time.perf_counter()))
        entry: Dict[str, Any] = {"status": "ok", "budget_s": round(budget, 1), "error": None, "seconds": 0.0}
        if name not in self.only:
            self.sections[name] = dict(entry, status="not run", error="not in --only")
            return
        self.log(f"{name}: start (budget {budget:.0f} s)")
        start = time.perf_counter()
        try:
            if name in self.inject:
                raise RuntimeError(f"injected failure of section {name!r} (--inject-failure)")
            globals()[f"section_{name}"](self, budget)
        except Exception as err:  # noqa: BLE001  (a failed section is recorded, the check goes on)
            entry.update(status="failed", error=f"{type(err).__name__}: {err}", traceback=traceback.format_exc())
            self.log(f"{name}: FAILED: {entry['error']}")
        self.sections[name] = dict(entry, seconds=round(time.perf_counter() - start, 2))
        self.write()

    def problems(self) -> List[str]:
        out = [f"section {n} failed: {s['error']}" for n, s in self.sections.items() if s["status"] == "failed"]
        ran = {n for n, s in self.sections.items() if s["status"] != "not run"}
        return out + [f"row {k}: {r['status']}{': ' + r['note'] if r['note'] else ''}" for k, r in self.rows.items()
                      if r["section"] in ran and not (r["status"] == "skipped" and k in OPTIONAL_ROWS)
                      and (r["status"] not in MEASURED or r["ratio"] is None or not math.isfinite(r["ratio"]))]

    def write(self) -> None:
        judged, rows = self.S.mode == "full" and self.device.type == "cuda", []
        for r in self.rows.values():
            op, thr, on = r["goal"] or (None, None, None)
            x = r["ratio"] if on == "ratio" else r["value"]
            met = (x >= thr if op == ">=" else x <= thr) if judged and op and x is not None and r["status"] in \
                MEASURED else None
            goal = "-" if op is None else f"{'≥' if op == '>=' else '≤'} {thr:g}" + (" s" if on == "value" else "")
            rows.append(dict(r, goal=goal, met=met))
        problems = self.problems()
        data = {"mode": self.S.mode, "argv": self.argv, "started": self.started, "budget_s": self.S.budget_s,
                "wall_s": round(time.perf_counter() - self.t0, 2), "device": str(self.device),
                "settings": vars(self.S), "environment": self.environment, "gpu_tests": self.gpu_tests, "rows": rows,
                "sections": self.sections, "gpu_record": self.gpu_record, "problems": problems,
                "exit_status": 1 if problems else 0}
        for name, text in (("report.json", json.dumps(data, indent=1, default=str)), ("report.md", render(data))):
            (self.out / f".{name}.tmp").write_text(text)
            os.replace(self.out / f".{name}.tmp", self.out / name)


def _output(cmd: List[str]) -> str:
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=20, cwd=REPO)
        return p.stdout.strip() if p.returncode == 0 else ""
    except (OSError, subprocess.SubprocessError):
        return ""


# ------------------------------------------------------------------------------------- sections
def section_environment(check: Check, budget: float) -> None:
    from moga_analysis.runtime import environment_info

    env = dict(environment_info(check.device), cuda=torch.version.cuda, cpus=os.cpu_count(), executable=sys.executable,
               cudnn=torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None)
    if check.device.type == "cuda":
        p = torch.cuda.get_device_properties(check.device)
        env.update({"gpu": p.name, "gpu memory (GiB)": round(p.total_memory / 2**30, 1), "tf32": "off",
                    "compute capability": f"{p.major}.{p.minor}", "driver": _output(["nvidia-smi",
                    "--query-gpu=driver_version,clocks.max.sm,power.limit", "--format=csv,noheader"])})
    head, dirty = _output(["git", "rev-parse", "HEAD"]), _output(["git", "status", "--porcelain", "-uno"])
    env["git commit"] = (head + (" (modified)" if dirty else "")) if head else "unknown (no git checkout)"
    check.environment = env


def section_gpu_tests(check: Check, budget: float) -> None:
    s, check.gpu_record = run_gpu_tests(check.out, check.tests, timeout=budget)
    check.gpu_tests = s
    check.log(f"gpu_tests: {s['last_line']}")
    if s["returncode"] != 0:
        raise RuntimeError(f"the gpu tests did not finish within {budget:.0f} s" if s["timed_out"] else
                           f"pytest -m gpu exited with {s['returncode']}: {s.get('failed')} failed, "
                           f"{s.get('error')} errors")


def section_masked_eval(check: Check, budget: float) -> None:
    S, end = check.S, time.perf_counter() + budget
    for i, dtype in enumerate(DTYPES):
        model, image = check.model(dtype), check.photos(1, S.size)[0]
        k = check.batches_for(BI.masked_methods(model, image, S.grid, S.batch, 1)[BI.PLAIN])
        t = interleaved(BI.masked_methods(model, image, S.grid, S.batch, k), S.repeats, device=check.device,
                        deadline=time.perf_counter() + (end - time.perf_counter()) / (2 - i))
        check.rates.update({("plain", dtype): k * S.batch / t.median(BI.PLAIN),
                            ("game", dtype): k * S.batch / t.median(BI.MASKED)})
        check.timed_row(f"masked_{dtype}", t, BI.MASKED, BI.PLAIN, f"{k * S.batch} rows per call, batch {S.batch}, "
                        f"{S.grid}x{S.grid} grid", n=k * S.batch)


def section_ablation_sweep(check: Check, budget: float) -> None:
    from moga_analysis.ablation import parse_specs

    S, model, specs = check.S, check.model(), parse_specs()
    x = check.photos(S.sweep_batch, S.size)
    y = torch.randint(0, 1000, (S.sweep_batch,), generator=torch.Generator().manual_seed(3)).to(check.device)
    k = check.batches_for(BA.sweep_methods(model, x, y, specs, 1, torch.bfloat16)[BA.PLAIN], len(specs))
    t = interleaved(BA.sweep_methods(model, x, y, specs, k, torch.bfloat16), S.repeats, device=check.device,
                    deadline=time.perf_counter() + budget)
    check.timed_row("sweep_bf16", t, BA.SWEEP, BA.PLAIN, f"{len(specs)} forward passes per image, batch "
                    f"{S.sweep_batch}, {k} batches per call", n=k * S.sweep_batch, unit="passes/s", factor=len(specs))


def section_gradcam(check: Check, budget: float) -> None:
    S, model = check.S, check.model()
    x = check.photos(S.cam_batch, S.size)
    with torch.no_grad():  # not inference_mode: gather saves the targets for backward
        targets = model(x).argmax(1)
    try:
        fns, missing = BG.gradcam_methods(model, x, targets), None
    except ImportError as err:
        fns, missing = BG.gradcam_methods(model, x, targets, pytorch_grad_cam=False), f"pytorch-grad-cam: {err}"
    t = interleaved(fns, S.repeats, device=check.device, deadline=time.perf_counter() + budget)
    check.timed_row("gradcam", t, BG.OURS_CAM, BG.FB, f"batch {S.cam_batch} @ {S.size} px")
    if missing:
        check.set("gradcam_vs_pgc", status="failed", note=missing)
        raise RuntimeError(missing)
    check.timed_row("gradcam_vs_pgc", t, BG.PGC, BG.OURS_CAM, "same layer, batch and targets")


def section_erf(check: Check, budget: float) -> None:
    S = check.S
    t = interleaved(BG.erf_methods(check.model(), check.photos(S.erf_batch, S.erf_size)), S.repeats,
                    device=check.device, deadline=time.perf_counter() + budget)
    check.timed_row("erf", t, BG.OURS_ERF, BG.ERF_REF, f"batch {S.erf_batch} @ {S.erf_size} px")


def section_compile(check: Check, budget: float) -> None:
    if check.device.type != "cuda":
        return check.set("compile", status="skipped", note="timed on CUDA only (inductor's CPU compile is minutes)")
    S, model = check.S, check.model()
    x, compiled = check.photos(S.batch, S.size), torch.compile(model)

    with torch.inference_mode():
        first = timed(lambda: compiled(x), check.device)  # compiles
        t = interleaved({"compiled": lambda: compiled(x), "eager": lambda: model(x)}, S.repeats, device=check.device,
                        deadline=time.perf_counter() + budget)
    check.timed_row("compile", t, "compiled", "eager", f"batch {S.batch} @ {S.size} px, first call (compiling) "
                    f"{first:.1f} s", n=S.batch)


def section_interactions(check: Check, budget: float) -> None:
    from moga_analysis.interactions import InteractionSettings

    S, end, failures, evals, tau = check.S, time.perf_counter() + budget, [], {}, None
    image = check.photos(1, S.size)[0]
    for i, (preset, dtype) in enumerate(INTERACTION_RUNS):
        key, kw = f"J_{preset}_{dtype}", dict(grid=S.grid, pairs=S.pairs, dtype=DTYPE_NAMES[dtype])
        try:
            cap, keep = max(evals.get("efficient", 0), S.precise_cap), S.pairs  # precise: at most efficient's cost
            if preset != "precise":  # an equal share of the time left, or fewer pairs (extrapolated)
                predicted = S.pairs * len(InteractionSettings(**kw).orders) * S.contexts * 4 / check.rate("game", dtype)
                share = (end - time.perf_counter()) / (len(INTERACTION_RUNS) - i)
                keep = S.pairs if predicted <= share else max(2, int(S.pairs * share / predicted))
            settings = (InteractionSettings.precise(tau or 0.5, max_evaluations=cap, **kw) if preset == "precise" else
                        getattr(InteractionSettings, preset)(contexts=S.contexts, **dict(kw, pairs=keep)))
            r = BI.time_interactions(check.model(dtype), image, settings, batch_size=S.batch)
            wall, e, res = r["wall_s"] * S.pairs / keep, int(r["evaluations"] * S.pairs / keep), r["result"]
            noise = (res.noise_floor() / res.mean_abs().clamp_min(1e-30))[res.stderr.abs().sum(1) > 0]
            worst = float(noise.max()) if len(noise) else None
            evals.setdefault(preset, e)
            if key == "J_efficient_fp32" and worst is not None and math.isfinite(worst):
                tau = min(max(worst, 0.05), 5.0)
            note = f"{e} evaluations" + (f"; extrapolated from {keep} of {S.pairs} pairs ({r['evaluations']} in "
                                         f"{r['wall_s']:.1f} s): not enough time left" if keep < S.pairs else "")
            note += f"; target {tau or 0.5:.3g} (the efficient run's worst), cap {cap}" if preset == "precise" else ""
            note += f"; worst noise floor / mean abs I {worst:.2f}" if worst is not None else ""
            plain = e / check.rate("plain", dtype)
            check.set(key, status="extrapolated" if keep < S.pairs else "measured", value=wall, unit="s",
                      baseline=plain, baseline_unit="s", ratio=wall / plain, note=note)
            check.log(f"interactions {key}: {wall:.2f} s, {e} evaluations, {e / wall:.0f} evaluations/s")
        except Exception as err:  # noqa: BLE001  (one preset failing leaves the others measured)
            check.set(key, status="failed", note=f"{type(err).__name__}: {err}")
            failures.append(f"{key}: {type(err).__name__}: {err}")
        check.write()
    if failures:
        raise RuntimeError("; ".join(failures))


# --------------------------------------------------------------------------------------- report
def render(d: Dict[str, Any]) -> str:
    S, gt = d["settings"], d["gpu_tests"]
    L = [f"# Device check ({d['mode']})", "", f"- command: `python experiments/device_check.py {' '.join(d['argv'])}`",
         f"- started {d['started']}, wall {d['wall_s']:.1f} s (budget {d['budget_s']:.0f} s), exit status "
         f"**{d['exit_status']}**; device: {d['device']} {d['environment'].get('gpu', '')}" +
         ("; **quick mode**: tiny sizes so that the script cannot rot, no goal judged" if d["mode"] == "quick" else ""),
         f"- `{S['model']}` with random weights (speed does not depend on them; interaction values here mean nothing), "
         f"the shipped photos at {S['size']} px; timings: experiments/benchmarks/timing.py; TF32 off"]
    L += (["", "**Problems:**", ""] + [f"- {p}" for p in d["problems"]]) if d["problems"] else []
    L += ["", "## Environment", "", markdown_table(["", ""], list(d["environment"].items())), "", "## GPU tests", ""]
    if gt:
        why = "" if not gt["total"] or gt["skipped"] != gt["total"] else (
            " (every test skipped)" if gt["cuda_available"] else " (no CUDA: every test skipped)")
        L += [f"`{gt['command']}`: **{gt['passed']} passed, {gt['failed']} failed, {gt['error']} errors, "
              f"{gt['skipped']} skipped**{why} of {gt['total']}, in {gt['seconds']:.1f} s, exit code "
              f"{gt['returncode']}" + (", **timed out**" if gt["timed_out"] else "") +
              f"; golden reference data: {gt['reference_dir']}."] if "passed" in gt else [gt["last_line"]]
        shown = [t for t in gt["tests"] if not (d["mode"] == "quick" and t["outcome"] == "skipped")]
        L += ["", markdown_table(["test", "outcome", "s", "message"], [[f"`{t['name']}`", t["outcome"], t["seconds"],
              t["message"].replace("|", "/")] for t in shown])] if shown else []
    else:
        L.append("not run")
    cell = lambda v, u: f"{fmt(v, 2)} {u}".strip() if v is not None else "-"  # noqa: E731
    L += ["", "## Benchmarks", "", markdown_table(
        ["benchmark", "measured", "baseline (same run)", "ratio", "goal", "met", "peak MB", "status", "note"],
        [[r["benchmark"], cell(r["value"], r["unit"]), cell(r["baseline"], r["baseline_unit"]),
          f"{fmt(r['ratio'])} ({r['ratio_is']})", r["goal"], {True: "yes", False: "**no**", None: "-"}[r["met"]],
          fmt(r["peak_mb"], 0), r["status"], r["note"].replace("|", "/")] for r in d["rows"]], "lrrrlllll")]
    L += ["", "## Measured inside the GPU tests", "", markdown_table(["measurement", "values"], [
        [k, f"`{json.dumps(v, default=str)[:600]}`"] for k, v in d["gpu_record"].items()])] if d["gpu_record"] else []
    L += ["", "## Sections", "", markdown_table(["section", "status", "s", "budget s", "error"], [
        [n, s["status"], s["seconds"], s["budget_s"], (s["error"] or "").replace("|", "/")]
        for n, s in d["sections"].items()], "llrrl")]
    return "\n".join(L) + "\n"


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="folder for report.md, report.json and the gpu tests' files")
    p.add_argument("--quick", action="store_true", help="tiny sizes (MogaNet-XT at 32 px): CPU, under a minute")
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:N")
    p.add_argument("--budget-s", type=float, default=None, help="the whole check's time (default 450 s; quick 120 s)")
    p.add_argument("--only", default=",".join(SECTIONS), help=f"comma list of sections ({', '.join(SECTIONS)})")
    p.add_argument("--tests", default="tests/test_gpu.py", help=argparse.SUPPRESS)
    p.add_argument("--inject-failure", default="", help=argparse.SUPPRESS)  # comma list: sections that raise
    args = p.parse_args(argv)
    S = argparse.Namespace(**(QUICK if args.quick else FULL))
    if args.budget_s:  # a rerun of what failed: every part shrinks with the budget
        scale = min(1.0, args.budget_s / S.budget_s)
        S.budget_s, S.tests_s, S.section_s = args.budget_s, S.tests_s * scale, S.section_s * scale
    from moga_analysis.runtime import fast_path, resolve_device

    fast_path()
    device = resolve_device(args.device)
    if not args.quick and device.type != "cuda":
        return print("device_check: the full check needs a CUDA device; use --quick on a CPU", file=sys.stderr) or 2
    if set(args.only.split(",")) - set(SECTIONS):
        return print(f"device_check: unknown sections in {args.only!r}", file=sys.stderr) or 2
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False  # float32 second differences
    check = Check(S, device, Path(args.out), argv, args.only.split(","), args.inject_failure.split(","), args.tests)
    check.log(f"device check ({S.mode}) on {device}, budget {S.budget_s:.0f} s, out {args.out}")
    for name in SECTIONS:
        check.run_section(name, {"environment": 30.0, "gpu_tests": S.tests_s, "masked_eval": 2 * S.section_s,
                                 "interactions": check.deadline - time.perf_counter() - 3.0}.get(name, S.section_s))
    problems = check.problems()
    check.log(f"wrote {check.out / 'report.md'}: " + ("".join(f"\n  - {p}" for p in problems) or "all sections ok"))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
