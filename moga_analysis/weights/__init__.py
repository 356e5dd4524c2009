"""Getting MogaNet's official weights onto a machine, and knowing which weights a model has.

On a connected machine::

    moga-analysis weights download --weights-dir DIR          # the six variants' ImageNet-1k weights
    moga-analysis weights download moganet_s moganet_t.in1k_256 --weights-dir DIR

prints each file's size and SHA-256 (the same downloader as every tool: a verified temporary file,
renamed into place).  Copy ``DIR`` to the offline machine and pass ``--weights-dir DIR`` to any tool
(or set ``MOGA_WEIGHTS_DIR=DIR``, or ``load_model(name, weights_dir=DIR)``): files are found by
name (the URL's basename), before the torch hub cache.  ``moga-analysis weights list``
shows every MogaNet name, its alias, URL, where it is cached and its hash.

Library: :func:`download_weights`, :func:`list_weights`, :func:`official_weights`, and from
:mod:`moga_analysis.models.loading` / :mod:`moga_analysis.models.hub`: :func:`weights_provenance`,
:func:`file_sha256`, :func:`set_weights_dir`.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

from ..models.hub import (
    MIRROR_ENV,
    WEIGHTS_DIR_ENV,
    download_url,
    file_sha256,
    find_local,
    hub_cache_dir,
    set_weights_dir,
    weights_dir,
    weights_filename,
)
from ..models.loading import load_model, resolve_model_name, weights_provenance

__all__ = [
    "OFFICIAL",
    "WeightsEntry",
    "official_weights",
    "resolve_weights",
    "download_weights",
    "list_weights",
    "load_model",
    "weights_provenance",
    "file_sha256",
    "set_weights_dir",
    "WEIGHTS_DIR_ENV",
    "MIRROR_ENV",
]

log = logging.getLogger(__name__)

#: the six official variants (their default tag: ImageNet-1k at 224 px)
OFFICIAL = ("moganet_xtiny", "moganet_tiny", "moganet_small", "moganet_base", "moganet_large", "moganet_xlarge")


@dataclasses.dataclass(frozen=True)
class WeightsEntry:
    """One pretrained weight file of a MogaNet name."""

    name: str  #: canonical name with tag, e.g. ``moganet_small.in1k``
    alias: Optional[str]  #: its short alias with the same tag, e.g. ``moganet_s.in1k``
    url: Optional[str]  #: download URL (None for weights shipped in the package)
    file: Optional[str]  #: the shipped file, if any
    filename: str  #: the file's name in a weights folder or the hub cache


def _entry(name: str) -> WeightsEntry:
    from timm.models import get_pretrained_cfg

    from ..models.moganet import ALIASES

    cfg = get_pretrained_cfg(name)
    arch, _, tag = name.partition(".")
    alias = next((a for a, t in ALIASES.items() if t == arch), None)
    url = cfg.url if cfg is not None else None
    file = cfg.file if cfg is not None else None
    filename = weights_filename(url) if url else (Path(file).name if file else "")
    return WeightsEntry(name, f"{alias}.{tag}" if alias and tag else alias, url or None, file or None, filename)


def official_weights(all_tags: bool = False) -> List[WeightsEntry]:
    """The downloadable weights of the six variants: the default tag of each, or every tag with a URL."""
    import timm

    out = []
    for arch in OFFICIAL:
        if all_tags:
            for name in timm.list_pretrained(arch):
                if name.split(".", 1)[0] == arch and _entry(name).url:
                    out.append(_entry(name))
        else:
            out.append(_entry(resolve_weights([arch])[0].name))
    return out


def resolve_weights(names: Sequence[str]) -> List[WeightsEntry]:
    """Entries for ``names`` (canonical names or aliases, with or without a tag; no tag: the default)."""
    import timm

    out = []
    for n in names:
        canonical = resolve_model_name(n)
        if "." not in canonical:
            cfg = timm.models.get_pretrained_cfg(canonical)  # the default tag's cfg
            if cfg is None:
                raise ValueError(f"{n} has no pretrained weights")
            if cfg.tag:
                canonical = f"{canonical}.{cfg.tag}"
        e = _entry(canonical)
        if not e.url and not e.file:
            raise ValueError(f"{n} has no pretrained weights to download")
        out.append(e)
    return out


def download_weights(
    names: Optional[Sequence[str]] = None,
    dir: Union[str, os.PathLike, None] = None,
    *,
    all_tags: bool = False,
    progress: bool = False,
) -> List[Dict[str, Any]]:
    """Download weights into ``dir`` (default: the torch hub cache) by file name; returns one record
    per file: ``name``, ``url``, ``path``, ``size``, ``sha256``, ``status`` (``downloaded``,
    ``present`` or ``shipped``).  Files already there are kept (and hashed)."""
    entries = resolve_weights(names) if names else official_weights(all_tags=all_tags)
    folder = Path(dir) if dir else hub_cache_dir()
    out = []
    for e in entries:
        if not e.url:  # shipped in the package: nothing to download
            path, status = Path(e.file), "shipped"
        else:
            path = folder / e.filename
            if path.is_file():
                status = "present"
            else:
                log.info("downloading %s -> %s", e.url, path)
                try:
                    download_url(e.url, path, progress=progress)
                except Exception as err:
                    from ..models.checkpoints import CheckpointError

                    raise CheckpointError(f"{e.name}: could not download {e.url}: {err}") from err
                status = "downloaded"
        out.append(dict(name=e.name, alias=e.alias, url=e.url, path=str(path), size=path.stat().st_size,
                        sha256=file_sha256(path), status=status))
    return out


def list_weights(
    weights_dir_: Union[str, os.PathLike, None] = None, cache_dir: Union[str, os.PathLike, None] = None,
    hashes: bool = True,
) -> List[Dict[str, Any]]:
    """Every MogaNet weight file: ``name``, ``alias``, ``url`` (or the shipped ``file``), ``cached``
    (the local path found: weights folder first, then hub cache; None) and its ``sha256``."""
    import timm

    out = []
    for name in timm.list_pretrained("moganet_*"):
        arch = name.split(".", 1)[0]
        if resolve_model_name(arch) != arch:
            continue  # aliases are listed with their canonical name
        e = _entry(name)
        if e.url:
            local = find_local(e.url, weights_dir_, cache_dir)
        else:
            local = Path(e.file) if e.file and Path(e.file).is_file() else None
        out.append(dict(name=e.name, alias=e.alias, url=e.url or (f"shipped: {e.file}" if e.file else None),
                        cached=str(local) if local else None,
                        sha256=file_sha256(local) if (local and hashes) else None))
    return out


def current_weights_dir() -> Optional[Path]:
    """The weights folder in force (``--weights-dir`` / ``$MOGA_WEIGHTS_DIR``), or None."""
    return weights_dir()
