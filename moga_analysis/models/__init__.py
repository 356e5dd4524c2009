"""MogaNet for timm: importing this registers ``moganet_*`` in timm's model registry.

``loading.load_model`` builds any timm name with its real weights (or a clear error) and records
their provenance; ``hub`` finds, downloads and hashes weight files; ``checkpoints`` reads them
strictly and safely.
"""

from . import hub
from .checkpoints import (
    CheckpointError,
    CheckpointMismatchError,
    load_checkpoint,
    load_pretrained,
    read_checkpoint,
    unwrap_state_dict,
)
from .hub import file_sha256
from .layers import TapPoint
from .loading import load_model, resolve_model_name, weights_provenance
from .moganet import ALIASES, ARCH_SETTINGS, MogaNet, canonical_name, checkpoint_filter_fn

__all__ = [
    "ALIASES",
    "ARCH_SETTINGS",
    "CheckpointError",
    "CheckpointMismatchError",
    "MogaNet",
    "TapPoint",
    "canonical_name",
    "checkpoint_filter_fn",
    "file_sha256",
    "hub",
    "load_checkpoint",
    "load_model",
    "load_pretrained",
    "read_checkpoint",
    "resolve_model_name",
    "unwrap_state_dict",
    "weights_provenance",
]
