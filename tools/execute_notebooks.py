"""Execute the notebooks in place, in their full mode, so that the docs show every output.

    python tools/execute_notebooks.py                      # every notebook (what `make notebooks` runs)
    python tools/execute_notebooks.py notebooks/02_interactions.ipynb

Each notebook runs top to bottom in a fresh kernel, in its own empty working folder under
``runs/notebooks/`` (the run folders it writes land there), and is written back with its outputs
and, in its metadata, the SHA-256 of its cells' sources (``moga_analysis.source_sha256``): the test
suite checks that the committed outputs belong to the committed code, so a notebook edited without
being executed again fails ``make test``.  Absolute paths of this machine in the outputs are
shortened to ``<repo>``, ``<site-packages>`` and ``<work>``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import sysconfig
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def source_hash(nb) -> str:
    """SHA-256 of the notebook's cell types and sources, in order (outputs and metadata excluded)."""
    cells = [[c["cell_type"], c["source"]] for c in nb["cells"]]
    return hashlib.sha256(json.dumps(cells, ensure_ascii=False).encode()).hexdigest()


def _shorten(text: str, replacements) -> str:
    for old, new in replacements:
        text = text.replace(old, new)
    return text


def _scrub_paths(nb, work: Path) -> None:
    """Machine paths in text outputs, longest first, to stable placeholders."""
    replacements = sorted([(str(work), "<work>"), (sysconfig.get_paths()["purelib"], "<site-packages>"),
                           (str(ROOT), "<repo>")], key=lambda r: -len(r[0]))
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if "text" in out:
                out["text"] = _shorten(out["text"], replacements)
            for key, value in out.get("data", {}).items():
                if key.startswith("text/") and isinstance(value, str):
                    out["data"][key] = _shorten(value, replacements)


def execute(path: Path, timeout: int = 1800) -> float:
    """Run ``path`` in full mode and write it back with its outputs; returns the seconds it took."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    work = ROOT / "runs" / "notebooks" / path.stem
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    # full mode, and the kernel's own matplotlib backend (inline), as in a user's Jupyter
    env = {key: os.environ.pop(key, None) for key in ("MOGA_QUICK", "MPLBACKEND")}
    t0 = time.perf_counter()
    try:
        client = NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(work)}})
        client.execute()
    finally:
        for key, value in env.items():
            os.environ.pop(key, None)
            if value is not None:
                os.environ[key] = value
    seconds = time.perf_counter() - t0
    _scrub_paths(nb, work)
    nb.metadata["moga_analysis"] = {"source_sha256": source_hash(nb)}
    nbformat.write(nb, path)
    return seconds


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("notebooks", nargs="*", type=Path, help="notebooks to execute (default: notebooks/*.ipynb)")
    p.add_argument("--timeout", type=int, default=1800, help="seconds per cell")
    args = p.parse_args(argv)
    for path in args.notebooks or sorted((ROOT / "notebooks").glob("*.ipynb")):
        print(f"{path.name}: executing", flush=True)
        print(f"{path.name}: {execute(path.resolve(), args.timeout):.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
