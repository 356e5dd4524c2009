"""``make demo`` with tiny settings: every step runs through the library and writes its figure."""

import json

import pytest

from moga_analysis import demo


@pytest.mark.slow  # about a minute: make test-all
def test_demo_quick_runs_every_step(tmp_path):
    assert demo.main(["--quick", "--out", str(tmp_path), "-q"]) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    steps = ["interactions_fmnist", "interactions_effnet", "maps_fmnist", "gradcam_fmnist", "gradcam_effnet",
             "erf_fmnist", "ablation_fmnist"]
    assert all(summary[s]["status"] == "ok" for s in steps), {s: summary[s]["status"] for s in steps}
    for figure in ("interactions_fmnist/interactions_J", "maps_fmnist/interaction_maps",
                   "gradcam_fmnist/gradcam_grid", "erf_fmnist/erf", "ablation_fmnist/ablation_accuracy_drop"):
        assert (tmp_path / f"{figure}.png").stat().st_size > 1000 and (tmp_path / f"{figure}.pdf").exists()
    curves = summary["interactions_fmnist"]
    from moga_analysis.interactions import orders_from_ratios

    assert set(curves["J"]) == {demo.FULL, demo.NO_GATE} and curves["orders"] == orders_from_ratios(demo.RATIOS, 16)
    # the targets are met at every order (no cap: the completion stage), so nothing warns
    assert all(r <= summary["settings"]["target_noise"] for r in curves["worst_noise_ratio"].values())
    text = demo.format_summary(summary, tmp_path)
    assert "interactions_fmnist/interactions_J.png" in text and "top-1 drop" in text and "lowest J^(m)" in text


def test_demo_summary_for_a_newcomer():
    """The closing summary names each figure, what it shows, and reads the curves and the ablation."""
    summary = {"seconds": 200, "settings": {"target_noise": 0.5},
               "interactions_fmnist": {"status": "ok", "seconds": 60, "orders": [0, 3, 31, 62],
                                       "J": {"m": [2.0, 0.5, 0.3, 1.2]}, "worst_noise_ratio": {"m": 0.48}},
               "ablation_fmnist": {"status": "ok", "seconds": 9, "top1_drop": {"gate@all": 20.0}},
               "erf_fmnist": {"status": "failed: RuntimeError: x"}}
    text = demo.format_summary(summary)
    assert "lowest J^(m) 0.30 at m/(n-2) = 0.50" in text and "highest after m = 0 1.20 at 1.00" in text
    assert "noise ratio <= 0.5 (worst 0.48)" in text and "gate +20.0" in text
    assert "erf_fmnist: failed: RuntimeError: x" in text
    summary["interactions_effnet"] = {"status": "ok", "seconds": 30, "orders": [0, 3, 5], "J": {"e": [2.0, 0.4, 0.6]},
                                      "worst_noise_ratio": {"e": 0.9}}
    assert "fixed contexts, worst noise ratio 0.9" in demo.format_summary(summary)
