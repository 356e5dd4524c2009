"""experiments/benchmarks/bench_context_variance.py: the block design and the spread gain it measures."""

import importlib.util
from pathlib import Path

import pytest
import torch

from moga_analysis.interactions import HarsanyiGame
from moga_analysis.interactions.estimators import _random_subsets

PATH = Path(__file__).resolve().parents[1] / "experiments" / "benchmarks" / "bench_context_variance.py"


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("bench_context_variance", PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("m", [3, 9])
def test_block_contexts_are_disjoint_blocks_of_order_m(script, m):
    n, i, j, T = 14, 2, 7, 2000
    S, g = script.block_contexts(n, i, j, m, T, torch.Generator().manual_seed(0))
    assert g == 4 and S.shape == (T * g, n)
    assert (S.sum(1) == m).all() and not S[:, [i, j]].any()
    varying = S if m <= n - 2 - m else ~S  # the blocks: present at low orders, absent at high orders
    varying[:, [i, j]] = False
    assert (varying.view(T, g, n).sum(1) == 1).sum(1).eq(n - 2).all()  # g blocks tile the 12 players
    # each block is uniform over the 220 subsets of 3 of the 12 players: chi^2 (219 df, sd 21)
    codes = (varying.long() * 2 ** torch.arange(n)).sum(1)
    counts = torch.unique(codes, return_counts=True)[1].double()
    assert len(counts) == 220
    expected = T * g / 220
    assert ((counts - expected) ** 2 / expected).sum() < 219 + 5 * 21


def _table_game(n, seed):
    values = torch.randn(2**n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    weights = 2 ** torch.arange(n)
    return lambda masks: values[(masks.long() * weights).sum(1)]


@pytest.mark.parametrize("m", [3, 9])
def test_block_gain_is_infinite_for_additive_and_one_for_unstructured_second_differences(script, m):
    n, i, j, T = 14, 2, 7, 3000
    gen = torch.Generator().manual_seed(1)
    # Harsanyi dividends on {i, j, k}: Delta(i, j, S) = sum of a(ijk) over k in S, additive in S
    others = [c for c in range(n) if c not in (i, j)]
    coal = torch.zeros(len(others), n, dtype=torch.bool)
    coal[:, [i, j]] = True
    coal[torch.arange(len(others)), others] = True
    additive = HarsanyiGame(coal, torch.randn(len(others), generator=gen, dtype=torch.float64))
    S, g = script.block_contexts(n, i, j, m, T, gen)
    d = script.second_differences(additive, S, i, j)
    assert d.var() > 0.1 and d.view(T, g).mean(1).var() < 1e-20  # the tiling cancels it exactly
    # independent values on every coalition: disjoint contexts share no evaluation, no gain
    d = script.second_differences(_table_game(n, 2), S, i, j)
    assert script.block_gain(d, g) == pytest.approx(1.0, abs=0.12)


def test_main_reports_the_block_column(script, capsys):
    r2 = script.main(["--images", "1", "--pairs", "1", "--samples", "24", "--ratios", "0.1", "0.9",
                      "--permutations", "4", "--batch-size", "64"])
    out = capsys.readouterr().out
    assert "blocks, measured gain" in out and "spread, median gain" in out
    assert "| n/a (63 coefficients, 12 samples) |" in out  # 24 contexts cannot fit the linear model
    assert [len(v["blocks"]) for v in r2.values()] == [1, 1] == [len(v["spread"]) for v in r2.values()]
    assert all(v["blocks"][0] > 0 for v in r2.values())


def test_spread_gain_finds_a_context_dependent_spread_and_no_gain_without_one(script):
    grid, i, j, m, K = 4, 5, 10, 2, 20000
    n = grid * grid
    ring = [0, 1, 2, 4, 6, 8, 9]  # Chebyshev radius 1 of player 5 on the 4 x 4 grid, less i and j
    gen = torch.Generator().manual_seed(3)
    excl = torch.zeros(K, n, dtype=torch.bool)
    excl[:, [i, j]] = True
    S = _random_subsets(K, n, m, gen, excl)
    noise = torch.randn(K, generator=gen, dtype=torch.float64)
    local = script.ring_counts(grid, i, j, S)
    # Delta = scale(S) * noise with scale^2 linear in the present players of the ring (0, 1 or 2 of them)
    scale = (0.05 + S[:, ring].sum(1).double()).sqrt()
    expected = float((scale**2).mean() / scale.mean() ** 2)  # E[s^2] / E[s]^2, the optimum's gain
    assert expected > 1.1
    assert script.spread_gain(local, scale * noise) == pytest.approx(expected, rel=0.06)
    assert script.spread_gain(local, noise) == pytest.approx(1.0, abs=0.03)
