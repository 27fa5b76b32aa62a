#!/usr/bin/env python
"""Visual evaluation report (same as ``deepcens report``).

    tools/report.py OUTPUT_DIR [--config-file CFG] [--count 3] [--output DIR]

The code is :mod:`deepcens.report`.
"""
from __future__ import annotations

import sys

from deepcens.cli import main

if __name__ == "__main__":
    sys.exit(main(["report", *sys.argv[1:]]))
