"""``python -m moga_analysis.weights download|list``: MogaNet weights for offline machines.

    python -m moga_analysis.weights download [NAMES ...] [--dir DIR] [--all-tags]
    python -m moga_analysis.weights list [--weights-dir DIR] [--no-hash] [--json]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Optional, Sequence

from . import OFFICIAL, WEIGHTS_DIR_ENV, download_weights, list_weights


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m moga_analysis.weights", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    d = sub.add_parser("download", help="download weight files (prints their sizes and SHA-256)")
    d.add_argument("names", nargs="*", metavar="NAME",
                   help=f"model names or aliases, with or without a tag (default: {' '.join(OFFICIAL)})")
    d.add_argument("--dir", default=None, help="folder to download into (default: the torch hub cache)")
    d.add_argument("--all-tags", action="store_true", help="with no NAME: every tag (also the 256 px weights)")
    d.add_argument("--progress", action="store_true", help="show a progress bar per file")
    ls = sub.add_parser("list", help="names, aliases, URLs, cached files and their hashes")
    ls.add_argument("--weights-dir", default=os.environ.get(WEIGHTS_DIR_ENV) or None,
                    help=f"weights folder to look in first (default ${WEIGHTS_DIR_ENV})")
    ls.add_argument("--no-hash", action="store_true", help="do not hash cached files")
    ls.add_argument("--json", action="store_true", help="print JSON instead of a table")
    for q in (d, ls):
        q.add_argument("-v", "--verbose", action="store_true")
    return p


def _table(rows, columns) -> str:
    widths = [max(len(c), *(len(str(r.get(c) or "-")) for r in rows)) for c in columns]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths))]
    lines += ["  ".join(str(r.get(c) or "-").ljust(w) for c, w in zip(columns, widths)) for r in rows]
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    if args.command == "download":
        rows = download_weights(args.names or None, args.dir, all_tags=args.all_tags, progress=args.progress)
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
