#!/usr/bin/env python
"""Plot training curves from a run's ``metrics.json`` (same as ``deepcens plot``).

    tools/plot_metrics.py OUTPUT_DIR [--output DIR] [--metric PATTERN ...]

The code is :mod:`deepcens.plots`.
"""
from __future__ import annotations

import sys

from deepcens.cli import main

if __name__ == "__main__":
    sys.exit(main(["plot", *sys.argv[1:]]))
