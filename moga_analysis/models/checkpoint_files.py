"""Reading checkpoint files, with no network: the errors, the safe reader and the state-dict unwrapping.

The bottom of the weights stack: :mod:`moga_analysis.models.hub` (finding, downloading and hashing
files) and :mod:`moga_analysis.models.checkpoints` (URLs, strict loading, pretrained weights) both
build on it, and it imports neither.  Its public names are re-exported by ``checkpoints`` and by
``moga_analysis.models``, where they are usually imported from.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Union

import torch

__all__ = ["CheckpointError", "CheckpointMismatchError", "read_checkpoint_file", "unwrap_state_dict"]

_WRAPPER_KEYS = ("state_dict", "model", "state_dict_ema", "model_ema", "module")
_PREFIXES = ("module.", "backbone.", "_orig_mod.")


class CheckpointError(RuntimeError):
    """A checkpoint could not be read, downloaded or trusted."""


class CheckpointMismatchError(CheckpointError):
    """The checkpoint's keys or shapes differ from the model's."""

    def __init__(self, missing, unexpected, shape_mismatch, source: str = "checkpoint"):
        self.missing = list(missing)
        self.unexpected = list(unexpected)
        self.shape_mismatch = list(shape_mismatch)

        def block(title, items, fmt=str, limit=25):
            if not items:
                return ""
            lines = [f"  {fmt(i)}" for i in items[:limit]]
            if len(items) > limit:
                lines.append(f"  ... and {len(items) - limit} more")
            return f"\n{title} ({len(items)}):\n" + "\n".join(lines)

        msg = (
            f"{source} does not match the model; nothing was loaded."
            + block("missing keys", self.missing)
            + block("unexpected keys", self.unexpected)
            + block(
                "shape mismatches",
                self.shape_mismatch,
                lambda t: f"{t[0]}: checkpoint {list(t[1])} vs model {list(t[2])}",
            )
            + "\nPass strict=False to load the matching keys only (a warning lists the rest)."
        )
        super().__init__(msg)


def read_checkpoint_file(
    path: Union[str, os.PathLike],
    map_location: Any = "cpu",
    *,
    suffix: Optional[str] = None,
    mmap: bool = False,
) -> Dict[str, Any]:
    """Read a local checkpoint file into a dict, safely (URLs: :func:`~.checkpoints.read_checkpoint`).

    ``suffix``: read as this kind of file (``.safetensors``) whatever the name says; ``mmap``: map a
    zip-format pickle instead of reading it (for a quick check of a large file).
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint file not found: {path}")
    if (suffix or path.suffix) == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device=str(map_location))
        except (SafetensorError, OSError, ValueError) as err:
            raise CheckpointError(f"{path} is not a readable safetensors file: {err}") from err
    try:
        obj = torch.load(str(path), map_location=map_location, weights_only=True, mmap=mmap or None)
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"refusing to load {path}: it is not a plain-weights checkpoint (torch.load with "
            f"weights_only=True rejected it: {str(err).splitlines()[0]}). Pickles that carry code "
            f"are never executed; convert the file to safetensors from a trusted environment."
        ) from err
    except Exception as err:  # the unpickler raises many types on garbage
        if mmap:  # legacy (non-zip) pickles cannot be mapped: read them
            return read_checkpoint_file(path, map_location, suffix=suffix)
        raise CheckpointError(f"{path} is corrupt or not a PyTorch checkpoint: {err}") from err
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a state dict")
    return dict(obj)


def unwrap_state_dict(obj: Mapping[str, Any], use_ema: bool = False) -> Dict[str, torch.Tensor]:
    """Find the state dict inside a training checkpoint and strip wrapper prefixes."""
    sd: Any = obj
    order = ("state_dict_ema", "model_ema") + _WRAPPER_KEYS if use_ema else _WRAPPER_KEYS
    for _ in range(3):  # nested wrappers, e.g. {"model": {"state_dict": ...}}
        if not isinstance(sd, Mapping) or all(isinstance(v, torch.Tensor) for v in sd.values()):
            break
        for key in order:
            if isinstance(sd.get(key), Mapping):
                sd = sd[key]
                break
        else:
            break
    if not isinstance(sd, Mapping):
        raise CheckpointError("no state dict found in the checkpoint")
    out: Dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        if not isinstance(v, torch.Tensor):
            continue  # training metadata (epoch, arch, ...) next to the weights
        for p in _PREFIXES:
            if k.startswith(p):
                k = k[len(p):]
        out[k] = v
    if not out:
        raise CheckpointError("the checkpoint holds no tensors")
    return out
