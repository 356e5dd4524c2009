"""Grad-CAM: hand-computed maps, captum equality, layouts (NHWC, tokens), targets, hook hygiene."""

import pytest
import timm
import torch
from torch import nn

import moga_analysis  # noqa: F401
from moga_analysis.feature_maps import infer_layout, infer_token_grid, resolve_layer
from moga_analysis.gradcam import grad_cam, normalize_targets


class ConvGapLinear(nn.Module):
    def __init__(self, cin=3, k=4, classes=5):
        super().__init__()
        self.conv = nn.Conv2d(cin, k, 3, padding=1)
        self.fc = nn.Linear(k, classes)

    def forward(self, x):
        return self.fc(self.conv(x).mean(dim=(2, 3)))


class SmallCNN(nn.Module):
    def __init__(self, classes=6):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, stride=2, padding=1)
        self.conv3 = nn.Conv2d(8, 6, 3, padding=1)
        self.fc = nn.Linear(6 * 4 * 4, classes)

    def forward(self, x):
        x = torch.relu(self.conv1(x))
        x = torch.relu(self.conv2(x))
        x = torch.tanh(self.conv3(x))
        return self.fc(nn.functional.adaptive_avg_pool2d(x, 4).flatten(1))


def _no_hooks(model):
    return all(not m._forward_hooks and not m._forward_pre_hooks and not m._backward_hooks for m in model.modules())


def _oracle(model, x, layer_module, target, to_nchw=lambda t: t):
    """Grad-CAM by hand: grads and activations of the layer output, channel weights = spatial mean."""
    store = {}

    def hook(_m, _i, out):
        out.retain_grad()
        store["a"] = out

    h = layer_module.register_forward_hook(hook)
    try:
        logits = model(x)
        logits.gather(1, target[:, None]).sum().backward()
    finally:
        h.remove()
    a, g = to_nchw(store["a"].detach()), to_nchw(store["a"].grad)
    return (g.mean(dim=(2, 3), keepdim=True) * a).sum(1)


def test_hand_computed_conv_gap_linear():
    torch.manual_seed(0)
    model = ConvGapLinear().double().eval()
    x = torch.randn(3, 3, 6, 5, dtype=torch.float64)
    targets = [4, 0, 2]
    res = grad_cam(model, x, target=targets, layer="conv")
    A = model.conv(x).detach()  # [B, K, h, w]
    Wt = model.fc.weight.detach()[targets]  # [B, K]
    expected = (Wt[:, :, None, None] / (6 * 5) * A).sum(1)
    torch.testing.assert_close(res.raw, expected, rtol=1e-10, atol=1e-12)
    assert res.targets.tolist() == targets
    torch.testing.assert_close(res.scores, model(x).detach().gather(1, torch.tensor(targets)[:, None])[:, 0])
    # maps: ReLU'd, upsampled to the input size, max 1 per image (or all zero)
    assert res.maps.shape == (3, 6, 5)
    assert float(res.maps.min()) >= 0 and float(res.maps.max()) <= 1
    for b in range(3):
        assert torch.isclose(res.maps[b].max(), torch.tensor(1.0, dtype=res.maps.dtype)) or not (res.raw[b] > 0).any()


def test_target_none_is_predicted_class_and_batch_split_invariant():
    torch.manual_seed(1)
    model = SmallCNN().eval()
    x = torch.randn(5, 3, 16, 16)
    x0 = x.clone()
    res = grad_cam(model, x, layer="conv3")
    assert torch.equal(x, x0) and not x.requires_grad, "input not mutated"
    pred = model(x).argmax(1)
    assert res.targets.tolist() == pred.tolist()
    res1 = grad_cam(model, x, layer="conv3", batch_size=2)
    torch.testing.assert_close(res1.raw, res.raw, rtol=1e-5, atol=1e-6)
    # no parameter gradient computed or left behind; grad flags restored
    assert all(p.grad is None and p.requires_grad for p in model.parameters())


def test_equal_to_captum_on_plain_cnn():
    from captum.attr import LayerGradCam

    torch.manual_seed(2)
    model = SmallCNN().eval()
    x = torch.randn(4, 3, 16, 16)
    t = torch.tensor([0, 3, 5, 1])
    ours = grad_cam(model, x, target=t, layer="conv2")
    ref = LayerGradCam(model, model.conv2).attribute(x, target=t)[:, 0]
    torch.testing.assert_close(ours.raw, ref.detach(), rtol=1e-5, atol=1e-6)
    assert ours.raw.shape == (4, 8, 8) and ours.layout == "nchw"
    assert (ours.raw < 0).any(), "raw must keep its sign"


def test_swin_nhwc_matches_hand_computation():
    torch.manual_seed(3)
    model = timm.create_model(
        "swin_tiny_patch4_window7_224",
        img_size=64,
        window_size=2,
        embed_dim=16,
        depths=(1, 1, 1, 1),
        num_heads=(1, 1, 1, 1),
        num_classes=7,
    ).eval()
    x = torch.randn(2, 3, 64, 64)
    res = grad_cam(model, x)
    assert res.layer == "layers.3" and res.layout == "nhwc"
    assert res.raw.shape == (2, 2, 2) and res.maps.shape == (2, 64, 64)
    exp = _oracle(model, x, model.layers[3], res.targets, to_nchw=lambda t: t.permute(0, 3, 1, 2))
    torch.testing.assert_close(res.raw, exp, rtol=1e-4, atol=1e-6)
    res2 = grad_cam(model, x, layer="layers.1")
    assert res2.raw.shape == (2, 8, 8)
    assert _no_hooks(model)


def test_deit_tokens_prefix_dropped_grid_inferred():
    torch.manual_seed(4)
    model = timm.create_model(
        "deit_tiny_patch16_224", img_size=64, depth=2, embed_dim=32, num_heads=2, num_classes=7
    ).eval()
    x = torch.randn(2, 3, 64, 64)
    res = grad_cam(model, x)
    assert res.layer == "blocks.1.norm1" and res.layout == "tokens"
    assert res.raw.shape == (2, 4, 4)

    def tok(t):  # [B, 1+16, C] -> [B, C, 4, 4]
        return t[:, 1:].transpose(1, 2).reshape(t.shape[0], t.shape[2], 4, 4)

    exp = _oracle(model, x, model.blocks[1].norm1, res.targets, to_nchw=tok)
    torch.testing.assert_close(res.raw, exp, rtol=1e-4, atol=1e-6)


def test_token_grid_and_layout_inference():
    assert infer_token_grid(1 + 4 * 6, (64, 96), 1) == (1, 4, 6)
    assert infer_token_grid(2 + 14 * 14, (224, 224), None) == (2, 14, 14)  # distilled: 2 prefix tokens
    assert infer_token_grid(196, (224, 224), None) == (0, 14, 14)
    with pytest.raises(ValueError):
        infer_token_grid(1 + 15, (64, 96), 1)
    assert infer_layout((2, 768, 7, 7), (224, 224)) == "nchw"
    assert infer_layout((2, 7, 7, 768), (224, 224)) == "nhwc"
    assert infer_layout((2, 7, 7, 7), (224, 224), "NHWC") == "nhwc"
    assert infer_layout((2, 7, 7, 7), (224, 224)) == "nchw"
    assert infer_layout((2, 50, 64), (224, 224)) == "tokens"


def test_moganet_default_layer_and_stage_aliases():
    model = timm.create_model("moganet_xtiny", num_classes=10).eval()
    x = torch.randn(1, 3, 64, 64)
    assert resolve_layer(model, None)[0] == "norm4"
    assert resolve_layer(model, "stage2")[0] == "norm2"
    res = grad_cam(model, x, layer="stage2", target=3)
    assert res.layer == "norm2" and res.raw.shape == (1, 8, 8) and res.targets.tolist() == [3]
    assert grad_cam(model, x).raw.shape == (1, 2, 2)


def test_default_layers_resnet_convnext():
    assert resolve_layer(timm.create_model("resnet18", num_classes=3), None)[0] == "layer4"
    assert resolve_layer(timm.create_model("convnext_atto", num_classes=3), None)[0] == "stages.3"
    with pytest.raises(KeyError):
        resolve_layer(SmallCNN(), "nope")


@pytest.mark.parametrize(
    "target",
    [[1, 2], torch.tensor([1, 2, 3, 4]), 99, -1, torch.tensor([0.5, 1.0, 2.0]), True, ["a", "b", "c"]],
)
def test_bad_targets_raise(target):
    model = SmallCNN().eval()
    x = torch.randn(3, 3, 16, 16)
    with pytest.raises(ValueError):
        grad_cam(model, x, target=target, layer="conv3")
    assert _no_hooks(model)


def test_normalize_targets_forms():
    assert normalize_targets(None, 3) is None
    assert normalize_targets(2, 3).tolist() == [2, 2, 2]
    assert normalize_targets([0, 1, 2], 3).tolist() == [0, 1, 2]
    assert normalize_targets(torch.tensor(4), 2).tolist() == [4, 4]
    with pytest.raises(ValueError):
        normalize_targets([0, 1], 3)


class Boom(nn.Module):
    def forward(self, x):
        raise RuntimeError("boom")


@pytest.mark.parametrize("layout", ["auto", "nchw", "nhwc"])
def test_hooks_removed_and_grad_flags_restored_after_exception(layout):
    model = SmallCNN().eval()
    model.fc = nn.Sequential(nn.Flatten(), Boom())
    model.conv1.weight.requires_grad_(False)  # a frozen parameter must stay frozen, others trainable
    with pytest.raises(RuntimeError, match="boom"):
        grad_cam(model, torch.randn(2, 3, 16, 16), target=0, layer="conv3", layout=layout)
    assert _no_hooks(model)
    assert not model.conv1.weight.requires_grad and model.conv2.weight.requires_grad


def test_cam_result_save_load_roundtrip(tmp_path):
    from moga_analysis.gradcam import CAMResult

    torch.manual_seed(5)
    model = SmallCNN().eval()
    res = grad_cam(model, torch.randn(2, 3, 16, 16), layer="conv3", target=[1, 4])
    back = CAMResult.load(res.save(tmp_path / "cam.safetensors"))
    assert torch.equal(back.raw, res.raw) and torch.equal(back.maps, res.maps)
    assert back.targets.tolist() == [1, 4] and back.layer == "conv3" and back.layout == res.layout
