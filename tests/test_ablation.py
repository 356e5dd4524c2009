"""Gate ablations: each kind against a reference forward written from the block's definition,
fd/ca against zeroed scales, stage selection, exact restore, errors, metrics and OOM back-off."""

import copy

import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn

from moga_analysis import load_checkpoint
from moga_analysis.ablation import (
    AblationSpec,
    ablate,
    calibrate,
    evaluate_ablations,
    moga_blocks,
    parse_specs,
)
from moga_analysis.ablation.evaluate import STAT_COLUMNS
from moga_analysis.hooks import capture

KINDS = ["gate", "context", "single_order", "fd", "ca"]


@pytest.fixture(scope="module")
def model(reference_dir):
    m = timm.create_model("moganet_xtiny").eval()
    load_checkpoint(m, reference_dir / "moganet_xtiny_seed0.safetensors")
    return m


# --------------------------------------------------------------------------- reference math
def _bn(m, t):
    return F.batch_norm(t, m.running_mean, m.running_var, m.weight, m.bias, False, 0.0, m.eps)


def _branches(blk, x, kind=None):
    """(normed input h, gate SiLU(gate(y)), context SiLU(value(y))) of one MogaBlock, by hand."""
    a = blk.attn
    c = x.shape[1]
    h = _bn(blk.norm1, x)
    z = F.conv2d(h, a.proj_1.weight, a.proj_1.bias)
    if kind != "fd":  # FD: z + sigma * (z - GAP(z))
        z = z + a.sigma.scale * (z - z.mean(dim=(2, 3), keepdim=True))
    y = F.silu(z)
    g = F.silu(F.conv2d(y, a.gate.weight, a.gate.bias))
    v = a.value
    c1, c2 = int(3 / 8 * c), int(4 / 8 * c)
    c0 = c - c1 - c2
    d = F.conv2d(y, v.DW_conv0.weight, v.DW_conv0.bias, padding=2, groups=c)
    if kind != "single_order":  # dilated convs cascaded on channel groups of DW_conv0's output
        d1 = F.conv2d(d[:, c0 : c0 + c1], v.DW_conv1.weight, v.DW_conv1.bias, padding=4, dilation=2, groups=c1)
        d2 = F.conv2d(d[:, c0 + c1 :], v.DW_conv2.weight, v.DW_conv2.bias, padding=9, dilation=3, groups=c2)
        d = torch.cat([d[:, :c0], d1, d2], dim=1)
    ctx = F.silu(F.conv2d(d, v.PW_conv.weight, v.PW_conv.bias))
    return h, g, ctx


def reference_block(blk, x, kind=None, gate=None, context=None):
    """MogaBlock forward from its definition; ``gate`` / ``context`` replace those branches."""
    h, g, ctx = _branches(blk, x, kind)
    if gate is not None:
        g = gate.expand_as(g)
    if context is not None:
        ctx = context.expand_as(ctx)
    a, f = blk.attn, blk.mlp
    x = x + blk.layer_scale_1 * (F.conv2d(g * ctx, a.proj_2.weight, a.proj_2.bias) + h)
    u = _bn(blk.norm2, x)
    u = F.conv2d(u, f.fc1.weight, f.fc1.bias)
    u = F.gelu(F.conv2d(u, f.dwconv.weight, f.dwconv.bias, padding=1, groups=u.shape[1]))
    if kind != "ca":  # CA: u + sigma * (u - GELU(decompose(u)))
        u = u + f.sigma.scale * (u - F.gelu(F.conv2d(u, f.decompose.weight, f.decompose.bias)))
    return x + blk.layer_scale_2 * F.conv2d(u, f.fc2.weight, f.fc2.bias)


@pytest.mark.parametrize("kind", [None] + KINDS)
def test_each_kind_equals_reference_block(model, kind):
    blk = model.blocks3[0]
    x = torch.randn(1, 96, 7, 7, generator=torch.Generator().manual_seed(3))
    one = torch.ones(())
    ref = reference_block(
        blk, x, kind if kind in ("single_order", "fd", "ca") else None,
        gate=one if kind == "gate" else None, context=one if kind == "context" else None,
    )
    with torch.no_grad():
        if kind is None:
            out = blk(x)
        else:
            with ablate(model, kind, stages=3):
                out = blk(x)
        full = blk(x)
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=1e-5)
    if kind is not None:  # the ablation changes the block by far more than the tolerance
        assert (out - full).abs().max() > 1e-3


@pytest.mark.parametrize("kind", ["gate", "context"])
def test_mean_mode_equals_reference_block(model, kind):
    blk = model.blocks3[0]
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    with torch.no_grad(), capture(model, "patch_embed3") as store:
        model(images)
    _, g, ctx = _branches(blk, store["patch_embed3"][0])
    mean = (g if kind == "gate" else ctx).mean(dim=(0, 2, 3), keepdim=True)
    means = calibrate(model, kind, images, stages=3)
    assert set(means) == {f"blocks3.{i}" for i in range(10)}
    torch.testing.assert_close(means["blocks3.0"], mean, atol=1e-5, rtol=1e-5)
    x = torch.randn(1, 96, 5, 5, generator=torch.Generator().manual_seed(6))
    m32 = means["blocks3.0"]
    ref = reference_block(blk, x, gate=m32 if kind == "gate" else None, context=m32 if kind == "context" else None)
    with torch.no_grad(), ablate(model, kind, stages=3, mode="mean", calibration=means):
        out = blk(x)
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=1e-5)
    assert (out - reference_block(blk, x)).abs().max() > 1e-3


@pytest.mark.parametrize("kind", ["fd", "ca"])
def test_fd_ca_equal_zeroed_scales(model, kind):
    zeroed = copy.deepcopy(model)
    with torch.no_grad():
        for _, (_, blk) in moga_blocks(zeroed).items():
            (blk.attn.sigma if kind == "fd" else blk.mlp.sigma).scale.zero_()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = zeroed(x)
        with ablate(model, kind):
            out = model(x)
        full = model(x)
    assert torch.equal(out, expected)
    assert not torch.equal(out, full)


def _hooked(model):
    return {n for n, m in model.named_modules() if m._forward_hooks or m._forward_pre_hooks}


@pytest.mark.parametrize("kind", KINDS)
def test_stage_selection_touches_only_those_stages(model, kind):
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        full = model.forward_intermediates(x, intermediates_only=True)
        for stages, first in [(2, 1), ([3, 4], 2), ("1+4", 0)]:
            with ablate(model, kind, stages=stages):
                chosen = {int(s) for s in str(stages).strip("[]").replace("+", ",").split(",")}
                assert _hooked(model), "ablation registered nothing"
                assert all(int(n.split(".")[0][len("blocks"):]) in chosen for n in _hooked(model))
                out = model.forward_intermediates(x, intermediates_only=True)
            for i in range(first):
                assert torch.equal(out[i], full[i]), f"stage {i + 1} changed by stages={stages}"
            assert not torch.equal(out[first], full[first])


def _snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _assert_restored(model, snap, x, out0, flags):
    state = model.state_dict()
    assert state.keys() == snap.keys()
    assert all(torch.equal(state[k], snap[k]) for k in snap)
    assert not _hooked(model)
    assert [m.training for m in model.modules()] == flags
    with torch.no_grad():
        assert torch.equal(model.eval()(x), out0)


@pytest.mark.parametrize("kind,mode", [(k, "zero") for k in KINDS] + [("gate", "mean"), ("context", "mean")])
def test_exact_restore_after_exit_and_exception(model, kind, mode):
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        out0 = model(x)
    snap = _snapshot(model)
    model.train()  # calibration must not update BN statistics, nor leave eval mode behind
    flags = [m.training for m in model.modules()]
    cal = x if mode == "mean" else None
    try:
        with torch.no_grad(), ablate(model, kind, mode=mode, calibration=cal):
            model.eval()
            assert not torch.equal(model(x), out0)
            model.train()
        _assert_restored(model, snap, x, out0, flags)
        model.train()
        with pytest.raises(RuntimeError, match="boom"):
            with ablate(model, kind, stages=[1, 3], mode=mode, calibration=cal):
                raise RuntimeError("boom")
        _assert_restored(model, snap, x, out0, flags)
    finally:
        model.eval()


def test_errors(model):
    with pytest.raises(ValueError, match="unknown ablation kind"):
        with ablate(model, "gates"):
            pass
    with pytest.raises(TypeError, match="not a MogaNet"):
        with ablate(nn.Sequential(nn.Conv2d(3, 3, 1)), "gate"):
            pass
    with pytest.raises(ValueError, match="stages"):
        with ablate(model, "gate", stages=5):
            pass
    with pytest.raises(ValueError, match="mean"):
        with ablate(model, "fd", mode="mean", calibration=torch.zeros(1, 3, 32, 32)):
            pass
    with pytest.raises(ValueError, match="calibration"):
        with ablate(model, "gate", mode="mean"):
            pass
    with pytest.raises(KeyError, match="calibration has no mean"):
        with ablate(model, "gate", mode="mean", calibration={"blocks1.0": torch.zeros(1, 32, 1, 1)}):
            pass
    assert not _hooked(model)


def test_training_time_ablated_model_is_a_clear_error():
    m = timm.create_model("moganet_xtiny", gate=False)
    with pytest.raises(ValueError, match="built without"):
        with ablate(m, "gate", stages=1):
            pass


def test_parse_specs():
    specs = parse_specs("gate,fd", "all,1,2+3", "zero,mean")
    names = [s.name for s in specs]
    assert names == ["none", "gate@all", "gate@1", "gate@2+3", "gate[mean]@all", "gate[mean]@1",
                     "gate[mean]@2+3", "fd@all", "fd@1", "fd@2+3"]
    with pytest.raises(ValueError):
        parse_specs("gate", "5")
    with pytest.raises(ValueError):
        parse_specs("nope", "all")


# --------------------------------------------------------------------------- evaluation
def _loader(n_batches=2, b=2, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(b, 3, size, size, generator=g), torch.tensor([5, -1, 836][:b])) for _ in range(n_batches)]


def test_evaluation_metrics_match_naive_computation(model):
    loader = _loader()
    specs = [AblationSpec("none"), AblationSpec("gate", (3,)), AblationSpec("ca")]
    res = evaluate_ablations(model, loader, specs, show_progress=False)
    met = res.metrics()
    x = torch.cat([b[0] for b in loader])
    y = torch.cat([b[1] for b in loader])
    with torch.no_grad():
        full = model(x).double().log_softmax(-1)
        for spec in specs:
            with spec.context(model):
                lp = model(x).double().log_softmax(-1)
            lab = y >= 0
            m = met[spec.name]
            assert m["n_images"] == 4 and m["n_labeled"] == 2
            assert m["top1"] == pytest.approx(100 * (lp.argmax(-1)[lab] == y[lab]).float().mean().item())
            top5 = (lp.topk(5, -1).indices[lab] == y[lab, None]).any(-1).float().mean().item()
            assert m["top5"] == pytest.approx(100 * top5)
            assert m["nll"] == pytest.approx(-lp[lab].gather(1, y[lab, None]).mean().item(), rel=1e-5)
            assert m["agreement"] == pytest.approx(100 * (lp.argmax(-1) == full.argmax(-1)).float().mean().item())
            kl = (full.exp() * (full - lp)).sum(-1).mean().item()
            assert m["kl"] == pytest.approx(kl, rel=1e-3, abs=1e-9)
    assert met["none"]["kl"] == 0 and met["none"]["agreement"] == 100


def test_oom_backoff_gives_identical_sums(model, monkeypatch):
    import moga_analysis.ablation as ab

    loader = _loader(n_batches=1, b=3)
    specs = [AblationSpec("none"), AblationSpec("context", (2,))]
    plain = evaluate_ablations(model, loader, specs, show_progress=False).stats
    real = ab.evaluate._chunk_stats
    sizes = []

    def flaky(model_, x, *a, **k):
        sizes.append(x.shape[0])
        if x.shape[0] > 1:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(model_, x, *a, **k)

    monkeypatch.setattr(ab.evaluate, "_chunk_stats", flaky)
    backed = evaluate_ablations(model, loader, specs, show_progress=False).stats
    assert sizes == [3, 1, 1, 1]
    torch.testing.assert_close(backed, plain, rtol=1e-6, atol=1e-9)
    assert backed[0, STAT_COLUMNS.index("n")] == 3


def test_plots_from_metrics():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from moga_analysis.ablation.plot import ablation_matrix, plot_accuracy_drop, plot_interaction_curves

    metrics = {
        "none": {"kind": "none", "stages": "-", "mode": "-", "top1": 80.0, "top1_drop": 0.0, "agreement": 100.0},
        "gate@all": {"kind": "gate", "stages": "all", "mode": "zero", "top1": 10.0, "top1_drop": 70.0,
                     "agreement": 12.0},
        "gate@3": {"kind": "gate", "stages": "3", "mode": "zero", "top1": 60.0, "top1_drop": 20.0, "agreement": 70.0},
        "gate[mean]@all": {"kind": "gate", "stages": "all", "mode": "mean", "top1": 50.0, "top1_drop": 30.0,
                           "agreement": 55.0},
    }
    groups, stages, values = ablation_matrix(metrics)
    assert groups == ["gate", "gate [mean]"] and stages == ["all", "3"]
    assert values == [[70.0, 20.0], [30.0, None]]
    fig, ax = plot_accuracy_drop(metrics)
    assert len(ax.patches) == 4 and ax.get_ylabel().startswith("top-1 drop")
    plt.close(fig)
    fig, ax = plot_accuracy_drop(metrics, metric="disagreement")
    assert sorted(p.get_height() for p in ax.patches if p.get_height() == p.get_height()) == [30.0, 45.0, 88.0]
    plt.close(fig)
    curves = {"none": {"ratios": [0, 0.5, 1], "J": [1.0, 0.5, 1.5]},
              "gate@all": {"ratios": [0, 0.5, 1], "J": [1.2, 0.3, 1.5]}}
    fig, ax = plot_interaction_curves(curves)
    assert len(ax.lines) == 2
    plt.close(fig)
    with pytest.raises(ValueError):
        plot_accuracy_drop({"none": metrics["none"]})


def test_full_model_agrees_with_itself_when_logits_tie(model):
    """Agreement compares top-1 picked the same way for the reference and every row: with tied
    logits (common under bf16 autocast) argmax and topk can pick different classes."""
    from moga_analysis.ablation.evaluate import _chunk_stats

    class Tied(nn.Module):
        def forward(self, x):
            return torch.zeros(x.shape[0], 10)  # every class ties

    rows = _chunk_stats(Tied(), torch.zeros(4, 3, 8, 8), torch.zeros(4, dtype=torch.long), [[]], None)
    assert rows[0, STAT_COLUMNS.index("agree")] == 4


def test_grad_cam_accepts_targets_made_under_inference_mode():
    from moga_analysis.gradcam import grad_cam

    net = timm.create_model("resnet18", num_classes=3).eval()
    with torch.inference_mode():
        t = torch.tensor([0, 2])
    res = grad_cam(net, torch.randn(2, 3, 32, 32), target=t)
    assert res.targets.tolist() == [0, 2]
