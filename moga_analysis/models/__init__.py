"""MogaNet for timm: importing this registers ``moganet_*`` in timm's model registry."""

from .checkpoints import (
    CheckpointError,
    CheckpointMismatchError,
    load_checkpoint,
    load_pretrained,
    read_checkpoint,
    unwrap_state_dict,
)
from .layers import TapPoint
from .moganet import ALIASES, ARCH_SETTINGS, MogaNet, checkpoint_filter_fn

__all__ = [
    "ALIASES",
    "ARCH_SETTINGS",
    "CheckpointError",
    "CheckpointMismatchError",
    "MogaNet",
    "TapPoint",
    "checkpoint_filter_fn",
    "load_checkpoint",
    "load_pretrained",
    "read_checkpoint",
    "unwrap_state_dict",
]
