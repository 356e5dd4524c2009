"""MkDocs hook: pages generated at build time, so that they cannot drift from the code.

* ``cli.md``: the command-line reference, the ``format_help()`` of each tool's ``build_parser()``
  (and of its sub-commands), never copied by hand;
* ``changelog.md``: ``CHANGELOG.md`` from the repository root (the one place history is kept);
* in the API pages, Sphinx roles such as ``:func:`` are dropped before their code spans;
* ``results/*.png``: the committed figures of ``experiments/figures/``, so pages show them without a copy.

The package's docstrings are written for ``help()`` (reST-style roles, indexing like ``x["a"]["b"]``),
so autorefs reads some of them as Markdown reference links it cannot resolve.  Those messages, and
only those from the package's docstrings, are logged at INFO level instead of failing ``--strict``;
a broken link in a page still fails the build.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import re
from pathlib import Path
from typing import Optional

from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parent.parent

# (tool, module holding build_parser, what it does): the fallback when the package has no tool table
TOOLS = [
    ("interactions", "moga_analysis.interactions.cli", "multi-order interactions, J^(m) curves and interaction maps"),
    ("gradcam", "moga_analysis.gradcam.cli", "Grad-CAM maps and faithfulness metrics"),
    ("erf", "moga_analysis.erf.cli", "effective receptive fields"),
    ("ablation", "moga_analysis.ablation.cli", "gate ablations of a trained MogaNet"),
    ("weights", "moga_analysis.weights.__main__", "official MogaNet weights for offline machines"),
]


def _tools():
    """``(tool, module, what)`` from the package's own table (``moga_analysis.__main__.TOOLS``) when
    it has one, and the usage text of the ``moga-analysis`` command."""
    try:
        entry = importlib.import_module("moga_analysis.__main__")
    except ImportError:
        return TOOLS, None
    return [(name, module, what) for name, (module, what) in entry.TOOLS.items()], entry.usage()


def _parser(module: str) -> Optional[argparse.ArgumentParser]:
    build = getattr(importlib.import_module(module), "build_parser", None)
    return None if build is None else build()


def _subparsers(parser: argparse.ArgumentParser):
    for action in parser._actions:  # argparse keeps sub-commands only here
        if isinstance(action, argparse._SubParsersAction):
            yield from action.choices.items()


def cli_markdown() -> str:
    os.environ["COLUMNS"] = "100"  # argparse wraps to the terminal width: fix it for a stable page
    tools, usage = _tools()
    out = [
        "# Command-line reference",
        "",
        "Every tool is a thin face of a library pipeline (see the page of each analysis). The help",
        "below is rendered from the tools' own argument parsers (`build_parser()`) each time the site",
        "is built, so it is the help the installed version prints.",
        "",
    ]
    if usage:
        out += ["```text", usage.rstrip(), "```", ""]
    for tool, module, what in tools:
        parser = _parser(module)
        if parser is None:
            continue
        out += [f"## {tool}", "", f"{what[0].upper()}{what[1:]}.", "", "```text", parser.format_help().rstrip(), "```", ""]
        for name, sub in _subparsers(parser):
            out += [f"### {tool} {name}", "", "```text", sub.format_help().rstrip(), "```", ""]
    return "\n".join(out)


class _DocstringRefs(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        if record.levelno == logging.WARNING and "Could not find cross-reference target" in msg \
                and f"{os.sep}moga_analysis{os.sep}" in msg:
            record.levelno, record.levelname = logging.INFO, "INFO"
        return True


def on_startup(**kwargs):
    for handler in logging.getLogger("mkdocs").handlers:
        handler.addFilter(_DocstringRefs())


def on_files(files, config, **kwargs):
    files.append(File.generated(config, "cli.md", content=cli_markdown()))
    changelog = ROOT / "CHANGELOG.md"
    files.append(File.generated(config, "changelog.md", content=changelog.read_text(encoding="utf-8")))
    if files.get_file_from_path("shapiq.md") is None:  # until the shapiq page is written
        files.append(File.generated(config, "shapiq.md", content=SHAPIQ_STUB))
    for png in sorted((ROOT / "experiments" / "figures").glob("*.png")):
        files.append(File.generated(config, f"results/{png.name}", abs_src_path=str(png)))
    return files


_ROLE = re.compile(r":(?:mod|func|class|meth|data|attr|exc|obj):(?=<code)")


def on_page_content(html, page, config, files):
    """Docstrings use Sphinx roles (``:func:`x```); in the API pages show them as plain code."""
    return _ROLE.sub("", html) if page.file.src_uri.startswith("api/") else html
