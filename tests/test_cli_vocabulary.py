"""One command-line vocabulary (moga_analysis/cli.py): every documented flag does what its help
says (its value reaches the settings object or the library call), the removed old spellings and
comma lists are refused by argparse, every flag has a help text and the module docstring names
it, and ``moga-analysis <tool>`` / ``python -m moga_analysis <tool>`` dispatch to the tools."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import moga_analysis.__main__ as dispatcher
from moga_analysis import cli
from moga_analysis.ablation import cli as ablation_cli
from moga_analysis.erf import cli as erf_cli
from moga_analysis.gradcam import cli as gradcam_cli
from moga_analysis.interactions import cli as interactions_cli
from moga_analysis.models import hub
from moga_analysis.weights import __main__ as weights_cli

ROOT = Path(__file__).resolve().parents[1]
MY_TOOLS = {"gradcam": gradcam_cli, "erf": erf_cli, "ablation": ablation_cli}


def _parsers():
    """(name, parser) of every tool parser and sub-parser."""
    out = [(name, m.build_parser()) for name, m in MY_TOOLS.items()]
    out.append(("interactions", interactions_cli.build_parser()))
    for action in weights_cli.build_parser()._actions:
        if isinstance(action, argparse._SubParsersAction):
            out += [(f"weights {n}", sub) for n, sub in action.choices.items()]
    return out


def _options(parser):
    return [a for a in parser._actions if not isinstance(a, (argparse._HelpAction, argparse._SubParsersAction))]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Six small random images in a flat folder."""
    root = tmp_path_factory.mktemp("flat")
    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray(rng.integers(0, 256, (36, 40, 3), dtype=np.uint8)).save(root / f"x{i}.png")
    return root


@pytest.fixture(autouse=True)
def _no_process_state(monkeypatch):
    """setup_from_args neither tunes this process's allocator nor leaves a weights folder behind."""
    calls = {"logging": [], "malloc": 0}
    monkeypatch.setattr("moga_analysis.runtime.setup_logging", lambda v=0: calls["logging"].append(v))

    def tune():
        calls["malloc"] += 1

    monkeypatch.setattr("moga_analysis.runtime.tune_malloc", tune)
    yield calls
    hub.set_weights_dir(None)


class Recorder:
    """Stands in for a library call: keeps its arguments, returns ``result``."""

    def __init__(self, result=None):
        self.result, self.calls = result, []

    def __call__(self, *args, **kwargs):
        self.calls.append((args, kwargs))
        return self.result

    @property
    def args(self):
        return self.calls[-1][0]

    @property
    def kwargs(self):
        return self.calls[-1][1]


# ---------------------------------------------------------------------------------- the vocabulary itself
@pytest.mark.parametrize("name,parser", _parsers(), ids=[n for n, _ in _parsers()])
def test_every_flag_has_a_help_text(name, parser):
    for a in _options(parser):
        assert a.help and a.help != argparse.SUPPRESS and len(a.help) > 10, (name, a.option_strings or a.dest)


@pytest.mark.parametrize("name,parser", [(n, p) for n, p in _parsers() if n != "interactions"],
                         ids=[n for n, _ in _parsers() if n != "interactions"])
def test_the_module_docstring_names_every_flag(name, parser):
    for a in _options(parser):
        for opt in a.option_strings:
            assert f"``{opt}" in cli.__doc__ or f"/{opt}``" in cli.__doc__, (name, opt)


def test_lists_are_space_separated_and_one_name_has_one_meaning():
    seen = {}
    for name, parser in _parsers():
        for a in _options(parser):
            assert "comma" not in a.help.lower(), (name, a.option_strings)
            for opt in a.option_strings:
                kind = (type(a).__name__, a.type, a.nargs)
                seen.setdefault(opt, {})[name] = kind
    for opt, kinds in seen.items():
        assert len(set(kinds.values())) == 1, (opt, kinds)  # e.g. --steps: an int in gradcam and ablation
    for opt in ("--compare", "--thresholds", "--ablations", "--stages", "--modes", "--ratios"):
        assert all(k[2] == "+" for k in seen[opt].values()), opt
    # one meaning per name: --dtype is the model dtype, offered only where the model runs in it
    assert set(seen["--dtype"]) == {"interactions"} and set(seen["--autocast"]) == {"ablation"}
    assert set(seen["--weights-dir"]) == {"gradcam", "erf", "ablation", "interactions", "weights download",
                                          "weights list"}


REMOVED = [
    ("gradcam", ["--size", "64"]), ("gradcam", ["--img-size", "64"]), ("gradcam", ["--no-figure"]),
    ("gradcam", ["--data", "x"]), ("gradcam", ["--channels-last"]), ("gradcam", ["--no-channels-last"]),
    ("gradcam", ["--dtype", "bfloat16"]), ("gradcam", ["--memory-format", "contiguous"]),
    ("erf", ["--size", "64"]), ("erf", ["--no-figure"]), ("erf", ["--dtype", "float16"]),
    ("interactions", ["--size", "64"]), ("interactions", ["--no-figure"]), ("interactions", ["--channels-last"]),
    ("interactions", ["--data", "x"]),
    ("ablation", ["--amp", "bf16"]), ("ablation", ["--dtype", "bfloat16"]), ("ablation", ["--img-size", "32"]),
    ("ablation", ["--checkpoint-every", "5"]), ("ablation", ["--faithfulness-steps", "3"]),
    ("ablation", ["--analysis-images", "2"]), ("ablation", ["--interaction-grid", "4"]),
    ("ablation", ["--interaction-pairs", "4"]), ("ablation", ["--interaction-contexts", "4"]),
    ("ablation", ["--data", "x"]), ("ablation", ["--compare", "resnet18"]),
    # comma lists
    ("ablation", ["--ablations", "gate,fd"]), ("ablation", ["--stages", "all,3"]),
    ("ablation", ["--modes", "zero,mean"]),
    ("ablation", ["--stages", "5"]), ("ablation", ["--modes", "one"]),
    ("weights", ["download", "--dir", "x"]), ("weights", ["download", "--progress"]),
    ("interactions", ["--dtype", "bf16"]),  # one spelling per dtype
]


@pytest.mark.parametrize("tool,extra", REMOVED, ids=[f"{t}:{' '.join(e)}" for t, e in REMOVED])
def test_removed_spellings_are_refused(tool, extra, capsys):
    parser = (weights_cli if tool == "weights" else interactions_cli if tool == "interactions"
              else MY_TOOLS[tool]).build_parser()
    base = ["--images", "imgs"] if tool == "ablation" else []
    with pytest.raises(SystemExit) as err:
        parser.parse_args(base + extra)
    assert err.value.code == 2
    message = capsys.readouterr().err
    assert "unrecognized arguments" in message or "invalid" in message, message


def test_one_of_images_or_imagenet_val(capsys):
    for parser in (gradcam_cli.build_parser(), ablation_cli.build_parser()):
        with pytest.raises(SystemExit):
            parser.parse_args(["--images", "a", "--imagenet-val", "b"])
        assert "not allowed with argument" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # ablation's help no longer promises a default it refuses
        ablation_cli.build_parser().parse_args([])
    assert "one of the arguments --images --imagenet-val is required" in capsys.readouterr().err
    assert "(required" in ablation_cli.build_parser().format_help()
    assert gradcam_cli.build_parser().parse_args([]).images is None  # gradcam: the shipped photos


# ---------------------------------------------------------------------------------- shared groups
def test_model_flags_make_the_model_specs():
    args = gradcam_cli.build_parser().parse_args(
        ["--model", "moganet_xtiny", "--checkpoint", "a.safetensors", "--compare", "resnet18",
         "convnext_tiny=b.pth", "moganet_xtiny"])
    specs = cli.specs_from_args(args)
    assert [(s.name, s.checkpoint) for s in specs] == [
        ("moganet_xtiny", "a.safetensors"), ("resnet18", None), ("convnext_tiny", "b.pth")]
    assert not any(s.random_weights for s in specs)
    args = gradcam_cli.build_parser().parse_args(["--compare", "resnet18", "--random-weights"])
    assert [(s.name, s.random_weights) for s in cli.specs_from_args(args)] == [("moganet_small", True),
                                                                              ("resnet18", True)]
    (spec,) = cli.specs_from_args(ablation_cli.build_parser().parse_args(["--images", "x", "--model", "moganet_xtiny"]))
    assert spec.name == "moganet_xtiny"  # ablation: one model, no --compare


def test_weights_dir_flag_sets_the_folder_every_model_loads_from(tmp_path, monkeypatch):
    monkeypatch.delenv(hub.WEIGHTS_DIR_ENV, raising=False)
    cli.setup_from_args(erf_cli.build_parser().parse_args(["--weights-dir", str(tmp_path)]))
    assert hub.weights_dir() == tmp_path
    monkeypatch.setenv(hub.WEIGHTS_DIR_ENV, str(tmp_path / "env"))
    args = erf_cli.build_parser().parse_args([])  # default: $MOGA_WEIGHTS_DIR
    assert args.weights_dir == str(tmp_path / "env")


def test_image_flags_make_the_image_set(folder, tmp_path):
    parser = erf_cli.build_parser()
    full = cli.images_from_args(parser.parse_args(["--images", str(folder)]))
    assert len(full) == 6  # 6 images, fewer than erf's default --num-images 50
    subsets = {s: cli.images_from_args(parser.parse_args(["--images", str(folder), "--num-images", "3",
                                                          "--seed", str(s)])).names for s in range(6)}
    assert all(len(names) == 3 and set(names) <= set(full.names) for names in subsets.values())
    again = cli.images_from_args(parser.parse_args(["--images", str(folder), "--num-images", "3", "--seed", "0"]))
    assert again.names == subsets[0] and len(set(map(tuple, subsets.values()))) > 1  # --seed picks the subset
    assert parser.parse_args([]).num_images == 50  # erf's default: 50 images, the RepLKNet protocol

    val = tmp_path / "val"
    (val / "n01443537").mkdir(parents=True)  # ImageNet class 1
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(val / "n01443537" / "a.png")
    imgs = cli.images_from_args(parser.parse_args(["--imagenet-val", str(val)]))
    assert imgs.labels == [1]


def test_run_flags_set_logging_and_allocator(_no_process_state):
    parser = erf_cli.build_parser()
    for argv, verbosity in (([], 0), (["-v"], 1), (["-vv"], 2), (["-q"], -1)):
        cli.setup_from_args(parser.parse_args(argv))
        assert _no_process_state["logging"][-1] == verbosity
    assert _no_process_state["malloc"] == 4
    cli.setup_from_args(parser.parse_args(["--no-tune-malloc"]))
    assert _no_process_state["malloc"] == 4


def test_no_tune_malloc_also_stops_the_restart(monkeypatch):
    execs = []
    monkeypatch.setattr(os, "execve", lambda *a: execs.append(a))
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.delenv(cli._REEXEC_FLAG, raising=False)
    for k in cli.MALLOC_ENV:
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setattr(sys, "argv", ["moga-analysis erf", "--no-tune-malloc"])
    cli._reexec_with_allocator(None)
    assert execs == []
    monkeypatch.setattr(sys, "argv", ["moga-analysis erf"])
    cli._reexec_with_allocator(None)
    assert len(execs) == 1 and execs[0][2][cli._REEXEC_FLAG] == "1"


# ---------------------------------------------------------------------------------- gradcam
def test_gradcam_flags_reach_the_settings_and_the_call(folder, tmp_path, monkeypatch):
    from moga_analysis.gradcam.pipeline import CAMSettings

    compute = Recorder(result="stack")
    plot, saved = Recorder(result=("fig", None)), Recorder()
    monkeypatch.setattr("moga_analysis.gradcam.pipeline.compute_cams", compute)
    monkeypatch.setattr("moga_analysis.gradcam.plot.plot_cam_grid", plot)
    monkeypatch.setattr("moga_analysis.cli.figure_out", saved)
    out = tmp_path / "cam"
    argv = ["--model", "moganet_xtiny", "--compare", "resnet18", "--random-weights", "--images", str(folder),
            "--num-images", "2", "--layer", "stage3", "--steps", "7", "--no-metrics", "--sanity",
            "--image-size", "96", "--seed", "3", "--device", "cpu", "--batch-size", "5", "--out", str(out),
            "--resume", "--no-progress"]
    assert gradcam_cli.main(argv) == 0
    (specs, images, settings), kw = compute.args, compute.kwargs
    assert [s.name for s in specs] == ["moganet_xtiny", "resnet18"] and len(images) == 2
    assert settings == CAMSettings(image_size=96, layers={"moganet_xtiny": "stage3"}, steps=7, metrics=False,
                                   sanity=True, seed=3)
    assert kw == dict(out=str(out), resume=True, device="cpu", batch_size=5, progress=False)
    assert plot.args == ("stack",) and saved.args == ("fig", f"{out}/gradcam_grid")

    assert gradcam_cli.main(["--images", str(folder), "--no-figures"]) == 0
    assert len(saved.calls) == 1  # --no-figures: no figure
    settings, kw = compute.args[2], compute.kwargs
    assert settings == CAMSettings() and kw == dict(out="runs/gradcam", resume=False, device="auto", batch_size=None,
                                                    progress=True)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_gradcam_layer_and_image_size_reach_the_saved_result(folder, tmp_path):
    from moga_analysis.results import load_result

    out = tmp_path / "cam"
    assert gradcam_cli.main(["--model", "moganet_xtiny", "--random-weights", "--images", str(folder),
                             "--num-images", "1", "--image-size", "32", "--layer", "stage3", "--no-metrics",
                             "--device", "cpu", "--out", str(out), "--no-figures", "--no-progress", "-q"]) == 0
    cam = load_result(out / "cam_moganet_xtiny.safetensors")
    assert cam.layer == "norm3" and cam.maps.shape == (1, 32, 32)  # stage3 of MogaNet (default: norm4)
    assert not (out / "gradcam_grid.png").exists()


# ---------------------------------------------------------------------------------- erf
def test_erf_flags_reach_the_settings_and_the_call(folder, tmp_path, monkeypatch):
    from moga_analysis.erf.pipeline import ERFSettings

    compute = Recorder(result="stack")
    monkeypatch.setattr("moga_analysis.erf.pipeline.compute_erfs", compute)
    monkeypatch.setattr("moga_analysis.erf.plot.plot_erf", Recorder(result=("fig", None)))
    saved = Recorder()
    monkeypatch.setattr("moga_analysis.cli.figure_out", saved)
    argv = ["--model", "moganet_xtiny", "--images", str(folder), "--layer", "stage2", "--thresholds", "0.1", "0.9",
            "--image-size", "128", "--seed", "2", "--out", str(tmp_path)]
    assert erf_cli.main(argv) == 0
    assert compute.args[2] == ERFSettings(image_size=128, layers={"moganet_xtiny": "stage2"}, thresholds=(0.1, 0.9),
                                          seed=2)
    assert len(compute.args[1]) == 6 and saved.args[1] == f"{tmp_path}/erf"


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_erf_thresholds_are_the_reported_columns(folder, tmp_path):
    out = tmp_path / "erf"
    assert erf_cli.main(["--model", "moganet_xtiny", "--random-weights", "--images", str(folder), "--num-images",
                         "1", "--image-size", "32", "--thresholds", "0.25", "0.75", "--device", "cpu",
                         "--out", str(out), "--no-figures", "--no-progress", "-q"]) == 0
    (row,) = json.loads((out / "area_ratio.json").read_text())["rows"]
    assert [k for k in row if k.startswith("t=")] == ["t=0.25", "t=0.75"]


# ---------------------------------------------------------------------------------- ablation
class _Report:
    metrics = {"none": {"top1": 50.0}}
    metadata: dict = {}

    def rows(self):
        return [{"kind": "none", "stages": "-", "mode": "-", "top1": 50.0}]


def _ablation(monkeypatch, argv):
    run = Recorder(result=_Report())
    monkeypatch.setattr("moga_analysis.ablation.pipeline.run_ablation", run)
    monkeypatch.setattr("moga_analysis.ablation.plot.plot_accuracy_drop", Recorder(result=("fig", None)))
    saved = Recorder()
    monkeypatch.setattr("moga_analysis.cli.figure_out", saved)
    assert ablation_cli.main(argv) == 0
    return run, saved


def test_ablation_flags_reach_the_settings_and_the_call(tmp_path, monkeypatch, capsys):
    from moga_analysis.ablation.pipeline import AblationSettings, AnalysisSettings

    run, saved = _ablation(monkeypatch, [
        "--model", "moganet_xtiny", "--checkpoint", "w.safetensors", "--images", "imgs", "--labels", "l.txt",
        "--labels-format", "pairs", "--num-images", "9", "--ablations", "gate", "fd", "--stages", "all", "2+3",
        "--modes", "zero", "mean", "--calibration-images", "7", "--image-size", "48", "--seed", "4",
        "--memory-format", "contiguous", "--autocast", "bfloat16", "--save-every", "7.5", "--workers", "0",
        "--batch-size", "3", "--device", "cpu", "--out", str(tmp_path), "--resume", "--no-progress"])
    (spec, images, sweep), kw = run.args, run.kwargs
    assert (spec.name, spec.checkpoint, images) == ("moganet_xtiny", "w.safetensors", "imgs")
    assert sweep == AblationSettings(ablations=("gate", "fd"), stages=("all", "2+3"), modes=("zero", "mean"),
                                     calibration_images=7, image_size=48, dtype="bfloat16",
                                     memory_format="contiguous", seed=4)
    assert [s.name for s in sweep.specs()] == ["none", "gate@all", "gate@2+3", "gate[mean]@all", "gate[mean]@2+3",
                                               "fd@all", "fd@2+3"]
    assert sweep.amp_dtype() == torch.bfloat16  # --autocast: autocast, not the model's dtype
    assert kw == dict(labels_file="l.txt", labels_format="pairs", num_images=9, analyses=AnalysisSettings(),
                      out=str(tmp_path), resume=True, device="cpu", batch_size=3, workers=0, checkpoint_every_s=7.5,
                      progress=False)
    assert saved.args[1] == f"{tmp_path}/ablation_accuracy_drop"
    assert "top-1" in capsys.readouterr().out  # the table, unless -q

    run, saved = _ablation(monkeypatch, ["--imagenet-val", "val", "--no-figures", "-q"])
    (spec, images, sweep), kw = run.args, run.kwargs
    assert images == "val" and sweep == AblationSettings() and sweep.amp_dtype() is None
    assert kw["checkpoint_every_s"] == 120.0 and kw["workers"] is None and kw["progress"]
    assert saved.calls == [] and capsys.readouterr().out == ""


def test_ablation_optional_analyses(monkeypatch):
    from moga_analysis.ablation.pipeline import AnalysisSettings
    from moga_analysis.interactions.pipeline import InteractionSettings

    def analyses(*argv):
        return ablation_cli.settings_from_args(ablation_cli.build_parser().parse_args(["--images", "x", *argv]))[1]

    assert analyses() == AnalysisSettings() and not analyses().any
    got = analyses("--interactions", "--grid", "4", "--pairs", "3", "--contexts", "5", "--seed", "2",
                   "--analysis-num-images", "2")
    assert got.interactions == InteractionSettings.efficient(grid=4, pairs=3, contexts=5, seed=2) and got.images == 2
    assert analyses("--interactions").interactions == InteractionSettings.efficient(grid=8, pairs=8, contexts=16,
                                                                                   seed=0)
    assert analyses("--gradcam", "--steps", "6").gradcam_steps == 6 and analyses("--gradcam").gradcam_steps == 20
    assert analyses("--erf").erf and analyses("--erf").gradcam_steps is None
    for argv in (["--grid", "4"], ["--contexts", "4"], ["--steps", "6"], ["--steps", "6", "--interactions"]):
        with pytest.raises(ValueError, match="give --"):
            analyses(*argv)


# ---------------------------------------------------------------------------------- weights
def test_weights_download_flags(monkeypatch, tmp_path, capsys):
    download = Recorder(result=[{"name": "moganet_xtiny.in1k", "status": "present", "size": 2**20, "sha256": "ab",
                                 "path": "p"}])
    monkeypatch.setattr(weights_cli, "download_weights", download)
    monkeypatch.delenv(hub.WEIGHTS_DIR_ENV, raising=False)
    argv = ["download", "moganet_xt", "moganet_s", "--weights-dir", str(tmp_path), "--no-progress"]
    assert weights_cli.main(argv) == 0
    assert download.args == (["moganet_xt", "moganet_s"], str(tmp_path))
    assert download.kwargs == dict(all_tags=False, progress=False)
    assert "moganet_xtiny.in1k" in capsys.readouterr().out
    assert weights_cli.main(["download", "--all-tags"]) == 0
    assert download.args == (None, None) and download.kwargs == dict(all_tags=True, progress=True)  # hub cache
    monkeypatch.setenv(hub.WEIGHTS_DIR_ENV, str(tmp_path / "env"))
    assert weights_cli.main(["download", "-q"]) == 0
    assert download.args == (None, str(tmp_path / "env"))  # the folder every tool reads


def test_weights_list_flags(monkeypatch, tmp_path, capsys):
    listing = Recorder(result=[{"name": "moganet_xtiny.in1k", "alias": "moganet_xt.in1k", "cached": None,
                                "sha256": None, "url": "u"}])
    monkeypatch.setattr(weights_cli, "list_weights", listing)
    assert weights_cli.main(["list", "--weights-dir", str(tmp_path), "--no-hash", "--json"]) == 0
    assert listing.args == (str(tmp_path),) and listing.kwargs == dict(hashes=False)
    assert json.loads(capsys.readouterr().out)[0]["alias"] == "moganet_xt.in1k"
    assert weights_cli.main(["list", "-v"]) == 0
    assert listing.kwargs == dict(hashes=True)
    printed = capsys.readouterr().out
    assert printed.startswith("name") and "moganet_xt.in1k" in printed


# ---------------------------------------------------------------------------------- interactions (shared run group)
def test_interactions_dtype_and_memory_format_reach_its_settings():
    args = interactions_cli.build_parser().parse_args(["--dtype", "bfloat16", "--memory-format", "contiguous"])
    settings = interactions_cli.settings_from_args(args)
    assert settings.dtype == "bfloat16" and settings.memory_format == "contiguous"


# ---------------------------------------------------------------------------------- one command
@pytest.mark.parametrize("tool", list(dispatcher.TOOLS))
def test_dispatcher_runs_the_tool_on_the_rest(tool, monkeypatch):
    module = importlib.import_module(dispatcher.TOOLS[tool][0])
    main = Recorder(result=0)
    monkeypatch.setattr(module, "main", main)
    with pytest.raises(SystemExit) as err:
        dispatcher.main([tool, "--out", "x", "-q"])
    assert err.value.code == 0 and main.args == (["--out", "x", "-q"],)


def test_dispatcher_from_the_command_line_hands_the_tool_its_arguments(monkeypatch):
    seen = []
    monkeypatch.setattr(erf_cli, "main", lambda argv: seen.append((argv, list(sys.argv))) or 0)
    monkeypatch.setenv(cli._REEXEC_FLAG, "0")  # no restart with the allocator settings here
    monkeypatch.setattr(sys, "argv", ["moga-analysis", "erf", "--thresholds", "0.5"])
    with pytest.raises(SystemExit) as err:
        dispatcher.main()
    assert err.value.code == 0
    assert seen == [(None, ["moga-analysis erf", "--thresholds", "0.5"])]


def test_dispatcher_usage_and_unknown_tool(capsys):
    with pytest.raises(SystemExit) as err:
        dispatcher.main(["--help"])
    assert err.value.code == 0
    printed = capsys.readouterr().out
    assert all(f"  {t}" in printed for t in ("interactions", "gradcam", "erf", "ablation", "weights", "demo"))
    for argv in ([], ["nope"]):
        with pytest.raises(SystemExit) as err:
            dispatcher.main(argv)
        assert err.value.code == 2
    assert "unknown tool 'nope'" in capsys.readouterr().err


def test_python_m_moga_analysis_gradcam_help():
    env = dict(os.environ, MOGA_ANALYSIS_REEXEC="0", PYTHONWARNINGS="ignore")
    p = subprocess.run([sys.executable, "-m", "moga_analysis", "gradcam", "--help"], capture_output=True, text=True,
                       env=env, timeout=300, cwd=ROOT)
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("usage: moga-analysis gradcam") and "--image-size N" in p.stdout
    assert "advanced:" in p.stdout and "--batch-size" in p.stdout.split("advanced:")[1]


def test_console_script_resolves_to_the_dispatcher():
    try:
        import tomllib
    except ImportError:  # Python 3.10
        tomllib = pytest.importorskip("tomli")
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    module, _, attr = scripts["moga-analysis"].partition(":")
    assert getattr(importlib.import_module(module), attr) is dispatcher.main
    from importlib.metadata import entry_points

    installed = [e for e in entry_points(group="console_scripts") if e.name == "moga-analysis"]
    if installed:  # an install made after pyproject gained the script
        assert installed[0].load() is dispatcher.main
