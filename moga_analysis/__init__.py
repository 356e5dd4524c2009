"""moga_analysis: interpretability and interaction analysis for MogaNet and any timm classifier.

Importing the package registers the ``moganet_*`` models in timm's registry.
"""

from . import models  # noqa: F401  (registers the models)
from .models import MogaNet, load_checkpoint

__version__ = "0.1.0"
__all__ = ["MogaNet", "load_checkpoint", "__version__"]
