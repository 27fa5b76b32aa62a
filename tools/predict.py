#!/usr/bin/env python
"""Predict label images with a trained deepcens model (same as ``deepcens predict``).

    tools/predict.py --config-file CFG --input images/ stack.tif ctc/01 --output out/ \
        [--overlays] [--coco-json] [--ctc-format] [--batch-size 4] MODEL.WEIGHTS model_final.pth

See docs/predict.md.
"""
from __future__ import annotations

import sys

from deepcens.predict import main

if __name__ == "__main__":
    sys.exit(main())
