#!/usr/bin/env python
"""Download, verify and unpack public data sets by name into datasets/ (see docs/prepare_data.md).

    tools/prepare_data.py --list
    tools/prepare_data.py Fluo-N2DH-SIM+ --root datasets
"""
from __future__ import annotations

import sys

from deepcens.data.prepare import main

if __name__ == "__main__":
    sys.exit(main())
