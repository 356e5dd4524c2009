"""The notebooks run top to bottom with small settings, and are committed executed in full mode
(``make notebooks``) with the outputs of the code they hold, so the docs show every figure."""

import importlib.util
import os
import re
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def _executor():
    spec = importlib.util.spec_from_file_location("execute_notebooks", ROOT / "tools" / "execute_notebooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_notebooks_exist():
    assert len(NOTEBOOKS) >= 4


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_executed_with_its_code(path):
    """Every code cell ran once, in order, without an error; there is a figure; the outputs were
    made by the code as committed (its source hash); no machine paths in them."""
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert [c.execution_count for c in code] == list(range(1, len(code) + 1)), f"{path.name}: run `make notebooks`"
    outputs = [o for c in code for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert not [o for o in outputs if o.output_type == "stream" and "Traceback" in o.text]
    assert any("image/png" in o.get("data", {}) for o in outputs), f"{path.name} shows no figure"
    stored = nb.metadata.get("moga_analysis", {}).get("source_sha256")
    assert stored == _executor().source_hash(nb), f"{path.name} changed since it was executed: run `make notebooks`"
    text = "".join(o.get("text", "") + str(o.get("data", {}).get("text/plain", "")) for o in outputs)
    assert not re.search(r"/(work|tmp|home|root)/", text), f"{path.name}: a machine path in the outputs"


def test_source_hash_sees_code_and_markdown_but_not_outputs():
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# a"), nbformat.v4.new_code_cell("x = 1")])
    h = _executor().source_hash(nb)
    nb.cells[1].outputs = [nbformat.v4.new_output("stream", text="1")]
    nb.cells[1].execution_count = 1
    assert _executor().source_hash(nb) == h
    nb.cells[1].source = "x = 2"
    assert _executor().source_hash(nb) != h
    nb.cells[1].source, nb.cells[0].source = "x = 1", "# b"
    assert _executor().source_hash(nb) != h


@pytest.mark.xdist_group("notebooks")
@pytest.mark.parametrize("path", [p if p.stem == "01_quickstart" else pytest.param(p, marks=pytest.mark.slow)
                                  for p in NOTEBOOKS], ids=lambda p: p.stem)
def test_notebook_runs(path, tmp_path):
    """Every notebook runs in its quick mode (the quick start in ``make test``, the rest in
    ``make test-all``: 15-110 s each)."""
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:  # the committed full-mode outputs are not this run's
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    env_before = os.environ.get("MOGA_QUICK")
    os.environ["MOGA_QUICK"] = "1"  # the notebooks read it and shrink their settings
    os.environ.setdefault("MPLBACKEND", "Agg")
    try:
        client = NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}})
        client.execute()
    finally:
        if env_before is None:
            os.environ.pop("MOGA_QUICK", None)
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors


def test_paper_style_restores_only_its_own_settings():
    """What happens inside the style (the inline backend turning interactive mode on, as a kernel's
    first figure does) outlives it; the style's own settings do not."""
    import matplotlib as mpl

    from moga_analysis.plotting.style import paper_style

    before, was_interactive = mpl.rcParams["font.size"], mpl.is_interactive()
    try:
        mpl.interactive(False)
        with paper_style(**{"font.size": 5.5}):
            assert mpl.rcParams["font.size"] == 5.5
            mpl.interactive(True)
        assert mpl.is_interactive() and mpl.rcParams["font.size"] == before
    finally:
        mpl.interactive(was_interactive)


@pytest.mark.xdist_group("notebooks")
def test_every_figure_of_a_kernel_is_shown(tmp_path):
    """In a Jupyter kernel, figures drawn after the first one inside the paper style are shown too
    (restoring every rcParam on leaving the style turned interactive mode off: later figures were
    never displayed)."""
    from nbclient import NotebookClient

    cells = ["import matplotlib.pyplot as plt\nfrom moga_analysis.plotting.style import paper_style",
             "with paper_style():\n    fig = plt.figure(); fig.add_subplot().plot([1, 2])",
             "with paper_style():\n    fig = plt.figure(); fig.add_subplot().plot([2, 1])",
             "fig = plt.figure(); fig.add_subplot().plot([1, 1])"]
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    saved = os.environ.pop("MPLBACKEND", None)  # the kernel's own backend (inline)
    try:
        client = NotebookClient(nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}})
        client.execute()
    finally:
        if saved is not None:
            os.environ["MPLBACKEND"] = saved
    shown = [any("image/png" in o.get("data", {}) for o in c.outputs) for c in nb.cells[1:]]
    assert shown == [True, True, True]
