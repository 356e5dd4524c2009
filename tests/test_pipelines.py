"""The library's pipeline layer: run folders, image sets, model specs, readers, tables, figures.

Everything a CLI does is reachable with plain arguments; these tests call the library directly.
"""

import json
from pathlib import Path

import pytest
import timm
import torch

import moga_analysis  # noqa: F401
from moga_analysis.data import choose_subset, image_set, iter_batches
from moga_analysis.results import Column, load_result, markdown_table, write_table
from moga_analysis.runs import RunFolder, RunMismatchError, SkippedItem, settings_diff
from moga_analysis.specs import ModelSpec, model_specs

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------ run folders
def test_run_folder_resume_refuses_other_settings_with_a_readable_diff(tmp_path):
    RunFolder(tmp_path, "demo", {"grid": 8, "pairs": 16})
    RunFolder(tmp_path, "demo", {"grid": 8, "pairs": 16}, resume=True)  # same settings: fine
    with pytest.raises(RunMismatchError, match=r"pairs: 16 \(saved\) vs 32 \(now\)") as err:
        RunFolder(tmp_path, "demo", {"grid": 8, "pairs": 32}, resume=True)
    assert "grid" not in str(err.value)  # only what differs
    RunFolder(tmp_path, "demo", {"grid": 8, "pairs": 32})  # without resume: a fresh run
    with pytest.raises(RunMismatchError, match="holds a 'demo' run"):
        RunFolder(tmp_path, "other", {"grid": 8, "pairs": 32}, resume=True)


def test_run_folder_items_keep_their_identity(tmp_path):
    run = RunFolder(tmp_path, "t", {"a": 1})
    item = SkippedItem("unreadable", {"item": {"image": "a.png", "index": 0}})
    run.save_item("m/img_00000", item)
    assert not run.done("m/img_00000", {"image": "a.png", "index": 0})  # not resuming: recompute
    run = RunFolder(tmp_path, "t", {"a": 1}, resume=True)
    assert run.done("m/img_00000", {"image": "a.png", "index": 0})
    assert not run.done("m/img_00001", {"image": "b.png", "index": 1})
    assert run.load_item("m/img_00000") == item
    with pytest.raises(RunMismatchError, match="other inputs"):
        run.done("m/img_00000", {"image": "c.png", "index": 0})


def test_run_folder_refuses_other_weights_on_resume(tmp_path):
    run = RunFolder(tmp_path, "t", {})
    run.check_weights("m", {"location": "a.pth", "sha256": "aa"})
    run = RunFolder(tmp_path, "t", {}, resume=True)
    run.check_weights("m", {"location": "elsewhere/a.pth", "sha256": "aa"})  # same hash: the same weights
    run.mark_complete(models=["m"])
    with pytest.raises(RunMismatchError, match="other weights"):
        RunFolder(tmp_path, "t", {}, resume=True).check_weights("m", {"location": "a.pth", "sha256": "bb"})
    assert RunFolder.is_complete(tmp_path)  # a refused resume leaves the finished run as it was
    assert RunFolder.is_complete(tmp_path) and not RunFolder.is_complete(tmp_path / "nothing")
    assert RunFolder.read_record(tmp_path)["weights"]["m"]["sha256"] == "aa"


def test_settings_diff_compares_as_json():
    assert settings_diff({"r": [0.1, 0.2]}, {"r": (0.1, 0.2)}) == {}
    assert settings_diff({"a": 1}, {"a": 1, "b": 2}) == {"b": (None, 2)}


# ------------------------------------------------------------------------------ images and models
def test_one_subset_rule_is_seeded_sorted_and_nested():
    a = choose_subset(300, 16, seed=0)
    assert a == sorted(a) and len(set(a)) == 16 and a == choose_subset(300, 16, seed=0)
    assert choose_subset(300, 16, seed=1) != a
    assert set(a) <= set(choose_subset(300, 32, seed=0))  # more images keep the ones already done
    assert choose_subset(5, None) == choose_subset(5, 9) == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match=">= 1"):
        choose_subset(5, 0)


def test_image_sets_from_every_kind_of_input(tmp_path):
    shipped = image_set()
    assert [Path(n).stem for n in shipped.names] == ["astronaut", "chelsea", "coffee", "rocket"]
    assert shipped.labels == [-1, 285, 967, -1]  # tabby cat / espresso where clearly right
    sub = image_set(None, num_images=2, seed=0)
    assert sub.indices == choose_subset(4, 2, 0) and sub.names == [shipped.names[i] for i in sub.indices]
    t = image_set(torch.zeros(3, 3, 8, 8), labels=[1, None, 2])
    assert t.names == ["tensor[0]", "tensor[1]", "tensor[2]"] and t.labels == [1, -1, 2] and not t.from_files
    assert torch.equal(t.load(2), torch.zeros(3, 8, 8))
    with pytest.raises(ValueError, match="labels given for"):
        image_set(torch.zeros(3, 3, 8, 8), labels=[1])
    with pytest.raises(ValueError, match="no labels found"):
        image_set(torch.zeros(2, 3, 8, 8), require_labels=True)
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    bad = image_set([tmp_path / "bad.jpg", shipped.names[1]])
    x, kept = bad.load_all(lambda im: torch.zeros(3, 2, 2))
    assert kept == [1] and x.shape == (1, 3, 2, 2)


def test_iter_batches_splits_tensors_and_loaders():
    x = torch.arange(5.0).view(5, 1, 1, 1)
    assert [b.shape[0] for b in iter_batches(x, 2)] == [2, 2, 1]
    assert [b.shape[0] for b in iter_batches([(x, None), x[:1]], None)] == [5, 1]
    assert [b.shape[0] for b in iter_batches([(x, None)], 3)] == [3, 2]
    with pytest.raises(TypeError):
        list(iter_batches(["not a tensor"]))


def test_model_specs_accept_every_documented_form():
    net = timm.create_model("moganet_xtiny", num_classes=3)
    specs = model_specs(["moganet_xtiny.fmnist_64", "moganet_xtiny_nofd.fmnist_64=w.safetensors",
                         ("resnet18", None), {"mine": net}])
    assert [s.name for s in specs] == ["moganet_xtiny.fmnist_64", "moganet_xtiny_nofd.fmnist_64", "resnet18", "mine"]
    assert specs[1].checkpoint == "w.safetensors" and specs[3].module is net
    assert model_specs(net)[0].name == "moganet_xtiny.in1k"  # named after its pretrained cfg
    assert model_specs("resnet18", random_weights=True) == [ModelSpec("resnet18", random_weights=True)]
    assert not model_specs("a=b.pt", random_weights=True)[0].random_weights  # a checkpoint is never random
    with pytest.raises(ValueError, match="given twice"):
        model_specs(["resnet18", "resnet18=x.pt"])
    with pytest.raises(ValueError, match="NAME=CHECKPOINT"):
        model_specs("resnet18=")


# ----------------------------------------------------------------------------------- result files
def test_tables_in_three_formats(tmp_path):
    rows = [{"model": "a", "x": 0.123456789, "n": 3}, {"model": "b", "x": None, "n": 4}]
    write_table(rows, tmp_path / "t", [Column("model"), Column("x", "x value", 2), "n"])
    assert (tmp_path / "t.csv").read_text() == "model,x,n\na,0.123457,3\nb,,4\n"
    assert (tmp_path / "t.md").read_text() == "| model | x value | n |\n|---|---|---|\n| a | 0.12 | 3 |\n| b |  | 4 |\n"
    assert json.loads((tmp_path / "t.json").read_text())["rows"] == rows
    assert markdown_table(rows[:1], ["n"]) == "| n |\n|---|\n| 3 |\n"


def test_committed_interaction_results_still_load():
    """Stacked files written before the pipeline redesign load as ModelInteractions."""
    from moga_analysis.interactions import InteractionStack

    folder = ROOT / "experiments" / "results" / "offline_figures" / "interactions_fmnist"
    stack = InteractionStack.load(folder)
    assert stack.models == ["moganet_xtiny.fmnist_64", "moganet_xtiny_nogate.fmnist_64"]
    r = stack["moganet_xtiny.fmnist_64"]
    assert r.n_players == 64 and r.values.shape == (16, 13, 16) and r.orders.tolist()[0] == 0
    from moga_analysis.results import load_tensors

    saved, _ = load_tensors(folder / "interactions_moganet_xtiny.fmnist_64.safetensors")
    torch.testing.assert_close(r.relative_strength(), saved["J_evaluated"], rtol=0, atol=1e-12)
    torch.testing.assert_close(r.noise_floor(), saved["noise_floor"], rtol=0, atol=1e-12)
    assert r.metadata["models"] == stack.models  # older top-level keys are kept as metadata


def test_j_all_is_only_stored_when_the_orders_cover_both_ends(tmp_path):
    """The stacked file once stored the evaluated-normalised J under ``J_all`` when the evaluated
    orders missed 0 or n-2; now it stores ``J_all`` only when it can be computed."""
    from moga_analysis.interactions import HarsanyiGame, ModelInteractions, estimate_interactions
    from moga_analysis.results import load_tensors

    game = HarsanyiGame.random(16, 30, seed=1)
    pairs = torch.tensor([[0, 1], [2, 3]])
    for orders, has_all in (([0, 7, 14], True), ([3, 7, 11], False)):
        res = estimate_interactions(game, 16, pairs, orders, 8, seed=0)
        res = type(res)(**{**res.__dict__, "metadata": {"target": 0}})
        stacked = ModelInteractions.stack("g", [res], ["x"])
        tensors, _ = load_tensors(stacked.save(tmp_path / f"{has_all}.safetensors"))
        assert ("J_all" in tensors) == has_all
        if has_all:
            assert not torch.allclose(tensors["J_all"], tensors["J_evaluated"])
        assert load_result(tmp_path / f"{has_all}.safetensors").n_players == 16


# ---------------------------------------------------------------------------------------- figures
def test_figures_label_orders_as_ratios_of_n_minus_2(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    from moga_analysis.ablation.plot import plot_interaction_curves
    from moga_analysis.interactions.plot import plot_relative_strength

    fig, ax = plot_interaction_curves({"none": {"ratios": [0, 0.5, 1], "J": [2, 0.5, 0.5]}})
    assert ax.get_xlabel() == "interaction order m / (n - 2)"
    curves = [{"name": "a", "orders": [0, 7, 14], "per_image": torch.rand(3, 3) + 0.1, "n_players": 16}]
    fig2, ax2 = plot_relative_strength(curves, n_boot=10)
    assert ax2.get_xlabel() == "order m / (n - 2)"
    import matplotlib.pyplot as plt

    plt.close(fig)
    plt.close(fig2)


def test_save_figure_writes_readme_sized_png_and_pdf(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    from moga_analysis.plotting.style import README_WIDTH_PX, save_figure

    for width in (3.4, 8.0):
        fig, ax = plt.subplots(figsize=(width, 2.0))
        ax.plot([0, 1], [0, 1])
        png, pdf = save_figure(fig, tmp_path / f"f{width}", close=True)
        px = Image.open(png).size[0]
        assert 0.75 * README_WIDTH_PX <= px <= 1.25 * README_WIDTH_PX, (width, px)  # tight bbox trims a little
        assert pdf.suffix == ".pdf" and pdf.stat().st_size > 0


def test_labels_are_shortened_at_word_boundaries():
    from moga_analysis.plotting.style import shorten_label

    assert shorten_label("football helmet", 16) == "football helmet"
    assert shorten_label("American lobster, Northern lobster", 16) == "American…"
    assert shorten_label("tiger cat", 16) == "tiger cat"
    assert shorten_label("supercalifragilistic", 10) == "supercali…"


# ------------------------------------------------------------------------------------ fast path
def test_memory_format_follows_the_model_in_the_game():
    from moga_analysis.interactions import ImageMaskingGame
    from moga_analysis.runtime import choose_memory_format, prepare_model, uses_channels_last

    net = timm.create_model("moganet_xtiny", num_classes=4).eval()
    assert choose_memory_format(net) == "channels_last"
    assert choose_memory_format(timm.create_model("vit_tiny_patch16_224", num_classes=2)) == "contiguous"
    image = torch.randn(3, 32, 32)
    plain = ImageMaskingGame(net, image, grid=4)
    assert not plain.channels_last
    masks = torch.rand(6, 16) < 0.5
    expected = plain(masks)
    prepare_model(net, None, "auto")
    assert uses_channels_last(net)
    game = ImageMaskingGame(net, image, grid=4)
    assert game.channels_last  # the input follows the model
    torch.testing.assert_close(game(masks), expected, rtol=1e-4, atol=1e-4)


# --------------------------------------------------------------------- the pipelines end to end
@pytest.fixture(scope="module")
def tiny_nets():
    torch.manual_seed(0)
    a = timm.create_model("moganet_xtiny", num_classes=5).eval()
    b = timm.create_model("moganet_xtiny_nogate", num_classes=5).eval()
    return {"full": a, "nogate": b}


def test_interaction_pipeline_from_a_notebook(tiny_nets, tmp_path):
    """Modules and tensors in, a stack out; resume keeps items; the folder loads as the same stack."""
    from moga_analysis.interactions import InteractionSettings, InteractionStack, compute_interactions

    images = torch.randn(3, 3, 32, 32)
    settings = InteractionSettings.efficient(grid=4, pairs=3, contexts=4, ratios=(0, 0.5, 1))
    stack = compute_interactions(tiny_nets, images, settings, labels=[1, None, 2], out=tmp_path, progress=False)
    assert stack.models == ["full", "nogate"]
    full = stack["full"]
    assert full.values.shape == (3, 3, 3) and full.targets.tolist()[0] == 1 and full.targets.tolist()[2] == 2
    assert full.images == ["tensor[0]", "tensor[1]", "tensor[2]"]
    assert full.n_evaluations > 0 and full.settings["grid"] == 4
    loaded = InteractionStack.load(tmp_path)
    assert loaded.models == stack.models
    torch.testing.assert_close(loaded["nogate"].values, stack["nogate"].values, rtol=0, atol=0)
    rows = loaded.precision_rows()
    assert {r["order"] for r in rows} == {0, 7, 14} and all(r["noise_ratio"] >= 0 for r in rows)
    assert (tmp_path / "interactions_precision.md").exists()
    diff = loaded.band_difference("full", "nogate", bands={"mid": (0.4, 0.6)}, n_boot=50)
    assert diff["mid"]["orders"] == [7]
    # the saved table: nogate against full in each band holding an order (low: 0, middle: 7; high none)
    table = json.loads((tmp_path / "interactions_band_differences.json").read_text())["rows"]
    assert [(r["model"], r["band"], r["orders"]) for r in table] == [("nogate", "low", "0-0"),
                                                                      ("nogate", "middle", "7-7")]
    ref = loaded.band_difference("full", "nogate", bands={"middle": (0.3, 0.6)})["middle"]
    assert table[1]["diff"] == pytest.approx(ref["diff"]) and table[1]["lower"] == pytest.approx(ref["lower"])
    per = loaded["nogate"].mean_abs()[:, 1] - loaded["full"].mean_abs()[:, 1]
    assert table[1]["diff"] == pytest.approx(float(per.mean()))  # the paired mean, by hand
    again = compute_interactions(tiny_nets, images, settings, labels=[1, None, 2], out=tmp_path, resume=True,
                                 progress=False)
    torch.testing.assert_close(again["full"].values, full.values, rtol=0, atol=0)
    with pytest.raises(RunMismatchError, match="contexts"):
        compute_interactions(tiny_nets, images, InteractionSettings.efficient(grid=4, pairs=3, contexts=5,
                                                                             ratios=(0, 0.5, 1)),
                             out=tmp_path, resume=True, progress=False)


def test_cam_and_erf_pipelines_save_and_load(tiny_nets, tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    from moga_analysis.erf import ERFSettings, ERFStack, compute_erfs
    from moga_analysis.erf.plot import plot_erf
    from moga_analysis.gradcam import CAMSettings, CAMStack, compute_cams
    from moga_analysis.gradcam.plot import plot_cam_grid

    images = torch.randn(2, 3, 32, 32)
    cams = compute_cams(tiny_nets, images, CAMSettings(image_size=32, steps=4), out=tmp_path / "cam", progress=False)
    back = CAMStack.load(tmp_path / "cam")
    assert back.models == ["full", "nogate"] and back.display.shape == (2, 3, 32, 32)
    assert torch.equal(back.results["full"].maps, cams.results["full"].maps)
    rows = list((tmp_path / "cam" / "metrics.csv").read_text().splitlines())
    assert rows[0].startswith("model,layer,weights,deletion_auc") and len(rows) == 3
    fig, axes = plot_cam_grid(back)
    assert axes.shape == (2, 3)
    label = compute_cams({"full": tiny_nets["full"]}, images, CAMSettings(image_size=32, metrics=False,
                                                                          target="label"), labels=[4, 3],
                         progress=False)
    assert label.results["full"].targets.tolist() == [4, 3]
    with pytest.warns(UserWarning):  # random weights: the ERF says so
        compute_erfs(tiny_nets, images, ERFSettings(image_size=32), out=tmp_path / "erf", progress=False)
    erfs = ERFStack.load(tmp_path / "erf")
    assert erfs.models == ["full", "nogate"] and erfs.results["full"].map.shape == (32, 32)
    assert (tmp_path / "erf" / "area_ratio.csv").exists()
    fig2, _ = plot_erf(erfs)
    import matplotlib.pyplot as plt

    plt.close(fig)
    plt.close(fig2)


def test_ablation_analyses_run_through_the_other_pipelines(tiny_nets):
    """The sweep's optional J^(m), ERF and Grad-CAM analyses, one entry per ablation."""
    from moga_analysis.ablation import AnalysisSettings, ablation_analyses, parse_specs
    from moga_analysis.interactions import InteractionSettings

    specs = parse_specs("gate", "all")
    settings = AnalysisSettings(interactions=InteractionSettings.efficient(grid=4, pairs=2, contexts=3,
                                                                           ratios=(0, 0.5, 1)),
                                erf=True, gradcam_steps=3, images=2)
    with pytest.warns(UserWarning):
        out = ablation_analyses(tiny_nets["full"], torch.randn(2, 3, 32, 32), specs, {}, settings)
    assert set(out) == {"interactions", "erf", "gradcam"}
    assert list(out["interactions"]) == ["none", "gate@all"]
    assert out["interactions"]["none"]["orders"] == [0, 7, 14]
    assert sum(out["interactions"]["gate@all"]["J"]) == pytest.approx(3.0)
    assert 0 < out["erf"]["gate@all"]["0.5"] <= 1 and 0 <= out["gradcam"]["none"]["deletion_auc"] <= 1


def test_map_runs_through_the_pipeline(tiny_nets, tmp_path):
    """InteractionSettings.maps(): map pairs, per-cell maps per model saved beside the stack, equal to
    the maps of each image's own result; the paired difference of the two models."""
    from moga_analysis.interactions import InteractionSettings, InteractionStack, compute_interactions, map_pairs
    from moga_analysis.interactions.maps import maps_from_result

    settings = InteractionSettings.maps(grid=4, contexts=3, ratios=(0.1, 0.5, 0.9))
    assert settings.orders == [1, 7, 12] and "pairs" not in settings.fingerprint()
    stack = compute_interactions(tiny_nets, torch.randn(2, 3, 32, 32), settings, out=tmp_path, progress=False)
    full = stack["full"]
    assert torch.equal(full.pairs[0], map_pairs(4)) and full.values.shape == (2, 3, len(map_pairs(4)))
    maps = stack.maps["full"]
    assert maps.mean_abs.shape == (2, 3, 4, 4) and maps.metadata["image_ids"] == ["tensor[0]", "tensor[1]"]
    item = load_result(tmp_path / "full" / "img_00001.safetensors")
    torch.testing.assert_close(maps.mean_abs[1], maps_from_result(item, 4).mean_abs[0], rtol=0, atol=0)
    back = InteractionStack.load(tmp_path)
    assert set(back.maps) == {"full", "nogate"}
    torch.testing.assert_close(back.maps["nogate"].signed, stack.maps["nogate"].signed, rtol=0, atol=0)
    d = back.map_difference("full", "nogate", n_boot=20)
    torch.testing.assert_close(d.diff, (back.maps["nogate"].mean_abs - maps.mean_abs).mean(0))
    with pytest.raises(ValueError, match="no maps"):
        InteractionStack(list(back.values())).map_difference("full", "nogate")


def test_compute_interactions_logs_the_plan_before_computing(tiny_nets, caplog):
    """The plan line (evaluations per image, exactly for fixed contexts, and the expected time) is
    logged before the first image is computed: every game evaluation the results count comes after it."""
    import logging

    from moga_analysis.interactions import InteractionSettings, compute_interactions

    events = []  # ("plan", text) and ("forward", rows) in the order they happen

    class _Recorder(logging.Handler):
        def emit(self, record):
            if record.getMessage().startswith("plan:"):
                events.append(("plan", record.getMessage()))

    net = tiny_nets["full"]
    hook = net.register_forward_hook(lambda mod, args, out: events.append(("forward", int(args[0].shape[0]))))
    recorder = _Recorder(level=logging.INFO)
    logger = logging.getLogger("moga_analysis.interactions.pipeline")
    logger.addHandler(recorder)
    settings = InteractionSettings.efficient(grid=4, pairs=3, contexts=3, ratios=(0, 0.5, 1))
    try:
        with caplog.at_level(logging.INFO, logger="moga_analysis.interactions.pipeline"):
            stack = compute_interactions({"full": net}, torch.randn(2, 3, 32, 32), settings, labels=[1, 2],
                                         batch_size=32, progress=False)
    finally:
        hook.remove()
        logger.removeHandler(recorder)
    plans = [i for i, (kind, _) in enumerate(events) if kind == "plan"]
    assert len(plans) == 1, events
    (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("plan:")]
    total = stack["full"].n_evaluations  # the game evaluations of both images
    assert f"1 model(s) x 2 image(s), exactly {round(total / 2):,} evaluations per image" in line
    assert "expected time" in line and "per evaluation on cpu" in line
    before = sum(n for kind, n in events[: plans[0]] if kind == "forward")
    after = sum(n for kind, n in events[plans[0]:] if kind == "forward")
    # after the line: every counted evaluation, plus each image game's one unmasked pass (its class check)
    assert after == total + 2
    assert 0 < before <= 1 + 3 * 32  # before it only the timing: a class check, a warm-up batch, two timed
