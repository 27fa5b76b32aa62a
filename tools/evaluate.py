#!/usr/bin/env python
"""Score saved predictions without a model (same as ``deepcens evaluate``).

    tools/evaluate.py --ctc-gt data/Fluo-N2DH-SIM+/01_GT --ctc-res out/01_RES --json out.json
    tools/evaluate.py --dataset NAME --pred-coco coco_results.json --output-dir out/
    tools/evaluate.py --gt-labels label_folder/ --pred-labels predicted_label_folder/

The code is :mod:`deepcens.evaluation.offline`; see docs/evaluation.md.
"""
from __future__ import annotations

import sys

from deepcens.cli import main

if __name__ == "__main__":
    sys.exit(main(["evaluate", *sys.argv[1:]]))
