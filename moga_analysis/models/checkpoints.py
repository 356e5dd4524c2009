"""Strict, safe checkpoint loading for MogaNet and any other ``nn.Module``.

* Accepts official ``.pth.tar`` files (a dict holding ``state_dict``, ``state_dict_ema`` or
  ``model``), bare state dicts, ``module.`` / ``backbone.`` prefixes and ``.safetensors`` files.
* Pickles are read with ``torch.load(weights_only=True)``: a pickle that carries code is refused.
* Strict by default: any missing or unexpected key or shape mismatch raises
  :class:`CheckpointMismatchError` listing them all; nothing is loaded partially.
* URLs are downloaded once into the torch hub cache (``torch.hub.get_dir()/checkpoints``).
"""

from __future__ import annotations

import logging
import os
import pickle
import urllib.error
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Union
from urllib.parse import urlparse

import torch
from torch import nn

__all__ = [
    "CheckpointError",
    "CheckpointMismatchError",
    "read_checkpoint",
    "unwrap_state_dict",
    "load_checkpoint",
    "load_pretrained",
    "download",
]

log = logging.getLogger(__name__)

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


def _is_url(s: str) -> bool:
    return urlparse(str(s)).scheme in ("http", "https", "ftp")


def download(url: str, progress: bool = True) -> Path:
    """Download ``url`` into the torch hub cache once and return the local path."""
    cache = Path(torch.hub.get_dir()) / "checkpoints"
    cache.mkdir(parents=True, exist_ok=True)
    dest = cache / os.path.basename(urlparse(url).path)
    if dest.exists():
        return dest
    try:
        torch.hub.download_url_to_file(url, str(dest), progress=progress)
    except (urllib.error.URLError, OSError, TimeoutError) as err:
        raise CheckpointError(
            f"Could not download {url} ({err}). Download it on a machine with internet access and "
            f"pass the local file instead: load_checkpoint(model, 'PATH') in Python, or "
            f"--checkpoint PATH on the command line (or copy it to {dest})."
        ) from err
    return dest


def read_checkpoint(path_or_url: Union[str, os.PathLike], map_location: Any = "cpu") -> Dict[str, Any]:
    """Read a checkpoint file (or URL) into a dict, safely."""
    src = str(path_or_url)
    path = download(src) if _is_url(src) else Path(src)
    if not path.exists():
        raise CheckpointError(f"checkpoint file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device=str(map_location))
        except (SafetensorError, OSError, ValueError) as err:
            raise CheckpointError(f"{path} is not a readable safetensors file: {err}") from err
    try:
        obj = torch.load(str(path), map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"refusing to load {path}: it is not a plain-weights checkpoint (torch.load with "
            f"weights_only=True rejected it: {str(err).splitlines()[0]}). Pickles that carry code "
            f"are never executed; convert the file to safetensors from a trusted environment."
        ) from err
    except Exception as err:  # the unpickler raises many types on garbage
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


def load_checkpoint(
    model: nn.Module,
    path_or_url: Union[str, os.PathLike, Mapping[str, Any]],
    strict: bool = True,
    use_ema: bool = False,
    map_location: Any = "cpu",
    drop_head: bool = False,
) -> nn.Module:
    """Load weights into ``model`` strictly (default) and return it.

    ``path_or_url`` may be a file, a URL or an already loaded dict.  ``drop_head=True`` skips the
    classifier (``model.pretrained_cfg['classifier']``, else ``head``/``fc``) for fine-tuning with a
    different number of classes.
    """
    source = "checkpoint" if isinstance(path_or_url, Mapping) else str(path_or_url)
    raw = dict(path_or_url) if isinstance(path_or_url, Mapping) else read_checkpoint(path_or_url, map_location)
    sd = unwrap_state_dict(raw, use_ema=use_ema)
    own = model.state_dict()
    skip: set = set()
    if drop_head:
        cls = getattr(model, "pretrained_cfg", {}).get("classifier", "head") or "head"
        prefixes = (cls,) if isinstance(cls, str) else tuple(cls)
        skip = {k for k in set(sd) | set(own) if k.split(".")[0] in {p.split(".")[0] for p in prefixes}}
    missing = [k for k in own if k not in sd and k not in skip]
    unexpected = [k for k in sd if k not in own and k not in skip]
    shapes = [
        (k, tuple(sd[k].shape), tuple(own[k].shape))
        for k in own
        if k in sd and k not in skip and tuple(sd[k].shape) != tuple(own[k].shape)
    ]
    if strict and (missing or unexpected or shapes):
        raise CheckpointMismatchError(missing, unexpected, shapes, source)
    if missing or unexpected or shapes:
        log.warning(
            "non-strict load of %s: %d missing, %d unexpected, %d shape mismatches (kept the model's values)",
            source, len(missing), len(unexpected), len(shapes),
        )
    loadable = {k: v for k, v in sd.items() if k in own and k not in skip and tuple(v.shape) == tuple(own[k].shape)}
    model.load_state_dict(loadable, strict=False)
    return model


def load_pretrained(model: nn.Module, strict: bool = True) -> nn.Module:
    """Load the weights named by ``model.pretrained_cfg`` (``file`` first, then ``url``).

    The classifier is skipped when the model's ``num_classes`` differs from the checkpoint's.
    """
    cfg = getattr(model, "pretrained_cfg", None) or {}
    src: Optional[str] = cfg.get("file") or cfg.get("url")
    if not src:
        raise CheckpointError(
            f"no pretrained weights are defined for {cfg.get('architecture', type(model).__name__)}"
            f" (tag {cfg.get('tag')!r}); pass a checkpoint file with load_checkpoint()"
            + (f". {cfg['description']}" if cfg.get("description") else "")
        )
    drop_head = getattr(model, "num_classes", cfg.get("num_classes")) != cfg.get("num_classes")
    return load_checkpoint(model, src, strict=strict, drop_head=drop_head)
