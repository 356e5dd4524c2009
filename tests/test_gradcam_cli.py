"""End-to-end CLIs on tiny random-weight models and the shipped photos (PNG + PDF, tables)."""

import csv
import json

import pytest

from moga_analysis import erf, gradcam


@pytest.mark.slow
def test_gradcam_cli_writes_figure_and_metrics(tmp_path):
    out = tmp_path / "cam"
    rc = gradcam.main(
        [
            "--model",
            "moganet_xtiny",
            "--compare",
            "resnet18",
            "--random-weights",
            "--image-size",
            "64",
            "--num-images",
            "2",
            "--steps",
            "4",
            "--out",
            str(out),
            "--no-progress",
            "-q",
            "--sanity",
        ]
    )
    assert rc == 0
    assert (out / "gradcam_grid.png").stat().st_size > 0 and (out / "gradcam_grid.pdf").stat().st_size > 0
    rows = json.loads((out / "metrics.json").read_text())["rows"]
    assert [r["model"] for r in rows] == ["moganet_xtiny", "resnet18"]
    assert rows[0]["layer"] == "norm4" and rows[1]["layer"] == "layer4"
    assert all(0 <= r["deletion_auc"] <= 1 and r["n_images"] == 2 for r in rows)
    table = list(csv.DictReader((out / "metrics.csv").open()))
    assert len(table) == 2 and "insertion_auc" in table[0] and "sanity_spearman" in table[0]
    from moga_analysis.results import load_result

    cam = load_result(out / "cam_resnet18.safetensors")
    assert cam.maps.shape == (2, 64, 64) and cam.metadata["settings"]["image_size"] == 64


@pytest.mark.slow
def test_erf_cli_writes_heatmaps_and_area_table(tmp_path):
    out = tmp_path / "erf"
    with pytest.warns(UserWarning):
        rc = erf.main(
            [
                "--model",
                "moganet_xtiny",
                "--compare",
                "resnet18",
                "--random-weights",
                "--image-size",
                "64",
                "--num-images",
                "2",
                "--batch-size",
                "1",
                "--out",
                str(out),
                "--no-progress",
                "-q",
            ]
        )
    assert rc == 0
    assert (out / "erf.png").exists() and (out / "erf.pdf").exists()
    rows = json.loads((out / "area_ratio.json").read_text())["rows"]
    assert [r["n_images"] for r in rows] == [2, 2]
    assert all(0 < r["t=0.2"] <= r["t=0.5"] <= r["t=0.99"] <= 1 for r in rows)
    res = erf.ERFResult.load(out / "erf_moganet_xtiny.safetensors")
    assert res.map.shape == (64, 64) and res.n_images == 2


def test_plots_are_pure_functions_of_results():
    import matplotlib

    matplotlib.use("Agg")
    import torch

    from moga_analysis.erf import ERFResult
    from moga_analysis.erf.plot import erf_display, plot_erf
    from moga_analysis.gradcam import CAMResult
    from moga_analysis.gradcam.plot import overlay, plot_cam_grid

    maps = torch.rand(2, 16, 16)
    cam = CAMResult(
        raw=torch.randn(2, 4, 4),
        maps=maps,
        targets=torch.tensor([1, 2]),
        scores=torch.zeros(2),
        probs=torch.tensor([0.3, 0.9]),
        layer="norm4",
        layout="nchw",
    )
    fig, axes = plot_cam_grid(torch.rand(2, 3, 16, 16), {"a": cam, "b": cam})
    assert axes.shape == (2, 3)
    ov = overlay(torch.zeros(3, 16, 16), torch.zeros(16, 16), alpha=0.5)  # jet(0) is dark blue
    assert ov.shape == (16, 16, 3) and ov[..., 2].min() > 0.2 and ov[..., 0].max() < 0.05
    m = torch.zeros(9, 9)
    m[4, 4] = 99.0
    m[0, 0] = 9.0
    d = erf_display(m)
    assert float(d[4, 4]) == 1.0 and abs(float(d[0, 0]) - 0.5) < 1e-6
    fig2, axes2 = plot_erf({"x": ERFResult(m, 1, "norm4", (1, 3, 3), (1, 1))})
    assert len(axes2) == 2  # heatmap + table
    import matplotlib.pyplot as plt

    plt.close(fig)
    plt.close(fig2)
