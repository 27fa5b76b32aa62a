"""EfficientCellSeg decoders: sigmoid maps -> instance labels -> ``Instances`` (paper Sec. 3.3).

Each works on a 2D slice ``(C, H, W)`` or a re-stacked volume ``(C, Z, H, W)``; channel 0 is
the foreground probability, channel 1 (if any) the centre heatmap.

* ``"ecs_components"`` (A549-SIM: one cell per image): connected components of the
  foreground (probability > ``FOREGROUND_THRESHOLD``);
* ``"ecs_distance_watershed"`` (TRIC: ellipsoidal cells): watershed of the inverted distance
  transform of the foreground, from markers at its local maxima at least ``MIN_DISTANCE``
  apart (one per component at least);
* ``"ecs_centre_watershed"`` (MDA231): markers are the components of the centre heatmap above
  ``MARKER_THRESHOLD`` inside the foreground; the watershed floods the inverted distance
  transform from them within the foreground (a foreground component without a marker keeps
  its own label).

Objects smaller than ``MIN_OBJECT_SIZE`` pixels (voxels) are dropped; each instance is scored
by its mean foreground probability.
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


def _as_numpy(probabilities) -> np.ndarray:
    if isinstance(probabilities, torch.Tensor):
        probabilities = probabilities.detach().float().cpu().numpy()
    return np.asarray(probabilities, dtype=np.float32)


def _relabel_without_small(labels: np.ndarray, min_size: int) -> np.ndarray:
    """Drop objects under ``min_size`` pixels and number the rest 1..n (int32)."""
    if labels.max() == 0:
        return labels.astype(np.int32)
    sizes = np.bincount(labels.ravel())
    keep = sizes >= max(int(min_size), 1)
    keep[0] = False
    new_ids = np.zeros(len(sizes), dtype=np.int32)
    new_ids[keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.int32)
    return new_ids[labels]


def component_labels(foreground: np.ndarray, threshold: float = 0.5, min_size: int = 0) -> np.ndarray:
    """Connected components (face connectivity) of ``foreground > threshold``."""
    labels, _ = ndimage.label(foreground > threshold)
    return _relabel_without_small(labels, min_size)


def _add_missing_markers(markers: np.ndarray, components: np.ndarray, count: int) -> np.ndarray:
    """Give every foreground component without a marker its own marker (the whole component)."""
    marked = np.unique(components[markers > 0])
    missing = np.setdiff1d(np.unique(components[components > 0]), marked)
    for index, component in enumerate(missing, start=count + 1):
        markers[components == component] = index
    return markers


def distance_watershed_labels(foreground: np.ndarray, threshold: float = 0.5, min_distance: int = 5,
                              min_size: int = 0) -> np.ndarray:
    """Watershed of the inverted distance transform from its local maxima (see the module docstring)."""
    mask = foreground > threshold
    if not mask.any():
        return np.zeros(mask.shape, dtype=np.int32)
    components, _ = ndimage.label(mask)
    distance = ndimage.distance_transform_edt(mask)
    peaks = peak_local_max(distance, min_distance=max(int(min_distance), 1), labels=components, exclude_border=False)
    markers = np.zeros(mask.shape, dtype=np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1, dtype=np.int32)
    markers = _add_missing_markers(markers, components, len(peaks))
    labels = watershed(-distance, markers, mask=mask)
    return _relabel_without_small(labels, min_size)


def centre_watershed_labels(foreground: np.ndarray, heatmap: np.ndarray, threshold: float = 0.5,
                            marker_threshold: float = 0.5, min_size: int = 0) -> np.ndarray:
    """Watershed from centre-heatmap markers within the foreground (see the module docstring)."""
    mask = foreground > threshold
    if not mask.any():
        return np.zeros(mask.shape, dtype=np.int32)
    markers, count = ndimage.label((heatmap > marker_threshold) & mask)
    components, _ = ndimage.label(mask)
    markers = _add_missing_markers(markers.astype(np.int32), components, count)
    labels = watershed(-ndimage.distance_transform_edt(mask), markers, mask=mask)
    return _relabel_without_small(labels, min_size)


class EfficientCellSegDecoder:
    """Callable decoder: ``(C, H, W)`` sigmoid maps -> ``Instances``; :meth:`labels` also takes volumes."""

    def __init__(self, method: str, threshold: float, marker_threshold: float, min_distance: int, min_size: int):
        self.method = method
        self.threshold, self.marker_threshold = float(threshold), float(marker_threshold)
        self.min_distance, self.min_size = int(min_distance), int(min_size)

    def labels(self, probabilities) -> np.ndarray:
        """int32 instance labels of a slice ``(C, H, W)`` or a volume ``(C, Z, H, W)``."""
        maps = _as_numpy(probabilities)
        if self.method == "components":
            return component_labels(maps[0], self.threshold, self.min_size)
        if self.method == "distance_watershed":
            return distance_watershed_labels(maps[0], self.threshold, self.min_distance, self.min_size)
        if maps.shape[0] < 2:
            raise ValueError("the centre-marker watershed needs a centre heatmap (MODEL.DENSE.ECS.NUM_NETWORKS 2)")
        return centre_watershed_labels(maps[0], maps[1], self.threshold, self.marker_threshold, self.min_size)

    def __call__(self, probabilities, dataset_name: str | None = None) -> Instances:
        maps = _as_numpy(probabilities)
        labels = self.labels(maps)
        ids = np.arange(1, int(labels.max()) + 1)
        scores = ndimage.mean(maps[0], labels, ids) if len(ids) else np.zeros(0)
        return label_image_to_instances(labels, scores=np.asarray(scores, dtype=np.float32))


def _decoder(cfg: CfgNode, method: str) -> EfficientCellSegDecoder:
    e = cfg.MODEL.DENSE.ECS
    return EfficientCellSegDecoder(method, e.FOREGROUND_THRESHOLD, e.MARKER_THRESHOLD, e.MIN_DISTANCE, e.MIN_OBJECT_SIZE)


@DECODER_REGISTRY.register()
def ecs_components(cfg: CfgNode) -> Callable[..., Instances]:
    """Connected components of the thresholded foreground (paper: A549-SIM)."""
    return _decoder(cfg, "components")


@DECODER_REGISTRY.register()
def ecs_distance_watershed(cfg: CfgNode) -> Callable[..., Instances]:
    """Distance-transform watershed of the thresholded foreground (paper: TRIC)."""
    return _decoder(cfg, "distance_watershed")


@DECODER_REGISTRY.register()
def ecs_centre_watershed(cfg: CfgNode) -> Callable[..., Instances]:
    """Centre-marker watershed: heatmap markers, foreground mask (paper: MDA231)."""
    return _decoder(cfg, "centre_watershed")
