"""PrecisionTarget: the target met at every order, unbiased over seeds, honest stderr, the cap,
reproducibility, the projection; the noise-corrected mean |I| it plans from.

Closed-form games: ``SizeNoiseGame`` (I^(m)(i,j) = a_ij at every order, noise of known variance
per coalition size) and noisy ``HarsanyiGame`` (exact interactions by the Harsanyi closed form)."""

import math

import pytest
import torch

from moga_analysis.interactions import (
    REFERENCE_RATIOS,
    FixedContexts,
    HarsanyiGame,
    InteractionResult,
    PrecisionTarget,
    estimate_interactions,
    exact_interactions,
    orders_from_ratios,
    reference_pairs,
)
from moga_analysis.interactions.estimators import deconvolved_mean_abs

SQRT_2_PI = math.sqrt(2 / math.pi)


class SizeNoiseGame:
    """v(S) = sum over pairs (i,j) inside S of a_ij, plus N(0, sd(|S|)^2) noise per evaluation:
    I^(m)(i,j) = a_ij at every order, and Delta has variance sd(m)^2 + 2 sd(m+1)^2 + sd(m+2)^2."""

    def __init__(self, n, pairs, a, sd, seed=0):
        self.n, self.pairs, self.a, self.sd = n, pairs, a, sd
        self.gen = torch.Generator().manual_seed(seed)

    def __call__(self, masks):
        m = masks.double()
        v = (m[:, self.pairs[:, 0]] * m[:, self.pairs[:, 1]]) @ self.a
        return v + self.sd(masks.sum(1).double()) * torch.randn(len(v), generator=self.gen, dtype=torch.float64)


def noisy(g, noise, seed):
    return HarsanyiGame(g.coalitions, g.dividends, noise=noise, generator=torch.Generator().manual_seed(seed))


def seed_t(errors):
    """t statistic of the mean of per-seed errors [S, ...] (each seed's mean over the rest): the
    pairs of one run share contexts, so only the seeds are independent."""
    u = errors.flatten(1).mean(1)
    return float(u.mean() / (u.std() / math.sqrt(len(u))))


N36 = 36
TAU = 0.2


def _size_noise_setup():
    """A 6 x 6 game with 10 distinct pairs whose middle orders are 6x noisier than its ends."""
    n = N36
    pairs = torch.unique(reference_pairs(6, 12, generator=torch.Generator().manual_seed(3)).sort(1).values, dim=0)[:10]
    a = torch.randn(len(pairs), generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    sd = lambda size: 0.1 + 0.5 * torch.sin(math.pi * size / n)
    return n, pairs, a, sd, orders_from_ratios(REFERENCE_RATIOS, n)


def _size_noise_runs(seeds):
    n, pairs, a, sd, orders = _size_noise_setup()
    runs = [PrecisionTarget(TAU).estimate(SizeNoiseGame(n, pairs, a, sd, seed=100 + s), n, pairs, orders, seed=s)
            for s in seeds]
    return runs, a, orders


@pytest.fixture(scope="module")
def size_noise_runs():
    return _size_noise_runs(range(6))


@pytest.fixture(scope="module")
def size_noise_runs_50():
    return _size_noise_runs(range(50))


def check_target_met(runs, a, orders, min_completed):
    for r in runs:
        ratio = r.noise_ratio()
        assert float(ratio.max()) <= TAU, (r.seed, ratio)
        assert r.metadata["missed_orders"] == [] and all(r.metadata["target_met"])
        torch.testing.assert_close(torch.tensor(r.metadata["noise_ratio"], dtype=torch.float64), ratio)
        md = r.metadata
        parts = ("endpoint_evaluations", "pilot_evaluations", "round_evaluations", "main_evaluations",
                 "top_up_evaluations", "completion_evaluations")
        assert r.n_evaluations == sum(md[k] for k in parts)
    # the completion stage is what guarantees it: it ran on some seeds
    assert sum(r.metadata["completion_evaluations"] > 0 for r in runs) >= min_completed


def check_unbiased_and_calibrated(runs, a, t_max, calibration=(0.8, 1.25)):
    """Mean errors against the truth over seeds (t per order), and the stderr's calibration:
    squared errors over the reported stderr^2 (means over seeds, orders and pairs)."""
    values = torch.stack([r.values for r in runs])[:, 1:-1]
    var = torch.stack([r.stderr**2 for r in runs])[:, 1:-1]
    err = values - a
    assert abs(seed_t(err / var.sqrt())) < t_max
    for o in range(err.shape[1]):  # no order is off either
        assert abs(seed_t(err[:, o] / var[:, o].sqrt())) < t_max + 0.5
    calibration_ratio = float((err**2).mean() / var.mean())
    assert calibration[0] <= calibration_ratio <= calibration[1], calibration_ratio


def test_target_met_at_every_order(size_noise_runs):
    check_target_met(*size_noise_runs, min_completed=1)


def test_unbiased_and_calibrated(size_noise_runs):
    check_unbiased_and_calibrated(size_noise_runs[0], size_noise_runs[1], t_max=4.5, calibration=(0.7, 1.4))


@pytest.fixture(scope="module")
def size_noise_runs_capped():
    """The same game under a cap of about 1.5x its need: the main stage has no top-up, so the
    completion (within the budget's rest) is what meets the target."""
    n, pairs, a, sd, orders = _size_noise_setup()
    est = PrecisionTarget(TAU, max_evaluations=10_000)
    runs = [est.estimate(SizeNoiseGame(n, pairs, a, sd, seed=100 + s), n, pairs, orders, seed=s) for s in range(6)]
    return runs, a, orders


def test_a_cap_above_the_need_still_meets_the_target(size_noise_runs_capped):
    runs = size_noise_runs_capped[0]
    assert all(r.n_evaluations <= 10_000 and not r.metadata["budget_capped"] for r in runs)
    assert all(r.metadata["top_up_evaluations"] == 0 for r in runs)
    check_target_met(*size_noise_runs_capped, min_completed=3)
    check_unbiased_and_calibrated(*size_noise_runs_capped[:2], t_max=4.5, calibration=(0.7, 1.4))


@pytest.mark.slow
def test_target_met_at_every_order_over_50_seeds(size_noise_runs_50):
    check_target_met(*size_noise_runs_50, min_completed=5)


@pytest.mark.slow
def test_unbiased_and_calibrated_over_50_seeds(size_noise_runs_50):
    check_unbiased_and_calibrated(size_noise_runs_50[0], size_noise_runs_50[1], t_max=3.5)


def test_completion_lifts_the_floor_of_the_pilot_rounds():
    """A game whose middle orders need 10x the samples of its ends: planned from 8-sample pilots,
    some orders end the main stage above the target (pilot rounds whose fixed weights leave a
    variance floor, or a short plan); the completion stage brings every order to it."""
    n = 100
    pairs = torch.unique(reference_pairs(10, 24, generator=torch.Generator().manual_seed(3)).sort(1).values, dim=0)
    a = torch.randn(len(pairs), generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    sd = lambda size: 0.4 + 2.0 * torch.sin(math.pi * size / n)
    orders = orders_from_ratios(REFERENCE_RATIOS, n)
    r = PrecisionTarget(0.15).estimate(SizeNoiseGame(n, pairs, a, sd, seed=3), n, pairs, orders, seed=3)
    assert float(r.noise_ratio().max()) <= 0.15
    assert max(r.metadata["completion_rounds"]) >= 1 and r.metadata["completion_evaluations"] > 0
    z = (r.values[1:-1] - a) / r.stderr[1:-1]
    assert float((z**2).mean()) < 1.5


@pytest.fixture(scope="module")
def game100():
    """A 10 x 10 Harsanyi game (its interactions in closed form)."""
    n = 100
    pairs = reference_pairs(10, 12, generator=torch.Generator().manual_seed(1))
    g = HarsanyiGame.random(n, 80, max_size=5, seed=2, must_include=pairs.tolist())
    orders = orders_from_ratios(REFERENCE_RATIOS, n)
    return g, n, pairs, orders, g.interactions(pairs, orders)


@pytest.mark.slow
def test_unbiased_on_a_harsanyi_game(game100):
    g, n, pairs, orders, truth = game100
    runs = [PrecisionTarget(0.3).estimate(noisy(g, 0.3, 100 + s), n, pairs, orders, seed=s) for s in range(16)]
    assert all(float(r.noise_ratio().max()) <= 0.3 for r in runs)
    values = torch.stack([r.values for r in runs])[:, 1:-1]
    var = torch.stack([r.stderr**2 for r in runs])[:, 1:-1]
    err = values - truth[1:-1]
    assert abs(seed_t(err / var.sqrt())) < 4
    assert 0.7 < float((err**2).mean() / var.mean()) < 1.4


def test_cap_respected_and_reported(game100, caplog):
    g, n, pairs, orders, _ = game100
    cap = 10_000  # a target of 0.05 needs far more
    with caplog.at_level("WARNING"):
        r = PrecisionTarget(0.05, max_evaluations=cap).estimate(noisy(g, 0.3, 1), n, pairs, orders, seed=3)
    md = r.metadata
    assert r.n_evaluations <= cap and md["max_evaluations"] == cap and md["budget_capped"]
    assert md["missed_orders"] and md["top_up_evaluations"] == 0
    assert md["missed_orders"] == [m for m, ok in zip(orders, md["target_met"]) if not ok]
    assert "miss noise ratio" in caplog.text and "budget ran out" in caplog.text
    with pytest.raises(ValueError, match="too small"):
        PrecisionTarget(0.1, max_evaluations=500).estimate(g, n, pairs, orders)


def test_settings_are_checked():
    for bad in (dict(target_noise=0), dict(target_noise=-1), dict(min_contexts=2), dict(max_contexts=4),
                dict(max_evaluations=0)):
        with pytest.raises(ValueError):
            PrecisionTarget(**{"target_noise": 0.1, **bad})
    with pytest.raises(ValueError, match="sharing"):
        FixedContexts(8, "sometimes")
    with pytest.raises(ValueError, match="contexts"):
        FixedContexts(1)


def test_same_seed_bit_identical_and_batch_invariant(game100):
    g, n, pairs, orders, _ = game100
    est = PrecisionTarget(0.25)
    gi = HarsanyiGame(g.coalitions, g.dividends)
    a = est.estimate(gi, n, pairs, orders, seed=11)
    again = est.estimate(gi, n, pairs, orders, seed=11)
    b = est.estimate(gi, n, pairs, orders, seed=11, batch_size=333)
    c = est.estimate(gi, n, pairs, orders, seed=12)
    assert torch.equal(a.values, again.values) and torch.equal(a.stderr, again.stderr)
    # another batch size: the game's own rounding differs (1e-15), nothing else
    torch.testing.assert_close(a.values, b.values, rtol=0, atol=1e-12)
    assert a.n_evaluations == b.n_evaluations
    assert not torch.equal(a.values, c.values)


def test_endpoint_orders_exact(game100):
    g, n, pairs, _, _ = game100
    r = PrecisionTarget(0.3).estimate(g, n, pairs, [0, 40, n - 2], seed=0)
    torch.testing.assert_close(r.values[[0, 2]], g.interactions(pairs, [0, n - 2]), rtol=0, atol=1e-12)
    assert torch.equal(r.stderr[[0, 2]], torch.zeros(2, len(pairs), dtype=torch.float64))
    assert r.metadata["noise_ratio"][0] == 0.0 and r.metadata["target_met"][0]


def test_projection_is_close_to_the_run(size_noise_runs):
    n, pairs, a, sd, orders = _size_noise_setup()
    counted = []
    game = SizeNoiseGame(n, pairs, a, sd, seed=100)

    def counting(masks):
        counted.append(len(masks))
        return game(masks)

    proj = PrecisionTarget(TAU).project(counting, n, pairs, orders, seed=0)
    run = size_noise_runs[0][0]  # the same game and seed
    assert proj["pilot_evaluations"] == sum(counted)
    assert 0.5 < proj["projected_evaluations"] / run.n_evaluations < 2.0
    assert PrecisionTarget(TAU).planned_evaluations(n, pairs, orders) is None


def test_fixed_contexts_planned_evaluations_exact(game100):
    g, n, pairs, orders, _ = game100
    for sharing in ("shared", "independent"):
        est = FixedContexts(5, sharing)
        r = est.estimate(g, n, pairs, orders, seed=4)
        assert est.planned_evaluations(n, pairs, orders, seed=4) == r.n_evaluations


def test_fixed_contexts_bit_identical_to_the_golden_file():
    """Values written by the fixed-context estimator before it became an object."""
    from pathlib import Path

    from safetensors.torch import load_file

    golden = load_file(str(Path(__file__).parent / "golden" / "fixed_estimators_golden.safetensors"))
    n = 36
    game = HarsanyiGame.random(n, 40, max_size=5, seed=3)
    for sharing in ("independent", "shared"):
        for seed in (0, 7):
            r = FixedContexts(6, sharing).estimate(game, n, golden["pairs"], golden["orders"], seed=seed)
            k = f"{sharing}_{seed}"
            assert torch.equal(r.values, golden[k + "_values"]) and torch.equal(r.stderr, golden[k + "_stderr"])
            assert torch.equal(r.half_values, golden[k + "_half_values"])
            assert r.n_evaluations == int(golden[k + "_n_evaluations"])
            f = estimate_interactions(game, n, golden["pairs"], golden["orders"], 6, method=sharing, seed=seed)
            assert torch.equal(f.values, r.values)


def test_fixed_contexts_pipeline_matches_the_golden_file():
    """Same pairs, contexts and evaluation count as the golden file; values to float32 model precision.

    The model runs in float32, whose convolution kernels differ between CPUs in the last bits
    (a different machine moved one value by 2e-6); different contexts would move them by 1e-2.
    """
    from pathlib import Path

    import timm
    from safetensors.torch import load_file

    from moga_analysis.fmnist import load_fmnist_samples
    from moga_analysis.interactions import InteractionSettings, image_interactions

    golden = load_file(str(Path(__file__).parent / "golden" / "fixed_estimators_golden.safetensors"))
    model = timm.create_model("moganet_xtiny.fmnist_64", pretrained=True).eval()
    image = load_fmnist_samples()[0][0]
    for name in ("reference", "efficient"):
        s = getattr(InteractionSettings, name)(grid=4, pairs=3, contexts=4)
        r = image_interactions(model, image, s, seed=5)
        torch.testing.assert_close(r.values, golden[f"image_{name}_values"], rtol=0, atol=5e-5)
        assert torch.equal(r.pairs, golden[f"image_{name}_pairs"])
        assert r.n_evaluations == int(golden[f"image_{name}_n_evaluations"])


def test_saved_result_roundtrip(tmp_path, game100):
    g, n, pairs, orders, _ = game100
    r = PrecisionTarget(0.3).estimate(noisy(g, 0.3, 2), n, pairs, orders[:5], seed=0)
    r.save(tmp_path / "a.safetensors")
    back = InteractionResult.load(tmp_path / "a.safetensors")
    assert back.method == "precision" and back.metadata == r.metadata
    for f in ("values", "stderr", "half_values", "n_samples"):
        assert torch.equal(getattr(back, f), getattr(r, f))


# ---------------------------------------------------------------------- the noise-corrected mean |I|
def test_deconvolved_mean_abs_on_synthetic_estimates():
    g = torch.Generator().manual_seed(0)
    B, P = 30, 50
    mu = torch.distributions.Laplace(0.0, 1.0).sample((B, P)).double()
    A = mu.abs().mean(-1)
    s = (torch.rand(B, P, generator=g, dtype=torch.float64) + 0.5)
    s = s / s.mean(-1, keepdim=True) * 0.5 * A[:, None] / SQRT_2_PI  # noise floor = half the signal
    x = mu + s * torch.randn(B, P, generator=g, dtype=torch.float64)
    raw_bias = float((x.abs().mean(-1) / A).mean() - 1)
    d = deconvolved_mean_abs(x, s)
    assert d.shape == (B,)
    bias = float((d / A).mean() - 1)
    assert raw_bias > 0.12 and abs(bias) < 0.05
    torch.testing.assert_close(deconvolved_mean_abs(x[:2], torch.zeros_like(x[:2])), x[:2].abs().mean(-1))
    assert deconvolved_mean_abs(x.view(3, 10, P), s.view(3, 10, P)).shape == (3, 10)


def test_debiased_mean_abs_against_closed_form_with_noise():
    n = 196
    pairs = reference_pairs(14, 20, generator=torch.Generator().manual_seed(1))
    g = HarsanyiGame.random(n, 150, max_size=5, seed=2, must_include=pairs.tolist())
    orders = orders_from_ratios(REFERENCE_RATIOS, n)
    mid = orders[3:10]
    true_abs = g.interactions(pairs, mid).abs().mean(1)
    raw, deb = [], []
    for seed in range(4):
        r = estimate_interactions(noisy(g, 1.5, 60 + seed), n, pairs, mid, 12, method="shared", seed=seed)
        raw.append(r.mean_abs())
        deb.append(r.mean_abs_debiased())
    raw, deb = torch.stack(raw).mean(0), torch.stack(deb).mean(0)
    raw_err = (raw / true_abs - 1).abs()
    deb_err = (deb / true_abs - 1).abs()
    assert float(raw_err.mean()) > 0.15
    assert float(deb_err.mean()) < 0.5 * float(raw_err.mean())


@pytest.mark.slow
def test_unbiased_at_small_n_against_enumeration():
    n = 8
    pairs = torch.tensor([[0, 1], [2, 5], [3, 7], [4, 6], [1, 6], [0, 7]])
    g = HarsanyiGame.random(n, 20, max_size=5, seed=7, must_include=pairs.tolist(), scale=2.0)
    truth = exact_interactions(g, n, pairs).values
    orders = list(range(n - 1))
    errs, var = [], []
    for s in range(50):
        r = PrecisionTarget(0.25).estimate(noisy(g, 0.5, s), n, pairs, orders, seed=s)
        errs.append((r.values - truth)[1:-1])
        var.append((r.stderr**2)[1:-1])
    err, var = torch.stack(errs), torch.stack(var)
    assert abs(seed_t(err / var.sqrt())) < 4
    assert 0.8 < float((err**2).mean() / var.mean()) < 1.25


@pytest.mark.slow
def test_the_top_up_is_bounded_on_a_real_image():
    """On the first shipped Fashion-MNIST image (target 0.5, 8 x 8 grid, 12 pairs, seed 0) one
    half's few samples put an order's signal near zero; an unbounded top-up then drew 2,088
    contexts per pair there (86,418 evaluations in all).  Bounded, the run meets the target with
    about 11,000."""
    from moga_analysis.fmnist import load_fmnist_samples
    from moga_analysis.interactions import InteractionSettings, compute_interactions

    images, labels = load_fmnist_samples()
    name = "moganet_xtiny.fmnist_64"
    r = compute_interactions([name], images[:1], InteractionSettings.precise(0.5, grid=8, pairs=12),
                             labels=labels[:1].tolist(), progress=False)[name]
    assert float(r.noise_ratio().max()) <= 0.5
    assert r.n_evaluations < 20_000
