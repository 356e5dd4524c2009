"""Strict, safe checkpoint loading for MogaNet and any other ``nn.Module``.

* Accepts official ``.pth.tar`` files (a dict holding ``state_dict``, ``state_dict_ema`` or
  ``model``), bare state dicts, ``module.`` / ``backbone.`` prefixes and ``.safetensors`` files.
* Pickles are read with ``torch.load(weights_only=True)``: a pickle that carries code is refused.
* Strict by default: any missing or unexpected key or shape mismatch raises
  :class:`CheckpointMismatchError` listing them all; nothing is loaded partially.
* URLs are found in the weights folder or the torch hub cache, else downloaded once into the cache
  through a verified temporary file (:mod:`moga_analysis.models.hub`).

The errors, the file reader and :func:`unwrap_state_dict` live in
:mod:`moga_analysis.models.checkpoint_files` (which ``hub`` uses too) and are re-exported here.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Dict, Mapping, NamedTuple, Optional, Union

import torch
from torch import nn

from .checkpoint_files import CheckpointError, CheckpointMismatchError, read_checkpoint_file, unwrap_state_dict
from .hub import PACKAGE_DIR, fetch_url, file_sha256, is_url

__all__ = [
    "CheckpointError",
    "CheckpointMismatchError",
    "read_checkpoint",
    "unwrap_state_dict",
    "load_checkpoint",
    "load_pretrained",
    "locate_pretrained",
    "set_provenance",
    "WeightsSource",
    "download",
]

log = logging.getLogger(__name__)


def download(url: str, progress: bool = True) -> Path:
    """The local file of ``url``: the weights folder, then the torch hub cache, else downloaded into the
    cache through a verified temporary file (see :mod:`moga_analysis.models.hub`)."""
    return fetch_url(url, progress=progress)


def read_checkpoint(
    path_or_url: Union[str, os.PathLike],
    map_location: Any = "cpu",
    *,
    suffix: Optional[str] = None,
    mmap: bool = False,
) -> Dict[str, Any]:
    """Read a checkpoint file (or URL) into a dict, safely.

    ``suffix``: read as this kind of file (``.safetensors``) whatever the name says; ``mmap``: map a
    zip-format pickle instead of reading it (for a quick check of a large file).
    """
    src = str(path_or_url)
    return read_checkpoint_file(download(src) if is_url(src) else Path(src), map_location, suffix=suffix, mmap=mmap)


def load_checkpoint(
    model: nn.Module,
    path_or_url: Union[str, os.PathLike, Mapping[str, Any]],
    strict: bool = True,
    use_ema: bool = False,
    map_location: Any = "cpu",
    drop_head: bool = False,
    name: Optional[str] = None,
) -> nn.Module:
    """Load weights into ``model`` strictly (default) and return it.

    ``path_or_url`` may be a file, a URL or an already loaded dict.  ``drop_head=True`` skips the
    classifier (``model.pretrained_cfg['classifier']``, else ``head``/``fc``) for fine-tuning with a
    different number of classes.  ``name``: how errors call the checkpoint (default: its path).
    """
    source = name or ("checkpoint" if isinstance(path_or_url, Mapping) else str(path_or_url))
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


class WeightsSource(NamedTuple):
    """Where a model's pretrained weights are: ``kind`` (``url``, ``file`` or ``shipped``), the
    ``location`` recorded in results (URL or path) and the local ``file`` that is read."""

    kind: str
    location: str
    file: Path


def cfg_name(cfg: Mapping[str, Any]) -> str:
    """``architecture.tag`` of a pretrained cfg (just the architecture when it has no tag)."""
    arch, tag = cfg.get("architecture") or "?", cfg.get("tag")
    return f"{arch}.{tag}" if tag else arch


def no_weights_message(name: str, cfg: Mapping[str, Any]) -> str:
    """The error for a name that has no pretrained weights at all."""
    why = f" ({cfg['description']})" if cfg.get("description") else ""
    return (
        f"{name} has no pretrained weights{why}; nothing was computed. Pass its weights with --checkpoint PATH "
        f"(load_model(name, checkpoint=PATH), load_checkpoint(model, PATH)), or ask for random weights with "
        f"--random-weights (pretrained=False)."
    )


def locate_pretrained(
    cfg: Mapping[str, Any],
    *,
    weights_dir: Union[str, os.PathLike, None] = None,
    cache_dir: Union[str, os.PathLike, None] = None,
    progress: bool = False,
    requested: Optional[str] = None,
) -> WeightsSource:
    """The local file of a pretrained cfg's weights (``file`` first, then ``url``: weights folder, hub
    cache, download), or ``CheckpointError`` before anything is built.  ``requested``: the name the
    user typed, for the messages."""
    name = cfg_name(cfg)
    if requested and requested not in (name, name.split(".")[0]):
        name = f"{requested} (= {name})"
    if cfg.get("file"):
        path = Path(cfg["file"])
        if not path.is_file():
            raise CheckpointError(f"{name}: its weights file {path} does not exist; nothing was computed.")
        shipped = path.resolve().is_relative_to(PACKAGE_DIR)
        return WeightsSource("shipped" if shipped else "file", str(path), path)
    if cfg.get("url"):
        url = str(cfg["url"])
        return WeightsSource("url", url, fetch_url(url, name=name, weights_dir_=weights_dir, cache_dir=cache_dir,
                                                   progress=progress))
    raise CheckpointError(no_weights_message(name, cfg))


def set_provenance(model: nn.Module, *, model_name: str, requested: Optional[str], kind: str,
                   location: Optional[str], file: Union[str, os.PathLike, None]) -> Dict[str, Any]:
    """Record where ``model``'s weights came from on ``model.weights_provenance`` (and the location on
    ``model.weights_source``, None for random weights); returns the dict."""
    prov = {
        "model": model_name,
        "requested": requested if requested is not None else model_name,
        "kind": kind,
        "location": location,
        "file": str(Path(file).resolve()) if file else None,
        "sha256": file_sha256(file) if file else None,
    }
    model.weights_provenance = prov
    model.weights_source = None if kind == "random" else location
    return prov


def _adapt_input_conv(model: nn.Module, sd: Dict[str, torch.Tensor], cfg: Mapping[str, Any]) -> None:
    """timm's rule for ``in_chans != 3``: sum / repeat the first conv's pretrained filters."""
    from timm.models import adapt_input_conv

    first = cfg.get("first_conv")
    for conv in ([first] if isinstance(first, str) else list(first or [])):
        key = conv + ".weight"
        if key not in sd:
            continue
        want = model.get_submodule(conv).weight.shape
        if sd[key].shape != want and sd[key].ndim == 4 and sd[key].shape[0] == want[0]:
            sd[key] = adapt_input_conv(want[1], sd[key])


def load_pretrained(
    model: nn.Module,
    strict: bool = True,
    *,
    weights_dir: Union[str, os.PathLike, None] = None,
    cache_dir: Union[str, os.PathLike, None] = None,
    requested: Optional[str] = None,
    source: Optional[WeightsSource] = None,
    progress: bool = False,
) -> nn.Module:
    """Load the weights named by ``model.pretrained_cfg`` (``file`` first, then ``url`` through the
    weights folder, the hub cache or a download) strictly, and record their provenance.

    The classifier is skipped when the model's ``num_classes`` differs from the checkpoint's, and the
    first conv is adapted when ``in_chans`` differs (timm's rules).  ``source``: an already located
    file (:func:`locate_pretrained`).
    """
    cfg = getattr(model, "pretrained_cfg", None) or {}
    if source is None:
        source = locate_pretrained(cfg, weights_dir=weights_dir, cache_dir=cache_dir, progress=progress)
    sd = unwrap_state_dict(read_checkpoint(source.file))
    _adapt_input_conv(model, sd, cfg)
    drop_head = getattr(model, "num_classes", cfg.get("num_classes")) != cfg.get("num_classes")
    load_checkpoint(model, sd, strict=strict, drop_head=drop_head, name=str(source.file))
    set_provenance(model, model_name=cfg_name(cfg), requested=requested, kind=source.kind,
                   location=source.location, file=source.file)
    return model
