"""The interactions CLI on a small MogaNet at 64 px: outputs, resume, errors, two-process gloo run."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from moga_analysis.data import sample_image_paths
from moga_analysis.interactions import InteractionResult, InteractionSettings, main
from moga_analysis.results import load_tensors

SMALL = [
    "--model",
    "moganet_xtiny",
    "--random-weights",
    "--image-size",
    "64",
    "--grid",
    "4",
    "--pairs",
    "3",
    "--contexts",
    "2",
    "--ratios",
    "0",
    "0.5",
    "1",
    "--no-progress",
    "--bootstrap",
    "20",
    "-q",
]


def run(*extra):
    return main([*SMALL, *map(str, extra)])


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("full")
    assert run("--num-images", 2, "--out", out, "--protocol", "efficient") == 0
    return out


def test_outputs(full_run):
    tensors, meta = load_tensors(full_run / "interactions_moganet_xtiny.safetensors")
    assert tensors["values"].shape == (2, 3, 3)  # images, orders (0, 7, 14), pairs
    assert tensors["orders"].tolist() == [0, 7, 14]
    assert tensors["stderr"][:, [0, 2]].abs().max() == 0  # endpoints exact
    assert (tensors["stderr"][:, 1] > 0).any()
    assert tensors["J_evaluated"].mean().item() == pytest.approx(1.0)
    assert meta["settings"]["estimator"] == {"estimator": "fixed_contexts", "contexts": 2, "sharing": "shared"}
    assert meta["settings"]["protocol"] == "efficient" and meta["settings"]["grid"] == 4
    assert len(meta["images"]) == 2 and meta["skipped"] == []
    assert "torch" in meta["environment"]
    assert (full_run / "interactions_J.png").stat().st_size > 1000
    assert (full_run / "interactions_J.pdf").exists()
    r = InteractionResult.load(full_run / "moganet_xtiny" / "img_00001.safetensors")
    assert r.values.shape == (3, 3) and r.metadata["config"]["index"] == 1


def test_resume_is_bit_identical(full_run, tmp_path):
    out = tmp_path / "resumed"
    shutil.copytree(full_run / "moganet_xtiny", out / "moganet_xtiny")
    # a run killed after image 0: image 1 never written, a stray temp file left behind
    (out / "moganet_xtiny" / "img_00001.safetensors").unlink()
    (out / "moganet_xtiny" / ".img_00001.safetensors.xyz.tmp").write_bytes(b"partial")
    first = out / "moganet_xtiny" / "img_00000.safetensors"
    stamp = first.stat().st_mtime_ns
    assert run("--num-images", 2, "--out", out, "--protocol", "efficient", "--resume") == 0
    assert first.stat().st_mtime_ns == stamp  # not recomputed
    a, ma = load_tensors(full_run / "interactions_moganet_xtiny.safetensors")
    b, mb = load_tensors(out / "interactions_moganet_xtiny.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    for f in ("img_00001.safetensors",):
        assert (full_run / "moganet_xtiny" / f).read_bytes() == (out / "moganet_xtiny" / f).read_bytes()
    # resuming with other settings is refused
    with pytest.raises(ValueError, match="other settings"):
        run("--num-images", 2, "--out", out, "--protocol", "efficient", "--resume", "--seed", "5")


def test_unreadable_file_skipped_and_recorded(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    shutil.copy(sample_image_paths()[0], folder / "a.jpg")
    (folder / "b.jpg").write_bytes(b"not a jpeg")
    assert run("--images", folder, "--out", tmp_path / "o", "--no-figures") == 0
    t, meta = load_tensors(tmp_path / "o" / "interactions_moganet_xtiny.safetensors")
    assert t["values"].shape[0] == 1
    assert [Path(p).name for p, _ in meta["skipped"]] == ["b.jpg"]


def test_user_errors(tmp_path):
    with pytest.raises(ValueError, match="does not divide"):
        run("--grid", 5, "--num-images", 1, "--out", tmp_path / "a")
    with pytest.raises(ValueError, match="unknown model"):
        main(["--model", "no_such_net", "--out", str(tmp_path / "b"), "-q"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no images"):
        run("--images", tmp_path / "empty", "--out", tmp_path / "c")
    with pytest.raises(FileNotFoundError):
        run("--images", tmp_path / "missing", "--out", tmp_path / "d")


def test_compare_entry_with_checkpoint(tmp_path):
    """``--compare NAME=CHECKPOINT`` loads NAME from the file: the same numbers as ``--model NAME
    --checkpoint FILE``, with the file recorded as the weights and in the resume fingerprint."""
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(3)
    ckpt = tmp_path / "nofd.safetensors"
    save_file(timm.create_model("moganet_xtiny_nofd").state_dict(), str(ckpt))  # 10 classes
    common = ["--num-images", 1, "--protocol", "efficient", "--no-figures"]
    assert run(*common, "--out", tmp_path / "a", "--compare", f"moganet_xtiny_nofd={ckpt}") == 0
    solo = [a if a != "moganet_xtiny" else "moganet_xtiny_nofd" for a in SMALL]
    assert main([*solo, *map(str, common), "--checkpoint", str(ckpt), "--out", str(tmp_path / "b")]) == 0
    a, meta = load_tensors(tmp_path / "a" / "interactions_moganet_xtiny_nofd.safetensors")
    b, _ = load_tensors(tmp_path / "b" / "interactions_moganet_xtiny_nofd.safetensors")
    assert torch.equal(a["values"], b["values"]) and a["values"].abs().sum() > 0
    assert meta["weights"] == str(ckpt) and meta["models"] == ["moganet_xtiny", "moganet_xtiny_nofd"]
    per_image = InteractionResult.load(tmp_path / "a" / "moganet_xtiny_nofd" / "img_00000.safetensors")
    assert per_image.metadata["config"]["checkpoint"] == str(ckpt)


def test_compare_entry_errors(tmp_path):
    with pytest.raises(ValueError, match="MODEL=CHECKPOINT"):
        run("--num-images", 1, "--out", tmp_path, "--compare", "moganet_xtiny_nofd=")
    with pytest.raises(ValueError, match="given twice"):
        run("--num-images", 1, "--out", tmp_path, "--compare", "resnet18", "resnet18=x.pt")


def test_bad_grid_exits_nonzero(tmp_path):
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "moga_analysis.interactions",
            *SMALL,
            "--grid",
            "5",
            "--num-images",
            "1",
            "--out",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode == 2
    assert "does not divide" in p.stderr


@pytest.mark.slow
def test_compile_matches_eager(full_run, tmp_path):
    """--compile (torch.compile, inductor on CPU) gives the eager numbers up to float rounding."""
    assert run("--num-images", 2, "--out", tmp_path, "--protocol", "efficient", "--compile", "--no-figures") == 0
    a, _ = load_tensors(full_run / "interactions_moganet_xtiny.safetensors")
    b, _ = load_tensors(tmp_path / "interactions_moganet_xtiny.safetensors")
    assert torch.allclose(a["values"], b["values"], rtol=1e-3, atol=1e-4)
    assert not torch.equal(a["values"], torch.zeros_like(a["values"]))


@pytest.mark.slow
def test_two_process_gloo_matches_one_process(full_run, tmp_path):
    out = tmp_path / "ddp"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        "2",
        "--master-port",
        "29533",
        "-m",
        "moga_analysis.interactions",
        *SMALL,
        "--num-images",
        "2",
        "--out",
        str(out),
        "--protocol",
        "efficient",
        "--device",
        "cpu",
    ]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert p.returncode == 0, p.stderr[-3000:]
    a, _ = load_tensors(full_run / "interactions_moganet_xtiny.safetensors")
    b, _ = load_tensors(out / "interactions_moganet_xtiny.safetensors")
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_maps_cli_writes_maps_and_their_figure(tmp_path):
    argv = ["--model", "moganet_xtiny", "--random-weights", "--image-size", "64", "--grid", "4", "--no-progress", "-q"]
    assert main([*argv, "--protocol", "maps", "--contexts", "2", "--ratios", "0.1", "0.5", "0.9", "--num-images", "1",
                 "--out", str(tmp_path)]) == 0
    _, meta = load_tensors(tmp_path / "interactions_moganet_xtiny.safetensors")
    assert meta["settings"]["pair_rule"] == "map" and meta["settings"]["protocol"] == "maps"
    assert meta["settings"]["estimator"] == {"estimator": "fixed_contexts", "contexts": 2, "sharing": "shared"}
    assert (tmp_path / "maps_moganet_xtiny.safetensors").exists()
    assert (tmp_path / "interaction_maps.png").stat().st_size > 1000 and (tmp_path / "interaction_maps.pdf").exists()
    assert (tmp_path / "gradcam" / "cam_moganet_xtiny.safetensors").exists()
    with pytest.raises(SystemExit):  # the old flag is gone
        main([*argv, "--maps", "--out", str(tmp_path / "x")])


def test_removed_flags_are_refused():
    for flag in (["--maps"], ["--method", "shared"], ["--pilot", "discard"], ["--pilot-contexts", "6"],
                 ["--no-top-up"], ["--no-figure"]):  # fmt: skip
        with pytest.raises(SystemExit):
            main([*SMALL, *flag])


def test_target_noise_flags_reach_the_estimator(tmp_path):
    """--target-noise, --max-evaluations, --min-contexts, --max-contexts: recorded in the settings,
    used by the estimator (the per-image result says so), the cap kept, and other bounds are a
    different run (resume refused)."""
    base = [a for a in SMALL if a not in ("--contexts", "2")]
    argv = [*base, "--num-images", "1", "--target-noise", "0.5", "--max-evaluations", "3000"]
    out = tmp_path / "t"
    assert main([*argv, "--min-contexts", "6", "--max-contexts", "64", "--out", str(out)]) == 0
    t, meta = load_tensors(out / "interactions_moganet_xtiny.safetensors")
    s = meta["settings"]
    assert s["protocol"] == "precise" and s["estimator"] == {
        "estimator": "precision_target", "target_noise": 0.5, "max_evaluations": 3000, "min_contexts": 6,
        "max_contexts": 64}  # fmt: skip
    assert meta["target_noise"] == 0.5 and meta["budget_capped"] == [bool(meta["budget_capped"][0])]
    one = InteractionResult.load(out / "moganet_xtiny" / "img_00000.safetensors")
    assert one.method == "precision" and one.metadata["config"]["estimator"] == s["estimator"]
    assert one.n_evaluations <= 3000 and one.metadata["max_evaluations"] == 3000
    assert one.metadata["target_noise"] == 0.5 and len(one.metadata["noise_ratio"]) == 3
    assert one.samples_per_pair is None or int(one.samples_per_pair[1].min()) >= 6
    assert int(one.n_samples[1]) >= 6 and one.n_samples[[0, 2]].tolist() == [1, 1]  # the end orders are exact
    assert (out / "interactions_precision.md").read_text().count("| moganet_xtiny |") == 3
    with pytest.raises(ValueError, match="other settings"):
        main([*argv, "--out", str(out), "--resume"])  # the default bounds (8, 4096) are another run
    with pytest.raises(ValueError, match="--contexts"):
        main([*argv, "--contexts", "4", "--out", str(tmp_path / "c")])  # a target chooses its contexts
    with pytest.raises(ValueError, match="--target-noise"):
        main([*SMALL, "--max-evaluations", "3000", "--out", str(tmp_path / "m")])  # a cap needs a target


@pytest.mark.slow  # two precision-target runs through the CLI: make test-all
def test_top_up_without_a_cap_and_none_under_one(tmp_path):
    """Without a cap the precision target tops its halves up and completes until every order meets
    the target; under a cap the main stage is the last (no top-up, no completion) and the run says
    whether the cap bound.  The stages' evaluations add up to the result's."""
    base = [a for a in SMALL if a not in ("--contexts", "2")]
    argv = [*base, "--num-images", "1", "--target-noise", "0.5"]
    runs = {}
    for cap in (None, 3000):
        out = tmp_path / str(cap)
        assert main([*argv, *(["--max-evaluations", str(cap)] if cap else []), "--out", str(out)]) == 0
        runs[cap] = InteractionResult.load(out / "moganet_xtiny" / "img_00000.safetensors")
    for r in runs.values():
        md = r.metadata
        stages = ("endpoint", "pilot", "round", "main", "top_up", "completion")
        assert sum(md[f"{k}_evaluations"] for k in stages) == r.n_evaluations
    free, capped = runs[None].metadata, runs[3000].metadata
    assert free["max_evaluations"] is None and not free["budget_capped"]
    assert free["missed_orders"] == free["max_contexts_orders"] == [] and all(free["target_met"])
    assert max(free["noise_ratio"]) <= 0.5
    assert capped["top_up_evaluations"] == capped["completion_evaluations"] == 0
    assert runs[3000].n_evaluations <= 3000


def test_dry_run_writes_the_plan_and_computes_nothing(tmp_path):
    """--dry-run: OUT/plan.json (evaluations per image, seconds per evaluation) and nothing else;
    with a fixed number of contexts the planned evaluations are the run's, exactly."""
    import json

    from moga_analysis.fmnist import write_fmnist_folder
    from moga_analysis.interactions.pipeline import image_pairs, image_seed

    fm = write_fmnist_folder(tmp_path / "fmnist", 2)  # Fashion-MNIST images with their labels
    common = ["--model", "moganet_xtiny.fmnist_64", "--images", str(fm), "--labels", str(fm / "labels.txt"),
              "--grid", "4", "--pairs", "3", "--contexts", "3", "--ratios",
              "0", "0.25", "0.5", "1", "--protocol", "efficient", "--no-progress", "-q"]
    argv = [*common, "--num-images", "2"]
    dry = tmp_path / "dry"
    assert main([*argv, "--out", str(dry), "--dry-run"]) == 0
    assert sorted(p.name for p in dry.iterdir()) == ["plan.json"]  # no per-image files, no stack, no figure
    plan = json.loads((dry / "plan.json").read_text())
    assert plan["exact"] is True and plan["images"] == 2 and plan["models"] == ["moganet_xtiny.fmnist_64"]
    assert plan["evaluations_per_image"] > 0 and plan["settings"]["protocol"] == "efficient"
    assert set(plan["seconds_per_evaluation"]) == {"moganet_xtiny.fmnist_64"}
    assert 0 < plan["seconds_per_evaluation"]["moganet_xtiny.fmnist_64"] < 1
    assert plan["total_evaluations"] == 2 * plan["evaluations_per_image"] and plan["eta_seconds"] >= 0

    out = tmp_path / "run"
    assert main([*argv, "--out", str(out), "--no-figures"]) == 0
    settings = InteractionSettings.efficient(grid=4, pairs=3, contexts=3, ratios=(0, 0.25, 0.5, 1))
    assert plan["settings"] == json.loads(json.dumps(settings.fingerprint()))
    results = [InteractionResult.load(f) for f in sorted((out / "moganet_xtiny.fmnist_64").glob("img_*.safetensors"))]
    assert len(results) == 2
    for r in results:  # each image's own plan is its run, exactly
        idx = r.metadata["config"]["index"]
        seed = image_seed(settings.seed, idx)
        planned = settings.estimator.planned_evaluations(settings.n_players, image_pairs(settings, seed),
                                                         settings.orders, seed=seed + 1)  # fmt: skip
        assert planned == r.n_evaluations
    counts = [r.n_evaluations for r in results]
    assert plan["evaluations_per_image"] == round(sum(counts) / 2)
    one = tmp_path / "one"  # one image: the plan's number is that image's
    assert main([*common, "--num-images", "1", "--out", str(one), "--dry-run"]) == 0
    assert main([*common, "--num-images", "1", "--out", str(one / "run"), "--no-figures"]) == 0
    (single,) = (one / "run" / "moganet_xtiny.fmnist_64").glob("img_*.safetensors")
    assert json.loads((one / "plan.json").read_text())["evaluations_per_image"] == InteractionResult.load(
        single).n_evaluations


def test_dry_run_of_a_precision_target_is_a_projection(tmp_path):
    base = [a for a in SMALL if a not in ("--contexts", "2")]
    assert main([*base, "--num-images", "1", "--target-noise", "0.5", "--out", str(tmp_path), "--dry-run"]) == 0
    import json

    plan = json.loads((tmp_path / "plan.json").read_text())
    assert plan["exact"] is False and plan["evaluations_per_image"] > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plan.json"]


def test_target_noise_with_a_fixed_protocol_is_refused():
    from moga_analysis.interactions.cli import build_parser, settings_from_args

    for protocol in ("maps", "efficient", "reference"):
        args = build_parser().parse_args(["--protocol", protocol, "--target-noise", "0.2"])
        with pytest.raises(ValueError, match="precision target"):
            settings_from_args(args)
    args = build_parser().parse_args(["--target-noise", "0.2"])
    assert settings_from_args(args).estimator.target_noise == 0.2
    assert settings_from_args(build_parser().parse_args([])).protocol == "reference"
