#!/usr/bin/env python
"""Write the deterministic synthetic microscopy data (same as ``deepcens synthetic``).

    tools/make_synthetic.py --out datasets/synthetic

The code is :mod:`deepcens.data.make_synthetic`.
"""
from __future__ import annotations

import sys

from deepcens.cli import main

if __name__ == "__main__":
    sys.exit(main(["synthetic", *sys.argv[1:]]))
