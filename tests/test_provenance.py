"""Every tool records the SHA-256 of its weights, and ``--resume`` refuses results made with other weights.

Each CLI runs once on a tiny MogaNet loaded from checkpoint A, then resumes with a checkpoint B
holding other weights (refused: ``RunMismatchError`` "other weights") and with a copy of A under
another path (accepted: the same SHA-256, whatever the path).
"""

import hashlib
import json
import shutil

import numpy as np
import pytest
from PIL import Image
from safetensors.torch import load_file, save_file

from moga_analysis import ablation, erf, gradcam, interactions
from moga_analysis.interactions.pipeline import ModelInteractions
from moga_analysis.results import load_result
from moga_analysis.runs import RunFolder, RunMismatchError

MODEL = "moganet_xtiny"


@pytest.fixture(scope="module")
def weights(tmp_path_factory, reference_dir):
    """``(A, copy of A elsewhere, B with other weights)``, each in its own folder."""
    root = tmp_path_factory.mktemp("weights")
    a, a_copy, b = root / "a" / "w.safetensors", root / "copy" / "w_copy.safetensors", root / "b" / "w.safetensors"
    for p in (a, a_copy, b):
        p.parent.mkdir()
    shutil.copyfile(reference_dir / f"{MODEL}_seed0.safetensors", a)
    shutil.copyfile(a, a_copy)
    sd = load_file(str(a))
    key = next(k for k, v in sd.items() if v.is_floating_point() and k.endswith("weight"))
    sd[key] = sd[key] + 0.01
    save_file(sd, str(b))
    return a, a_copy, b


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (36, 36, 3), dtype=np.uint8)).save(root / "x0.png")
    return root


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


TOOLS = {
    "interactions": (interactions.main, ["--protocol", "efficient", "--grid", "4", "--pairs", "2", "--contexts", "2",
                                         "--ratios", "0", "0.5", "1"]),
    "gradcam": (gradcam.main, ["--no-metrics"]),
    "erf": (erf.main, []),
    "ablation": (ablation.main, ["--ablations", "gate", "--stages", "all", "--modes", "zero", "--workers", "0"]),
}


def _recorded_sha(tool: str, out) -> str:
    """The SHA-256 of the weights in the tool's saved results."""
    if tool == "interactions":
        return ModelInteractions.load(out / f"interactions_{MODEL}.safetensors").provenance["sha256"]
    if tool in ("gradcam", "erf"):
        stem = "cam" if tool == "gradcam" else "erf"
        return load_result(out / f"{stem}_{MODEL}.safetensors").metadata["weights"]["sha256"]
    return json.loads((out / "ablation_results.json").read_text())["metadata"]["weights"]["sha256"]


@pytest.mark.filterwarnings("ignore::moga_analysis.erf.RandomWeightsWarning")
@pytest.mark.parametrize("tool", list(TOOLS))
def test_resume_refuses_other_weights_and_accepts_a_copy(tool, weights, images, tmp_path):
    main, extra = TOOLS[tool]
    a, a_copy, b = weights
    out = tmp_path / tool

    def run(ckpt, *more):
        argv = ["--model", MODEL, "--checkpoint", str(ckpt), "--images", str(images), "--num-images", "1",
                "--image-size", "32", "--device", "cpu", "--out", str(out), "--no-figures", "--no-progress", "-q",
                "--no-tune-malloc", *extra, *more]
        return main(argv)

    assert run(a) == 0
    sha = _sha(a)
    assert _recorded_sha(tool, out) == sha
    assert RunFolder.read_record(out)["weights"][MODEL]["sha256"] == sha

    with pytest.raises(RunMismatchError, match="other weights"):
        run(b, "--resume")

    assert run(a_copy, "--resume") == 0  # another path, the same file: the same weights
    record = RunFolder.read_record(out)
    assert record["complete"] and record["weights"][MODEL]["sha256"] == sha
    assert record["weights"][MODEL]["location"] == str(a_copy)
    assert _recorded_sha(tool, out) == sha
