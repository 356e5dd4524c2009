"""``python -m moga_analysis.ablation``."""

from ..cli import run_main
from .cli import main

run_main(main)
