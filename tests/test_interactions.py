"""Interaction estimators against closed forms (Harsanyi), shapiq's Moebius transform and each other."""

import math

import numpy as np
import pytest
import torch

from moga_analysis.interactions import (
    REFERENCE_RATIOS,
    InteractionResult,
    bootstrap_relative_strength,
    estimate_interactions,
    exact_interactions,
    orders_from_ratios,
    reference_pairs,
    relative_strength,
)
from moga_analysis.interactions.games import HarsanyiGame


def brute_force(game, n, i, j, m):
    """I^(m)(i,j) straight from the definition with itertools (independent of the library)."""
    import itertools

    others = [p for p in range(n) if p not in (i, j)]
    total, count = 0.0, 0
    for S in itertools.combinations(others, m):
        rows = torch.zeros(4, n, dtype=torch.bool)
        for r, extra in enumerate([(i, j), (i,), (j,), ()]):
            rows[r, list(S) + list(extra)] = True
        v = game(rows)
        total += float(v[0] - v[1] - v[2] + v[3])
        count += 1
    return total / count


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_exact_matches_harsanyi_closed_form(seed):
    n = 11
    pairs = torch.tensor([[0, 1], [2, 7], [10, 3], [4, 5]])
    g = HarsanyiGame.random(n, 40, max_size=6, seed=seed, must_include=pairs[:3].tolist())
    res = exact_interactions(g, n, pairs)
    truth = g.interactions(pairs, range(n - 1))
    assert res.values.shape == (n - 1, 4)
    assert truth.abs().max() > 0.1  # the test game is not trivial
    torch.testing.assert_close(res.values, truth, rtol=0, atol=1e-10)
    assert torch.equal(res.stderr, torch.zeros_like(res.stderr))
    assert res.n_evaluations == 2**n


def test_exact_matches_brute_force_on_a_non_sparse_game():
    n = 7
    W = torch.randn(n, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    game = lambda masks: torch.tanh(masks.double() @ W) + torch.sin(3 * masks.double()[:, 0] * masks.double()[:, 2])
    pairs = torch.tensor([[0, 2], [1, 5], [6, 0]])
    res = exact_interactions(game, n, pairs, orders=[0, 2, 5])
    for o, m in enumerate([0, 2, 5]):
        for p, (i, j) in enumerate(pairs.tolist()):
            assert abs(float(res.values[o, p]) - brute_force(game, n, i, j, m)) < 1e-12


def test_exact_matches_shapiq_moebius_oracle():
    """shapiq computes the Moebius (Harsanyi) transform of an arbitrary game; our enumeration must
    agree with the closed form applied to that transform."""
    shapiq = pytest.importorskip("shapiq")
    n = 8
    rng = np.random.default_rng(5)
    W = rng.normal(size=(n, 3))

    def f_np(X):
        X = np.asarray(X, dtype=float)
        h = np.tanh(X @ W)
        return h[:, 0] * h[:, 1] + np.exp(0.3 * h[:, 2])

    game = lambda masks: torch.from_numpy(f_np(masks.numpy()))
    moebius = shapiq.ExactComputer(f_np, n_players=n)("Moebius", order=n)
    pairs = torch.tensor([[0, 1], [3, 6], [7, 2]])
    res = exact_interactions(game, n, pairs)
    for p, (i, j) in enumerate(pairs.tolist()):
        for m in range(n - 1):
            total = 0.0
            for T, pos in moebius.interaction_lookup.items():
                if i in T and j in T:
                    t = len(T)
                    if 0 <= m - t + 2 <= n - t:
                        total += moebius.values[pos] * math.comb(n - t, m - t + 2) / math.comb(n - 2, m)
            assert abs(float(res.values[m, p]) - total) < 1e-8


@pytest.fixture(scope="module")
def big_game():
    n = 196
    pairs = reference_pairs(14, 40, generator=torch.Generator().manual_seed(1))
    g = HarsanyiGame.random(n, 300, max_size=6, seed=2, must_include=pairs.tolist())
    orders = orders_from_ratios(REFERENCE_RATIOS, n)
    return g, n, pairs, orders, g.interactions(pairs, orders)


@pytest.mark.parametrize("method", ["shared", "independent"])
def test_estimators_unbiased_and_calibrated_at_n196(big_game, method):
    g, n, pairs, orders, truth = big_game
    noisy = HarsanyiGame(g.coalitions, g.dividends, noise=0.3, generator=torch.Generator().manual_seed(9))
    zs = []
    for seed in range(2):
        r = estimate_interactions(noisy, n, pairs, orders, 40, method=method, seed=seed)
        inner = r.stderr > 0
        assert not inner[0].any() and not inner[-1].any() and inner[1:-1].all()
        zs.append(((r.values - truth) / r.stderr)[inner])
    z = torch.cat(zs)
    # calibrated: z ~ N(0,1) (wrong stderr scaling by sqrt(k) would give E z^2 ~ 40 or 1/40)
    assert 0.8 < float((z**2).mean()) < 1.25
    assert abs(float(z.mean())) < 0.15
    assert float((z.abs() > 4).float().mean()) < 0.005


@pytest.mark.parametrize("method", ["shared", "independent"])
def test_endpoint_orders_exact(big_game, method):
    g, n, pairs, orders, truth = big_game
    r = estimate_interactions(g, n, pairs, [0, n - 2], 5, method=method, seed=0)
    torch.testing.assert_close(r.values, truth[[0, -1]], rtol=0, atol=1e-12)
    assert torch.equal(r.stderr, torch.zeros_like(r.stderr))
    assert r.n_samples.tolist() == [1, 1]


def test_noise_free_game_small_error_and_shared_is_cheaper(big_game):
    g, n, pairs, orders, truth = big_game
    rs = estimate_interactions(g, n, pairs, orders, 30, method="shared", seed=1)
    ri = estimate_interactions(g, n, pairs, orders, 30, method="independent", seed=1)
    for r in (rs, ri):
        assert r.values.shape == (len(orders), len(pairs))
        assert (r.n_samples[1:-1] == 30).all()
        err = (r.values - truth).abs()
        # rare-event coalitions can make all 30 samples equal (stderr 0) at low orders: allow a few %
        assert float((err <= 5 * r.stderr + 1e-9).double().mean()) > 0.93
        assert float(err.mean()) < 0.15 * float(truth.abs().mean())
    P, distinct = len(pairs), len(torch.unique(pairs))
    # 4 rows per sample; each exact endpoint: v(anchor) + one row per player + one per pair
    assert ri.n_evaluations == 4 * 30 * P * (len(orders) - 2) + 2 * (1 + distinct + P)
    assert rs.n_evaluations < 0.8 * ri.n_evaluations


def test_split_half_removes_noise_bias(big_game):
    g, n, pairs, orders, truth = big_game
    noisy = HarsanyiGame(g.coalitions, g.dividends, noise=2.0, generator=torch.Generator().manual_seed(4))
    mid = [orders[4], orders[6], orders[8]]
    t2 = (g.interactions(pairs, mid) ** 2).mean(1)
    raw, unb, floor = [], [], []
    for seed in range(4):
        r = estimate_interactions(noisy, n, pairs, mid, 20, method="shared", seed=seed)
        raw.append(r.mean_square_raw())
        unb.append(r.mean_square_unbiased())
        floor.append(r.noise_floor())
    raw, unb = torch.stack(raw).mean(0), torch.stack(unb).mean(0)
    noise_var = 4 * 2.0**2 / 20  # per-pair variance of the mean of 20 second differences
    assert bool((raw - t2 > 0.5 * noise_var).all())  # raw is biased by ~ noise_var
    assert bool(((unb - t2).abs() < 0.35 * noise_var).all())
    f = torch.stack(floor).mean(0)
    torch.testing.assert_close(f, torch.full_like(f, math.sqrt(2 / math.pi) * math.sqrt(noise_var)), rtol=0.15, atol=0)


def test_seed_reproducible_and_seed_sensitive(big_game):
    g, n, pairs, orders, _ = big_game
    g = HarsanyiGame(g.coalitions, g.dividends.round())  # integer values: sums exact in any order
    a = estimate_interactions(g, n, pairs, orders[:4], 6, seed=11)
    b = estimate_interactions(g, n, pairs, orders[:4], 6, seed=11, batch_size=777)
    c = estimate_interactions(g, n, pairs, orders[:4], 6, seed=12)
    assert torch.equal(a.values, b.values) and torch.equal(a.stderr, b.stderr)
    assert not torch.equal(a.values, c.values)


def test_function_form_is_the_fixed_contexts_estimator(big_game):
    """estimate_interactions(..., n_contexts, method=...) is FixedContexts(n_contexts, method).estimate:
    the same numbers, evaluations and method name; it takes no progress argument any more."""
    from moga_analysis.interactions import FixedContexts

    g, n, pairs, orders, _ = big_game
    for method in ("shared", "independent"):
        a = estimate_interactions(g, n, pairs, orders[:4], 6, method=method, seed=5)
        b = FixedContexts(6, method).estimate(g, n, pairs, orders[:4], seed=5)
        assert torch.equal(a.values, b.values) and torch.equal(a.stderr, b.stderr)
        assert a.n_evaluations == b.n_evaluations == FixedContexts(6, method).planned_evaluations(
            n, pairs, orders[:4], seed=5)
        assert a.method == b.method == method and a.seed == 5
    with pytest.raises(TypeError):
        estimate_interactions(g, n, pairs, orders[:4], 6, progress=True)


def test_settings_presets_hold_one_estimator():
    """The presets' estimators, the fingerprint's estimator dict, and settings rebuilt from it."""
    from moga_analysis.interactions import FixedContexts, InteractionSettings, PrecisionTarget

    ref, eff = InteractionSettings.reference(), InteractionSettings.efficient(contexts=20, grid=8)
    assert ref.estimator == FixedContexts(50, "independent") and ref.protocol == "reference" and ref.grid == 14
    assert eff.estimator == FixedContexts(20, "shared") and eff.grid == 8 and eff.target_noise is None
    pre = InteractionSettings.precise(0.2, max_evaluations=5000, pairs=10)
    assert pre.estimator == PrecisionTarget(0.2, 5000) and pre.target_noise == 0.2 and pre.pairs == 10
    maps = InteractionSettings.maps()
    assert maps.pair_rule == "map" and maps.grid == 8 and maps.estimator == FixedContexts(16, "shared")
    fp = pre.fingerprint()
    assert fp["estimator"] == {"estimator": "precision_target", "target_noise": 0.2, "max_evaluations": 5000,
                               "min_contexts": 8, "max_contexts": 4096}  # fmt: skip
    for s in (ref, eff, pre, maps):
        again = InteractionSettings(**{**s.fingerprint(), "ratios": tuple(s.ratios)})
        assert again == s
    for gone in ("method", "contexts", "pilot", "top_up", "pilot_contexts", "min_contexts"):
        with pytest.raises(TypeError):
            InteractionSettings(**{gone: 1})
    with pytest.raises(TypeError, match="estimator"):
        InteractionSettings(estimator="shared")


def test_nan_game_is_an_error():
    game = lambda masks: torch.where(masks.sum(1) > 3, torch.nan, 0.0).double()
    with pytest.raises(ValueError, match="non-finite"):
        estimate_interactions(game, 10, [[0, 1]], [0, 4], 4)


def test_argument_errors():
    game = lambda m: m.sum(1).double()
    with pytest.raises(ValueError):
        estimate_interactions(game, 10, [[0, 0]], [1], 4)
    with pytest.raises(ValueError):
        estimate_interactions(game, 10, [[0, 1]], [9], 4)
    with pytest.raises(ValueError):
        estimate_interactions(game, 10, [[0, 1]], [1], 4, method="magic")
    with pytest.raises(ValueError):
        exact_interactions(game, 30, [[0, 1]])


def test_reference_pairs_rule():
    pairs = reference_pairs(14, 2000, generator=torch.Generator().manual_seed(0))
    yi, xi = pairs[:, 0] // 14, pairs[:, 0] % 14
    yj, xj = pairs[:, 1] // 14, pairs[:, 1] % 14
    cheb = torch.maximum((yi - yj).abs(), (xi - xj).abs())
    assert cheb.min() == 1 and cheb.max() == 2
    # interior anchors: all 24 offsets appear, about equally often
    inner = (yi >= 2) & (yi <= 11) & (xi >= 2) & (xi <= 11)
    offsets = torch.stack([yj - yi, xj - xi], 1)[inner]
    uniq, counts = torch.unique(offsets, dim=0, return_counts=True)
    assert len(uniq) == 24 and counts.min() > 0.4 * counts.float().mean()
    # a corner anchor has only its 8 in-grid neighbours
    corner = pairs[pairs[:, 0] == 0, 1]
    assert set(corner.tolist()) <= {1, 2, 14, 15, 16, 28, 29, 30}
    assert orders_from_ratios(REFERENCE_RATIOS, 196) == [0, 9, 19, 38, 58, 77, 97, 116, 135, 155, 174, 184, 194]


def _fake(values):
    O, P = values.shape
    return InteractionResult(
        torch.tensor([0, 1, 4]),
        torch.zeros(P, 2, dtype=torch.long),
        values,
        torch.zeros_like(values),
        torch.stack([values, values]),
        torch.ones(O, dtype=torch.long),
        0,
        6,
        "exact",
    )


def test_relative_strength_conventions_by_hand():
    # mean|I| per order: image 1 -> [1, 2, 3], image 2 -> [3, 2, 1] => curve [2, 2, 2]... make it asymmetric
    r1 = _fake(torch.tensor([[1.0, -1.0], [2.0, 2.0], [-4.0, 4.0]], dtype=torch.float64))
    r2 = _fake(torch.tensor([[3.0, 3.0], [-2.0, 2.0], [0.0, 0.0]], dtype=torch.float64))
    # curve = [2, 2, 2] over orders [0, 1, 4]? -> image1 [1,2,4], image2 [3,2,0] -> [2, 2, 2]
    J = relative_strength([r1, r2])
    torch.testing.assert_close(J, torch.ones(3, dtype=torch.float64))
    r2b = _fake(torch.tensor([[3.0, 3.0], [-2.0, 2.0], [2.0, 2.0]], dtype=torch.float64))
    # curve = [2, 2, 3]; evaluated mean = 7/3
    J = relative_strength([r1, r2b])
    torch.testing.assert_close(J, torch.tensor([2, 2, 3], dtype=torch.float64) / (7 / 3))
    # all orders 0..4, linear interpolation: [2, 2, 2.333.., 2.666.., 3] -> mean 12/5
    Ja = relative_strength([r1, r2b], normalization="all")
    torch.testing.assert_close(Ja, torch.tensor([2, 2, 3], dtype=torch.float64) / (12 / 5))
    J_lo_hi = bootstrap_relative_strength(torch.tensor([[1.0, 2, 4], [3, 2, 2]]), n_boot=200)
    assert torch.all(J_lo_hi[1] <= J_lo_hi[0] + 1e-12) and torch.all(J_lo_hi[0] <= J_lo_hi[2] + 1e-12)
    with pytest.raises(ValueError):
        relative_strength([r1], normalization="whatever")


def test_result_roundtrip(tmp_path, big_game):
    g, n, pairs, orders, _ = big_game
    r = estimate_interactions(g, n, pairs[:5], orders[:3], 4, seed=0)
    r.save(tmp_path / "r.safetensors")
    back = InteractionResult.load(tmp_path / "r.safetensors")
    assert torch.equal(back.values, r.values) and back.n_evaluations == r.n_evaluations and back.method == r.method


def test_paired_band_difference_known_answers():
    from moga_analysis.interactions import paired_band_difference

    n = 22  # orders 0, 1, 2, 4, 6, 8, 10, 12, 14, 16, 18, 19, 20 = REFERENCE_RATIOS * 20
    orders = orders_from_ratios(REFERENCE_RATIOS, n)
    gen = torch.Generator().manual_seed(0)
    a = torch.rand(6, len(orders), generator=gen, dtype=torch.float64) + 1
    shift = torch.zeros(len(orders), dtype=torch.float64)
    ratio = torch.tensor(orders, dtype=torch.float64) / (n - 2)
    shift[(ratio >= 0.3) & (ratio <= 0.6)] = 0.25  # b = a + 0.25 at middle orders only
    out = paired_band_difference(a, a + shift, orders, n)
    assert out["middle"]["orders"] == [6, 8, 10, 12]
    assert out["middle"]["diff"] == pytest.approx(0.25)
    assert out["middle"]["lower"] == pytest.approx(0.25) and out["middle"]["upper"] == pytest.approx(0.25)
    mid = [orders.index(o) for o in out["middle"]["orders"]]
    assert out["middle"]["relative"] == pytest.approx(0.25 / a[:, mid].mean().item())
    for band in ("low", "high"):
        assert out[band]["diff"] == 0 and out[band]["lower"] == 0 and out[band]["upper"] == 0
    # a per-image difference that varies: the interval holds the mean and has width
    noisy = a + shift + 0.1 * torch.randn(6, len(orders), generator=gen, dtype=torch.float64)
    r = paired_band_difference(a, noisy, orders, n)["middle"]
    assert r["lower"] < r["diff"] < r["upper"]
    with pytest.raises(ValueError, match="holds none"):
        paired_band_difference(a, a, orders, n, {"empty": (0.65, 0.69)})  # m = 13 only
    with pytest.raises(ValueError, match="one shape"):
        paired_band_difference(a, a[:3], orders, n)
