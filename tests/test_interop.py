"""shapiq both ways, against an independent truth: the Moebius (Harsanyi) closed form.

For a game with Moebius coefficients a(T), every order's interaction is
I^(m)(i,j) = sum over T containing i and j of a(T) * C(n-|T|, m-|T|+2) / C(n-2, m)
(terms with m-|T|+2 outside [0, n-|T|] are zero).  (a) a shapiq sum-of-unanimity game, whose
coefficients are its unanimity games' weights, comes in through ``from_shapiq_game`` and our exact
and sampled estimators must match the closed form; (b) a 3 x 3 image game goes out through
``to_shapiq_game``, shapiq's ExactComputer gives its Moebius transform, and the closed form of that
transform must reproduce our exact I^(m).
"""

import itertools
import math

import numpy as np
import pytest
import torch
from torch import nn

shapiq = pytest.importorskip("shapiq")
soum = pytest.importorskip("shapiq_games.synthetic")

from moga_analysis.interactions import estimate_interactions, exact_interactions  # noqa: E402
from moga_analysis.interactions.games import HarsanyiGame, ImageMaskingGame  # noqa: E402
from moga_analysis.interactions.interop import MogaGame, from_shapiq_game, to_shapiq_game  # noqa: E402


def closed_form(moebius: dict, n: int, pairs, orders) -> torch.Tensor:
    """I^(m)(i,j) ``[orders, pairs]`` from Moebius coefficients ``{T (tuple): a(T)}``."""
    out = torch.zeros(len(orders), len(pairs), dtype=torch.float64)
    for o, m in enumerate(orders):
        for p, (i, j) in enumerate(pairs):
            total = 0.0
            for T, a in moebius.items():
                t = len(T)
                if i in T and j in T and 0 <= m - t + 2 <= n - t:
                    total += a * math.comb(n - t, m - t + 2)
            out[o, p] = total / math.comb(n - 2, m)
    return out


def soum_moebius(game) -> dict:
    """The Moebius coefficients of a SOUM, read off its unanimity games (not from shapiq's transform)."""
    coef: dict = {}
    for k, u in game.unanimity_games.items():
        T = tuple(int(x) for x in np.flatnonzero(u.interaction_binary))
        coef[T] = coef.get(T, 0.0) + float(game.linear_coefficients[k])
    return coef


def random_masks(k, n, seed=0):
    return torch.rand(k, n, generator=torch.Generator().manual_seed(seed)) < 0.5


# ---------------------------------------------------------------------------------------------
# (a) shapiq -> ours
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def soum_game():
    return soum.SOUM(10, 40, min_interaction_size=1, max_interaction_size=6, random_state=7, normalize=True)


def test_from_shapiq_values_equal_direct_calls(soum_game):
    game = from_shapiq_game(soum_game)
    assert isinstance(game, MogaGame) and game.n_players == 10
    masks = random_masks(64, 10)
    v = game(masks)
    assert v.dtype == torch.float64 and v.shape == (64,)
    assert np.array_equal(v.numpy(), soum_game(masks.numpy()))  # shapiq's normalisation kept as is
    assert game(masks[:0]).shape == (0,)
    chunked = from_shapiq_game(soum_game, batch_size=7)
    assert torch.equal(chunked(masks), v)
    with pytest.raises(TypeError, match="bool"):
        game(masks.float())
    with pytest.raises(ValueError, match=r"\[k, 10\]"):
        game(masks[:, :9])


def test_from_shapiq_batches_one_call_per_batch():
    calls = []

    class Counting(shapiq.Game):
        def __init__(self):
            super().__init__(n_players=5, normalize=False)

        def value_function(self, coalitions):
            calls.append(coalitions.shape[0])
            return coalitions.sum(1).astype(float) ** 2

    game = from_shapiq_game(Counting())
    res = exact_interactions(game, 5, [[0, 1], [2, 4]], batch_size=None)
    assert calls == [32] and game.n_evaluations == 32
    # v(S) = |S|^2: a(T) = 2 for every pair T, so I^(m)(i,j) = 2 at every order
    assert torch.allclose(res.values, torch.full_like(res.values, 2.0))


def test_soum_exact_matches_closed_form(soum_game):
    n = soum_game.n_players
    moebius = soum_moebius(soum_game)
    pairs = [(0, 1), (2, 7), (3, 9), (4, 5), (6, 8), (1, 9)]
    orders = list(range(n - 1))
    truth = closed_form(moebius, n, pairs, orders)
    assert truth.abs().max() > 0.1  # the test sees real interactions
    res = exact_interactions(from_shapiq_game(soum_game), n, pairs, orders)
    assert torch.allclose(res.values, truth, atol=1e-10, rtol=0)
    # shapiq's own Moebius transform of the SOUM agrees with the coefficients read off the game
    shapiq_moebius = {T: v for T, v in soum_game.moebius_coefficients.dict_values.items() if abs(v) > 1e-12}
    assert torch.allclose(closed_form(shapiq_moebius, n, pairs, orders), truth, atol=1e-10, rtol=0)


def test_soum_sampled_within_stderr(soum_game):
    n = soum_game.n_players
    pairs = [(0, 1), (2, 7), (3, 9), (4, 5)]
    orders = [0, 1, 3, 5, 7, 8]
    truth = closed_form(soum_moebius(soum_game), n, pairs, orders)
    res = estimate_interactions(from_shapiq_game(soum_game), n, pairs, orders, 64, method="shared", seed=3)
    err = (res.values - truth).abs()
    assert (err <= 5 * res.stderr + 1e-9).all(), (err / res.stderr.clamp_min(1e-12)).max()
    exact_orders = torch.tensor([m in (0, n - 2) for m in orders])
    assert torch.allclose(res.values[exact_orders], truth[exact_orders], atol=1e-10, rtol=0)
    assert (res.stderr[~exact_orders] > 0).sum() >= 10  # sampled, not exact, at the middle orders


# ---------------------------------------------------------------------------------------------
# (b) ours -> shapiq
# ---------------------------------------------------------------------------------------------
def tiny_net(dtype=torch.float32):
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(32, 5),
    )
    return net.eval().to(dtype)


@pytest.fixture(scope="module")
def image():
    return torch.randn(3, 24, 24, generator=torch.Generator().manual_seed(1))


def test_to_shapiq_values_equal_direct_calls(image):
    game = ImageMaskingGame(tiny_net(), image, grid=3, batch_size=16)
    sg = to_shapiq_game(game)
    assert isinstance(sg, shapiq.Game) and sg.n_players == 9 and sg.normalization_value == 0
    masks = random_masks(40, 9, seed=2)
    assert np.array_equal(sg(masks.numpy()), game(masks).numpy())
    before = game.n_evaluations
    sg(masks.numpy())
    assert game.n_evaluations - before == 40 and sg.n_evaluations == 80
    # shapiq's centred game: every value shifted by v(empty), nothing else
    centred = to_shapiq_game(game, normalize=True)
    empty = float(game(torch.zeros(1, 9, dtype=torch.bool))[0])
    assert centred.normalization_value == empty
    assert np.allclose(centred(masks.numpy()), game(masks).numpy() - empty, atol=1e-12, rtol=0)
    # batches: the whole coalition matrix in one call, or in chunks of batch_size
    calls = []
    counted = to_shapiq_game(lambda m: (calls.append(m.shape[0]), game(m))[1], 9)
    counted(masks.numpy())
    chunked = to_shapiq_game(lambda m: (calls.append(m.shape[0]), game(m))[1], 9, batch_size=16)
    assert np.array_equal(chunked(masks.numpy()), game(masks).numpy())
    assert calls == [40, 16, 16, 8]
    with pytest.raises(ValueError, match="9 players, not 4"):
        to_shapiq_game(game, 4)


def test_round_trips_unwrap(image):
    game = ImageMaskingGame(tiny_net(), image, grid=3)
    assert from_shapiq_game(to_shapiq_game(game)) is game
    raw = soum.SOUM(6, 5, random_state=0, normalize=False)
    assert to_shapiq_game(from_shapiq_game(raw)) is raw
    harsanyi = HarsanyiGame(torch.tensor([[True, True, False], [False, False, False]]), torch.tensor([2.0, 0.5]))
    centred = from_shapiq_game(to_shapiq_game(harsanyi, normalize=True))  # kept wrapped: values shift
    assert isinstance(centred, MogaGame)
    masks = random_masks(20, 3)
    assert torch.equal(centred(masks), harsanyi(masks) - 0.5)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
def test_image_game_moebius_reproduces_exact(image, dtype):
    game = ImageMaskingGame(tiny_net(dtype), image, grid=3, output="log_odds")
    assert game.dtype == dtype  # the game keeps the model's dtype; values come back as float64
    n = game.n_players
    sg = to_shapiq_game(game)
    moebius = shapiq.ExactComputer(sg)("Moebius", order=n)
    coef = {tuple(int(x) for x in T): float(v) for T, v in moebius.dict_values.items()}
    assert len(coef) == 2**n
    pairs = list(itertools.combinations(range(n), 2))
    orders = list(range(n - 1))
    ours = exact_interactions(game, n, pairs, orders)
    truth = closed_form(coef, n, pairs, orders)
    scale = float(ours.values.abs().max())
    assert scale > 1e-3
    # float32: shapiq evaluates the 512 masks in another batch order than ours (last-bit differences)
    tol = 1e-9 if dtype == torch.float64 else 1e-4
    assert torch.allclose(ours.values, truth, atol=tol * scale, rtol=0)
