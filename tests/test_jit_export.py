"""timm's other paths to a MogaNet: TorchScript, FX, torch.export, features_only and in_chans with
pretrained weights (each loads the same weights and computes the same numbers as the eager model)."""

import warnings

import pytest
import timm
import torch

from moga_analysis.models import hub
from moga_analysis.models.loading import weights_provenance

X = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
SHALLOW = dict(depths=(1, 1, 2, 1))  # fewer blocks: the same module types, scripted in a fraction of the time


def _script(model):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.script is deprecated in favour of torch.export
        return torch.jit.script(model)


@pytest.mark.parametrize("name", ["moganet_xtiny", "moganet_xtiny_nogate", "moganet_xtiny_single_order",
                                  "moganet_xtiny_nofd", "moganet_xtiny_noca"])
def test_torchscript_equals_eager(name):
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=7, **SHALLOW).eval()
    for p in model.parameters():  # move layer scales etc. away from their tiny init so every branch counts
        p.data.add_(torch.randn_like(p) * 0.05)
    scripted = _script(model)
    with torch.no_grad():
        want = model(X)
        assert torch.equal(scripted(X), want)
        assert torch.equal(scripted.forward_features(X), model.forward_features(X))
    assert want.shape == (2, 7)


def test_fx_traced_model_scripts_and_matches():
    from timm.models._features_fx import create_feature_extractor, get_graph_node_names

    model = timm.create_model("moganet_xtiny", **SHALLOW).eval()
    _, eval_nodes = get_graph_node_names(model)
    fx = create_feature_extractor(model, return_nodes=[eval_nodes[-1]])
    scripted = _script(fx)
    with torch.no_grad():
        assert torch.equal(next(iter(scripted(X).values())), model(X))


def test_torch_export_equals_eager():
    model = timm.create_model("moganet_xtiny", **SHALLOW).eval()
    exported = torch.export.export(model, (X,))
    with torch.no_grad():
        torch.testing.assert_close(exported.module()(X), model(X), rtol=0, atol=1e-6)


def test_grad_checkpointing_and_pruned_models_still_work():
    model = timm.create_model("moganet_xtiny").eval()
    with torch.no_grad():
        want = model(X)
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    model.set_grad_checkpointing(True)
    assert model.blocks3.grad_checkpointing
    model.train()
    out = model(X)
    out.sum().backward()
    assert model.blocks1[0].attn.proj_1.weight.grad is not None
    model.set_grad_checkpointing(False)
    model.load_state_dict(saved)  # training updated the BatchNorm statistics
    with torch.no_grad():
        assert torch.equal(model.eval()(X), want)
        feats = model.forward_intermediates(X, indices=2, intermediates_only=True)
    kept = model.prune_intermediate_layers(indices=(0, 1))
    assert kept == [0, 1] and not any(k.startswith(("blocks3", "norm4", "head")) for k in model.state_dict())
    with torch.no_grad():
        assert torch.equal(model.forward_features(X), model.forward_intermediates(X, indices=(1,),
                                                                                  intermediates_only=True)[0])
    assert feats[0].shape[1] == 96


def test_features_only_loads_the_shipped_fmnist_weights():
    full = timm.create_model("moganet_xtiny.fmnist_64", pretrained=True).eval()
    feats = timm.create_model("moganet_xtiny.fmnist_64", pretrained=True, features_only=True).eval()
    assert feats.feature_info.channels() == [32, 64, 96, 192]
    with torch.no_grad():
        want = full.forward_intermediates(X, intermediates_only=True)
        got = feats(X)
    assert len(got) == 4 and all(torch.equal(a, b) for a, b in zip(got, want))
    assert weights_provenance(feats)["kind"] == "shipped"
    picked = timm.create_model("moganet_xt.fmnist_64", pretrained=True, features_only=True, out_indices=(2,)).eval()
    with torch.no_grad():
        assert torch.equal(picked(X)[0], want[2])


def test_features_only_and_in_chans_load_an_official_file(tmp_path, monkeypatch):
    """The official layout from the hub cache, through features_only, out_indices and in_chans=1."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.delenv(hub.WEIGHTS_DIR_ENV, raising=False)
    torch.manual_seed(2)
    ref = timm.create_model("moganet_xtiny").eval()
    url = timm.models.get_pretrained_cfg("moganet_xtiny").url
    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save({"state_dict": ref.state_dict(), "epoch": 300}, cache / hub.weights_filename(url))

    feats = timm.create_model("moganet_xtiny", pretrained=True, features_only=True, out_indices=(0, 3)).eval()
    with torch.no_grad():
        want = ref.forward_intermediates(X, indices=[0, 3], intermediates_only=True)
        got = feats(X)
    assert [t.shape[1] for t in got] == [32, 192] and all(torch.equal(a, b) for a, b in zip(got, want))

    gray = timm.create_model("moganet_xt", pretrained=True, in_chans=1, num_classes=5).eval()
    w = ref.patch_embed1.projection[0].weight
    assert gray.patch_embed1.projection[0].weight.shape == (16, 1, 3, 3)
    torch.testing.assert_close(gray.patch_embed1.projection[0].weight, w.sum(dim=1, keepdim=True))  # timm's rule
    assert torch.equal(gray.norm4.weight, ref.norm4.weight) and gray.head.weight.shape == (5, 192)
