"""Checkpoint loading: every wrapper format, strictness, corrupt files, pickles that carry code."""

import pickle

import pytest
import timm
import torch
from safetensors.torch import load_file, save_file

from moga_analysis.models import CheckpointError, CheckpointMismatchError, load_checkpoint


@pytest.fixture(scope="module")
def reference_sd(reference_dir):
    return load_file(str(reference_dir / "moganet_xtiny_seed0.safetensors"))


def _fresh():
    return timm.create_model("moganet_xtiny")


def _assert_loaded(model, sd):
    own = model.state_dict()
    assert all(torch.equal(own[k], v) for k, v in sd.items())


@pytest.mark.parametrize(
    "wrap",
    [
        lambda sd: sd,
        lambda sd: {"state_dict": sd, "epoch": 300, "arch": "moganet_xtiny"},  # official .pth.tar layout
        lambda sd: {"model": sd},
        lambda sd: {"state_dict": {"module." + k: v for k, v in sd.items()}},
        lambda sd: {"state_dict": {"backbone." + k: v for k, v in sd.items()}},
    ],
    ids=["bare", "state_dict", "model", "module_prefix", "backbone_prefix"],
)
def test_wrapper_formats(tmp_path, reference_sd, wrap):
    path = tmp_path / "ckpt.pth.tar"
    torch.save(wrap(reference_sd), path)
    model = load_checkpoint(_fresh(), path)
    _assert_loaded(model, reference_sd)


def test_ema_weights_are_chosen_on_request(tmp_path, reference_sd):
    ema = {k: (v + 1 if v.is_floating_point() else v) for k, v in reference_sd.items()}
    path = tmp_path / "ckpt.pth.tar"
    torch.save({"state_dict": reference_sd, "state_dict_ema": ema}, path)
    _assert_loaded(load_checkpoint(_fresh(), path), reference_sd)
    _assert_loaded(load_checkpoint(_fresh(), path, use_ema=True), ema)


def test_safetensors_file(reference_dir, reference_sd):
    _assert_loaded(load_checkpoint(_fresh(), reference_dir / "moganet_xtiny_seed0.safetensors"), reference_sd)


def test_mismatch_lists_everything_and_loads_nothing(tmp_path, reference_sd):
    bad = dict(reference_sd)
    del bad["head.weight"]
    bad["extra.weight"] = torch.zeros(3)
    bad["blocks1.0.attn.proj_1.weight"] = torch.zeros(8, 32, 1, 1)
    model = _fresh()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointMismatchError) as info:
        load_checkpoint(model, bad)
    err = info.value
    assert err.missing == ["head.weight"] and err.unexpected == ["extra.weight"]
    assert err.shape_mismatch == [("blocks1.0.attn.proj_1.weight", (8, 32, 1, 1), (32, 32, 1, 1))]
    assert "head.weight" in str(err) and "extra.weight" in str(err) and "[8, 32, 1, 1]" in str(err)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # nothing loaded
    # non-strict keeps the model's values where the checkpoint does not fit, loads the rest
    load_checkpoint(model, bad, strict=False)
    assert torch.equal(model.state_dict()["head.weight"], before["head.weight"])
    assert torch.equal(model.state_dict()["blocks2.0.norm1.running_var"], reference_sd["blocks2.0.norm1.running_var"])


def test_drop_head_for_other_class_counts(reference_sd):
    model = timm.create_model("moganet_xtiny", num_classes=10)
    load_checkpoint(model, reference_sd, drop_head=True)
    assert model.head.weight.shape == (10, 192)
    assert torch.equal(model.state_dict()["norm4.weight"], reference_sd["norm4.weight"])


def test_corrupt_files(tmp_path):
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"this is not a checkpoint")
    with pytest.raises(CheckpointError, match="corrupt|not a PyTorch|refusing"):
        load_checkpoint(_fresh(), junk)
    truncated = tmp_path / "cut.safetensors"
    save_file({"a": torch.zeros(100)}, str(truncated))
    truncated.write_bytes(truncated.read_bytes()[:50])
    with pytest.raises(CheckpointError, match="safetensors"):
        load_checkpoint(_fresh(), truncated)
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(_fresh(), tmp_path / "missing.pth")


class _Payload:
    def __reduce__(self):
        import os

        return (os.system, ("touch PWNED",))


def test_pickle_carrying_code_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"state_dict": _Payload()}, f)
    with pytest.raises(CheckpointError, match="refusing"):
        load_checkpoint(_fresh(), path)
    assert not (tmp_path / "PWNED").exists()


def test_offline_download_names_url_and_local_file(monkeypatch, tmp_path):
    import socket

    from moga_analysis.models import hub

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    closed = f"http://127.0.0.1:{sock.getsockname()[1]}"
    sock.close()
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setenv(hub.MIRROR_ENV, closed)  # every download is refused at once, as offline
    monkeypatch.delenv(hub.WEIGHTS_DIR_ENV, raising=False)
    url = "https://example.invalid/weights/moganet_xtiny.pth.tar"
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(_fresh(), url)
    msg = str(info.value)
    assert url in msg and "--checkpoint PATH" in msg
    assert str(tmp_path / "hub" / "checkpoints" / "moganet_xtiny.pth.tar") in msg
    # create_model(pretrained=True) goes through the same path, with the official URL
    with pytest.raises(CheckpointError, match="moganet_xtiny_sz224_8xbs128_ep300.pth.tar"):
        timm.create_model("moganet_xtiny", pretrained=True)


def test_pretrained_from_local_file_via_cfg_overlay(reference_dir, reference_sd):
    path = str(reference_dir / "moganet_xtiny_seed0.safetensors")
    model = timm.create_model("moganet_xtiny", pretrained=True, pretrained_cfg_overlay=dict(file=path))
    _assert_loaded(model, reference_sd)
    assert model.weights_provenance["kind"] == "file" and model.weights_provenance["file"] == path
