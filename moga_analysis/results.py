"""Saving and loading results: tensors in safetensors, everything else as JSON metadata; tables.

A result file is one ``.safetensors`` file whose metadata holds a JSON document under the key
``moga_analysis`` (settings, seed, model, weights, package versions).  Writes are atomic: the file
is written beside its destination and renamed over it, so a killed run never leaves half a file.

Result dataclasses inherit :class:`SavableResult`: tensor fields go to the tensor part, every other
field must be JSON-serialisable and goes to the metadata.  :func:`load_result` reads any of them
back as its own class.  :func:`write_table` writes one table as CSV, Markdown and JSON.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Mapping, NamedTuple, Optional, Sequence, Tuple, Type, TypeVar, Union

import torch

__all__ = [
    "save_tensors",
    "load_tensors",
    "atomic_write_text",
    "SavableResult",
    "load_result",
    "json_default",
    "Column",
    "markdown_table",
    "write_table",
]

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
        save_file(data, str(tmp), metadata={_META_KEY: json.dumps(metadata, default=json_default)})
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


def json_default(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if isinstance(obj, (Path, torch.device, torch.dtype)):
        return str(obj)
    if hasattr(obj, "item"):
        return obj.item()
    if isinstance(obj, (set, tuple)):
        return list(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


_RESULT_TYPES: Dict[str, type] = {}


class SavableResult:
    """Mixin for frozen result dataclasses: ``result.save(path)`` and ``Cls.load(path)``.

    Loading is tolerant of older files: a tuple field saved as a JSON list comes back as a tuple,
    and when the class has a ``metadata`` field, metadata keys that are not fields (files written
    before a key became part of ``metadata``) are gathered into it.
    """

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        _RESULT_TYPES[cls.__name__] = cls

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
        return cls._from_parts(tensors, meta)

    @classmethod
    def _from_parts(cls: Type[R], tensors: Dict[str, torch.Tensor], meta: Dict[str, Any]) -> R:
        fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        kwargs = {k: v for k, v in {**meta, **tensors}.items() if k in fields}
        for name, f in fields.items():
            if isinstance(kwargs.get(name), list) and "Tuple" in str(f.type):
                kwargs[name] = tuple(kwargs[name])
        if "metadata" in fields and "metadata" not in meta:
            extra = {k: v for k, v in meta.items() if k not in fields}
            if extra:
                kwargs["metadata"] = extra
        return cls(**kwargs)


def load_result(path: Union[str, os.PathLike]) -> SavableResult:
    """Any saved :class:`SavableResult`, as the class that saved it."""
    tensors, meta = load_tensors(path)
    name = meta.pop("__class__", None)
    if name not in _RESULT_TYPES:
        raise TypeError(f"{path} holds no known result type (found {name!r})")
    return _RESULT_TYPES[name]._from_parts(tensors, meta)


# ---------------------------------------------------------------------------------------- tables
class Column(NamedTuple):
    """A table column: the row key, its Markdown header and the decimals shown there."""

    key: str
    header: Optional[str] = None
    digits: int = 4


def _cell(value: Any, digits: int) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return "nan" if value != value else f"{value:.{digits}f}"
    return str(value)


def markdown_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[Union[str, Column]]) -> str:
    """A Markdown table of ``rows`` (headers and decimals of ``columns``)."""
    cols = [Column(c) if isinstance(c, str) else c for c in columns]
    lines = ["| " + " | ".join(c.header or c.key for c in cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_cell(r.get(c.key), c.digits) for c in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def write_table(
    rows: Sequence[Mapping[str, Any]],
    path: Union[str, os.PathLike],
    columns: Optional[Sequence[Union[str, Column]]] = None,
    formats: Sequence[str] = ("csv", "md", "json"),
    csv_digits: int = 6,
    metadata: Optional[Mapping[str, Any]] = None,
) -> List[Path]:
    """Write ``rows`` as ``path.csv`` (keys as header, ``csv_digits`` significant decimals),
    ``path.md`` (headers and decimals of ``columns``) and ``path.json`` (``{"rows", "metadata"}``,
    full precision).  ``columns``: keys or :class:`Column` (default: every key, first-seen order).
    Returns the written paths."""
    import csv
    import io

    keys = columns or list(dict.fromkeys(k for r in rows for k in r))
    cols = [Column(c) if isinstance(c, str) else c for c in keys]
    base = Path(path)
    base = base.with_suffix("") if base.suffix in (".csv", ".md", ".json") else base
    written = []
    for fmt in formats:
        if fmt == "csv":
            buf = io.StringIO()
            w = csv.writer(buf, lineterminator="\n")
            w.writerow([c.key for c in cols])
            for r in rows:
                w.writerow([_cell(r.get(c.key), csv_digits) for c in cols])
            text = buf.getvalue()
        elif fmt == "md":
            text = markdown_table(rows, cols)
        elif fmt == "json":
            text = json.dumps({"rows": list(rows), "metadata": dict(metadata or {})}, indent=2, default=json_default)
        else:
            raise ValueError(f"unknown table format {fmt!r}; choose csv, md or json")
        written.append(atomic_write_text(base.with_suffix("." + fmt), text))
    return written
