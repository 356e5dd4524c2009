"""A Jupyter kernel that starts Python with the allocator settings this package runs fastest with.

glibc reads ``MALLOC_MMAP_MAX_`` and ``MALLOC_TRIM_THRESHOLD_`` only when a process starts; inside a
running notebook, :func:`moga_analysis.runtime.tune_malloc` (``mallopt``) recovers only part of the
speed (see the README's measurements).  This kernel sets them before Python starts::

    python -m moga_analysis.kernel            # installs the "moga-analysis" kernel for this user
    python -m moga_analysis.kernel --prefix .venv

then pick "Python (moga_analysis)" as the notebook's kernel.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Optional, Sequence, Union

from .cli import MALLOC_ENV

__all__ = ["kernel_spec", "install_kernel", "KERNEL_NAME"]

KERNEL_NAME = "moga-analysis"


def kernel_spec(python: Optional[str] = None) -> dict:
    """The ``kernel.json`` of the kernel: this Python's ipykernel with :data:`MALLOC_ENV` set."""
    return {
        "argv": [python or sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python (moga_analysis)",
        "language": "python",
        "env": dict(MALLOC_ENV),
        "metadata": {"debugger": True},
    }


def _kernels_dir(prefix: Optional[Union[str, os.PathLike]]) -> Path:
    if prefix is not None:
        return Path(prefix) / "share" / "jupyter" / "kernels"
    try:
        from jupyter_core.paths import jupyter_data_dir

        return Path(jupyter_data_dir()) / "kernels"
    except ImportError:
        return Path.home() / ".local" / "share" / "jupyter" / "kernels"


def install_kernel(name: str = KERNEL_NAME, prefix: Optional[Union[str, os.PathLike]] = None) -> Path:
    """Write the kernel spec (for this user, or under ``prefix``); returns its folder."""
    folder = _kernels_dir(prefix) / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "kernel.json").write_text(json.dumps(kernel_spec(), indent=1) + "\n")
    return folder


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m moga_analysis.kernel", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--name", default=KERNEL_NAME)
    p.add_argument("--prefix", default=None, help="install under PREFIX/share/jupyter (e.g. the venv)")
    args = p.parse_args(argv)
    print(f"installed kernel {args.name!r} in {install_kernel(args.name, args.prefix)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
