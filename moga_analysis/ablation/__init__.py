"""Gate ablations of MogaNet at inference time: interventions, the sweep, and the experiment.

* :mod:`.interventions`: :func:`ablate` (a context manager; exact restore), :func:`calibrate`,
  :class:`AblationSpec`, :func:`parse_specs`;
* :mod:`.evaluate`: :func:`evaluate_ablations`, one pass over a data set for every ablation;
* :mod:`.pipeline`: :class:`AblationSettings`, :func:`run_ablation` (run folder, resume, optional
  analyses through the interaction, ERF and Grad-CAM pipelines), :class:`AblationReport`;
* :mod:`.plot`: accuracy-drop bars and interaction curves from computed metrics;
* ``python -m moga_analysis.ablation``: the command line (:mod:`.cli`).
"""

from ..tools import entry_points
from .evaluate import METRICS, AblationEvaluation, evaluate_ablations
from .interventions import FULL, KINDS, MODES, AblationSpec, ablate, calibrate, moga_blocks, parse_specs
from .pipeline import AblationReport, AblationSettings, AnalysisSettings, ablation_analyses, run_ablation

__all__ = [
    "FULL",
    "KINDS",
    "METRICS",
    "MODES",
    "AblationEvaluation",
    "AblationReport",
    "AblationSettings",
    "AblationSpec",
    "AnalysisSettings",
    "ablate",
    "ablation_analyses",
    "build_parser",
    "calibrate",
    "evaluate_ablations",
    "main",
    "moga_blocks",
    "parse_specs",
    "run_ablation",
]

main, build_parser = entry_points(__name__)
