"""``python -m moga_analysis.erf``."""

from ..cli import run_main
from .cli import main

run_main(main)
