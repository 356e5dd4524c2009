"""The README's quick-start snippet runs as pasted; every Python block of the README and the docs
pages is valid Python."""

import ast
import os
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def python_blocks(path: Path):
    return re.findall(r"^```python\n(.*?)^```", path.read_text(), flags=re.S | re.M)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_python_blocks_parse(page):
    for block in python_blocks(page):
        ast.parse(block)


def test_readme_quick_start_runs_as_pasted(tmp_path, capsys):
    """The first block of the README (shipped models, offline), in a fresh namespace and folder."""
    block = python_blocks(ROOT / "README.md")[0]
    assert "compute_interactions" in block and "grad_cam" in block
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        exec(compile(block, "README.md", "exec"), {"__name__": "__readme__"})
    finally:
        os.chdir(cwd)
    printed = capsys.readouterr().out
    assert "top-1: 0.913" in printed  # the number the README's comment states
    assert printed.count("moganet_xtiny") == 2 and (tmp_path / "runs" / "quickstart" / "run.json").exists()
