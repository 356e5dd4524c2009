"""``moga-analysis weights download|list`` (``python -m moga_analysis.weights``): MogaNet weights
for offline machines.

    moga-analysis weights download [NAME ...] [--weights-dir DIR] [--all-tags] [--no-progress]
    moga-analysis weights list [--weights-dir DIR] [--no-hash] [--json]

``--weights-dir`` means what it means in every tool: the folder of weight files found by name
(default ``$MOGA_WEIGHTS_DIR``); ``download`` fills it (without one: the torch hub cache).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Optional, Sequence

from . import OFFICIAL, WEIGHTS_DIR_ENV, download_weights, list_weights

__all__ = ["build_parser", "main", "run"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="moga-analysis weights", description="MogaNet weights for offline machines: "
                                "download them on a connected machine, list what a machine has.", allow_abbrev=False)
    sub = p.add_subparsers(dest="command", required=True, metavar="{download,list}")
    d = sub.add_parser("download", help="download weight files (prints their sizes and SHA-256)", allow_abbrev=False,
                       description="Download weight files by name into a weights folder; prints sizes and SHA-256.")
    d.add_argument("names", nargs="*", metavar="NAME",
                   help="model names or aliases, with or without a tag, space-separated (default: "
                   f"{' '.join(OFFICIAL)})")
    d.add_argument("--all-tags", action="store_true", help="with no NAME: every tag (also the 256 px weights)")
    d.add_argument("--no-progress", action="store_true", help="hide the progress bar of each file")
    ls = sub.add_parser("list", help="names, aliases, URLs, cached files and their hashes", allow_abbrev=False,
                        description="Every MogaNet weight file: name, alias, URL, where it is cached, its SHA-256.")
    ls.add_argument("--no-hash", action="store_true", help="do not hash the cached files (faster)")
    ls.add_argument("--json", action="store_true", help="print JSON instead of a table")
    where = {d: "folder to download into", ls: "weights folder to look in first, before the torch hub cache"}
    for q, what in where.items():
        q.add_argument("--weights-dir", default=os.environ.get(WEIGHTS_DIR_ENV) or None, metavar="DIR",
                       help=f"{what} (default ${WEIGHTS_DIR_ENV}" + (", else the torch hub cache)" if q is d else ")"))
        q.add_argument("-v", "--verbose", action="count", default=0, help="more log lines (-vv: debug)")
        q.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    return p


def _table(rows, columns) -> str:
    widths = [max(len(c), *(len(str(r.get(c) or "-")) for r in rows)) for c in columns]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths))]
    lines += ["  ".join(str(r.get(c) or "-").ljust(w) for c, w in zip(columns, widths)) for r in rows]
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    from ..runtime import setup_logging

    args = build_parser().parse_args(argv)
    setup_logging(-1 if args.quiet else args.verbose)
    if args.command == "download":
        rows = download_weights(args.names or None, args.weights_dir, all_tags=args.all_tags,
                                progress=not args.no_progress)
        for r in rows:
            r["MB"] = f"{r['size'] / 2**20:.1f}"
        print(_table(rows, ["name", "status", "MB", "sha256", "path"]))
        return 0
    rows = list_weights(args.weights_dir, hashes=not args.no_hash)
    if args.json:
        print(json.dumps(rows, indent=1))
    else:
        print(_table(rows, ["name", "alias", "cached", "sha256", "url"]))
    return 0


def run(argv: Optional[Sequence[str]] = None) -> None:
    """Entry point: user errors become one ``error:`` line on stderr and exit status 2."""
    try:
        code = main(argv)
    except (ValueError, RuntimeError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        code = 2
    sys.exit(code)


if __name__ == "__main__":
    run()
