"""``python -m moga_analysis.gradcam``."""

from ..cli import run_main
from .cli import main

run_main(main)
