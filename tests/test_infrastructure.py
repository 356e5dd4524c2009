"""hooks, results, runtime and data helpers."""

import dataclasses

import pytest
import timm
import torch
from PIL import Image

from moga_analysis import data, hooks
from moga_analysis.models import load_model
from moga_analysis.results import SavableResult, load_tensors, save_tensors
from moga_analysis.runtime import make_generator, resolve_device, resolve_dtype, tune_malloc


@pytest.fixture(scope="module")
def model():
    return timm.create_model("moganet_xtiny").eval()


def test_capture_and_patch_by_name_and_hooks_removed(model):
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ref = model(x)
        with hooks.capture(model, "blocks4.*.attn.tap_gate") as store:
            model(x)
        assert list(store) == ["blocks4.0.attn.tap_gate", "blocks4.1.attn.tap_gate"]
        assert store["blocks4.0.attn.tap_gate"][0].shape == (1, 192, 2, 2)
        with pytest.raises(RuntimeError, match="boom"):
            with hooks.patch(model, {"blocks4.*.attn.tap_gate": torch.zeros_like}):
                changed = model(x)
                raise RuntimeError("boom")
        assert not torch.allclose(changed, ref)
        assert all(not m._forward_hooks for m in model.modules())
        assert torch.equal(model(x), ref)


def test_unknown_module_name_fails_loudly(model):
    with pytest.raises(KeyError, match="no module"):
        with hooks.capture(model, "blocks9.*.tap_gate"):
            pass


def test_results_roundtrip_and_atomic(tmp_path):
    @dataclasses.dataclass(frozen=True)
    class R(SavableResult):
        values: torch.Tensor
        config: dict

    r = R(torch.arange(6.0).reshape(2, 3), {"seed": 3, "model": "moganet_xtiny"})
    path = r.save(tmp_path / "r.safetensors")
    back = R.load(path)
    assert torch.equal(back.values, r.values) and back.config == r.config
    assert [p.name for p in tmp_path.iterdir()] == ["r.safetensors"]  # no temporary left behind
    tensors, meta = load_tensors(save_tensors(tmp_path / "t.safetensors", {"a": torch.ones(2)}, {"k": [1, 2]}))
    assert meta == {"k": [1, 2]} and torch.equal(tensors["a"], torch.ones(2))


def test_runtime_helpers():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_dtype("bf16") is torch.bfloat16
    with pytest.raises(ValueError):
        resolve_dtype("float7")
    a = torch.rand(3, generator=make_generator(5))
    assert torch.equal(a, torch.rand(3, generator=make_generator(5)))
    assert isinstance(tune_malloc(), bool)


def test_sample_images_and_preprocessing(model):
    paths = data.sample_image_paths()
    assert [p.stem for p in paths] == ["astronaut", "chelsea", "coffee", "rocket"]
    x, kept, skipped = data.load_images(paths, model)
    assert x.shape == (4, 3, 224, 224) and kept == paths and skipped == []
    # ImageNet normalisation from the pretrained cfg: a mid-grey pixel maps near zero
    assert -3 < float(x.mean()) < 3


def test_unreadable_images_are_skipped_and_reported(tmp_path, model):
    good = tmp_path / "a.png"
    Image.new("RGB", (32, 32), (128, 64, 32)).save(good)
    (tmp_path / "b.jpg").write_bytes(b"not an image")
    files = data.list_images(tmp_path)
    x, kept, skipped = data.load_images(files, model, size=64)
    assert x.shape == (1, 3, 64, 64) and kept == [good] and skipped[0][0].name == "b.jpg"
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no images"):
        data.list_images(empty)
    with pytest.raises(FileNotFoundError):
        data.list_images(tmp_path / "nowhere")


def test_labeled_folder_layouts(tmp_path):
    names = data.imagenet_class_names()
    synsets = data.imagenet_synset_to_index()
    assert len(names) == 1000 and synsets["n01440764"] == 0 and "tench" in names[0].lower()
    for syn in ["n01440764", "n02123045"]:
        (tmp_path / "syn" / syn).mkdir(parents=True)
        Image.new("RGB", (16, 16)).save(tmp_path / "syn" / syn / "x.png")
    ds = data.LabeledImageFolder(tmp_path / "syn", transform=lambda im: torch.zeros(1))
    assert ds.labels == [0, synsets["n02123045"]]
    flat = tmp_path / "flat"
    flat.mkdir()
    for n in ["b.png", "a.png"]:
        Image.new("RGB", (16, 16)).save(flat / n)
    (tmp_path / "labels.txt").write_text("a.png 5\nb.png n01440764\n")
    ds = data.LabeledImageFolder(flat, transform=lambda im: torch.zeros(1), labels_file=tmp_path / "labels.txt")
    assert ds.labels == [5, 0]
    assert data.LabeledImageFolder(flat, transform=lambda im: 0).labels == [-1, -1]


def test_load_model_errors():
    with pytest.raises(ValueError, match="unknown model"):
        load_model("moganet_gigantic")


def test_shipped_examples_follow_the_model():
    from moga_analysis.data import SAMPLE_LABELS, sample_image_paths, shipped_examples
    from moga_analysis.training import load_fmnist_samples

    fmnist = timm.create_model("moganet_xtiny.fmnist_64")  # the tag's preprocessing; weights not needed
    items = shipped_examples(fmnist, 3)
    images, labels = load_fmnist_samples()
    assert [y for _, y in items] == [int(labels[0]), int(labels[149]), int(labels[299])]
    assert torch.equal(items[1][0], images[149])
    photo_model = timm.create_model("resnet18", pretrained=False)
    items = shipped_examples(photo_model, 4)
    assert [y for _, y in items] == [SAMPLE_LABELS[p.stem] for p in sample_image_paths()[:4]]
    assert items[0][0].shape == (3, 224, 224)


def test_run_folder_of_another_format_is_refused(tmp_path):
    """A run folder written by a version with another layout is refused in one sentence naming
    that version; one of this format resumes."""
    import json

    from moga_analysis.runs import RUN_FORMAT, RunFolder, RunMismatchError

    RunFolder(tmp_path / "now", "interactions", {"grid": 4})
    assert json.loads((tmp_path / "now" / "run.json").read_text())["format"] == RUN_FORMAT
    RunFolder(tmp_path / "now", "interactions", {"grid": 4}, resume=True)  # same format: resumes
    old = tmp_path / "old"
    old.mkdir()
    (old / "run.json").write_text(json.dumps({"tool": "interactions", "settings": {"grid": 4},
                                              "environment": {"moga_analysis": "0.1.0"}}))
    with pytest.raises(RunMismatchError, match=r"made by moga_analysis 0\.1\.0.*start a new folder"):
        RunFolder(old, "interactions", {"grid": 4}, resume=True)
    RunFolder(old, "interactions", {"grid": 4}, resume=False)  # starting afresh is fine


def test_analysis_device_without_an_index_does_not_set_the_device(monkeypatch):
    """``"cuda"`` without an index is the current GPU: torch.cuda.set_device refuses a device
    without an index, so analysis_device must not pass it one (simulated: no GPU here)."""
    from moga_analysis import runtime

    calls = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: calls.append(d))
    assert runtime.analysis_device("cuda") == torch.device("cuda") and calls == []
    assert runtime.analysis_device("cuda:1") == torch.device("cuda", 1) and calls == [torch.device("cuda", 1)]
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert runtime.analysis_device("cuda", world=4) == torch.device("cuda", 3)


def test_image_set_keeps_a_subsets_indices_when_labels_are_given():
    """An ImageSet subset passed again with labels keeps its images' positions in the full
    collection (the interactions pipeline seeds each image by that index)."""
    full = data.image_set(torch.zeros(5, 3, 8, 8))
    part = full.subset([1, 3])
    again = data.image_set(part, labels=[2, None])
    assert again.indices == [1, 3] and again.labels == [2, -1]
