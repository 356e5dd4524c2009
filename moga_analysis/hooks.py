"""Capture and patch activations by module name, always inside context managers.

Every hook registered here is removed in a ``finally`` block, so an exception never leaves a
model patched.  Names are ``model.named_modules()`` names; ``*`` and ``?`` wildcards are allowed
(``"blocks3.*.attn.tap_gate"``).  A pattern that matches nothing is an error.
"""

from __future__ import annotations

import contextlib
import fnmatch
from typing import Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Union

import torch
from torch import nn

__all__ = ["resolve_modules", "capture", "patch", "tap_points"]

Patterns = Union[str, Iterable[str]]


def resolve_modules(model: nn.Module, patterns: Patterns) -> Dict[str, nn.Module]:
    """Modules whose names match ``patterns`` (exact names or fnmatch wildcards), in model order."""
    pats = [patterns] if isinstance(patterns, str) else list(patterns)
    named = dict(model.named_modules())
    out: Dict[str, nn.Module] = {}
    for pat in pats:
        hits = [n for n in named if n == pat or (any(c in pat for c in "*?[") and fnmatch.fnmatchcase(n, pat))]
        if not hits:
            close = [n for n in named if pat.split(".")[-1] in n][:5]
            hint = f"; similar names: {close}" if close else ""
            raise KeyError(f"no module of {type(model).__name__} matches {pat!r}{hint}")
        for n in hits:
            out[n] = named[n]
    order = {n: i for i, n in enumerate(named)}
    return dict(sorted(out.items(), key=lambda kv: order[kv[0]]))


def tap_points(model: nn.Module, pattern: str = "*") -> List[str]:
    """Names of the :class:`~moga_analysis.models.TapPoint` modules matching ``pattern``."""
    from .models.layers import TapPoint

    return [n for n, m in model.named_modules() if isinstance(m, TapPoint) and fnmatch.fnmatchcase(n, pattern)]


@contextlib.contextmanager
def capture(
    model: nn.Module,
    patterns: Patterns,
    detach: bool = True,
    reduce: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
) -> Iterator[Dict[str, List[torch.Tensor]]]:
    """Record the outputs of the matching modules.

    Yields a dict ``name -> list of tensors`` (one entry per call of the module, so a module
    called in several forward passes accumulates).  ``reduce`` maps each tensor before it is
    stored (e.g. a per-channel mean), which keeps memory flat over many batches.
    """
    modules = resolve_modules(model, patterns)
    store: Dict[str, List[torch.Tensor]] = {n: [] for n in modules}
    handles = []

    def make(name: str):
        def hook(_mod, _inp, out):
            t = out.detach() if detach else out
            store[name].append(reduce(t) if reduce is not None else t)

        return hook

    try:
        for name, mod in modules.items():
            handles.append(mod.register_forward_hook(make(name)))
        yield store
    finally:
        for h in handles:
            h.remove()


@contextlib.contextmanager
def patch(model: nn.Module, replacements: Mapping[str, Callable[[torch.Tensor], torch.Tensor]]) -> Iterator[None]:
    """Replace the outputs of modules: ``{pattern: fn(output) -> new output}``.

    >>> with patch(model, {"blocks3.*.attn.tap_gate": torch.ones_like}):
    ...     logits = model(x)
    """
    handles = []
    try:
        for pat, fn in replacements.items():
            for _name, mod in resolve_modules(model, pat).items():
                handles.append(mod.register_forward_hook(lambda _m, _i, out, fn=fn: fn(out)))
        yield
    finally:
        for h in handles:
            h.remove()
