"""Grad-CAM for MogaNet and any timm classifier, faithfulness metrics, and the Grad-CAM pipeline.

* :mod:`.cam`: :func:`grad_cam` and :class:`CAMResult` (built on captum's ``LayerGradCam``);
* :mod:`.faithfulness`: deletion / insertion AUC, average drop, increase in confidence, and the
  model-randomisation sanity check;
* :mod:`.pipeline`: :class:`CAMSettings`, :func:`compute_cams` over models x images, :class:`CAMStack`;
* :mod:`.plot`: overlay grids from computed results;
* ``python -m moga_analysis.gradcam``: the command line (:mod:`.cli`).
"""

from ..feature_maps import default_layer, infer_layout, resolve_layer
from ..runtime import frozen_parameters
from ..tools import entry_points
from .cam import CAMResult, TargetLike, grad_cam, normalize_targets, upsample_maps
from .faithfulness import FaithfulnessResult, faithfulness_metrics, randomization_check
from .pipeline import CAMSettings, CAMStack, compute_cams

__all__ = [
    "CAMResult",
    "CAMSettings",
    "CAMStack",
    "FaithfulnessResult",
    "TargetLike",
    "compute_cams",
    "default_layer",
    "faithfulness_metrics",
    "frozen_parameters",
    "grad_cam",
    "infer_layout",
    "normalize_targets",
    "randomization_check",
    "resolve_layer",
    "upsample_maps",
    "main",
    "build_parser",
]

main, build_parser = entry_points(__name__)
