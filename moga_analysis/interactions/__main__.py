"""``python -m moga_analysis.interactions``."""

from ..cli import run_main
from .cli import main

run_main(main)
