"""``plugin_distance_watershed``: foreground scores -> instances by a distance-transform watershed.

Works with any 2- or 3-class dense output whose last channel is "cell" (XB-Net's tertiary
target included): cell pixels are split at the saddles of their distance transform, seeded
at local maxima at least ``MODEL.PLUGIN.MIN_DISTANCE`` apart. Scores are the mean cell
probability per instance. The result goes through deepcens' one converter to ``Instances``.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from detectron2.config import CfgNode
from detectron2.structures import Instances
from scipy import ndimage
from skimage.feature import peak_local_max
from skimage.segmentation import watershed

from deepcens.postprocess.decoders import DECODER_REGISTRY
from deepcens.postprocess.instances import label_image_to_instances


@DECODER_REGISTRY.register()
def plugin_distance_watershed(cfg: CfgNode) -> Callable[[torch.Tensor, str | None], Instances]:
    min_distance = int(cfg.MODEL.PLUGIN.MIN_DISTANCE)
    min_size = int(cfg.MODEL.DENSE.MIN_OBJECT_SIZE)

    def decode(probabilities: torch.Tensor, dataset_name: str | None = None) -> Instances:
        scores = probabilities.detach().cpu().numpy()
        cell = scores.argmax(0) == scores.shape[0] - 1
        distance = ndimage.distance_transform_edt(cell)
        seeds = np.zeros(cell.shape, np.int32)
        peaks = peak_local_max(distance, min_distance=min_distance, labels=ndimage.label(cell)[0])
        seeds[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
        labels = watershed(-distance, seeds, mask=cell)
        ids = np.unique(labels[labels > 0])
        mean_cell = ndimage.mean(scores[-1], labels, ids) if len(ids) else np.zeros(0)
        return label_image_to_instances(labels, scores=np.asarray(mean_cell, np.float32), min_area=min_size)

    return decode
