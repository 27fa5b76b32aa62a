#!/usr/bin/env python
"""Train and evaluate any deepcens method (R-CNN or U-Net) with detectron2's launcher.

    tools/train_net.py --config-file configs/evican_cell_nucleus.yaml --num-gpus 4
    tools/train_net.py --config-file CFG --eval-only MODEL.WEIGHTS output/model_final.pth

The same as ``deepcens train``: the Trainer, setup and launch live in
:mod:`deepcens.engine.train_net`.
"""
from __future__ import annotations

import sys

import deepcens  # noqa: F401  (first: keeps third-party import notes off the console, registers builders)
from detectron2.engine import default_argument_parser

from deepcens.engine.train_net import add_deepcens_arguments, run
from deepcens.errors import run_tool

if __name__ == "__main__":
    parser = default_argument_parser()
    add_deepcens_arguments(parser)
    sys.exit(run_tool(run)(parser.parse_args()))
