"""The CUDA path: the GPU gives the CPU's numbers, ablations restore, the OOM back-off, AMP, no syncs.

Every test is marked ``gpu`` and skipped where ``torch.cuda.is_available()`` is false, so CI stays
green (``make test`` deselects the marker anyway)::

    python -m pytest -m gpu tests/test_gpu.py

Models have random weights perturbed the way the golden reference perturbs its weights (layer
scales about +-0.1, BatchNorm statistics off their initial values), so that no block is close to
the identity and a wrong CUDA path cannot pass by doing nothing.  Float32 work runs with TF32 off
(as the interactions CLI does) and cuDNN in deterministic mode.

Tolerances (CUDA float32 against the CPU; the CPU's own float32 error against float64 on the same
inputs, measured on the 2-core CPU of this project, in brackets):

* logits against the official float64 golden logits: ``GOLDEN_FP32_ATOL`` = 1e-5 (4e-7); CUDA
  float64 against them: 1e-10 (0.0);
* masking-game values (log-odds of about 7): ``GAME_ATOL`` = 5e-5 (7e-7);
* I^(m)(i,j) (mean |I| about 7e-4, stderr about 2e-4): ``INTERACTION_ATOL`` = 5e-5 (1.4e-6);
* Grad-CAM raw maps and ERF maps, relative to their maximum: ``MAP_RTOL`` = 1e-4 (8e-7);
* ablated logits: ``LOGIT_ATOL`` = 1e-5 (1.5e-7).

Measurements (observed errors, the bf16/fp16 effect on J^(m), the chunk size the OOM back-off
reached, host syncs counted) are written to the JSON file named by ``MOGA_GPU_RECORD`` when that
variable is set; ``experiments/device_check.py`` puts them in its report.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
import os
import re
import warnings
from pathlib import Path

import pytest
import timm
import torch

import moga_analysis  # noqa: F401  (registers the models)
from moga_analysis import load_checkpoint
from moga_analysis.ablation import KINDS, ablate, evaluate_ablations, parse_specs
from moga_analysis.data import load_images, sample_image_paths
from moga_analysis.interactions import (
    REFERENCE_RATIOS,
    estimate_interactions,
    orders_from_ratios,
    reference_pairs,
    relative_strength,
)
from moga_analysis.interactions.games import ImageMaskingGame
from moga_analysis.models.loading import perturb_weights_

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (torch.cuda.is_available() is false)"),
]

GOLDEN_FP32_ATOL = 1e-5
GOLDEN_FP64_ATOL = 1e-10
GAME_ATOL = 5e-5
INTERACTION_ATOL = 5e-5
MAP_RTOL = 1e-4
LOGIT_ATOL = 1e-5

SIZE = 64  # input size of the CUDA-vs-CPU comparisons (the CPU side must stay cheap)
GRID = 8


# ------------------------------------------------------------------------------------- helpers
perturb_ = perturb_weights_  # blocks away from the identity (see its docstring)


def perturbed_model(name: str = "moganet_xtiny", seed: int = 0) -> torch.nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = timm.create_model(name, pretrained=False)
    return perturb_(model, seed).eval()


def _jsonable(v):
    if isinstance(v, torch.Tensor):
        return v.detach().cpu().tolist()
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return v


def _max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.detach().double().cpu() - b.detach().double().cpu()).abs().max())


def _hook_count(model: torch.nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


@contextlib.contextmanager
def _sync_warnings():
    """Collect the host synchronisations that ``torch.cuda.set_sync_debug_mode('warn')`` reports."""
    found: list = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            yield found
        finally:
            torch.cuda.set_sync_debug_mode(0)
    found.extend(f"{w.filename}:{w.lineno}: {w.message}" for w in caught if "synchroniz" in str(w.message).lower())


# ------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def cuda():
    """The CUDA device, with TF32 off and deterministic cuDNN for the module (restored after)."""
    b = torch.backends
    saved = (b.cuda.matmul.allow_tf32, b.cudnn.allow_tf32, b.cudnn.benchmark, b.cudnn.deterministic)
    b.cuda.matmul.allow_tf32 = False
    b.cudnn.allow_tf32 = False
    b.cudnn.benchmark = False
    b.cudnn.deterministic = True
    try:
        yield torch.device("cuda")
    finally:
        b.cuda.matmul.allow_tf32, b.cudnn.allow_tf32, b.cudnn.benchmark, b.cudnn.deterministic = saved
        torch.cuda.empty_cache()


@pytest.fixture(scope="session")
def gpu_record():
    """``record(key, value)``: keep a measurement; written to $MOGA_GPU_RECORD (JSON) when set."""
    path = os.environ.get("MOGA_GPU_RECORD")
    data: dict = {}
    if path and os.path.exists(path):
        with contextlib.suppress(ValueError, OSError):
            data.update(json.loads(Path(path).read_text()))

    def record(key: str, value) -> None:
        data[key] = _jsonable(value)
        if path:
            tmp = f"{path}.tmp"
            with open(tmp, "w") as f:
                json.dump(data, f, indent=1)
            os.replace(tmp, path)

    return record


@pytest.fixture(scope="module")
def xtiny(cuda):
    """``(cpu_model, cuda_model)``: the same perturbed MogaNet-XT on both devices (do not modify)."""
    cpu = perturbed_model("moganet_xtiny")
    return cpu, copy.deepcopy(cpu).to(cuda)


@pytest.fixture(scope="module")
def images(xtiny):
    """Two shipped photos, preprocessed for MogaNet at SIZE px, on the CPU."""
    x, _, _ = load_images(sample_image_paths()[:2], xtiny[0], size=SIZE)
    return x


@pytest.fixture(scope="module")
def batch():
    """Eight synthetic images and labels (CPU) for the sweep."""
    g = torch.Generator().manual_seed(0)
    return torch.randn(8, 3, SIZE, SIZE, generator=g), torch.randint(0, 1000, (8,), generator=g)


# ------------------------------------------------------------------------- golden logits on CUDA
@pytest.mark.parametrize("variant", ["xtiny", "tiny"])
def test_golden_logits_on_cuda(reference_dir, cuda, gpu_record, variant):
    from safetensors.torch import load_file

    weights = reference_dir / f"moganet_{variant}_seed0.safetensors"
    if not weights.exists():  # a device machine may be sent only part of the reference folder
        pytest.skip(f"{weights.name} is not in {reference_dir}")
    golden = load_file(str(reference_dir / "golden_io.safetensors"))
    model = timm.create_model(f"moganet_{variant}").eval()
    load_checkpoint(model, weights)
    model = model.to(cuda)
    x = golden["input"].to(cuda)
    ref = golden[f"logits_{variant}"]
    with torch.inference_mode():
        out32 = model(x).cpu()
        model = model.to(memory_format=torch.channels_last)
        out32_cl = model(x.contiguous(memory_format=torch.channels_last)).cpu()
        out64 = model.double()(x.double()).cpu()
    errs = {"fp32": _max_err(out32, ref), "fp32_channels_last": _max_err(out32_cl, ref), "fp64": _max_err(out64, ref)}
    gpu_record(f"golden_logits_{variant}", {**errs, "atol_fp32": GOLDEN_FP32_ATOL, "atol_fp64": GOLDEN_FP64_ATOL})
    torch.testing.assert_close(out64, ref, atol=GOLDEN_FP64_ATOL, rtol=1e-8)
    torch.testing.assert_close(out32.double(), ref, atol=GOLDEN_FP32_ATOL, rtol=0)
    torch.testing.assert_close(out32_cl.double(), ref, atol=GOLDEN_FP32_ATOL, rtol=0)
    assert out64.argmax(1).tolist() == {"xtiny": [836, 211], "tiny": [281, 359]}[variant]


# ---------------------------------------------------------------------------- the masking game
@pytest.mark.parametrize("baseline", ["mean", "blur"])
def test_masking_game_cuda_equals_cpu(cuda, xtiny, images, gpu_record, baseline):
    cpu, gpu = xtiny
    gpu_cl = copy.deepcopy(gpu).to(memory_format=torch.channels_last)
    n = GRID * GRID
    masks = torch.rand(46, n, generator=torch.Generator().manual_seed(0)) < 0.5
    masks = torch.cat([masks, torch.zeros(1, n, dtype=torch.bool), torch.ones(1, n, dtype=torch.bool)])
    game_c = ImageMaskingGame(cpu, images[0], grid=GRID, baseline=baseline, batch_size=16)
    game_g = ImageMaskingGame(gpu, images[0], grid=GRID, baseline=baseline, batch_size=16)  # own target
    game_cl = ImageMaskingGame(gpu_cl, images[0], target=game_c.target, grid=GRID, baseline=baseline,
                               batch_size=16, channels_last=True)
    assert game_g.target == game_c.target
    assert game_g.device.type == "cuda"
    torch.testing.assert_close(game_g.baseline.cpu(), game_c.baseline, atol=1e-6, rtol=0)
    torch.testing.assert_close(game_g.masked_images(masks).cpu(), game_c.masked_images(masks), atol=1e-6, rtol=0)
    v_c, v_g, v_cl = game_c(masks), game_g(masks), game_cl(masks)
    assert v_g.dtype == torch.float64 and v_g.device.type == "cpu" and v_g.shape == (len(masks),)
    assert game_g.n_evaluations == len(masks)
    gpu_record(f"game_{baseline}", {"max_err": _max_err(v_g, v_c), "max_err_channels_last": _max_err(v_cl, v_c),
                                    "value_range": [float(v_c.min()), float(v_c.max())], "atol": GAME_ATOL})
    torch.testing.assert_close(v_g, v_c, atol=GAME_ATOL, rtol=0)
    torch.testing.assert_close(v_cl, v_c, atol=GAME_ATOL, rtol=0)


def _recording(game, store):
    def play(masks):
        store.append(torch.as_tensor(masks).clone())
        return game(masks)

    return play


@pytest.mark.parametrize("method", ["shared", "independent"])
def test_interactions_cuda_equals_cpu(cuda, xtiny, images, gpu_record, method):
    cpu, gpu = xtiny
    n = GRID * GRID
    pairs = reference_pairs(GRID, 4, generator=torch.Generator().manual_seed(0))
    orders = orders_from_ratios(REFERENCE_RATIOS, n)
    game_c = ImageMaskingGame(cpu, images[0], grid=GRID, batch_size=128)
    game_g = ImageMaskingGame(gpu, images[0], target=game_c.target, grid=GRID, batch_size=128)
    seen_c, seen_g = [], []
    rc = estimate_interactions(_recording(game_c, seen_c), n, pairs, orders, 4, method=method, seed=3, batch_size=300)
    rg = estimate_interactions(_recording(game_g, seen_g), n, pairs, orders, 4, method=method, seed=3, batch_size=300)
    # the same design: orders, pairs and every context are identical
    assert torch.equal(torch.cat(seen_c), torch.cat(seen_g))
    assert rc.n_evaluations == rg.n_evaluations == sum(len(m) for m in seen_g)
    assert torch.equal(rc.orders, rg.orders) and torch.equal(rc.pairs, rg.pairs)
    assert torch.equal(rc.n_samples, rg.n_samples)
    gpu_record(f"interactions_{method}", {"max_err": _max_err(rg.values, rc.values), "atol": INTERACTION_ATOL,
                                          "mean_abs_I": float(rc.values.abs().mean()),
                                          "mean_stderr": float(rc.stderr.mean()), "n_evaluations": rc.n_evaluations})
    torch.testing.assert_close(rg.values, rc.values, atol=INTERACTION_ATOL, rtol=0)
    torch.testing.assert_close(rg.stderr, rc.stderr, atol=INTERACTION_ATOL, rtol=0)
    torch.testing.assert_close(rg.half_values, rc.half_values, atol=INTERACTION_ATOL, rtol=0)


# --------------------------------------------------------------------------------- Grad-CAM, ERF
@pytest.mark.parametrize("layer", [None, "stage2"])
def test_gradcam_cuda_equals_cpu(cuda, xtiny, images, gpu_record, layer):
    pytest.importorskip("captum")
    from moga_analysis.gradcam import grad_cam

    cpu, gpu = xtiny
    with torch.no_grad():  # not inference_mode: grad_cam saves the targets for backward
        target = cpu(images).argmax(1)
    rc = grad_cam(cpu, images, target=target, layer=layer)
    rg = grad_cam(gpu, images.to(cuda), target=target, layer=layer, batch_size=1)
    assert rg.layer == rc.layer
    assert torch.equal(rg.targets.cpu(), rc.targets.cpu())
    raw_err = _max_err(rg.raw, rc.raw) / float(rc.raw.abs().max())
    map_err = _max_err(rg.maps, rc.maps)
    gpu_record(f"gradcam_{rc.layer}", {"raw_rel_err": raw_err, "maps_err": map_err, "rtol": MAP_RTOL})
    assert float(rc.raw.abs().max()) > 0
    assert raw_err < MAP_RTOL
    assert map_err < 10 * MAP_RTOL
    # the model is as it was: trainable parameters again, no hooks left
    assert all(p.requires_grad for p in gpu.parameters()) and _hook_count(gpu) == 0


def test_erf_cuda_equals_cpu(cuda, xtiny, images, gpu_record):
    from moga_analysis.erf import effective_receptive_field

    cpu, gpu = xtiny
    rc = effective_receptive_field(cpu, images, warn_random=False)
    rg = effective_receptive_field(gpu, images.to(cuda), batch_size=1, warn_random=False)
    assert rg.n_images == rc.n_images == len(images)
    assert tuple(rg.center) == tuple(rc.center) and tuple(rg.feature_shape) == tuple(rc.feature_shape)
    err = _max_err(rg.map, rc.map) / float(rc.map.abs().max())
    gpu_record("erf", {"map_rel_err": err, "rtol": MAP_RTOL})
    assert float(rc.map.max()) > 0
    assert err < MAP_RTOL


# ------------------------------------------------------------------------------------ ablations
ABLATIONS = [(k, "zero") for k in KINDS] + [("gate", "mean"), ("context", "mean")]


@pytest.mark.parametrize("kind,mode", ABLATIONS, ids=[f"{k}-{m}" for k, m in ABLATIONS])
def test_ablation_cuda_equals_cpu_and_restores(cuda, xtiny, images, gpu_record, kind, mode):
    from moga_analysis.ablation import calibrate

    cpu, gpu = xtiny
    x_c, x_g = images, images.to(cuda)
    state = {k: v.clone() for k, v in gpu.state_dict().items()}
    hooks = _hook_count(gpu)
    with torch.inference_mode():
        full_c = cpu(x_c)
        full_g = gpu(x_g).cpu()
        cal_c = calibrate(cpu, kind, x_c) if mode == "mean" else None
        cal_g = calibrate(gpu, kind, x_g) if mode == "mean" else None
        with ablate(cpu, kind, mode=mode, calibration=cal_c):
            abl_c = cpu(x_c)
        with ablate(gpu, kind, mode=mode, calibration=cal_g):
            abl_g = gpu(x_g).cpu()
        after_g = gpu(x_g).cpu()
    if mode == "mean":
        assert set(cal_g) == set(cal_c)
        for block, mean in cal_c.items():
            assert cal_g[block].device.type == "cuda"
            torch.testing.assert_close(cal_g[block].cpu(), mean, atol=1e-5, rtol=1e-5)
    effect = _max_err(abl_c, full_c)
    gpu_record(f"ablation_{kind}_{mode}", {"max_err": _max_err(abl_g, abl_c), "effect": effect, "atol": LOGIT_ATOL})
    assert effect > 10 * LOGIT_ATOL, f"{kind}[{mode}] hardly changes the logits ({effect:.2e}): the test sees nothing"
    torch.testing.assert_close(abl_g, abl_c, atol=LOGIT_ATOL, rtol=0)
    # exact restore: same parameters and buffers, no hooks, bit-identical logits
    assert _hook_count(gpu) == hooks
    assert all(torch.equal(v, state[k]) for k, v in gpu.state_dict().items())
    assert torch.equal(after_g, full_g)


def test_sweep_cuda_equals_cpu(cuda, xtiny, batch, gpu_record):
    cpu, gpu = xtiny
    gpu_cl = copy.deepcopy(gpu).to(memory_format=torch.channels_last)
    x, y = batch
    loader = [(x[:4], y[:4]), (x[4:], y[4:])]
    specs = parse_specs()
    ev_c = evaluate_ablations(cpu, loader, specs, channels_last=False, show_progress=False)
    ev_g = evaluate_ablations(gpu_cl, loader, specs, channels_last=True, show_progress=False)
    assert ev_g.stats.device.type == "cpu" and ev_g.stats.shape == ev_c.stats.shape
    counts = [0, 1, 2, 3, 5]  # n, n_labeled, correct1, correct5, agree
    gpu_record("sweep_fp32", {"max_err": _max_err(ev_g.stats, ev_c.stats), "specs": [s.name for s in specs]})
    assert torch.equal(ev_g.stats[:, counts], ev_c.stats[:, counts])
    torch.testing.assert_close(ev_g.stats, ev_c.stats, atol=1e-5, rtol=1e-4)


def test_sweep_backs_off_on_a_real_cuda_oom(cuda, gpu_record, caplog):
    """A per-process memory cap just above what a quarter batch needs: the full batch runs out of
    memory for real, the sweep halves its chunks and gives the numbers of an uncapped run."""
    model = perturbed_model("moganet_xtiny").to(cuda)
    B = 64
    g = torch.Generator().manual_seed(0)
    x = torch.randn(B, 3, 224, 224, generator=g).to(cuda)
    y = torch.randint(0, 1000, (B,), generator=g).to(cuda)
    specs = parse_specs("gate")

    def sweep(chunk=None):
        return evaluate_ablations(model, [(x, y)], specs, chunk_size=chunk, channels_last=False, show_progress=False)

    def peak(chunk):
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        ev = sweep(chunk)
        torch.cuda.synchronize()
        return ev, torch.cuda.max_memory_allocated() - base

    sweep(B // 4)  # warm-up: cuBLAS / cuDNN handles and workspaces exist before anything is measured
    ref, need_quarter = peak(B // 4)
    _, need_full = peak(None)
    budget = int(1.5 * need_quarter) + (32 << 20)
    assert budget < 0.8 * need_full, (
        f"test set-up: a quarter batch needs {need_quarter / 2**20:.0f} MB and the full batch "
        f"{need_full / 2**20:.0f} MB; the cap cannot separate them"
    )
    torch.cuda.empty_cache()
    total = torch.cuda.get_device_properties(cuda).total_memory
    free, _ = torch.cuda.mem_get_info()
    limit = torch.cuda.memory_reserved() + budget
    assert budget < free, "not enough free GPU memory for the test"
    caplog.set_level(logging.WARNING)
    try:
        torch.cuda.set_per_process_memory_fraction(limit / total)
        got = sweep(None)
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
        torch.cuda.empty_cache()
    msgs = [r.getMessage() for r in caplog.records if "out of memory" in r.getMessage()]
    chunks = [int(m.group(1)) for m in (re.search(r"(\d+) images per forward", s) for s in msgs) if m]
    gpu_record("oom_backoff", {"batch": B, "need_full_mb": need_full / 2**20, "need_quarter_mb": need_quarter / 2**20,
                               "cap_mb": limit / 2**20, "chunks_after_oom": chunks})
    assert chunks, "the capped sweep logged no out-of-memory back-off (no OutOfMemoryError was raised)"
    assert chunks[-1] < B
    counts = [0, 1, 2, 3, 5]
    assert torch.equal(got.stats[:, counts], ref.stats[:, counts])
    torch.testing.assert_close(got.stats, ref.stats, atol=1e-5, rtol=1e-4)


# ------------------------------------------------------------------------------- bf16 and fp16
@pytest.mark.parametrize("amp", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_sweep_autocast_runs(cuda, xtiny, batch, gpu_record, amp):
    _, gpu = xtiny
    gpu_cl = copy.deepcopy(gpu).to(memory_format=torch.channels_last)
    x, y = batch
    loader = [(x[:4], y[:4]), (x[4:], y[4:])]
    specs = parse_specs()
    with torch.inference_mode(), torch.autocast(cuda.type, dtype=amp):
        assert gpu_cl(x[:2].to(cuda)).dtype == amp  # the autocast path is the one running
    ev32 = evaluate_ablations(gpu_cl, loader, specs, show_progress=False)
    ev = evaluate_ablations(gpu_cl, loader, specs, amp_dtype=amp, show_progress=False)
    assert torch.isfinite(ev.stats).all()
    m32, m = ev32.metrics(), ev.metrics()
    gpu_record(f"sweep_autocast_{str(amp).split('.')[-1]}", {
        name: {"agreement_with_own_full": m[name]["agreement"], "kl": m[name]["kl"],
               "kl_fp32": m32[name]["kl"], "nll": m[name]["nll"], "nll_fp32": m32[name]["nll"]}
        for name in m
    })
    assert m["none"]["agreement"] == 100.0, (
        "the full model disagrees with itself: its top-1 for agreement (argmax) and for accuracy (topk) "
        "break the ties of low-precision logits differently"
    )
    assert abs(m["none"]["nll"] - m32["none"]["nll"]) < 0.05 * abs(m32["none"]["nll"])


def test_low_precision_effect_on_interactions(cuda, xtiny, images, gpu_record):
    """J^(m) with the model in bf16 / fp16 (the CLI's --dtype) and under autocast, against fp32:
    the same images, pairs and contexts; the differences are recorded, next to the noise floor."""
    _, gpu = xtiny
    n = GRID * GRID
    orders = orders_from_ratios(REFERENCE_RATIOS, n)
    variants = {
        "float32": (gpu, None),
        "bfloat16": (copy.deepcopy(gpu).to(torch.bfloat16), None),
        "float16": (copy.deepcopy(gpu).to(torch.float16), None),
        "autocast_bf16": (gpu, torch.bfloat16),
        "autocast_fp16": (gpu, torch.float16),
    }
    results = {k: [] for k in variants}
    for i, image in enumerate(images):
        target = ImageMaskingGame(gpu, image, grid=GRID).target
        pairs = reference_pairs(GRID, 8, generator=torch.Generator().manual_seed(i))
        for name, (model, amp) in variants.items():
            game = ImageMaskingGame(model, image, target=target, grid=GRID, batch_size=256)
            ctx = torch.autocast(cuda.type, dtype=amp) if amp is not None else contextlib.nullcontext()
            with ctx:
                results[name].append(estimate_interactions(game, n, pairs, orders, 12, method="shared", seed=i))
    ref = results["float32"]
    J32 = relative_strength(ref)
    floor = torch.stack([r.noise_floor() for r in ref]).mean(0)
    summary = {"orders": orders, "n_players": n, "images": len(images), "pairs": 8, "contexts": 12,
               "noise_floor": floor, "mean_abs_I_fp32": torch.stack([r.mean_abs() for r in ref]).mean(0), "J": {}}
    for name, res in results.items():
        vals = torch.stack([r.values for r in res])
        assert torch.isfinite(vals).all(), f"{name}: non-finite interactions"
        J = relative_strength(res)
        summary["J"][name] = J
        if name != "float32":
            diff = (vals - torch.stack([r.values for r in ref])).abs().mean((0, 2))
            summary[f"mean_abs_dI_{name}"] = diff
            summary[f"max_abs_dJ_{name}"] = float((J - J32).abs().max())
    gpu_record("low_precision_J", summary)
    for name in variants:
        assert torch.isfinite(summary["J"][name]).all()


# ------------------------------------------------------------------------------ host syncs
@pytest.mark.parametrize("amp", [None, torch.bfloat16], ids=["fp32", "bf16"])
def test_no_host_sync_in_the_sweep_loop(cuda, xtiny, gpu_record, amp):
    gpu = copy.deepcopy(xtiny[1]).to(memory_format=torch.channels_last)
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(8, 3, SIZE, SIZE, generator=g).pin_memory(),
                torch.randint(0, 1000, (8,), generator=g).pin_memory()) for _ in range(4)]

    def watched():
        yield batches[0]  # warm-up batch: handles, workspaces and the first allocations
        torch.cuda.set_sync_debug_mode("warn")
        try:
            yield from batches[1:]
        finally:
            torch.cuda.set_sync_debug_mode(0)  # before the sweep's final copy of its sums

    with _sync_warnings() as syncs:
        ev = evaluate_ablations(gpu, watched(), parse_specs(), amp_dtype=amp, show_progress=False)
    gpu_record(f"sweep_syncs_{'fp32' if amp is None else 'bf16'}", {"syncs_in_3_batches": len(syncs), "where": syncs})
    assert int(ev.stats[0, 0]) == 32
    assert not syncs, "host synchronisations inside the sweep's batch loop:\n" + "\n".join(syncs)


def test_game_syncs_do_not_grow_with_batches(cuda, xtiny, images, gpu_record):
    _, gpu = xtiny
    game = ImageMaskingGame(gpu, images[0], grid=GRID, batch_size=8)
    masks = torch.rand(64, GRID * GRID, generator=torch.Generator().manual_seed(0)) < 0.5
    game(masks[:8])  # warm-up

    def count(k):
        with _sync_warnings() as syncs:
            torch.cuda.set_sync_debug_mode("warn")
            game(masks[:k])
        return syncs

    one, eight = count(8), count(64)
    gpu_record("game_syncs", {"one_batch": len(one), "eight_batches": len(eight), "where": eight})
    # the mask upload and the copy of the values back: per call, not per batch
    assert len(eight) == len(one) <= 2, "\n".join(eight)
