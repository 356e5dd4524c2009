"""The Fashion-MNIST MogaNets shipped in the package load through timm tags and keep their accuracy."""

import json
from pathlib import Path

import pytest
import timm
import torch

import moga_analysis  # noqa: F401  (registers the models)
from moga_analysis import training

RESULTS = Path(__file__).resolve().parents[1] / "experiments" / "results" / "fmnist"
SHIPPED = {"moganet_xtiny.fmnist_64": "full", "moganet_xtiny_nogate.fmnist_64": "no_gate"}


@pytest.mark.parametrize("tag", sorted(SHIPPED))
def test_pretrained_cfg(tag):
    with torch.device("meta"):
        model = timm.create_model(tag)
    cfg = model.pretrained_cfg
    assert cfg["num_classes"] == 10 and model.num_classes == 10
    assert cfg["input_size"] == (3, 64, 64)
    assert tuple(cfg["mean"]) == (training.FMNIST_MEAN,) * 3 and tuple(cfg["std"]) == (training.FMNIST_STD,) * 3
    assert tuple(cfg["label_names"]) == training.FMNIST_CLASSES
    assert cfg["file"].endswith(".safetensors") and "assets" in cfg["file"]
    assert model.ablation_settings["gate"] == (SHIPPED[tag] == "full")


def test_nogate_refuses_gate():
    with pytest.raises(ValueError, match="gate=False"):
        timm.create_model("moganet_xtiny_nogate", gate=True)


TWINS = {"moganet_xtiny_single_order": "single_order", "moganet_xtiny_nofd": "no_fd", "moganet_xtiny_noca": "no_ca"}


@pytest.mark.parametrize("name", sorted(TWINS))
def test_training_time_twins_registered_without_weights(name):
    from moga_analysis.models.checkpoints import CheckpointError

    with torch.device("meta"):
        model = timm.create_model(f"{name}.fmnist_64")
    options = training.VARIANTS[TWINS[name]]
    assert {k: model.ablation_settings[k] for k in options} == options
    assert model.num_classes == 10 and model.pretrained_cfg["input_size"] == (3, 64, 64)
    assert model.pretrained_cfg.get("file") is None
    key, value = next(iter(options.items()))
    with pytest.raises(ValueError, match=f"{key}={value}"):
        timm.create_model(name, **{key: not value})
    with pytest.raises(CheckpointError, match=f"--variant {TWINS[name]}"):
        timm.create_model(f"{name}.fmnist_64", pretrained=True)


@pytest.mark.parametrize("name", sorted(TWINS))
def test_recorded_twin_results(name):
    """The committed results of a twin trained here: same recipe as the shipped models, its variant's
    constructor options, and the name/checkpoint that loads it for the interaction CLI."""
    path = RESULTS / f"{TWINS[name]}.json"
    if not path.exists():
        pytest.skip(f"{path.name} not recorded yet")
    record = json.loads(path.read_text())
    full = json.loads((RESULTS / "full.json").read_text())
    assert record["variant"] == TWINS[name]
    assert record["constructor_options"] == training.VARIANTS[TWINS[name]]
    same_recipe = {k: v for k, v in record["config"].items() if k != "variant"}
    assert same_recipe == {k: v for k, v in full["config"].items() if k != "variant"}
    assert record["not_shipped"]["timm_name"] == f"{name}.fmnist_64"
    assert 0.80 <= record["test_accuracy"] <= 1.0 and record["n_test"] == 10000


@pytest.mark.parametrize("tag", sorted(SHIPPED))
def test_shipped_weights_reach_recorded_accuracy(tag):
    with torch.device("meta"):
        path = Path(timm.create_model(tag).pretrained_cfg["file"])
    if not path.exists():
        pytest.skip(f"{path.name} not shipped yet")
    assert path.stat().st_size <= 12 * 2**20
    record = json.loads((RESULTS / f"{SHIPPED[tag]}.json").read_text())
    model = timm.create_model(tag, pretrained=True).eval()
    x, y = training.load_fmnist_samples()
    acc = training.evaluate(model, x, y, batch_size=100, preprocessed=True)["accuracy"]
    assert abs(acc - record["shipped"]["accuracy_on_shipped_300"]) <= 2 / 300
    assert acc >= 0.80 and record["test_accuracy"] >= 0.80


@pytest.mark.parametrize("tag", sorted(SHIPPED))
def test_shipped_weights_load_through_features_only(tag):
    """features_only / out_indices load the shipped weights (the wrapper prunes after loading)."""
    full = timm.create_model(tag, pretrained=True).eval()
    feats = timm.create_model(tag, pretrained=True, features_only=True, out_indices=(1, 3)).eval()
    x, _ = training.load_fmnist_samples()
    with torch.no_grad():
        want = full.forward_intermediates(x[:2], indices=[1, 3], intermediates_only=True)
        got = feats(x[:2])
    assert [t.shape[1] for t in got] == [64, 192] and all(torch.equal(a, b) for a, b in zip(got, want))
    assert feats.weights_provenance["sha256"] == full.weights_provenance["sha256"]
