"""ImageMaskingGame against hand-built masked images; HarsanyiGame against enumeration."""

import itertools
import math

import pytest
import torch
from torch import nn

from moga_analysis.interactions.games import HarsanyiGame, ImageMaskingGame


class TinyNet(nn.Module):
    def __init__(self, classes=7):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 8, 5, stride=2, padding=2)
        self.head = nn.Linear(8 * 4, classes)

    def forward(self, x):
        x = torch.relu(self.conv(x))
        x = nn.functional.adaptive_avg_pool2d(x, 2).flatten(1)
        return self.head(x)


@pytest.fixture(scope="module")
def net():
    return TinyNet().eval().double()


@pytest.fixture(scope="module")
def image():
    return torch.randn(3, 24, 24, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


def hand_masked(image, baseline, mask_row, grid):
    """Masked image built cell by cell with Python loops (the slow, obvious way)."""
    C, H, W = image.shape
    ch, cw = H // grid, W // grid
    out = baseline.clone()
    for cell in range(grid * grid):
        if mask_row[cell]:
            r, c = divmod(cell, grid)
            out[:, r * ch : (r + 1) * ch, c * cw : (c + 1) * cw] = image[
                :, r * ch : (r + 1) * ch, c * cw : (c + 1) * cw
            ]
    return out


@pytest.mark.parametrize("baseline", ["mean", "zero", "blur", "tensor"])
def test_masked_images_match_hand_built(net, image, baseline):
    grid = 4
    base = torch.randn(3, 24, 24, dtype=torch.float64) if baseline == "tensor" else baseline
    game = ImageMaskingGame(
        net, image, grid=grid, baseline=base, batch_size=5, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3)
    )
    if baseline == "mean":
        expect_base = torch.zeros_like(image)
    elif baseline == "zero":
        expect_base = (
            -torch.tensor([0.5, 0.4, 0.3], dtype=torch.float64) / torch.tensor([0.2, 0.25, 0.3], dtype=torch.float64)
        )[:, None, None].expand_as(image)
    elif baseline == "tensor":
        expect_base = base
    else:
        expect_base = game.baseline
        # a blur keeps the mean colour roughly and is smoother than the image
        assert game.baseline.diff(dim=2).abs().mean() < 0.2 * image.diff(dim=2).abs().mean()
    masks = torch.rand(9, grid * grid, generator=torch.Generator().manual_seed(2)) < 0.5
    masks[0] = False
    masks[1] = True
    built = game.masked_images(masks)
    for r in range(len(masks)):
        torch.testing.assert_close(built[r], hand_masked(image, expect_base, masks[r], grid), rtol=0, atol=1e-12)
    torch.testing.assert_close(built[1], image)


@pytest.mark.parametrize("output", ["log_odds", "logit", "log_prob"])
def test_values_match_model_outputs(net, image, output):
    grid = 3
    masks = torch.rand(6, 9, generator=torch.Generator().manual_seed(3)) < 0.5
    game = ImageMaskingGame(net, image, target=2, grid=grid, output=output, batch_size=4)
    v = game(masks)
    assert v.shape == (6,) and v.dtype == torch.float64
    for r in range(6):
        with torch.no_grad():
            z = net(hand_masked(image, torch.zeros_like(image), masks[r], grid)[None])[0]
        if output == "logit":
            ref = z[2]
        elif output == "log_prob":
            ref = torch.log_softmax(z, 0)[2]
        else:
            p = torch.softmax(z, 0)[2]
            ref = torch.log(p / (1 - p))
        assert abs(float(v[r]) - float(ref)) < 1e-9
    assert game.n_evaluations == 6


def test_target_none_is_predicted_class(net, image):
    game = ImageMaskingGame(net, image, grid=3)
    assert game.target == int(net(image[None]).argmax())


def test_batch_size_invariance_float32(image):
    net = TinyNet().eval()
    img = image.float()
    masks = torch.rand(23, 16, generator=torch.Generator().manual_seed(4)) < 0.5
    ref = ImageMaskingGame(net, img, grid=4, batch_size=1)(masks)
    for bs in (2, 7, 23, 64):
        torch.testing.assert_close(ImageMaskingGame(net, img, grid=4, batch_size=bs)(masks), ref, rtol=0, atol=1e-5)


def test_errors(net, image):
    with pytest.raises(ValueError, match="does not divide"):
        ImageMaskingGame(net, image, grid=5)
    with pytest.raises(ValueError, match="out of range"):
        ImageMaskingGame(net, image, grid=4, target=7)
    with pytest.raises(ValueError, match="unknown baseline"):
        ImageMaskingGame(net, image, grid=4, baseline="noise")
    with pytest.raises(ValueError, match="unknown output"):
        ImageMaskingGame(net, image, grid=4, output="prob")
    game = ImageMaskingGame(net, image, grid=4)
    with pytest.raises(ValueError):
        game(torch.zeros(2, 15, dtype=torch.bool))
    with pytest.raises(TypeError):
        game(torch.zeros(2, 16))


def test_image_not_mutated(net, image):
    before = image.clone()
    ImageMaskingGame(net, image, grid=4, baseline="blur")(torch.rand(3, 16) < 0.5)
    assert torch.equal(image, before)


def test_harsanyi_game_values_and_closed_form_by_hand():
    # v(S) = 2*[{0,1} in S] - 3*[{0,1,2} in S] + 5*[{3} in S], n = 4
    C = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 0], [0, 0, 0, 1]], dtype=torch.bool)
    g = HarsanyiGame(C, torch.tensor([2.0, -3.0, 5.0]))
    allm = torch.tensor(list(itertools.product([0, 1], repeat=4)), dtype=torch.bool)
    v = g(allm)
    for row, val in zip(allm.tolist(), v.tolist()):
        exp = 2 * (row[0] and row[1]) - 3 * (row[0] and row[1] and row[2]) + 5 * row[3]
        assert val == exp
    # I^(0)(0,1) = 2; I^(1)(0,1): S in {{2},{3}} -> (2-3 + 2)/2 = 0.5; I^(2)(0,1): S={2,3} -> -1
    I = g.interactions(torch.tensor([[0, 1], [0, 3]]), [0, 1, 2])
    torch.testing.assert_close(I[:, 0], torch.tensor([2.0, 0.5, -1.0], dtype=torch.float64))
    torch.testing.assert_close(I[:, 1], torch.zeros(3, dtype=torch.float64))
    assert math.isclose(float(I[1, 0]), 0.5)
