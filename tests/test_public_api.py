"""The public API: each subpackage's ``__all__`` pinned, every name importable, and no private name
imported from another module (a name one module needs from another is public there)."""

import ast
import importlib
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "moga_analysis"

PUBLIC = {
    "moga_analysis": [
        "MogaNet", "__version__", "load_checkpoint",
    ],
    "moga_analysis.interactions": [
        "BASELINES", "Estimator", "FixedContexts", "HarsanyiGame", "ImageMaskingGame", "InteractionMaps",
        "InteractionPlan", "InteractionResult", "InteractionSettings", "InteractionStack", "MapDifference",
        "ModelInteractions", "ORDER_BANDS", "OUTPUTS", "PrecisionTarget", "REFERENCE_RATIOS",
        "bootstrap_relative_strength", "build_parser", "compute_interactions", "estimate_interactions",
        "exact_interactions", "from_shapiq_game", "image_interactions", "main", "map_difference", "map_pairs",
        "maps_from_result", "noise_floor", "orders_from_ratios", "pair_incidence", "paired_band_difference",
        "plan_interactions", "reference_pairs", "relative_strength", "strength_per_image", "to_shapiq_game",
    ],
    "moga_analysis.gradcam": [
        "CAMResult", "CAMSettings", "CAMStack", "FaithfulnessResult", "TargetLike", "build_parser",
        "compute_cams", "default_layer", "faithfulness_metrics", "frozen_parameters", "grad_cam",
        "infer_layout", "main", "normalize_targets", "randomization_check", "resolve_layer", "upsample_maps",
    ],
    "moga_analysis.erf": [
        "DEFAULT_THRESHOLDS", "ERFResult", "ERFSettings", "ERFStack", "RandomWeightsWarning", "area_ratio",
        "build_parser", "compute_erfs", "effective_receptive_field", "eval_mode", "looks_untrained", "main",
    ],
    "moga_analysis.ablation": [
        "AblationEvaluation", "AblationReport", "AblationSettings", "AblationSpec", "AnalysisSettings",
        "FULL", "KINDS", "METRICS", "MODES", "ablate", "ablation_analyses", "build_parser", "calibrate",
        "evaluate_ablations", "main", "moga_blocks", "parse_specs", "run_ablation",
    ],
    "moga_analysis.models": [
        "ALIASES", "ARCH_SETTINGS", "CheckpointError", "CheckpointMismatchError", "MogaNet", "TapPoint",
        "canonical_name", "checkpoint_filter_fn", "file_sha256", "hub", "load_checkpoint", "load_model",
        "load_pretrained", "read_checkpoint", "resolve_model_name", "unwrap_state_dict", "weights_provenance",
    ],
    "moga_analysis.weights": [
        "MIRROR_ENV", "OFFICIAL", "WEIGHTS_DIR_ENV", "WeightsEntry", "download_weights", "file_sha256",
        "list_weights", "load_model", "official_weights", "resolve_weights", "set_weights_dir",
        "weights_provenance",
    ],
    "moga_analysis.plotting": [
        "paper_style", "save_figure",
    ],
}


@pytest.mark.parametrize("module", sorted(PUBLIC))
def test_all_is_pinned_and_importable(module):
    m = importlib.import_module(module)
    assert sorted(m.__all__) == PUBLIC[module], "update PUBLIC here (and the docs) when the public API changes"
    for name in m.__all__:
        assert hasattr(m, name), f"{module}.{name} is in __all__ but not defined"


def _private_imports(path: Path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            for alias in node.names:
                if alias.name.startswith("_") and not alias.name.startswith("__"):
                    yield node.lineno, f"from {'.' * node.level}{node.module or ''} import {alias.name}"


def test_no_private_name_is_imported_across_modules():
    found = [f"{p.relative_to(PACKAGE.parent)}:{line}: {text}" for p in sorted(PACKAGE.rglob("*.py"))
             for line, text in _private_imports(p)]
    assert not found, "\n".join(found)


def test_the_test_sees_a_private_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("from .estimators import _plan\nfrom .x import public, _hidden as h\n")
    assert [t for _, t in _private_imports(bad)] == ["from .estimators import _plan", "from .x import _hidden"]
