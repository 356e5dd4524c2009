"""Device, dtype, randomness, progress and allocator helpers shared by every tool."""

from __future__ import annotations

import contextlib
import ctypes
import logging
import platform
import sys
from typing import Iterable, Iterator, Optional, TypeVar, Union

import torch

__all__ = [
    "resolve_device",
    "analysis_device",
    "resolve_dtype",
    "model_device",
    "eval_mode",
    "frozen_parameters",
    "MEMORY_FORMATS",
    "choose_memory_format",
    "uses_channels_last",
    "prepare_model",
    "make_generator",
    "progress",
    "setup_logging",
    "tune_malloc",
    "allocator_state",
    "fast_path",
    "FAST_PATH_ENV",
    "environment_info",
]

log = logging.getLogger(__name__)
T = TypeVar("T")

_DTYPES = {
    "float32": torch.float32, "fp32": torch.float32,
    "float64": torch.float64, "fp64": torch.float64,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16,
}


def resolve_device(device: Union[str, torch.device, None] = "auto") -> torch.device:
    """``auto``/None: CUDA if available, else CPU.  A CUDA request without CUDA is an error."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {device!r} was asked for, but CUDA is not available here")
    return dev


def analysis_device(device: Union[str, torch.device, None] = "auto", world: int = 1) -> torch.device:
    """The device of an analysis: :func:`resolve_device`, on CUDA the ``LOCAL_RANK``-th GPU of a
    distributed run, with TF32 off (second differences of fp32 outputs need full fp32 matmuls)."""
    import os

    dev = resolve_device(device)
    if dev.type == "cuda" and world > 1 and dev.index is None:
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        if dev.index is not None:  # set_device needs an index ("cuda" alone is the current device)
            torch.cuda.set_device(dev)
    return dev


def resolve_dtype(dtype: Union[str, torch.dtype, None]) -> torch.dtype:
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return _DTYPES[str(dtype).lower()]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of {sorted(set(_DTYPES))}") from None


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of a model's first parameter or buffer (CPU for a parameter-free module)."""
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


@contextlib.contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[None]:
    """Put every submodule in eval mode; restore each one's own ``training`` flag on exit."""
    flags = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        yield
    finally:
        for m, f in flags:
            m.training = f


@contextlib.contextmanager
def frozen_parameters(model: torch.nn.Module) -> Iterator[None]:
    """Set ``requires_grad=False`` on every parameter; restore the exact flags on exit."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        yield
    finally:
        for p, f in flags:
            p.requires_grad_(f)


MEMORY_FORMATS = ("auto", "channels_last", "contiguous")


def choose_memory_format(model: torch.nn.Module, memory_format: str = "auto") -> str:
    """``"channels_last"`` or ``"contiguous"``; ``"auto"`` picks channels_last for convolutional
    networks (4 or more ``Conv2d`` layers: 1.75x faster on the CPU here, and the layout cuDNN
    prefers) and contiguous for the rest (ViT, Swin: their patch embedding is the only conv)."""
    if memory_format not in MEMORY_FORMATS:
        raise ValueError(f"memory_format must be one of {MEMORY_FORMATS}, got {memory_format!r}")
    if memory_format != "auto":
        return memory_format
    convs = sum(isinstance(m, torch.nn.Conv2d) for m in model.modules())
    return "channels_last" if convs >= 4 else "contiguous"


def uses_channels_last(model: torch.nn.Module) -> bool:
    """Whether the model's 4-D weights are stored channels-last (inputs should then be too)."""
    for p in model.parameters():
        if p.dim() == 4 and p.shape[1] > 1 and p.shape[2] * p.shape[3] > 1:
            return p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous()
    return False


def prepare_model(
    model: torch.nn.Module, dtype: Union[str, torch.dtype, None] = None, memory_format: str = "auto"
) -> torch.nn.Module:
    """The fast path of an analysis: ``model`` cast to ``dtype`` (None: left as it is) and put in
    the memory format of :func:`choose_memory_format` (in place, like ``Module.to``); inputs
    follow the model (see :func:`uses_channels_last`)."""
    if dtype is not None:
        model = model.to(resolve_dtype(dtype))
    fmt = choose_memory_format(model, memory_format)
    return model.to(memory_format=torch.channels_last if fmt == "channels_last" else torch.contiguous_format)


def make_generator(seed: Optional[int], device: Union[str, torch.device] = "cpu") -> torch.Generator:
    """A ``torch.Generator`` seeded explicitly (library code never seeds globally)."""
    g = torch.Generator(device=device)
    g.manual_seed(0 if seed is None else int(seed))
    return g


def progress(iterable: Iterable[T], enabled: bool = True, **kwargs) -> Iterable[T]:
    """``tqdm.auto`` around ``iterable`` when ``enabled``, the iterable itself otherwise."""
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, **kwargs)


def setup_logging(verbosity: int = 0) -> None:
    """Logging for command-line tools: WARNING at -1, INFO at 0, DEBUG at 1 and above."""
    level = logging.WARNING if verbosity < 0 else logging.INFO if verbosity == 0 else logging.DEBUG
    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(levelname)s: %(message)s", datefmt="%H:%M:%S")
    for noisy in ("fontTools", "matplotlib", "PIL"):  # their INFO/DEBUG lines drown ours
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))


_MALLOC_TUNED = False


def allocator_state() -> str:
    """How glibc's allocator was set for this process: ``"environment"`` (``MALLOC_MMAP_MAX_`` and
    ``MALLOC_TRIM_THRESHOLD_`` set at start-up: the fastest), ``"mallopt"`` (:func:`tune_malloc`
    at run time: part of the speed) or ``"default"``."""
    import os

    if os.environ.get("MALLOC_MMAP_MAX_") == "0" and os.environ.get("MALLOC_TRIM_THRESHOLD_"):
        return "environment"
    return "mallopt" if _MALLOC_TUNED else "default"


#: the largest value ``mallopt`` takes (its argument is a C ``int``)
MALLOPT_MAX = 2**31 - 1


def tune_malloc(trim_threshold: Optional[int] = None) -> bool:
    """Ask glibc to keep freed memory instead of returning it to the OS.

    Like starting Python with ``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=<big>``.  Large
    activation tensors are otherwise mmap'ed and unmapped on every forward pass, and on a small CPU
    the page faults cost more than the arithmetic (see the README's benchmarks).
    ``trim_threshold``: bytes of free memory at the top of the heap before glibc returns it; None
    (default): never (``mallopt``'s -1).  ``mallopt`` takes a C ``int``, so a threshold is at most
    :data:`MALLOPT_MAX` (2 GiB); a larger one raises (ctypes would silently keep its low 32 bits:
    16 GiB used to become 0, a trim after every free).  Returns whether the settings were applied
    (only on Linux with glibc); a no-op when the environment set them at start-up.
    """
    if trim_threshold is not None and not 0 <= int(trim_threshold) <= MALLOPT_MAX:
        raise ValueError(f"trim_threshold must be in [0, {MALLOPT_MAX}] (mallopt takes a C int), or None")
    value = -1 if trim_threshold is None else int(trim_threshold)
    if sys.platform != "linux":
        return False
    if allocator_state() == "environment":
        return True  # glibc read the same settings at start-up (the faster way); leave them
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        libc.mallopt.restype = ctypes.c_int
        m_trim_threshold, m_mmap_max = -1, -4
        ok = libc.mallopt(m_mmap_max, 0) == 1 and libc.mallopt(m_trim_threshold, value) == 1
    except (OSError, AttributeError):
        return False
    if ok:
        global _MALLOC_TUNED
        _MALLOC_TUNED = True
        log.debug("glibc malloc tuned: mmap off, trim threshold %s", "never" if value < 0 else value)
    return ok


#: environment variable that turns :func:`fast_path` off for a process (``0``, ``false``, ``no``, ``off``)
FAST_PATH_ENV = "MOGA_ANALYSIS_FAST_PATH"
_FAST_PATH_TRIED = False


def fast_path(enabled: bool = True) -> str:
    """Put this process on the fast path once; returns :func:`allocator_state`.

    The library pipelines (``compute_cams``, ``compute_erfs``, ``run_ablation``,
    ``compute_interactions``) call it first, so a plain script or notebook gets glibc's allocator
    kept from returning freed memory (:func:`tune_malloc`, at run time) without asking: without
    it, every forward pass page-faults its activations afresh (2-2.6x the time on a small CPU).
    The memory format is chosen per model elsewhere (:func:`prepare_model`).  Idempotent: the
    settings are applied at most once per process; a process started with the allocator
    variables set (the CLIs, ``python -m moga_analysis.kernel``) is left as it is.

    Opt-outs (nothing is changed, the current state is returned): ``enabled=False`` (each
    pipeline's ``fast_path=False``), the environment variable ``MOGA_ANALYSIS_FAST_PATH=0``, or a
    command line started with ``--no-tune-malloc``.  Settings already applied stay for the
    process's life.
    """
    global _FAST_PATH_TRIED
    import os

    off = os.environ.get(FAST_PATH_ENV, "").strip().lower() in ("0", "false", "no", "off")
    if enabled and not off and not _FAST_PATH_TRIED and "--no-tune-malloc" not in sys.argv:
        _FAST_PATH_TRIED = True
        if allocator_state() == "default":
            tune_malloc()
    return allocator_state()


def environment_info(device: Optional[torch.device] = None) -> dict:
    """Versions and hardware, stored with every saved result."""
    import timm

    from . import __version__

    info = {
        "moga_analysis": __version__,
        "torch": torch.__version__,
        "timm": timm.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "threads": torch.get_num_threads(),
        "allocator": allocator_state(),
    }
    if device is not None:
        info["device"] = str(device)
        if torch.device(device).type == "cuda":
            info["device_name"] = torch.cuda.get_device_name(device)
    return info
