"""What a pipeline is asked to analyse: models by name, by checkpoint or as modules.

Every pipeline takes ``models`` in any of these forms and turns them into :class:`ModelSpec`:

* ``"moganet_small"`` (pretrained weights, an error when they cannot be had), or
  ``"moganet_xtiny.fmnist_64=path/to/model.safetensors"`` (that name loaded from a checkpoint);
* ``("moganet_small", "path/to/checkpoint.pth.tar")``;
* an ``nn.Module`` (analysed as it is; its name from its pretrained cfg or class);
* a mapping ``{name: module, checkpoint path or None}``;
* a list of any of these.

Results are stored by model name, so a name may appear once.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterator, List, Mapping, Optional, Tuple, Union

import torch
from torch import nn

__all__ = ["ModelSpec", "model_specs", "load_spec", "iter_models"]


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """One model of an analysis: ``name`` plus where its weights come from."""

    name: str
    checkpoint: Optional[str] = None
    module: Optional[nn.Module] = dataclasses.field(default=None, compare=False, repr=False)
    random_weights: bool = False

    def describe(self) -> dict:
        """The spec as plain data (for fingerprints): name, checkpoint and random-weights flag."""
        return {"name": self.name, "checkpoint": self.checkpoint, "random_weights": self.random_weights}


def _module_name(m: nn.Module) -> str:
    cfg = getattr(m, "pretrained_cfg", None) or {}
    arch, tag = cfg.get("architecture"), cfg.get("tag")
    if arch:
        return f"{arch}.{tag}" if tag else arch
    return type(m).__name__


def _one(entry: Any, random_weights: bool) -> ModelSpec:
    if isinstance(entry, ModelSpec):
        return entry
    if isinstance(entry, nn.Module):
        return ModelSpec(_module_name(entry), module=entry)
    if isinstance(entry, tuple) and len(entry) == 2:
        name, ckpt = entry
        if isinstance(ckpt, nn.Module):
            return ModelSpec(str(name), module=ckpt)
        return ModelSpec(str(name), None if ckpt is None else str(ckpt), random_weights=random_weights and ckpt is None)
    if isinstance(entry, str):
        name, sep, ckpt = entry.partition("=")
        if not name or (sep and not ckpt):
            raise ValueError(f"model {entry!r}: write NAME or NAME=CHECKPOINT")
        return ModelSpec(name, ckpt or None, random_weights=random_weights and not ckpt)
    raise TypeError(f"cannot analyse a {type(entry).__name__}: give a model name, (name, checkpoint) or a module")


def model_specs(models: Any, *, random_weights: bool = False) -> List[ModelSpec]:
    """:class:`ModelSpec` for every entry of ``models`` (see the module docstring), in order.

    ``random_weights=True`` builds the named models (without a checkpoint) with random weights;
    nothing else ever does."""
    if isinstance(models, Mapping):
        entries: List[Any] = list(models.items())
    elif isinstance(models, (str, nn.Module, ModelSpec, tuple)):
        entries = [models]
    else:
        entries = []
        for e in models:
            entries.extend(e.items() if isinstance(e, Mapping) else [e])
    specs = [_one(e, random_weights) for e in entries]
    if not specs:
        raise ValueError("no models given")
    names = [s.name for s in specs]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ValueError(f"model(s) {', '.join(twice)} given twice; results are stored by model name")
    return specs


def load_spec(
    spec: ModelSpec, device: Union[str, torch.device, None] = "auto", seed: int = 0, **load_kwargs: Any
) -> nn.Module:
    """The model of ``spec`` in eval mode on ``device`` (a given module is used as it is).

    Random weights (only with ``random_weights=True``) are drawn from a generator seeded with
    ``seed``, so reruns, resumed runs and every rank of a distributed run see the same network.
    ``load_kwargs`` go to :func:`~moga_analysis.models.load_model`.
    """
    from .models import load_model

    if spec.module is not None:
        return spec.module
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        return load_model(
            spec.name,
            checkpoint=spec.checkpoint,
            device=device,
            pretrained=False if spec.random_weights else None,
            **load_kwargs,
        )


def iter_models(
    specs: List[ModelSpec], device: Union[str, torch.device, None] = "auto", seed: int = 0, **kwargs: Any
) -> Iterator[Tuple[ModelSpec, nn.Module]]:
    """``(spec, model)`` for each spec, loaded one at a time (the previous one can be freed)."""
    for spec in specs:
        yield spec, load_spec(spec, device, seed, **kwargs)
