"""timm's model contract for every registered MogaNet name."""

import pytest
import timm
import torch

from moga_analysis.models import ALIASES, MogaNet

OFFICIAL = ["moganet_xtiny", "moganet_tiny", "moganet_small", "moganet_base", "moganet_large", "moganet_xlarge"]
NAMES = sorted(timm.list_models("moganet*"))


def test_all_variants_and_aliases_registered():
    for name in OFFICIAL:
        assert name in NAMES
    for alias, target in ALIASES.items():
        assert alias in NAMES
        with torch.device("meta"):
            a, t = timm.create_model(alias), timm.create_model(target)
        assert [tuple(p.shape) for p in a.parameters()] == [tuple(p.shape) for p in t.parameters()]
        assert a.pretrained_cfg == t.pretrained_cfg  # the canonical cfg: same URL, tag, preprocessing
        # a full name in the registry too: pretrained, with every tag of its canonical name
        assert timm.is_model_pretrained(alias)
        assert [n.split(".", 1)[1] for n in timm.list_pretrained(alias + ".*")] == [
            n.split(".", 1)[1] for n in timm.list_pretrained(target + ".*")]


@pytest.mark.parametrize("name", OFFICIAL)
def test_pretrained_cfg(name):
    with torch.device("meta"):
        model = timm.create_model(name)
    cfg = model.pretrained_cfg
    assert cfg["url"].startswith("https://github.com/Westlake-AI/MogaNet/releases/download/")
    assert cfg["crop_pct"] == 0.9 and cfg["interpolation"] == "bicubic"
    assert cfg["input_size"] == (3, 224, 224) and cfg["num_classes"] == 1000
    assert tuple(cfg["mean"]) == timm.data.IMAGENET_DEFAULT_MEAN


def test_256px_tags():
    for name in ["moganet_xtiny.in1k_256", "moganet_tiny.in1k_256"]:
        with torch.device("meta"):
            model = timm.create_model(name)
        assert model.pretrained_cfg["input_size"] == (3, 256, 256)
        assert "sz256" in model.pretrained_cfg["url"]


@pytest.mark.parametrize("name", OFFICIAL)
def test_meta_shapes_and_features(name):
    with torch.device("meta"):
        model = timm.create_model(name).eval()
        x = torch.empty(2, 3, 224, 224)
        feats = model.forward_features(x)
        logits = model.forward_head(feats)
        pre = model.forward_head(feats, pre_logits=True)
    dims = model.embed_dims
    assert tuple(feats.shape) == (2, dims[-1], 7, 7)
    assert tuple(logits.shape) == (2, 1000) and tuple(pre.shape) == (2, dims[-1])
    assert [f["num_chs"] for f in model.feature_info] == list(dims)
    assert [f["reduction"] for f in model.feature_info] == [4, 8, 16, 32]


def test_forward_gradients_and_classifier():
    model = timm.create_model("moganet_xtiny", num_classes=7, drop_path_rate=0.1)
    assert isinstance(model, MogaNet)
    model.train()
    x = torch.randn(2, 3, 64, 64)
    out = model(x)
    assert out.shape == (2, 7)
    out.square().sum().backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert no_grad == []
    # drop path is active in training and absent in eval
    assert model.blocks4[-1].drop_path.drop_prob == pytest.approx(0.1)
    assert model.get_classifier() is model.head
    model.reset_classifier(3)
    assert model.eval()(x).shape == (2, 3)
    model.reset_classifier(0, "")
    assert model(x).shape == (2, model.num_features, 2, 2)


def test_forward_intermediates_ends_where_forward_features_ends():
    model = timm.create_model("moganet_xtiny").eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        final, inter = model.forward_intermediates(x)
        assert len(inter) == 4
        assert torch.equal(final, model.forward_features(x))
        assert torch.equal(inter[-1], final)
        last2 = model.forward_intermediates(x, indices=2, intermediates_only=True)
        assert [t.shape[1] for t in last2] == [96, 192]
        assert torch.equal(last2[0], inter[2])


@pytest.mark.parametrize("out_indices", [(0, 1, 2, 3), (1, 2)])
def test_features_only(out_indices):
    model = timm.create_model("moganet_xtiny", features_only=True, out_indices=out_indices).eval()
    x = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        feats = model(x)
    assert len(feats) == len(out_indices)
    assert [f.shape[1] for f in feats] == model.feature_info.channels()
    assert [96 // f.shape[-1] for f in feats] == model.feature_info.reduction()
    assert model.feature_info.channels() == [[32, 64, 96, 192][i] for i in out_indices]


def test_tap_points_exist_and_add_no_parameters():
    from moga_analysis.hooks import tap_points

    model = timm.create_model("moganet_xtiny")
    taps = tap_points(model)
    n_blocks = sum(len(getattr(model, f"blocks{i}")) for i in range(1, 5))
    assert len(taps) == 5 * n_blocks
    assert "blocks3.4.attn.tap_gate" in taps and "blocks1.0.mlp.tap_ca" in taps
    assert not any("tap_" in k for k in model.state_dict())


def test_training_time_ablation_flags_change_structure():
    with torch.device("meta"):
        full = timm.create_model("moganet_xtiny")
    keys = set(full.state_dict())
    for flag, gone in [("gate", (".attn.gate.",)), ("multi_order", (".DW_conv1.", ".DW_conv2.")),
                       ("use_fd", (".attn.sigma.",)), ("use_ca", (".mlp.decompose.", ".mlp.sigma."))]:
        with torch.device("meta"):
            m = timm.create_model("moganet_xtiny", **{flag: False})
            assert m(torch.empty(1, 3, 64, 64)).shape == (1, 1000)
        sub = set(m.state_dict())
        removed = keys - sub
        assert sub < keys
        assert {g for k in removed for g in gone if g in k} == set(gone)
        assert all(any(g in k for g in gone) for k in removed)
