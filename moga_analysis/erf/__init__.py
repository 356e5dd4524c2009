"""Effective receptive fields (the RepLKNet protocol) and their pipeline.

* :mod:`.erf`: :func:`effective_receptive_field`, :class:`ERFResult`, :func:`area_ratio`;
* :mod:`.pipeline`: :class:`ERFSettings`, :func:`compute_erfs` over models x images, :class:`ERFStack`;
* :mod:`.plot`: log-scaled heatmaps with the area-ratio table;
* ``python -m moga_analysis.erf``: the command line (:mod:`.cli`).
"""

from ..runtime import eval_mode
from ..tools import entry_points
from .erf import (
    DEFAULT_THRESHOLDS,
    ERFResult,
    RandomWeightsWarning,
    area_ratio,
    effective_receptive_field,
    looks_untrained,
)
from .pipeline import ERFSettings, ERFStack, compute_erfs

__all__ = [
    "DEFAULT_THRESHOLDS",
    "ERFResult",
    "ERFSettings",
    "ERFStack",
    "RandomWeightsWarning",
    "area_ratio",
    "compute_erfs",
    "effective_receptive_field",
    "eval_mode",
    "looks_untrained",
    "main",
    "build_parser",
]

main, build_parser = entry_points(__name__)
