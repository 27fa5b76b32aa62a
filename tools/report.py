#!/usr/bin/env python
"""Visual evaluation report: metric tables plus image | ground truth | prediction panels.

    tools/report.py OUTPUT_DIR [--config-file CFG] [--count 3] [--output DIR]

Reads what evaluation wrote into OUTPUT_DIR (evaluation.json / evaluation.md and
inference/<dataset>/{per_image.json, coco_instances_results.json}) and writes
OUTPUT_DIR/report/report.html and report.md (best and worst images per dataset first).
"""
from __future__ import annotations

import sys

from deepcens.report import report_main

if __name__ == "__main__":
    sys.exit(report_main())
