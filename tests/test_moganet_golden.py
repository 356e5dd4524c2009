"""MogaNet against the official implementation: golden logits, intermediates and the manifest."""

import json

import pytest
import timm
import torch
from safetensors.torch import load_file

from moga_analysis import load_checkpoint
from moga_analysis.models import ARCH_SETTINGS

VARIANTS = ["xtiny", "tiny", "small", "base", "large", "xlarge"]


@pytest.fixture(scope="module")
def golden(reference_dir):
    return load_file(str(reference_dir / "golden_io.safetensors"))


@pytest.fixture(scope="module")
def manifest(reference_dir):
    return json.loads((reference_dir / "state_dict_manifest.json").read_text())


def _perturbed(reference_dir, variant):
    model = timm.create_model(f"moganet_{variant}").eval()
    load_checkpoint(model, reference_dir / f"moganet_{variant}_seed0.safetensors")
    return model


@pytest.mark.parametrize("variant", ["xtiny", "tiny"])
def test_golden_logits_float64_and_float32(reference_dir, golden, variant):
    model = _perturbed(reference_dir, variant)
    x = golden["input"]
    with torch.no_grad():
        out32 = model(x)
        out64 = model.double()(x.double())
    # README of the reference: honest float64 re-implementations differ at ~1e-15
    torch.testing.assert_close(out64, golden[f"logits_{variant}"], atol=1e-10, rtol=1e-8)
    torch.testing.assert_close(out32, golden[f"logits_{variant}_fp32"], atol=5e-6, rtol=0)
    torch.testing.assert_close(out32.double(), golden[f"logits_{variant}"], atol=5e-6, rtol=0)
    assert out64.argmax(1).tolist() == {"xtiny": [836, 211], "tiny": [281, 359]}[variant]


@pytest.mark.parametrize("variant", ["xtiny", "tiny"])
def test_golden_intermediates(reference_dir, golden, variant):
    inter = load_file(str(reference_dir / "golden_intermediates.safetensors"))
    model = _perturbed(reference_dir, variant).double()
    x = golden["input"].double()
    with torch.no_grad():
        torch.testing.assert_close(model.patch_embed1(x), inter[f"{variant}.patch_embed1"], atol=1e-10, rtol=1e-8)
        stages = model.forward_intermediates(x, intermediates_only=True)
        for i, feat in enumerate(stages):
            torch.testing.assert_close(feat, inter[f"{variant}.stage{i + 1}"], atol=1e-10, rtol=1e-8)
        blk_in = inter[f"{variant}.blocks3.0_in"]
        torch.testing.assert_close(model.blocks3[0](blk_in), inter[f"{variant}.blocks3.0_out"], atol=1e-10, rtol=1e-8)


@pytest.mark.parametrize("variant", VARIANTS)
def test_state_dict_matches_manifest(manifest, variant):
    with torch.device("meta"):
        model = timm.create_model(f"moganet_{variant}")
    sd = model.state_dict()
    expected = manifest["state_dict_shapes"][variant]
    assert list(sd) == list(expected)  # same keys, same order
    assert {k: list(v.shape) for k, v in sd.items()} == expected
    assert sum(p.numel() for p in model.parameters()) == manifest["param_counts"][variant]
    assert len(sd) == manifest["num_state_dict_keys"][variant]
    assert manifest["arch_settings"][variant] == {k: list(v) for k, v in ARCH_SETTINGS[variant].items()}


@pytest.mark.parametrize("variant", VARIANTS)
def test_macs_match_manifest(manifest, variant):
    from moga_analysis.models.profile import count_macs

    assert count_macs(f"moganet_{variant}") == manifest["macs_conv_linear_224"][variant]


def test_reference_weights_load_strictly_into_aliases(reference_dir):
    sd = load_file(str(reference_dir / "moganet_xtiny_seed0.safetensors"))
    model = timm.create_model("moganet_xt")
    load_checkpoint(model, sd)
    key = "blocks3.4.attn.value.DW_conv2.weight"
    assert torch.equal(model.state_dict()[key], sd[key])
