#!/usr/bin/env python
"""Grid-search the dense decoder's thresholds on a validation split (same as ``deepcens grid-search``).

    tools/grid_search_postprocess.py --config-file configs/xbnet/xbnet_sim_cpu.yaml \\
        --dataset ctc_sim_val --min-sizes 0,20,50,100 --max-holes 0,20,50 MODEL.WEIGHTS output/model_final.pth

The code is :mod:`deepcens.analysis.grid_search`; see docs/xbnet.md.
"""
from __future__ import annotations

import sys

from deepcens.cli import main

if __name__ == "__main__":
    sys.exit(main(["grid-search", *sys.argv[1:]]))
