"""``moga-analysis <tool> ...`` / ``python -m moga_analysis <tool> ...``: one command for every tool.

    moga-analysis interactions --model moganet_xtiny --num-images 2
    moga-analysis gradcam --help

The tools share one flag vocabulary (:mod:`moga_analysis.cli`); ``python -m
moga_analysis.<tool>`` runs the same tool.
"""

from __future__ import annotations

import importlib
import sys
from typing import Optional, Sequence

__all__ = ["TOOLS", "main"]

#: tool name -> (module with ``main(argv) -> int``, what it does)
TOOLS = {
    "interactions": ("moga_analysis.interactions.cli", "multi-order interactions I^(m) and J^(m) curves"),
    "gradcam": ("moga_analysis.gradcam.cli", "Grad-CAM maps across models, with faithfulness metrics"),
    "erf": ("moga_analysis.erf.cli", "effective receptive fields across models, with area ratios"),
    "ablation": ("moga_analysis.ablation.cli", "gate-ablation sweep of a MogaNet: accuracy, NLL, agreement, KL"),
    "weights": ("moga_analysis.weights.__main__", "download and list MogaNet weights for offline machines"),
    "demo": ("moga_analysis.demo", "every analysis on the shipped models and images, with figures"),
}

PROG = "moga-analysis"


def usage() -> str:
    width = max(map(len, TOOLS))
    lines = [f"usage: {PROG} <tool> [options]   ({PROG} <tool> --help for a tool's options)", "", "tools:"]
    lines += [f"  {name.ljust(width)}  {what}" for name, (_, what) in TOOLS.items()]
    lines += ["", "The same as python -m moga_analysis <tool> or python -m moga_analysis.<tool>."]
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> None:
    """Run ``argv[0]``'s tool on the rest of ``argv`` (default: the command line); exits."""
    from .cli import run_main

    from_command_line = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage(), file=sys.stdout if argv else sys.stderr)
        sys.exit(0 if argv else 2)
    tool, rest = argv[0], argv[1:]
    if tool not in TOOLS:
        print(usage(), file=sys.stderr)
        print(f"\n{PROG}: error: unknown tool {tool!r} (choose from {', '.join(TOOLS)})", file=sys.stderr)
        sys.exit(2)
    module = importlib.import_module(TOOLS[tool][0])
    if tool == "weights":
        module.run(rest)  # no allocator tuning: it only downloads and hashes
        return
    if from_command_line:  # the tool parses sys.argv[1:]; run_main may restart the process as started
        sys.argv = [f"{PROG} {tool}", *rest]
        run_main(module.main)
    else:
        run_main(module.main, rest)


if __name__ == "__main__":
    main()
