"""Saving and loading results: tensors in safetensors, everything else as JSON metadata.

A result file is one ``.safetensors`` file whose metadata holds a JSON document under the key
``moga_analysis`` (settings, seed, model, weights, package versions).  Writes are atomic: the file
is written beside its destination and renamed over it, so a killed run never leaves half a file.

Result dataclasses inherit :class:`SavableResult`: tensor fields go to the tensor part, every other
field must be JSON-serialisable and goes to the metadata.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Dict, Mapping, Tuple, Type, TypeVar, Union

import torch

__all__ = ["save_tensors", "load_tensors", "atomic_write_text", "SavableResult"]

_META_KEY = "moga_analysis"
R = TypeVar("R", bound="SavableResult")


def _atomic_path(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    return Path(tmp)


def atomic_write_text(path: Union[str, os.PathLike], text: str) -> Path:
    """Write ``text`` to ``path`` atomically (temporary file + rename)."""
    path = Path(path)
    tmp = _atomic_path(path)
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def save_tensors(
    path: Union[str, os.PathLike], tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, Any]
) -> Path:
    """Save tensors (moved to CPU, made contiguous) and JSON metadata atomically."""
    from safetensors.torch import save_file

    path = Path(path)
    tmp = _atomic_path(path)
    try:
        data = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
        save_file(data, str(tmp), metadata={_META_KEY: json.dumps(metadata, default=_json_default)})
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def load_tensors(path: Union[str, os.PathLike]) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
    """Inverse of :func:`save_tensors`: ``(tensors, metadata)``."""
    from safetensors import safe_open

    tensors: Dict[str, torch.Tensor] = {}
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        for k in f.keys():
            tensors[k] = f.get_tensor(k)
    return tensors, json.loads(meta.get(_META_KEY, "{}"))


def _json_default(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if isinstance(obj, (Path, torch.device, torch.dtype)):
        return str(obj)
    if hasattr(obj, "item"):
        return obj.item()
    if isinstance(obj, (set, tuple)):
        return list(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


class SavableResult:
    """Mixin for frozen result dataclasses: ``result.save(path)`` and ``Cls.load(path)``."""

    def save(self, path: Union[str, os.PathLike]) -> Path:
        tensors, meta = {}, {"__class__": type(self).__name__}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if isinstance(value, torch.Tensor):
                tensors[f.name] = value
            else:
                meta[f.name] = value
        return save_tensors(path, tensors, meta)

    @classmethod
    def load(cls: Type[R], path: Union[str, os.PathLike]) -> R:
        tensors, meta = load_tensors(path)
        stored = meta.pop("__class__", cls.__name__)
        if stored != cls.__name__:
            raise TypeError(f"{path} holds a {stored}, not a {cls.__name__}")
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        kwargs = {k: v for k, v in {**meta, **tensors}.items() if k in names}
        return cls(**kwargs)
