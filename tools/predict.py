#!/usr/bin/env python
"""Predict label images with a trained deepcens model (same as ``deepcens predict``).

    tools/predict.py --config-file CFG --input images/ --input stack.tif --output out/ \\
        [--overlays] [--coco-json] [--ctc-format] MODEL.WEIGHTS model_final.pth

The code is the :mod:`deepcens.predict` package; see docs/predict.md.
"""
from __future__ import annotations

import sys

from deepcens.cli import main

if __name__ == "__main__":
    sys.exit(main(["predict", *sys.argv[1:]]))
