"""Training targets of NAS U-Net (Zhu & Meijering 2021, Sec. 3.1): segmentation classes, the U-Net
border weight map and cell markers, all made from an instance label image.

- segmentation (registered as ``"nas_unet"`` in :data:`~deepcens.data.targets.TARGET_REGISTRY`):
  2 classes (0 background, 1 cell) or 4 (0 background, 1 cell, 2 touching border = cell
  pixels within 2 pixels of another cell, 3 gap = background pixels within
  ``MODEL.NAS.GAP_DISTANCE`` of two different cells);
- :func:`unet_weight_map`: Ronneberger et al.'s ``w(x) = w_c(x) + w0 exp(-(d1 + d2)^2 / (2 sigma^2))``
  on background pixels (d1, d2: distances to the nearest and second nearest cell), with
  class-frequency balancing weights ``w_c``;
- :func:`marker_target`: every cell eroded by ``erosion`` pixels (measured inside the cell,
  touching cells separated), a cell too small for that keeping its inner half; or TRA markers.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
from detectron2.config import CfgNode
from scipy import ndimage

from deepcens.data.targets import IGNORE_VALUE, TARGET_REGISTRY, tertiary_target

BACKGROUND, CELL, TOUCHING, GAP = 0, 1, 2, 3


def _labels(labels: np.ndarray) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"NAS U-Net targets take 2D label images, got shape {labels.shape}")
    return labels.astype(np.int32, copy=False)


def gap_pixels(labels: np.ndarray, distance: int) -> np.ndarray:
    """Background pixels whose ``(2 * distance + 1)`` square window holds two different cells."""
    labels = _labels(labels)
    size = 2 * int(distance) + 1
    big = np.iinfo(np.int32).max
    window_max = ndimage.maximum_filter(labels, size=size, mode="constant", cval=0)
    window_min = ndimage.minimum_filter(np.where(labels > 0, labels, big), size=size, mode="constant", cval=big)
    return (labels == 0) & (window_max > 0) & (window_min < window_max)


def segmentation_target(labels: np.ndarray, num_classes: int = 2, gap_distance: int = 3) -> np.ndarray:
    """uint8 class image with 2 (background / cell) or 4 (+ touching border, gap) classes."""
    labels = _labels(labels)
    if num_classes not in (2, 4):
        raise ValueError(f"NAS U-Net segmentation has 2 or 4 classes, got {num_classes}")
    target = (labels > 0).astype(np.uint8)
    if num_classes == 4:
        touching = tertiary_target(labels, dilation=0, erosion=2) == 1  # cell pixels near another cell
        target[touching] = TOUCHING
        target[gap_pixels(labels, gap_distance)] = GAP
    return target


def unet_weight_map(labels: np.ndarray, target: np.ndarray | None = None, w0: float = 10.0, sigma: float = 5.0,
                    class_balance: bool = True, ignore_value: int = IGNORE_VALUE) -> np.ndarray:
    """float32 U-Net weight map (see the module docstring); 0 where ``target`` is ignored.

    The border term needs the two nearest cells of every background pixel; each cell's
    distance map is computed only in its bounding box grown by the distance where the term
    falls below 1e-6 of ``w0``.
    """
    labels = _labels(labels)
    height, width = labels.shape
    if target is None:
        target = (labels > 0).astype(np.uint8)
    labelled = target != ignore_value
    weights = np.ones(labels.shape, dtype=np.float32)
    if class_balance and labelled.any():
        classes, counts = np.unique(target[labelled], return_counts=True)
        frequency = counts / counts.sum()
        lookup = np.ones(256, dtype=np.float32)
        lookup[classes] = (1.0 / (len(classes) * frequency)).astype(np.float32)
        weights = lookup[target]
    reach = int(np.ceil(sigma * np.sqrt(2.0 * np.log(1e6))))  # (d1 + d2) beyond this adds < 1e-6 w0
    nearest = np.full(labels.shape, np.inf, dtype=np.float32)
    second = np.full(labels.shape, np.inf, dtype=np.float32)
    for index, box in enumerate(ndimage.find_objects(labels)):
        if box is None:
            continue
        y0, y1 = max(box[0].start - reach, 0), min(box[0].stop + reach, height)
        x0, x1 = max(box[1].start - reach, 0), min(box[1].stop + reach, width)
        distance = ndimage.distance_transform_edt(labels[y0:y1, x0:x1] != index + 1).astype(np.float32)
        best, runner = nearest[y0:y1, x0:x1], second[y0:y1, x0:x1]
        closer = distance < best
        runner[...] = np.where(closer, best, np.minimum(runner, distance))
        best[...] = np.where(closer, distance, best)
    background = labels == 0
    border = np.zeros(labels.shape, dtype=np.float32)
    finite = background & np.isfinite(second)
    border[finite] = w0 * np.exp(-((nearest[finite] + second[finite]) ** 2) / (2.0 * sigma ** 2))
    weights = weights + border
    weights[~labelled] = 0.0
    return weights.astype(np.float32)


def marker_target(labels: np.ndarray, erosion: int = 4) -> np.ndarray:
    """uint8 cell markers (1) from eroded instances; every cell keeps at least its inner half."""
    labels = _labels(labels)
    markers = np.zeros(labels.shape, dtype=np.uint8)
    if not labels.any():
        return markers
    # distance to the nearest pixel outside the own cell (other cells and background alike)
    inside = np.zeros(labels.shape, dtype=np.float32)
    for index, box in enumerate(ndimage.find_objects(labels)):
        if box is None:
            continue
        box = tuple(slice(max(s.start - 1, 0), s.stop + 1) for s in box)
        own = labels[box] == index + 1
        inside[box] = np.where(own, ndimage.distance_transform_edt(np.pad(own, 1))[1:-1, 1:-1], inside[box])
    ids = np.arange(1, int(labels.max()) + 1)
    depth = np.zeros(len(ids) + 1, dtype=np.float32)
    depth[1:] = ndimage.maximum(inside, labels, ids)
    threshold = np.minimum(float(erosion), 0.5 * depth)
    markers[(labels > 0) & (inside > threshold[labels])] = 1
    return markers


@TARGET_REGISTRY.register()
def nas_unet(cfg: CfgNode) -> Callable[..., np.ndarray]:
    """NAS U-Net segmentation classes (``MODEL.DENSE.NUM_OUTPUTS`` = 2 or 4, ``MODEL.NAS.GAP_DISTANCE``)."""
    num_classes = int(cfg.MODEL.DENSE.NUM_OUTPUTS)
    gap = int(cfg.MODEL.NAS.GAP_DISTANCE)

    def target(labels: np.ndarray, dilation: int | None = None) -> np.ndarray:
        return segmentation_target(labels, num_classes, gap)

    return target
