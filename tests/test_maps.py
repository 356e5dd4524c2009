"""Per-cell interaction maps: pair sets, truth on Harsanyi games, noise floor, results, figure."""

import math

import pytest
import torch
from torch import nn

from moga_analysis.interactions import (
    FixedContexts,
    HarsanyiGame,
    ImageMaskingGame,
    InteractionMaps,
    InteractionSettings,
    MapDifference,
    compute_interactions,
    estimate_interactions,
    exact_interactions,
    map_difference,
    map_pairs,
    maps_from_result,
    pair_incidence,
    paired_band_difference,
)
from moga_analysis.interactions.maps import band_orders, map_orders
from moga_analysis.results import load_result


# ------------------------------------------------------------------------------------- pair sets
def _closed_form_count(g, r, neighbourhood):
    if neighbourhood == "right_down":
        return 2 * sum(g * (g - d) for d in range(1, r + 1))
    offsets = [(dy, dx) for dy in range(r + 1) for dx in range(-r, r + 1) if dy > 0 or dx > 0]
    return sum((g - abs(dy)) * (g - abs(dx)) for dy, dx in offsets)


@pytest.mark.parametrize("neighbourhood", ["right_down", "chebyshev"])
@pytest.mark.parametrize("g,r", [(2, 1), (3, 1), (4, 2), (7, 1), (8, 1), (8, 3)])
def test_map_pairs_cover_every_cell_once_each(g, r, neighbourhood):
    pairs = map_pairs(g, r, neighbourhood)
    assert pairs.dtype == torch.long and pairs.shape[1] == 2
    assert len(pairs) == _closed_form_count(g, r, neighbourhood)
    assert (pairs[:, 0] < pairs[:, 1]).all()
    assert len({tuple(p) for p in pairs.tolist()}) == len(pairs)  # no duplicates (unordered: i < j)
    y, x = pairs // g, pairs % g
    dist = torch.maximum((y[:, 0] - y[:, 1]).abs(), (x[:, 0] - x[:, 1]).abs())
    assert ((dist >= 1) & (dist <= r)).all()
    if neighbourhood == "right_down":  # same row or same column
        assert ((y[:, 0] == y[:, 1]) | (x[:, 0] == x[:, 1])).all()
    inc = pair_incidence(pairs, g * g)
    assert inc.shape == (g * g, len(pairs))
    assert (inc.sum(0) == 2).all()
    assert (inc.sum(1) >= 1).all()  # every cell is covered
    assert int(inc.sum()) == 2 * len(pairs)


def test_map_pairs_degrees_right_down():
    deg = pair_incidence(map_pairs(8), 64).sum(1).view(8, 8)
    assert deg[0, 0] == 2 and deg[7, 7] == 2 and deg[0, 7] == 2 and deg[0, 3] == 3 and deg[3, 3] == 4
    deg = pair_incidence(map_pairs(8, neighbourhood="chebyshev"), 64).sum(1).view(8, 8)
    assert deg[0, 0] == 3 and deg[3, 3] == 8
    # the pairs of a cell are the ones that hold it
    inc = pair_incidence(map_pairs(4), 16)
    for c in range(16):
        held = {p for p, (i, j) in enumerate(map_pairs(4).tolist()) if c in (i, j)}
        assert set(inc[c].nonzero().flatten().tolist()) == held


def test_map_pairs_rejects_bad_settings():
    with pytest.raises(ValueError):
        map_pairs(1)
    with pytest.raises(ValueError):
        map_pairs(4, radius=0)
    with pytest.raises(ValueError):
        map_pairs(4, radius=4)
    with pytest.raises(ValueError):
        map_pairs(4, neighbourhood="diamond")


# ------------------------------------------------------------------------------------------ bands
def test_band_orders_follow_paired_band_difference():
    n = 64
    orders = map_orders(n)
    sel = band_orders(orders, n)
    per = torch.rand(3, len(orders))
    ref = paired_band_difference(per, per + 1, orders, n, n_boot=10)
    assert {k: [orders[i] for i in v] for k, v in sel.items()} == {k: v["orders"] for k, v in ref.items()}
    assert map_orders(64, ratios=(0.0, 0.1, 0.5, 0.9, 1.0)) == [6, 31, 55]
    with pytest.raises(ValueError):
        band_orders([31], 64)  # no low or high order


# ---------------------------------------------------------------------------- truth: Harsanyi
def _game(n, terms):
    """HarsanyiGame with dividends ``{cells: a}`` (dyadic values: sums are exact in float64)."""
    C = torch.zeros(len(terms), n, dtype=torch.bool)
    for r, cells in enumerate(terms):
        C[r, list(cells)] = True
    return HarsanyiGame(C, torch.tensor(list(terms.values()), dtype=torch.float64))


def _truth_maps(game, grid, pairs, orders, bands=None):
    """Independent aggregation of the closed form: per cell and band, mean over the cell's pairs
    of the mean over the band's orders of |I| (and signed), by explicit loops."""
    n = grid * grid
    closed = game.interactions(pairs, orders)  # [O, P]
    sel = band_orders(orders, n, bands)
    abs_map = torch.zeros(len(sel), grid, grid, dtype=torch.float64)
    signed_map = torch.zeros_like(abs_map)
    for b, idx in enumerate(sel.values()):
        for c in range(n):
            mine = [p for p, (i, j) in enumerate(pairs.tolist()) if c in (i, j)]
            vals = closed[idx][:, mine]
            abs_map[b, c // grid, c % grid] = vals.abs().mean()
            signed_map[b, c // grid, c % grid] = vals.mean()
    return abs_map, signed_map


BANDS4 = {"low": (0.0, 0.2), "middle": (0.3, 0.6), "high": (0.7, 1.0)}


def test_exact_maps_put_the_mass_where_the_closed_form_says():
    g, n = 4, 16
    # a pair dividend (all orders alike), a low-order object (pair minus a triple: I = a (1 - m/(n-2)))
    # and a large coalition of 7 cells (I^(m) = 0 for m < 5: high orders only)
    terms = {
        (5, 6): 1.0,
        (8, 12): 2.0,
        (8, 12, 13): -2.0,
        (0, 1, 2, 3, 7, 11, 15): 4.0,
    }
    game = _game(n, terms)
    pairs = map_pairs(g)
    orders = list(range(n - 1))
    res = exact_interactions(game, n, pairs, orders)
    maps = maps_from_result(res, g, BANDS4, model="harsanyi")
    truth_abs, truth_signed = _truth_maps(game, g, pairs, orders, BANDS4)
    torch.testing.assert_close(maps.mean_abs[0], truth_abs, rtol=0, atol=1e-12)
    torch.testing.assert_close(maps.signed[0], truth_signed, rtol=0, atol=1e-12)
    assert (maps.noise_floor == 0).all()
    torch.testing.assert_close(maps.mean_square_unbiased[0].clamp_min(0).sqrt(), maps.rms_unbiased()[0])

    support = {c for cells in terms for c in cells}
    m = maps.mean_abs[0]  # [B, g, g]
    for c in range(n):
        if c not in support:  # no dividend holds the cell: exactly 0 in every band
            assert (m[:, c // g, c % g] == 0).all()
    low, high = 0, 2
    # the pair dividend reads the same in every band at its two cells: 1 over their pairs
    deg = maps.n_pairs_per_cell.flatten()
    for c in (5, 6):
        assert float(m[low, c // g, c % g]) == pytest.approx(1.0 / int(deg[c]))
        assert float(m[high, c // g, c % g]) == pytest.approx(1.0 / int(deg[c]))
    # pair (8, 12) carries 2 (1 - m/(n-2)) (low orders), pair (12, 13) -2 m/(n-2) (high orders):
    # cell 8 holds the first only, cell 13 the second only, cell 12 both (equal in both bands)
    assert m[low, 2, 0] > 4 * m[high, 2, 0]
    assert m[high, 3, 1] > 4 * m[low, 3, 1]
    assert float(m[low, 3, 0]) == pytest.approx(float(m[high, 3, 0]))
    # the 7-cell coalition (top row and right column) is zero at low orders, present at high ones
    for c in (1, 2, 7, 11):
        assert m[low, c // g, c % g] == 0 and m[high, c // g, c % g] > 0.1
    # band orders as recorded
    assert maps.band_orders == {"low": [0, 1, 2], "middle": [4, 5, 6, 7, 8], "high": [9, 10, 11, 12, 13, 14]}


def test_sampled_maps_match_the_closed_form_within_stderr_at_grid_8():
    g, n = 8, 64
    terms = {
        (27, 28): 1.0,  # a pair in the middle
        (9, 10, 17): 0.5,  # a small object: I^(m) = a m/(n-2) on its pairs
        tuple(range(40, 48)) + (48, 49): 2.0,  # 10 cells: high orders only
    }
    game = _game(n, terms)
    pairs = map_pairs(g)
    orders = map_orders(n)  # the reference ratios inside the default bands
    res = estimate_interactions(game, n, pairs, orders, 24, method="shared", seed=3)
    maps = maps_from_result(res, g)
    truth_abs, truth_signed = _truth_maps(game, g, pairs, orders)
    bound = maps.signed_stderr_bound()[0]
    err = (maps.signed[0] - truth_signed).abs()
    # (1e-6: at m = 12 the 10-cell coalition adds 6e-8, which 24 contexts never see)
    assert (err <= 4 * bound + 1e-6).all()
    # z-scores (independence assumed: the bound is conservative) are not all tiny either
    assert float((err / bound.clamp_min(1e-12)).max()) > 0.3
    support = {c for cells in terms for c in cells}
    outside = torch.tensor([c not in support for c in range(n)]).view(g, g)
    assert (maps.mean_abs[0][:, outside] == 0).all() and (maps.noise_floor[0][:, outside] == 0).all()
    # the pair dividend's cells carry 1/deg in every band; the 10-cell object only at high orders
    for b in range(3):
        assert float(maps.signed[0, b, 3, 3]) == pytest.approx(0.25, abs=1e-9)  # cell 27: exact (|T| = 2)
    high, low = maps.band_index("high"), maps.band_index("low")
    assert float(truth_abs[low, 5, 3]) < 1e-6 and float(maps.mean_abs[0, high, 5, 3]) > 0.05
    tol = float(4 * bound.max())
    torch.testing.assert_close(maps.mean_abs[0][:, ~outside], truth_abs[:, ~outside], rtol=0, atol=tol)


def test_additive_game_maps_are_zero_or_at_the_noise_floor():
    g, n = 8, 64
    C = torch.eye(n, dtype=torch.bool)
    a = torch.arange(n, dtype=torch.float64) - 20.0  # integers: exact sums
    pairs = map_pairs(g)
    orders = map_orders(n)
    res = estimate_interactions(HarsanyiGame(C, a), n, pairs, orders, 8, method="shared", seed=0)
    maps = maps_from_result(res, g)
    assert (maps.mean_abs == 0).all() and (maps.signed == 0).all() and (maps.noise_floor == 0).all()

    sigma = 0.1
    noisy = HarsanyiGame(C, a, noise=sigma, generator=torch.Generator().manual_seed(1))
    k = 16
    res = estimate_interactions(noisy, n, pairs, orders, k, method="shared", seed=0)
    maps = maps_from_result(res, g)
    ratio = maps.mean_abs / maps.noise_floor
    assert 0.85 < float(ratio.mean()) < 1.15  # pure noise: mean |I| ~ its floor
    # the floor is what it should be: sqrt(2/pi) * 2 sigma / sqrt(k) (Delta has four noisy terms)
    expected = math.sqrt(2 / math.pi) * 2 * sigma / math.sqrt(k)
    assert float(maps.noise_floor.mean()) == pytest.approx(expected, rel=0.1)
    # the split-half mean square is unbiased for 0
    assert abs(float(maps.mean_square_unbiased.mean())) < 0.2 * float((maps.mean_abs**2).mean())


def test_maps_from_result_leaves_uncovered_cells_nan():
    from moga_analysis.interactions import reference_pairs

    g, n = 8, 64
    pairs = reference_pairs(g, 5)
    game = _game(n, {tuple(pairs[0].tolist()): 1.0})
    res = estimate_interactions(game, n, pairs, map_orders(n), 4, seed=0)
    maps = maps_from_result(res)
    covered = pair_incidence(pairs, n).any(1).view(g, g)
    assert torch.isnan(maps.mean_abs[0][:, ~covered]).all()
    assert torch.isfinite(maps.mean_abs[0][:, covered]).all()
    assert not maps.above_floor()[0][:, ~covered].any()


# ----------------------------------------------------------------------- end to end, results
class _TinyNet(nn.Module):
    def __init__(self, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.head = nn.Linear(8 * 4, 5)

    def forward(self, x):
        h = torch.relu(self.conv(x))
        h = nn.functional.adaptive_avg_pool2d(h * h.mean(1, keepdim=True), 2)
        return self.head(h.flatten(1))


def _map_settings(**kw):
    return InteractionSettings.maps(**{"grid": 4, "contexts": 4, "ratios": (0.1, 0.5, 0.9), **kw})


def _run_maps(models, images, settings=None, labels=(1, None)):
    """``stack.maps`` of the pipeline's map run (the only way to maps of models on images)."""
    stack = compute_interactions(models, images, settings or _map_settings(),
                                 labels=None if labels is None else list(labels), batch_size=256, progress=False)
    return stack.maps


@pytest.fixture(scope="module")
def tiny_maps():
    torch.manual_seed(0)
    images = torch.randn(2, 3, 16, 16)
    both = _run_maps({"net1": _TinyNet(0).eval(), "net2": _TinyNet(1).eval()}, images)
    m1_again = _run_maps({"net1": _TinyNet(0).eval()}, images)["net1"]
    return images, both["net1"], m1_again, both["net2"]


def test_interaction_maps_end_to_end(tiny_maps):
    images, m1, m1_again, _ = tiny_maps
    assert m1.mean_abs.shape == (2, 3, 4, 4) and m1.n_images == 2
    assert m1.band_names == ["low", "middle", "high"]
    assert m1.orders.tolist() == [1, 7, 12] and m1.band_orders == {"low": [1], "middle": [7], "high": [12]}
    assert m1.targets[0] == 1 and m1.model == "net1" and m1.method == "shared" and m1.n_contexts == 4
    assert (m1.n_evaluations > 0).all()
    assert m1.metadata["settings"]["grid"] == 4 and m1.metadata["image_ids"] == ["tensor[0]", "tensor[1]"]
    assert m1.metadata["image_indices"] == [0, 1]
    assert torch.isfinite(m1.mean_abs).all() and (m1.noise_floor > 0).all()
    # the counted evaluations are the game's, and the values the estimator's with the image's seed
    game = ImageMaskingGame(_TinyNet(0).eval(), images[0], 1, grid=4, batch_size=256)
    res = FixedContexts(4, "shared").estimate(game, 16, map_pairs(4), [1, 7, 12], seed=int(m1.seeds[0]),
                                              batch_size=256)  # fmt: skip
    assert int(m1.n_evaluations[0]) == res.n_evaluations == game.n_evaluations
    torch.testing.assert_close(m1.pair_values[0], res.values)
    torch.testing.assert_close(m1.mean_abs[0], maps_from_result(res, 4).mean_abs[0])
    # one image at a time (its index kept), stacked, is the same run
    from moga_analysis.data import image_set

    one = _run_maps({"net1": _TinyNet(0).eval()}, image_set(images, labels=[1, None]).subset([1]), labels=None)
    assert one["net1"].metadata["image_indices"] == [1]
    torch.testing.assert_close(one["net1"].mean_abs[0], m1.mean_abs[1], rtol=0, atol=0)


def test_same_seed_gives_the_same_maps(tiny_maps):
    """Two compute_interactions calls with the same settings and seed: bit-identical maps; another
    seed draws other contexts."""
    images, m1, m1_again, _ = tiny_maps
    for f in ("mean_abs", "signed", "noise_floor", "mean_square_unbiased", "pair_values", "pair_stderr",
              "pair_half_values", "seeds", "n_evaluations", "targets"):  # fmt: skip
        assert torch.equal(getattr(m1, f), getattr(m1_again, f)), f
    other = _run_maps({"net1": _TinyNet(0).eval()}, images, _map_settings(seed=5))["net1"]
    assert not torch.equal(other.seeds, m1.seeds) and not torch.equal(other.pair_values, m1.pair_values)


def test_exact_maps_of_an_image_game_agree_with_the_sampled_pipeline():
    """Maps by exact enumeration (exact_interactions + maps_from_result) on a real network's game:
    exact (floor 0, 2^n evaluations, no seed), and the pipeline's sampled maps of the same game
    agree with them within their stderr bound."""
    torch.manual_seed(0)
    net, img = _TinyNet(0).eval(), torch.randn(3, 9, 9)
    settings = InteractionSettings.maps(grid=3, contexts=24, ratios=(0.0, 0.15, 0.3, 0.45, 0.6, 0.72, 0.86))
    assert settings.orders == list(range(7))
    game = ImageMaskingGame(net, img, grid=3, batch_size=512)
    res = exact_interactions(game, 9, map_pairs(3), settings.orders, batch_size=512)
    exact = maps_from_result(res, 3, model="net", target=game.target)
    assert res.n_evaluations == 2**9 == game.n_evaluations and exact.n_evaluations.tolist() == [2**9]
    assert (exact.noise_floor == 0).all() and exact.seeds.tolist() == [-1] and exact.n_contexts == 0
    assert exact.band_orders == {"low": [0, 1], "middle": [2, 3, 4], "high": [4, 5, 6]}
    # the maps average the exact values over each cell's pairs and the band's orders
    by_hand = torch.zeros(3, 3, 3, dtype=torch.float64)
    for b, idx in enumerate(exact.band_orders.values()):
        for c in range(9):
            mine = [p for p, (i, j) in enumerate(map_pairs(3).tolist()) if c in (i, j)]
            by_hand[b, c // 3, c % 3] = res.values[idx][:, mine].abs().mean()
    torch.testing.assert_close(exact.mean_abs[0], by_hand, rtol=0, atol=1e-12)

    sampled = _run_maps({"net": net}, img[None], settings, labels=[game.target])["net"]
    assert sampled.targets.tolist() == [game.target] and (sampled.noise_floor > 0).any()
    bound = sampled.signed_stderr_bound()[0]
    assert ((sampled.signed[0] - exact.signed[0]).abs() <= 4 * bound + 1e-5).all()
    torch.testing.assert_close(sampled.mean_abs[0], exact.mean_abs[0], rtol=0, atol=float(4 * bound.max()) + 1e-5)
    with pytest.raises(ValueError, match="does not divide"):
        _run_maps({"net": net}, torch.randn(1, 3, 10, 10), settings, labels=[None])


def test_save_load_round_trip(tiny_maps, tmp_path):
    _, m1, _, m2 = tiny_maps
    path = m1.save(tmp_path / "maps.safetensors")
    back = InteractionMaps.load(path)
    assert isinstance(load_result(path), InteractionMaps)
    for f in ("mean_abs", "signed", "noise_floor", "mean_square_unbiased", "pairs", "orders", "pair_values",
              "pair_half_values", "targets", "n_evaluations", "seeds", "n_pairs_per_cell"):  # fmt: skip
        torch.testing.assert_close(getattr(back, f), getattr(m1, f), rtol=0, atol=0)
    assert back.bands == m1.bands and back.band_orders == m1.band_orders and back.metadata == m1.metadata
    assert back.bands["low"] == (0.05, 0.2)
    d = map_difference(m1, m2, n_boot=50)
    dback = MapDifference.load(d.save(tmp_path / "diff.safetensors"))
    torch.testing.assert_close(dback.diff, d.diff, rtol=0, atol=0)
    assert dback.bands == d.bands and dback.model_b == "net2"


def test_stack_select_and_rebanding(tiny_maps):
    _, m1, _, m2 = tiny_maps
    st = InteractionMaps.stack([m1.select(0), m1.select([1])])
    torch.testing.assert_close(st.mean_abs, m1.mean_abs, rtol=0, atol=0)
    assert st.metadata["image_ids"] == ["tensor[0]", "tensor[1]"]
    with pytest.raises(ValueError, match="model"):
        InteractionMaps.stack([m1, m2])
    rb = m1.with_bands({"all": (0.0, 1.0)})
    assert rb.mean_abs.shape == (2, 1, 4, 4)
    mean_over_bands = m1.mean_abs.mean(1)  # one order per band here, so the means agree
    torch.testing.assert_close(rb.mean_abs[:, 0], mean_over_bands)
    torch.testing.assert_close(m1.with_bands(m1.bands).mean_square_unbiased, m1.mean_square_unbiased)


def test_paired_difference(tiny_maps):
    _, m1, m1_again, m2 = tiny_maps
    d0 = map_difference(m1, m1_again)
    assert (d0.diff == 0).all() and (d0.per_image == 0).all() and (d0.lower == 0).all() and (d0.upper == 0).all()
    assert not d0.significant().any()
    d = map_difference(m1, m2, n_boot=200)
    assert d.diff.shape == (3, 4, 4) and d.n_images == 2
    torch.testing.assert_close(d.diff, (m2.mean_abs - m1.mean_abs).mean(0))
    assert (d.lower <= d.diff + 1e-12).all() and (d.upper >= d.diff - 1e-12).all()
    assert (d.estimator_stderr > 0).all() and torch.isfinite(d.stderr).all()
    ds = map_difference(m1, m2, "signed", n_boot=10)
    torch.testing.assert_close(ds.diff, (m2.signed - m1.signed).mean(0))
    # not the same design: refused
    with pytest.raises(ValueError, match="images"):
        map_difference(m1, m2.select(0))
    other_seed = _run_maps({"net2": _TinyNet(1).eval()}, torch.randn(2, 3, 16, 16), _map_settings(seed=5))["net2"]
    with pytest.raises(ValueError, match="seed"):
        map_difference(m1, other_seed)


# ----------------------------------------------------------------------------------------- figure
def test_plot_interaction_maps(tiny_maps, tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    from moga_analysis.interactions.map_plot import plot_interaction_maps
    from moga_analysis.plotting.style import save_figure

    images, m1, _, m2 = tiny_maps
    display = (images - images.min()) / (images.max() - images.min())
    cams = torch.rand(2, 16, 16)
    names = ["a", "b", "c", "d", "a very long class name"]
    fig, axes = plot_interaction_maps(display, m1, cams=cams, class_names=names)
    assert axes.shape == (2, 5)
    paths = save_figure(fig, tmp_path / "one", close=True)
    assert Image.open(paths[0]).size[0] >= 1000 and paths[1].stat().st_size > 0
    d = map_difference(m1, m2, n_boot=20)
    fig, axes = plot_interaction_maps(display, [m1, m2], cams=[cams, cams], models=["full", "no gate"],
                                      difference=d)  # fmt: skip
    assert axes.shape == (2, 1 + 4 + 4 + 3)
    paths = save_figure(fig, tmp_path / "two", close=True)
    assert Image.open(paths[0]).size[0] >= 1000
    # without Grad-CAM, one group
    fig, axes = plot_interaction_maps(display, m1)
    assert axes.shape == (2, 4)
    plt.close(fig)
    with pytest.raises(ValueError):
        plot_interaction_maps(display[:1], m1)
