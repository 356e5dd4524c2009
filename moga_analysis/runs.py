"""A run folder: the one answer to "is this the same run, and what is done?" for every tool.

A :class:`RunFolder` owns one output folder:

* ``run.json``: the tool, its settings (the *fingerprint*: everything that changes results),
  the environment, the weights of every model (:func:`weights_record`), and whether the run is
  complete;
* per-item result files (``<key>.safetensors``, written atomically), each carrying its own
  identity (model, image, index...) so that a resumed run never mixes items of other inputs;
* the final stacked files and tables, written by the tool.

``resume=True`` keeps finished items when the settings are the same and refuses, with a readable
list of the differences, when they are not (settings, an item's identity, or a model's weights),
and refuses a folder written by a version with another layout (:data:`RUN_FORMAT`);
``resume=False`` starts afresh (existing items are recomputed and overwritten).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Union

from .results import SavableResult, atomic_write_text, load_result, load_tensors

__all__ = [
    "RUN_FORMAT",
    "RunFolder",
    "RunMismatchError",
    "SkippedItem",
    "require_same",
    "settings_diff",
    "weights_record",
    "safe_name",
]

log = logging.getLogger(__name__)

_RUN_FILE = "run.json"
#: the layout of run folders this version writes and resumes (``run.json``'s ``"format"``)
RUN_FORMAT = 2


class RunMismatchError(ValueError):
    """A resumed run found results made with other settings, inputs or weights."""


def safe_name(name: str) -> str:
    """A file-name-safe version of a model or item name."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in str(name))


def _plain(obj: Any) -> Any:
    """``obj`` as it reads back from JSON (tuples become lists, paths strings)."""
    from .results import json_default

    return json.loads(json.dumps(obj, default=json_default))


def settings_diff(saved: Mapping[str, Any], now: Mapping[str, Any]) -> Dict[str, tuple]:
    """``{key: (saved value, current value)}`` for every key whose value differs."""
    saved, now = _plain(dict(saved)), _plain(dict(now))
    return {k: (saved.get(k), now.get(k)) for k in sorted(set(saved) | set(now)) if saved.get(k) != now.get(k)}


def _describe(diff: Mapping[str, tuple]) -> str:
    return "; ".join(f"{k}: {a!r} (saved) vs {b!r} (now)" for k, (a, b) in diff.items())


def require_same(saved: Mapping[str, Any], now: Mapping[str, Any], where: Any, what: str = "settings") -> None:
    """Raise :class:`RunMismatchError` listing the differences when ``saved`` and ``now`` differ
    (the one check every resumable thing uses: run folders, items, training checkpoints)."""
    diff = settings_diff(saved, now)
    if diff:
        raise RunMismatchError(
            f"--resume: {where} was made with other {what}, a different {what} from this run's "
            f"({_describe(diff)}); use another output folder or drop --resume"
        )


def weights_record(model: Any) -> Optional[Dict[str, Any]]:
    """What a result records about a model's weights: its ``weights_provenance`` dict when the
    loader set one (location, file, SHA-256), else ``{"location": weights_source}``; None for a
    module that carries neither (built by the caller)."""
    prov = getattr(model, "weights_provenance", None)
    if isinstance(prov, Mapping):
        return _plain(dict(prov))
    if hasattr(model, "weights_source"):
        src = model.weights_source
        return {"location": src, "kind": "random" if src is None else "file"}
    return None


def _weights_key(record: Optional[Mapping[str, Any]]) -> Any:
    """The part of a weights record that identifies the weights (hash first, else location)."""
    if not record:
        return None
    if record.get("sha256"):
        return {"sha256": record["sha256"]}
    return {"location": record.get("location"), "kind": record.get("kind")}


class RunFolder:
    """One tool's output folder (see the module docstring).

    Args:
        path: the folder (created).
        tool: the tool's name, e.g. ``"interactions"``.
        settings: the fingerprint, JSON-serialisable (compared on resume).
        resume: keep finished items made with the same settings.
        primary: whether this process writes ``run.json`` (rank 0 of a distributed run).
    """

    def __init__(
        self,
        path: Union[str, os.PathLike],
        tool: str,
        settings: Mapping[str, Any],
        *,
        resume: bool = False,
        primary: bool = True,
    ):
        from .runtime import environment_info

        self.path = Path(path)
        self.tool = tool
        self.settings = _plain(dict(settings))
        self.resume = bool(resume)
        self.primary = primary
        self.path.mkdir(parents=True, exist_ok=True)
        saved = self.read_record(self.path)
        if resume and saved is not None:
            if saved.get("format") != RUN_FORMAT:
                made_by = (saved.get("environment") or {}).get("moga_analysis", "an earlier version")
                raise RunMismatchError(f"{self.path} was made by moga_analysis {made_by}, whose run folders this "
                                       f"version cannot resume; start a new folder")
            if saved.get("tool") != tool:
                raise RunMismatchError(f"{self.path} holds a {saved.get('tool')!r} run, not {tool!r}")
            require_same(saved.get("settings", {}), self.settings, self.path)
            self.record = saved  # rewritten once the weights are checked: a refused resume changes nothing
        else:
            self.record = {"format": RUN_FORMAT, "tool": tool, "settings": self.settings, "weights": {},
                           "complete": False}
        self.record["environment"] = environment_info()
        self.record["complete"] = False
        if saved is None or not resume:
            self._write()

    # -- the record -----------------------------------------------------------------------------
    @staticmethod
    def read_record(path: Union[str, os.PathLike]) -> Optional[Dict[str, Any]]:
        """The ``run.json`` of a folder, or None."""
        f = Path(path) / _RUN_FILE
        return json.loads(f.read_text()) if f.exists() else None

    @staticmethod
    def is_complete(path: Union[str, os.PathLike]) -> bool:
        rec = RunFolder.read_record(path)
        return bool(rec and rec.get("complete"))

    def _write(self) -> None:
        if self.primary:
            atomic_write_text(self.path / _RUN_FILE, json.dumps(self.record, indent=2, default=str) + "\n")

    def mark_complete(self, **summary: Any) -> None:
        """Record that every item and the stacked files are written (``summary`` is kept too)."""
        self.record["complete"] = True
        if summary:
            self.record["summary"] = _plain(summary)
        self._write()

    # -- weights ----------------------------------------------------------------------------------
    def check_weights(self, model_name: str, record: Optional[Mapping[str, Any]]) -> None:
        """Record ``model_name``'s weights; on resume, refuse weights other than the saved ones."""
        saved = self.record.setdefault("weights", {}).get(model_name)
        if self.resume and saved is not None and _weights_key(saved) != _weights_key(record):
            raise RunMismatchError(
                f"--resume: the results of {model_name} in {self.path} were made with other weights "
                f"({_weights_key(saved)} saved, {_weights_key(record)} now); use another output folder "
                f"or drop --resume"
            )
        self.record["weights"][model_name] = _plain(record) if record is not None else None
        self._write()

    # -- items ------------------------------------------------------------------------------------
    def item_path(self, key: str) -> Path:
        return self.path / f"{key}.safetensors"

    def done(self, key: str, identity: Mapping[str, Any]) -> bool:
        """Whether item ``key`` is finished and may be kept (only when resuming).

        A finished item whose identity differs from ``identity`` (another image at that index,
        say) is an error, never silently reused."""
        file = self.item_path(key)
        if not (self.resume and file.exists()):
            return False
        _, meta = load_tensors(file)
        saved = meta.get("item") or meta.get("metadata", {}).get("item")
        require_same(saved or {}, identity, file, "inputs")
        return True

    def save_item(self, key: str, result: SavableResult) -> Path:
        """Write an item atomically (its ``metadata`` should carry ``item``: its identity)."""
        return result.save(self.item_path(key))

    def load_item(self, key: str) -> SavableResult:
        return load_result(self.item_path(key))



@dataclasses.dataclass(frozen=True)
class SkippedItem(SavableResult):
    """An item that could not be computed (an unreadable image), kept so a resume skips it too."""

    reason: str
    metadata: Dict[str, Any] = dataclasses.field(default_factory=dict)
