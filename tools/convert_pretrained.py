#!/usr/bin/env python
"""Convert published pretrained weights into a deepcens checkpoint for MODEL.WEIGHTS (docs/pretrained.md).

    tools/convert_pretrained.py --config-file configs/evican_cell.yaml \
        --source mask_cascade_rcnn_ResNeSt_200_FPN_dcn_syncBN_all_tricks_3x-e1901134.pth \
        --output pretrained/deepcens_coco_cell.pth
"""
from __future__ import annotations

import sys

from deepcens.modeling.pretrained import main

if __name__ == "__main__":
    sys.exit(main())
