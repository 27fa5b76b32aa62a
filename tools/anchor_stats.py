#!/usr/bin/env python
"""Instance sizes of a dataset vs. the anchors of a config (see :mod:`deepcens.analysis.anchor_stats`).

    tools/anchor_stats.py --json datasets/EVICAN/annotations/instances_train2019.json --out out/anchors
    tools/anchor_stats.py --dataset evican_train_nucleus --config-file configs/evican_nucleus.yaml --out out/anchors
"""
from __future__ import annotations

import argparse
import sys

from deepcens.analysis import anchor_stats
from deepcens.errors import exit_2_on_input_error


@exit_2_on_input_error
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=anchor_stats.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    anchor_stats.add_arguments(parser)
    return anchor_stats.run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
