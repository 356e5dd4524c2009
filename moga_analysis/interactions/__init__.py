"""Multi-order game-theoretic interactions I^(m)(i,j) and their relative strength J^(m).

* :mod:`.games`: value functions (the image-masking game, synthetic games with closed forms);
* :mod:`.design`: orders and pairs (the reference protocol's grid and pair rule);
* :mod:`.estimators`: exact and sampled I^(m)(i,j) (:class:`InteractionResult`);
* :mod:`.strength`: J^(m), bootstrap bands, paired band differences;
* :mod:`.maps`: per-cell maps of I^(m) by band of orders (:mod:`.map_plot` draws them);
* :mod:`.pipeline`: settings and the computation over models x images that the CLI, the
  notebooks and the figures share; :mod:`.plot`: figures from saved results;
* ``python -m moga_analysis.interactions``: the command line (:mod:`.cli`).
"""

from ..tools import entry_points
from .adaptive import estimate_adaptive
from .design import REFERENCE_RATIOS, map_pairs, orders_from_ratios, pair_incidence, reference_pairs
from .estimators import InteractionResult, estimate_interactions, exact_interactions
from .games import BASELINES, OUTPUTS, HarsanyiGame, ImageMaskingGame
from .maps import InteractionMaps, MapDifference, interaction_maps, map_difference, maps_from_result
from .pipeline import (
    InteractionSettings,
    InteractionStack,
    ModelInteractions,
    compute_interactions,
    image_interactions,
)
from .strength import (
    ORDER_BANDS,
    bootstrap_relative_strength,
    paired_band_difference,
    relative_strength,
    strength_per_image,
)

__all__ = [
    "build_parser",
    "BASELINES",
    "HarsanyiGame",
    "ImageMaskingGame",
    "InteractionMaps",
    "InteractionResult",
    "InteractionSettings",
    "InteractionStack",
    "ModelInteractions",
    "compute_interactions",
    "image_interactions",
    "MapDifference",
    "ORDER_BANDS",
    "OUTPUTS",
    "REFERENCE_RATIOS",
    "bootstrap_relative_strength",
    "estimate_adaptive",
    "estimate_interactions",
    "exact_interactions",
    "interaction_maps",
    "main",
    "map_difference",
    "map_pairs",
    "maps_from_result",
    "orders_from_ratios",
    "pair_incidence",
    "paired_band_difference",
    "reference_pairs",
    "relative_strength",
    "strength_per_image",
]

main, build_parser = entry_points(__name__)
