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
    assert meta["settings"]["method"] == "shared" and meta["settings"]["grid"] == 4
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
    assert run("--images", folder, "--out", tmp_path / "o", "--no-figure") == 0
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
    common = ["--num-images", 1, "--protocol", "efficient", "--no-figure"]
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
    assert run("--num-images", 2, "--out", tmp_path, "--protocol", "efficient", "--compile", "--no-figure") == 0
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
    assert main([*argv, "--maps", "--contexts", "2", "--ratios", "0.1", "0.5", "0.9", "--num-images", "1",
                 "--out", str(tmp_path)]) == 0
    assert (tmp_path / "maps_moganet_xtiny.safetensors").exists()
    assert (tmp_path / "interaction_maps.png").stat().st_size > 1000 and (tmp_path / "interaction_maps.pdf").exists()
    assert (tmp_path / "gradcam" / "cam_moganet_xtiny.safetensors").exists()
    with pytest.raises(ValueError, match="--maps"):
        main([*argv, "--maps", "--target-noise", "0.2", "--out", str(tmp_path / "x")])


def test_target_noise_flags_reach_the_estimator(tmp_path):
    """--target-noise, --max-evaluations, --pilot, --pilot-contexts: recorded in the settings, used
    by the estimator (the per-image result says so), the cap kept, and another pilot mode is a
    different run (resume refused)."""
    base = [a for a in SMALL if a not in ("--contexts", "2")]
    argv = [*base, "--num-images", "1", "--target-noise", "0.5", "--max-evaluations", "3000",
            "--pilot-contexts", "6"]
    out = tmp_path / "t"
    assert main([*argv, "--pilot", "discard", "--out", str(out)]) == 0
    t, meta = load_tensors(out / "interactions_moganet_xtiny.safetensors")
    s = meta["settings"]
    assert (s["method"], s["target_noise"], s["max_evaluations"], s["pilot"], s["pilot_contexts"]) == (
        "adaptive", 0.5, 3000, "discard", 6)
    one = InteractionResult.load(out / "moganet_xtiny" / "img_00000.safetensors")
    assert one.metadata["pilot_mode"] == "discard" and one.metadata["settings"]["pilot_contexts"] == 6
    assert one.n_evaluations <= 3000 and one.metadata["max_evaluations"] == 3000
    assert (out / "interactions_precision.md").read_text().count("| moganet_xtiny |") == 3
    with pytest.raises(ValueError, match="other settings"):
        main([*argv, "--out", str(out), "--resume"])  # the default pilot mode is weighted
    assert main([*argv, "--out", str(tmp_path / "w")]) == 0
    w = InteractionResult.load(tmp_path / "w" / "moganet_xtiny" / "img_00000.safetensors")
    assert w.metadata["pilot_mode"] == "weighted"
    with pytest.raises(ValueError, match="unknown pilot mode"):
        InteractionSettings.precise(0.2, pilot="sometimes")


def test_top_up_is_the_default_and_no_top_up_turns_it_off(tmp_path):
    """Without a cap the adaptive run tops its halves up (recorded in the run's and the image's
    settings); ``--no-top-up`` is one main stage and a different run (resume refused)."""
    base = [a for a in SMALL if a not in ("--contexts", "2")]
    argv = [*base, "--num-images", "1", "--target-noise", "0.5", "--max-contexts", "16"]
    runs = {}
    for flag in (None, "--no-top-up"):
        out = tmp_path / str(flag)
        assert main([*argv, *([flag] if flag else []), "--out", str(out)]) == 0
        _, meta = load_tensors(out / "interactions_moganet_xtiny.safetensors")
        runs[flag] = (meta["settings"], InteractionResult.load(out / "moganet_xtiny" / "img_00000.safetensors"))
    (s_on, r_on), (s_off, r_off) = runs[None], runs["--no-top-up"]
    assert s_on["top_up"] is True and r_on.metadata["settings"]["top_up"] is True
    assert r_on.metadata["settings"]["safety"] == 1.0  # the top-up's default safety
    assert s_off["top_up"] is False and r_off.metadata["settings"]["top_up"] is False
    assert r_off.metadata["top_up_evaluations"] == 0 and r_off.metadata["settings"]["safety"] == 1.1
    with pytest.raises(ValueError, match="other settings"):
        main([*argv, "--no-top-up", "--out", str(tmp_path / "None"), "--resume"])
