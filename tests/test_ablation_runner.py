"""The ablation runner end to end on a tiny ImageNet-style folder, including resume."""

import csv
import json

import numpy as np
import pytest
from PIL import Image

import moga_analysis.ablation as ab
from moga_analysis.results import load_tensors

SYNSETS = ["n01440764", "n01443537", "n01484850"]  # ImageNet classes 0, 1, 2


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("imagenet")
    rng = np.random.default_rng(0)
    for syn in SYNSETS:
        (root / syn).mkdir()
        for i in range(2):
            arr = rng.integers(0, 256, size=(40, 48, 3), dtype=np.uint8)
            Image.fromarray(arr).save(root / syn / f"img{i}.png")
    return root


def _argv(data, out, ckpt, *extra):
    return [
        "--model", "moganet_xtiny", "--checkpoint", str(ckpt), "--images", str(data), "--out", str(out),
        "--ablations", "gate", "--stages", "all", "3", "--modes", "zero", "mean", "--num-images", "3",
        "--image-size", "32", "--batch-size", "2", "--workers", "0", "--calibration-images", "2",
        "--no-progress", "-q", "--no-tune-malloc", *extra,
    ]


EXPECTED = ["none", "gate@all", "gate@3", "gate[mean]@all", "gate[mean]@3"]


def test_runner_end_to_end_and_resume(image_folder, tmp_path, reference_dir, monkeypatch):
    ckpt = reference_dir / "moganet_xtiny_seed0.safetensors"
    out = tmp_path / "run"
    assert ab.main(_argv(image_folder, out, ckpt)) == 0

    doc = json.loads((out / "ablation_results.json").read_text())
    metrics, meta = doc["metrics"], doc["metadata"]
    assert list(metrics) == EXPECTED
    assert meta["n_images"] == 3 and meta["n_dataset"] == 6 and meta["model"] == "moganet_xtiny"
    assert meta["environment"]["torch"] and meta["timing"]["images_processed"] == 3
    for m in metrics.values():
        assert m["n_images"] == 3 and m["n_labeled"] == 3  # synset folders give labels
        assert 0 <= m["top1"] <= m["top5"] <= 100 and m["nll"] > 0 and m["kl"] >= 0
    assert metrics["none"]["agreement"] == 100 and metrics["none"]["kl"] == 0
    assert metrics["gate@all"]["kl"] > 0
    rows = list(csv.DictReader((out / "ablation_results.csv").open()))
    assert [r["ablation"] for r in rows] == EXPECTED
    md = (out / "ablation_results.md").read_text()
    assert md.count("\n") == len(EXPECTED) + 2 and "gate" in md
    assert (out / "ablation_accuracy_drop.png").stat().st_size > 0
    assert (out / "ablation_accuracy_drop.pdf").stat().st_size > 0

    # --- an interrupted run, resumed, gives the uninterrupted numbers
    out2 = tmp_path / "interrupted"
    real = ab.evaluate._chunk_stats
    calls = []

    def dies_on_second_batch(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(ab.evaluate, "_chunk_stats", dies_on_second_batch)
    with pytest.raises(KeyboardInterrupt):
        ab.main(_argv(image_folder, out2, ckpt, "--no-figures"))
    tensors, state = load_tensors(out2 / "ablation_state.safetensors")
    assert state["specs"] == EXPECTED
    assert tensors["stats"][:, 0].tolist() == [2.0] * len(EXPECTED)  # one batch of 2 was done
    assert not (out2 / "ablation_results.json").exists()

    seen = []

    def counting(model, x, *a, **k):
        seen.append(x.shape[0])
        return real(model, x, *a, **k)

    monkeypatch.setattr(ab.evaluate, "_chunk_stats", counting)
    assert ab.main(_argv(image_folder, out2, ckpt, "--resume", "--no-figures")) == 0
    assert seen == [1]  # only the third image was left
    resumed = json.loads((out2 / "ablation_results.json").read_text())["metrics"]
    for name in EXPECTED:
        for key in ("top1", "top5", "nll", "agreement", "kl"):
            assert resumed[name][key] == pytest.approx(metrics[name][key], rel=1e-6, abs=1e-9), (name, key)

    # --- resuming a finished run recomputes nothing; a new ablation runs alone over all images
    seen.clear()
    assert ab.main(_argv(image_folder, out2, ckpt, "--resume", "--no-figures")) == 0
    assert seen == []
    argv = _argv(image_folder, out2, ckpt, "--resume", "--no-figures")
    argv[argv.index("gate") + 1:argv.index("gate") + 1] = ["fd"]
    assert ab.main(argv) == 0
    assert seen == [2, 1]
    final = json.loads((out2 / "ablation_results.json").read_text())["metrics"]
    assert list(final) == EXPECTED + ["fd@all", "fd@3"]
    assert final["fd@all"]["kl"] > 0 and final["gate@3"] == resumed["gate@3"]

    # --- resume with other settings is refused
    argv = _argv(image_folder, out2, ckpt, "--resume", "--no-figures")
    argv[argv.index("--num-images") + 1] = "2"
    with pytest.raises(ValueError, match="other settings"):
        ab.main(argv)


def test_runner_unlabeled_folder(tmp_path, reference_dir):
    data = tmp_path / "flat"
    data.mkdir()
    rng = np.random.default_rng(1)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, size=(36, 36, 3), dtype=np.uint8)).save(data / f"x{i}.png")
    out = tmp_path / "out"
    argv = _argv(data, out, reference_dir / "moganet_xtiny_seed0.safetensors")
    argv[argv.index("gate")] = "context"
    del argv[argv.index("mean")]
    argv[argv.index("all"):argv.index("all") + 2] = ["4"]
    assert ab.main(argv) == 0
    metrics = json.loads((out / "ablation_results.json").read_text())["metrics"]
    assert list(metrics) == ["none", "context@4"]
    assert metrics["context@4"]["top1"] is None and metrics["context@4"]["n_labeled"] == 0
    assert 0 <= metrics["context@4"]["agreement"] <= 100
    assert (out / "ablation_accuracy_drop.png").exists()  # falls back to disagreement
