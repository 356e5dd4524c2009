"""ERF (RepLKNet protocol) and the high-contribution area ratio."""

import math
import warnings

import pytest
import timm
import torch
from torch import nn

import moga_analysis  # noqa: F401
from moga_analysis.erf import RandomWeightsWarning, area_ratio, effective_receptive_field, looks_untrained


def _stacked(n, k, channels=2):
    layers = []
    for _ in range(n):
        c = nn.Conv2d(channels, channels, k, padding=k // 2, bias=False)
        nn.init.constant_(c.weight, 0.1)
        layers.append(c)
    return nn.Sequential(*layers).eval()


@pytest.mark.parametrize("n,k,size", [(3, 3, 17), (3, 3, 16), (2, 5, 15), (1, 7, 12)])
def test_stacked_convs_have_exactly_the_theoretical_support(n, k, size):
    model = _stacked(n, k)
    x = torch.rand(3, 2, size, size) + 0.1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RandomWeightsWarning)
        res = effective_receptive_field(model, x, batch_size=2)
    c = size // 2
    r = n * (k - 1) // 2  # support side n(k-1)+1 centred on the feature map's centre pixel
    expected = torch.zeros(size, size, dtype=torch.bool)
    expected[c - r : c + r + 1, c - r : c + r + 1] = True
    assert torch.equal(res.map > 0, expected)
    assert res.center == (c, c) and res.n_images == 3 and res.feature_shape == (2, size, size)


class MixedSign(nn.Module):
    """A model whose input gradients have both signs: ReLU before the channel sum matters."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.b = nn.Conv2d(4, 5, 3, stride=2, padding=1)

    def forward(self, x):
        return self.b(torch.tanh(self.bn(self.a(x))))


def _oracle(model, images):
    maps = []
    model.eval()
    for img in images:
        x = img[None].clone().requires_grad_(True)
        f = model(x)
        h, w = f.shape[-2:]
        torch.relu(f[0, :, h // 2, w // 2]).sum().backward()
        maps.append(torch.relu(x.grad[0]).sum(0))
    return torch.stack(maps).mean(0)


def test_matches_per_image_definition_batched_and_in_eval_mode():
    torch.manual_seed(0)
    model = MixedSign()
    model.bn.running_mean.normal_()
    model.bn.running_var.uniform_(0.5, 2)
    model.train()  # the ERF must switch to eval (BatchNorm batch stats would couple the samples)
    x = torch.randn(5, 3, 12, 10)
    res = effective_receptive_field(model, x, batch_size=2)
    assert model.training and model.bn.training, "training flags restored"
    assert all(p.grad is None for p in model.parameters()), "no parameter gradients"
    exp = _oracle(model, x)
    torch.testing.assert_close(res.map, exp.float(), rtol=1e-5, atol=1e-7)
    # ReLU before the channel sum (RepLKNet), not after: the two differ on this model
    xx = x.clone().requires_grad_(True)
    f = model.eval()(xx)
    torch.relu(f[:, :, f.shape[2] // 2, f.shape[3] // 2]).sum().backward()
    model.train()
    wrong = torch.relu(xx.grad.sum(1)).mean(0)
    assert not torch.allclose(wrong, res.map, rtol=1e-3, atol=1e-6)
    whole = effective_receptive_field(model, x)
    torch.testing.assert_close(whole.map, res.map, rtol=1e-5, atol=1e-7)


def test_iterable_of_batches_equals_tensor():
    torch.manual_seed(1)
    model = MixedSign().eval()
    x = torch.randn(4, 3, 8, 8)
    a = effective_receptive_field(model, x, warn_random=False)
    b = effective_receptive_field(model, [(x[:3], None), (x[3:], None)], warn_random=False)
    torch.testing.assert_close(a.map, b.map)
    assert b.n_images == 4


def test_moganet_stage_selection_stops_early_and_warns_on_random_weights():
    model = timm.create_model("moganet_xtiny", num_classes=10).eval()
    calls = []
    h = model.blocks3.register_forward_hook(lambda *a: calls.append(1))
    try:
        with pytest.warns(RandomWeightsWarning):
            res = effective_receptive_field(model, torch.randn(2, 3, 64, 64), layer="stage2")
    finally:
        h.remove()
    assert res.layer == "norm2" and res.feature_shape == (64, 8, 8) and res.center == (4, 4)
    assert calls == [], "the forward pass stops at the selected stage"
    assert all(not m._forward_hooks for m in model.modules())


def test_looks_untrained():
    m = timm.create_model("resnet18", num_classes=3)
    assert "BatchNorm" in looks_untrained(m)
    for mod in m.modules():
        if isinstance(mod, nn.BatchNorm2d):
            mod.running_var.fill_(2.0)
    assert looks_untrained(m) is None
    m.weights_source = None
    assert looks_untrained(m) is not None


# --------------------------------------------------------------------------------- area ratio
def test_area_ratio_single_centre_pixel_odd_and_even():
    m = torch.zeros(9, 9)
    m[4, 4] = 3.0
    assert area_ratio(m) == {0.2: 1 / 81, 0.3: 1 / 81, 0.5: 1 / 81, 0.99: 1 / 81}
    e = torch.zeros(8, 8)
    e[3:5, 3:5] = 1.0  # the centre of an even map is its central 2 x 2 block
    assert area_ratio(e, (0.5,)) == {0.5: 4 / 64}


def test_area_ratio_uniform_map_and_whole_map_case():
    u = torch.ones(10, 10)
    r = area_ratio(u, (0.2, 0.5, 0.99))
    # even map: windows of side 2, 4, 6, 8, 10 with shares 0.04, 0.16, 0.36, 0.64, 1.0
    assert r == {0.2: 0.36, 0.5: 0.64, 0.99: 1.0}
    odd = area_ratio(torch.ones(9, 9), (0.99,))
    assert odd == {0.99: 1.0}  # reached only by the whole map: no crash, ratio 1
    rect = area_ratio(torch.ones(4, 6), (0.1, 0.5))
    assert rect == {0.1: 4 / 24, 0.5: 16 / 24}


def test_area_ratio_uses_log_scale_and_strict_threshold():
    m = torch.full((3, 3), 9.0)
    m[1, 1] = 99.0  # log10(100) = 2, log10(10) = 1: centre share after scaling = 1 / (1 + 8 * 0.5) = 0.2
    r = area_ratio(m, (0.1, 0.2, 0.5))
    assert r == {0.1: 1 / 9, 0.2: 1.0, 0.5: 1.0}  # 0.2 is not *exceeded* by the centre alone
    # without the log transform the centre would hold 99 / 171 = 0.58 of the mass (ratio 1/9 at 0.5)
    assert math.isclose(99 / 171, 0.5789, rel_tol=1e-3)


def test_area_ratio_errors():
    with pytest.raises(ValueError):
        area_ratio(-torch.ones(3, 3))
    with pytest.raises(ValueError):
        area_ratio(torch.ones(3, 3), (1.0,))
    with pytest.raises(ValueError):
        area_ratio(torch.ones(3, 3, 3))
    with pytest.warns(RuntimeWarning):
        r = area_ratio(torch.zeros(5, 5), (0.5,))
    assert math.isnan(r[0.5])


def test_erf_result_save_load_roundtrip(tmp_path):
    model = _stacked(1, 3)
    res = effective_receptive_field(model, torch.rand(2, 2, 9, 9), warn_random=False)
    p = res.save(tmp_path / "erf.safetensors", model="stack")
    back = type(res).load(p)
    assert torch.equal(back.map, res.map) and back.n_images == 2 and back.center == (4, 4)
