"""Multi-order game-theoretic interactions I^(m)(i,j) and their relative strength J^(m).

* :mod:`.games`: value functions (the image-masking game, synthetic games with closed forms);
* :mod:`.design`: orders and pairs (the reference protocol's grid and pair rule);
* :mod:`.sampling`: contexts and the rows they need, shared by every estimator;
* :mod:`.estimators`: the estimators (:class:`FixedContexts`, :class:`PrecisionTarget`, exact
  enumeration) and their :class:`InteractionResult`; :mod:`.precision`: the precision target's method;
* :mod:`.strength`: J^(m), bootstrap bands, paired band differences;
* :mod:`.interop`: shapiq both ways (:func:`to_shapiq_game`, :func:`from_shapiq_game`);
* :mod:`.maps`: per-cell maps of I^(m) by band of orders (:mod:`.map_plot` draws them);
* :mod:`.pipeline`: settings, the plan and the computation over models x images that the CLI,
  the notebooks and the figures share; :mod:`.plot`: figures from saved results;
* ``python -m moga_analysis.interactions``: the command line (:mod:`.cli`).
"""

from ..tools import entry_points
from .design import REFERENCE_RATIOS, map_pairs, orders_from_ratios, pair_incidence, reference_pairs
from .estimators import (
    Estimator,
    FixedContexts,
    InteractionResult,
    PrecisionTarget,
    estimate_interactions,
    exact_interactions,
)
from .games import BASELINES, OUTPUTS, HarsanyiGame, ImageMaskingGame
from .interop import from_shapiq_game, to_shapiq_game
from .maps import InteractionMaps, MapDifference, map_difference, maps_from_result
from .pipeline import (
    InteractionPlan,
    InteractionSettings,
    InteractionStack,
    ModelInteractions,
    compute_interactions,
    image_interactions,
    plan_interactions,
)
from .sampling import noise_floor
from .strength import (
    ORDER_BANDS,
    bootstrap_relative_strength,
    paired_band_difference,
    relative_strength,
    strength_per_image,
)

__all__ = [
    "BASELINES",
    "Estimator",
    "FixedContexts",
    "HarsanyiGame",
    "ImageMaskingGame",
    "InteractionMaps",
    "InteractionPlan",
    "InteractionResult",
    "InteractionSettings",
    "InteractionStack",
    "MapDifference",
    "ModelInteractions",
    "ORDER_BANDS",
    "OUTPUTS",
    "PrecisionTarget",
    "REFERENCE_RATIOS",
    "bootstrap_relative_strength",
    "build_parser",
    "compute_interactions",
    "estimate_interactions",
    "exact_interactions",
    "from_shapiq_game",
    "image_interactions",
    "main",
    "map_difference",
    "map_pairs",
    "maps_from_result",
    "noise_floor",
    "orders_from_ratios",
    "pair_incidence",
    "paired_band_difference",
    "plan_interactions",
    "reference_pairs",
    "relative_strength",
    "strength_per_image",
    "to_shapiq_game",
]

main, build_parser = entry_points(__name__)
