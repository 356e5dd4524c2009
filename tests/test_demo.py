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
    assert "ablation table" in demo.format_summary(summary)
