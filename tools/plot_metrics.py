#!/usr/bin/env python
"""Plot training curves from a run's ``metrics.json`` (the DeepCeNS paper's Fig. 2).

    tools/plot_metrics.py OUTPUT_DIR [--output DIR] [--metric PATTERN ...]

Writes ``loss.png`` (``total_loss`` and ``val_total_loss`` over iterations) and
``metrics.png`` (validation AP / CTC measures: ``*segm/AP``, ``*bbox/AP``, ``*SEG``, ...)
into ``OUTPUT_DIR/plots`` (or ``--output``).
"""
from __future__ import annotations

import sys

from deepcens.report import plot_metrics_main

if __name__ == "__main__":
    sys.exit(plot_metrics_main())
