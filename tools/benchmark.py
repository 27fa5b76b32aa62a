#!/usr/bin/env python
"""Speed and memory benchmarks (same as ``deepcens benchmark``): ``tools/benchmark.py NAME [options]``.

The code is :mod:`deepcens.benchmarks.cli`; results in docs/benchmarks.md.
"""
from __future__ import annotations

import sys

from deepcens.cli import main

if __name__ == "__main__":
    sys.exit(main(["benchmark", *sys.argv[1:]]))
