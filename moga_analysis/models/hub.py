"""Where pretrained weights live, how they are downloaded, and their SHA-256.

Look-up order for a pretrained cfg's ``url`` (the file name is always the URL's basename, so a
file is found by name wherever it sits):

1. the weights folder: ``weights_dir=`` / ``--weights-dir DIR`` / ``$MOGA_WEIGHTS_DIR``
   (``python -m moga_analysis.weights download --dir DIR`` fills one on a connected machine);
2. the torch hub cache, ``torch.hub.get_dir()/checkpoints`` (``$TORCH_HOME/hub/checkpoints``,
   default ``~/.cache/torch/hub/checkpoints``), or timm's ``cache_dir=`` when given;
3. a download into that cache (from ``$MOGA_WEIGHTS_MIRROR/<basename>`` when that is set).

A download goes to a temporary file beside its destination; it is checked against the server's
Content-Length, refused if it is an HTML page, read back as a checkpoint, and only then renamed
into place, so an interrupted or wrong download never leaves a file in the cache.  Failures are
:class:`~moga_analysis.models.checkpoint_files.CheckpointError` with one sentence naming the URL, the
cache path and the ways to pass the file.

:func:`file_sha256` hashes a file once and remembers the hash in ``<file>.sha256`` (hash, size
and modification time: a changed file is hashed again); files inside the installed package and
files in read-only folders are remembered in memory only.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import shutil
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Dict, Optional, Tuple, Union
from urllib.parse import urlparse

from .checkpoint_files import CheckpointError, read_checkpoint_file, unwrap_state_dict

__all__ = [
    "PACKAGE_DIR",
    "WEIGHTS_DIR_ENV",
    "MIRROR_ENV",
    "hub_cache_dir",
    "set_weights_dir",
    "weights_dir",
    "weights_filename",
    "find_local",
    "fetch_url",
    "download_url",
    "verify_checkpoint_file",
    "file_sha256",
    "is_url",
]

log = logging.getLogger(__name__)

WEIGHTS_DIR_ENV = "MOGA_WEIGHTS_DIR"
MIRROR_ENV = "MOGA_WEIGHTS_MIRROR"
#: the installed package's folder (weights shipped inside it are recorded relative to it)
PACKAGE_DIR = Path(__file__).resolve().parents[1]
_TIMEOUT_S = float(os.environ.get("MOGA_DOWNLOAD_TIMEOUT", "30"))
_process_weights_dir: Optional[Path] = None


def _error(msg: str) -> Exception:
    return CheckpointError(msg)


def is_url(s: Union[str, os.PathLike]) -> bool:
    return urlparse(str(s)).scheme in ("http", "https", "ftp")


def hub_cache_dir(cache_dir: Union[str, os.PathLike, None] = None) -> Path:
    """The folder downloads go to: ``cache_dir`` if given, else ``torch.hub.get_dir()/checkpoints``."""
    if cache_dir:
        return Path(cache_dir)
    import torch

    return Path(torch.hub.get_dir()) / "checkpoints"


def set_weights_dir(path: Union[str, os.PathLike, None]) -> None:
    """Set this process's weights folder (the CLIs' ``--weights-dir``); None: back to ``$MOGA_WEIGHTS_DIR``."""
    global _process_weights_dir
    _process_weights_dir = Path(path) if path else None


def weights_dir(explicit: Union[str, os.PathLike, None] = None) -> Optional[Path]:
    """The weights folder in force: ``explicit``, else :func:`set_weights_dir`'s, else ``$MOGA_WEIGHTS_DIR``."""
    if explicit:
        return Path(explicit)
    if _process_weights_dir is not None:
        return _process_weights_dir
    env = os.environ.get(WEIGHTS_DIR_ENV)
    return Path(env) if env else None


def weights_filename(url: str) -> str:
    """The file name a URL's weights have everywhere (weights folder, hub cache): its basename."""
    name = os.path.basename(urlparse(url).path)
    if not name:
        raise ValueError(f"no file name in URL {url!r}")
    return name


def find_local(
    url: str, weights_dir_: Union[str, os.PathLike, None] = None, cache_dir: Union[str, os.PathLike, None] = None
) -> Optional[Path]:
    """The local copy of ``url``'s file, weights folder first, then the hub cache; None if neither has it."""
    name = weights_filename(url)
    folder = weights_dir(weights_dir_)
    for d in ([folder] if folder else []) + [hub_cache_dir(cache_dir)]:
        p = d / name
        if p.is_file():
            return p
    return None


def _source_url(url: str) -> str:
    mirror = os.environ.get(MIRROR_ENV)
    return f"{mirror.rstrip('/')}/{weights_filename(url)}" if mirror else url


def verify_checkpoint_file(path: Union[str, os.PathLike], name: str = "") -> None:
    """Raise ``CheckpointError`` unless ``path`` reads as a checkpoint holding tensors."""
    path = Path(path)
    with open(path, "rb") as f:
        head = f.read(512).lstrip().lower()
    if head.startswith((b"<!doctype html", b"<html", b"<?xml", b"<head", b"<body")):
        raise _error(f"{name or path} is an HTML page, not a checkpoint")
    suffix = ".safetensors" if (name or path.name).endswith(".safetensors") else None
    unwrap_state_dict(read_checkpoint_file(path, suffix=suffix, mmap=True))


def download_url(url: str, dest: Union[str, os.PathLike], progress: bool = False) -> Tuple[Path, str]:
    """Download ``url`` to ``dest`` through a verified temporary file; returns ``(dest, sha256)``.

    Raises ``CheckpointError`` (nothing left at ``dest``) if the connection fails, the body is
    shorter than its Content-Length, the server sends HTML, or the file is not a checkpoint.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    source = _source_url(url)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".partial", dir=dest.parent)
    tmp = Path(tmp_name)
    digest = hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as out:
            req = urllib.request.Request(source, headers={"User-Agent": "moga_analysis"})
            with urllib.request.urlopen(req, timeout=_TIMEOUT_S) as resp:
                ctype = (resp.headers.get("Content-Type") or "").lower()
                expected = resp.headers.get("Content-Length")
                expected = int(expected) if expected and expected.isdigit() else None
                bar = None
                if progress:
                    from tqdm.auto import tqdm

                    bar = tqdm(total=expected, unit="B", unit_scale=True, desc=dest.name, leave=False)
                got = 0
                while True:
                    chunk = resp.read(1 << 20)
                    if not chunk:
                        break
                    out.write(chunk)
                    digest.update(chunk)
                    got += len(chunk)
                    if bar is not None:
                        bar.update(len(chunk))
                if bar is not None:
                    bar.close()
        if expected is not None and got != expected:
            raise _error(f"the download of {source} was cut short ({got} of {expected} bytes)")
        if "text/html" in ctype:
            raise _error(f"{source} sent an HTML page (Content-Type {ctype}), not a checkpoint")
        try:
            verify_checkpoint_file(tmp, dest.name)
        except Exception as err:
            raise _error(f"the file downloaded from {source} is not a readable checkpoint ({err})") from err
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    sha = digest.hexdigest()
    _remember_sha256(dest, sha)
    return dest, sha


def fetch_url(
    url: str,
    *,
    name: str = "",
    weights_dir_: Union[str, os.PathLike, None] = None,
    cache_dir: Union[str, os.PathLike, None] = None,
    progress: bool = False,
) -> Path:
    """The local file of ``url``: weights folder, then hub cache, else downloaded into the cache."""
    found = find_local(url, weights_dir_, cache_dir)
    if found is not None:
        return found
    dest = hub_cache_dir(cache_dir) / weights_filename(url)
    try:
        t0 = time.perf_counter()
        path, sha = download_url(url, dest, progress=progress)
        log.info("downloaded %s (%.1f MB, sha256 %s) in %.1f s", path, path.stat().st_size / 2**20, sha,
                 time.perf_counter() - t0)
        return path
    except (urllib.error.URLError, OSError, TimeoutError, ValueError, http.client.HTTPException) as err:
        reason = f"{type(err).__name__}: {getattr(err, 'reason', None) or err}"
        raise _error(_unavailable_message(url, name, dest, weights_dir(weights_dir_), reason)) from err
    except Exception as err:
        if isinstance(err, CheckpointError):
            raise _error(_unavailable_message(url, name, dest, weights_dir(weights_dir_), str(err))) from err
        raise


def _unavailable_message(url: str, name: str, dest: Path, folder: Optional[Path], reason: str) -> str:
    where = f"the weights folder {folder} or " if folder else ""
    who = f"{name}: " if name else ""
    tool = f" {name.split(' ')[0]}" if name else ""
    return (
        f"{who}could not get the pretrained weights from {url} ({reason}), and they are not in {where}the cache "
        f"{dest}; nothing was computed. Copy the file to {dest}, or run `python -m moga_analysis.weights download"
        f"{tool} --dir DIR` on a connected machine and pass --weights-dir DIR (or set {WEIGHTS_DIR_ENV}=DIR), or "
        f"pass a local file with --checkpoint PATH (load_model(..., checkpoint=PATH)); --random-weights runs on "
        f"random weights."
    )


# --------------------------------------------------------------------------- SHA-256
_memory_hashes: Dict[Tuple[str, int, int], str] = {}


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _key(path: Path) -> Tuple[str, int, int]:
    st = path.stat()
    return str(path.resolve()), st.st_size, st.st_mtime_ns


def _remember_sha256(path: Path, sha: str) -> None:
    key = _key(path)
    _memory_hashes[key] = sha
    if Path(key[0]).is_relative_to(PACKAGE_DIR):
        return  # never write next to files of the installed package
    try:
        _sidecar(path).write_text(f"{sha} {key[1]} {key[2]}\n")
    except OSError:
        pass  # read-only folder: the in-memory copy serves this process


def file_sha256(path: Union[str, os.PathLike]) -> str:
    """SHA-256 (hex) of a file, computed once: cached in ``<file>.sha256`` (hash, size, mtime) or in memory."""
    path = Path(path)
    key = _key(path)
    if key in _memory_hashes:
        return _memory_hashes[key]
    side = _sidecar(path)
    try:
        sha, size, mtime = side.read_text().split()
        if int(size) == key[1] and int(mtime) == key[2] and len(sha) == 64:
            _memory_hashes[key] = sha
            return sha
    except (OSError, ValueError):
        pass
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        shutil.copyfileobj(f, _Hasher(digest), 1 << 20)
    sha = digest.hexdigest()
    _remember_sha256(path, sha)
    return sha


class _Hasher:
    """A write-only file object feeding a hash (for ``shutil.copyfileobj``)."""

    def __init__(self, digest):
        self.digest = digest

    def write(self, b) -> int:
        self.digest.update(b)
        return len(b)
