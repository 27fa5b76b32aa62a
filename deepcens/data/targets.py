"""Dense training targets made from instance label images (found by ``cfg.MODEL.DENSE.TARGET``).

A target builder in :data:`TARGET_REGISTRY` is called as ``builder(cfg)`` and returns a
callable ``target(labels: np.ndarray[int], dilation: int | None = None) -> np.ndarray[uint8]``
(``dilation`` overrides the configured one, e.g. 5 for planar slices of 3D data as the XB-Net
paper does). Pixels a target should not teach carry :data:`IGNORE_VALUE` (255); see
:func:`sparse_ignore_mask` for sparse (partially labelled) reference frames.

``"tertiary"`` is the XB-Net paper's Algorithm 1 (background 0 / boundary 1 / cell 2),
computed for the whole image at once instead of cell by cell.
"""
from __future__ import annotations

import functools
import math
import os
from typing import Callable

import numpy as np
from detectron2.config import CfgNode
from detectron2.utils.registry import Registry
from scipy import ndimage

TARGET_REGISTRY = Registry("DENSE_TARGET")
TARGET_REGISTRY.__doc__ = "Dense targets: (cfg) -> callable(labels int array, dilation=None) -> uint8 target."

BACKGROUND, BOUNDARY, CELL = 0, 1, 2
IGNORE_VALUE = 255


def _as_labels(labels: np.ndarray) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.dtype.kind not in "ui":
        if labels.dtype.kind == "b":
            return labels.astype(np.int32)
        raise ValueError(f"label image must hold integers, got dtype {labels.dtype}")
    if labels.dtype.kind == "i" and labels.size and labels.min() < 0:
        raise ValueError("label image has negative labels")
    return labels.astype(np.int64 if labels.dtype.itemsize > 4 else np.int32, copy=False)


def _shifted(ndim: int, axis: int, step: int) -> tuple[tuple, tuple]:
    """(destination, source) slices moving an array by ``step`` along ``axis``."""
    dst = [slice(None)] * ndim
    src = [slice(None)] * ndim
    if step > 0:
        dst[axis], src[axis] = slice(step, None), slice(None, -step)
    else:
        dst[axis], src[axis] = slice(None, step), slice(-step, None)
    return tuple(dst), tuple(src)


def _cross_dilate(mask: np.ndarray, iterations: int) -> np.ndarray:
    """Binary dilation with the face-connected element, ``iterations`` times (outside = False).

    Same result as ``ndimage.binary_dilation(mask, cross, iterations)``, by shifted ORs
    (several times faster on large images).
    """
    out = mask.copy()
    for _ in range(iterations):
        grown = out.copy()
        for axis in range(mask.ndim):
            for step in (1, -1):
                dst, src = _shifted(mask.ndim, axis, step)
                grown[dst] |= out[src]
        out = grown
    return out


def _window_extreme(values: np.ndarray, radius: int, reduce) -> np.ndarray:
    """Max / min (``reduce``) over the ``(2*radius+1)``-wide box clipped to the array; separable."""
    out = values
    for axis in range(values.ndim):
        acc = out.copy()
        for step in range(1, radius + 1):
            for signed in (step, -step):
                dst, src = _shifted(values.ndim, axis, signed)
                reduce(acc[dst], out[src], out=acc[dst])
        out = acc
    return out


def _edge_pixels(labels: np.ndarray) -> np.ndarray:
    """Foreground pixels with a face neighbour of another label, or on the array border."""
    fg = labels > 0
    edge = np.zeros_like(fg)
    for axis in range(labels.ndim):
        lead = [slice(None)] * labels.ndim
        trail = [slice(None)] * labels.ndim
        lead[axis], trail[axis] = slice(1, None), slice(None, -1)
        differs = labels[tuple(lead)] != labels[tuple(trail)]
        edge[tuple(lead)] |= differs
        edge[tuple(trail)] |= differs
        first = [slice(None)] * labels.ndim
        last = [slice(None)] * labels.ndim
        first[axis], last[axis] = 0, -1
        edge[tuple(first)] = True
        edge[tuple(last)] = True
    return edge & fg


def tertiary_target(labels: np.ndarray, dilation: int = 2, erosion: int = 2) -> np.ndarray:
    """XB-Net tertiary target of an instance label image (2D, or 3D treated as a volume).

    Exactly the authors' Algorithm 1, for all cells at once:

    * background pixels within ``dilation`` iterations of binary dilation (face-connected
      "cross" element) of any cell become boundary (1);
    * cell pixels become cell (2), except those removed by ``erosion`` iterations of binary
      erosion of their own cell (cross element, outside the image counts as background) whose
      ``(2*erosion+1)``-wide square (cube) window holds a pixel of another cell: boundary (1).

    The paper uses 2 dilations for 2D data, 5 for planar slices of 3D data, and 2 erosions.
    Vectorised: a pixel is removed by the per-cell erosion iff it lies within ``erosion - 1``
    cross-dilations of an "edge" pixel (a cell pixel next to another label or the border), and
    the window test compares the windowed max / min-over-cells of the labels with its own.
    """
    labels = _as_labels(labels)
    if dilation < 0 or erosion < 0:
        raise ValueError("dilation and erosion must be >= 0")
    fg = labels > 0
    target = np.zeros(labels.shape, dtype=np.uint8)
    if not fg.any():
        return target
    if dilation > 0:
        ring = _cross_dilate(fg, dilation) & ~fg
        target[ring] = BOUNDARY
    target[fg] = CELL
    if erosion == 0:
        return target
    edge = _edge_pixels(labels)
    # A cell pixel p is eroded away iff a pixel of another label (or the outside) lies within
    # L1 distance ``erosion``; the last own-cell pixel on such a path is an edge pixel within
    # ``erosion - 1``, and an edge pixel of another cell within ``erosion - 1`` is itself such
    # a pixel. Plain (unmasked) cross dilations measure exactly that L1 distance.
    removed = (_cross_dilate(edge, erosion - 1) & fg) if erosion > 1 else edge
    if not removed.any():
        return target
    # Crop to the candidates' bounding box (plus the window) to keep the filters small.
    coords = np.nonzero(removed)
    box = tuple(slice(max(int(c.min()) - erosion, 0), int(c.max()) + erosion + 1) for c in coords)
    sub = labels[box]
    big = np.iinfo(sub.dtype).max
    window_max = _window_extreme(sub, erosion, np.maximum)
    window_min = _window_extreme(np.where(sub > 0, sub, big), erosion, np.minimum)
    other = (window_max > sub) | (window_min < sub)
    sub_target = target[box]
    sub_target[removed[box] & other] = BOUNDARY
    return target


def sparse_ignore_mask(
    labels: np.ndarray,
    markers: np.ndarray | None = None,
    silver: np.ndarray | None = None,
    dilation: int = 2,
    marker_growth: float = 0.5,
    min_overlap: float = 0.5,
) -> np.ndarray:
    """Pixels of a sparsely labelled frame that a target must ignore (True = ignore).

    CTC gold-truth SEG frames may label only some cells. Cells known from other references
    but missing from ``labels`` must not be taught as background:

    * ``silver``: an ST (silver truth) label image of the same frame; its objects that overlap
      no labelled cell (less than ``min_overlap`` of their area) count as unlabelled cells and
      are grown by ``dilation`` (their boundary ring);
    * ``markers``: TRA markers; a marker less than ``min_overlap`` covered by labelled cells
      is an unlabelled cell; its region is the marker grown by ``marker_growth`` times its
      equivalent radius plus ``dilation`` pixels (markers are smaller than the cells).

    Without any reference every background pixel outside the labelled cells' dilation ring is
    ignored. Labelled cells' own pixels are never ignored.
    """
    labels = _as_labels(labels)
    fg = labels > 0
    unknown = np.zeros(labels.shape, dtype=bool)
    used = False
    for reference, grow in ((silver, False), (markers, True)):
        if reference is None:
            continue
        reference = _as_labels(reference)
        if reference.size and int(reference.max()) >= 1 << 20:  # huge ids: renumber before counting
            values, inverse = np.unique(reference, return_inverse=True)
            reference = (inverse + (0 if values[0] == 0 else 1)).reshape(reference.shape)
        if reference.shape != labels.shape:
            raise ValueError(f"reference shape {reference.shape} differs from label shape {labels.shape}")
        used = True
        ids = reference.ravel()
        areas = np.bincount(ids)
        covered = np.bincount(ids, weights=fg.ravel().astype(np.float64), minlength=len(areas))
        unlabelled = (areas > 0) & (covered < min_overlap * np.maximum(areas, 1))
        unlabelled[0] = False
        if not unlabelled.any():
            continue
        region = unlabelled[reference]
        if not grow:
            if dilation > 0:
                cross = ndimage.generate_binary_structure(labels.ndim, 1)
                region = ndimage.binary_dilation(region, cross, iterations=dilation)
            unknown |= region
            continue
        margin = np.zeros(len(areas), dtype=np.float64)
        ball = math.pi if labels.ndim == 2 else 4.0 / 3.0 * math.pi
        radius = (areas / ball) ** (1.0 / labels.ndim)
        margin[unlabelled] = marker_growth * radius[unlabelled] + dilation
        distance, indices = ndimage.distance_transform_edt(~region, return_indices=True)
        nearest = reference[tuple(indices)]
        unknown |= distance <= margin[nearest]
    if not used:
        cross = ndimage.generate_binary_structure(labels.ndim, 1)
        ring = ndimage.binary_dilation(fg, cross, iterations=dilation) if dilation > 0 else fg
        unknown = ~ring
    return unknown & ~fg


@functools.lru_cache(maxsize=512)
def _ignore_bits(key: tuple, shape: tuple[int, int], dataset_dict_items: tuple) -> np.ndarray:
    from deepcens.data import ctc

    dataset_dict = dict(dataset_dict_items)
    ignore = sparse_ignore_mask(
        ctc.read_ctc_labels(dataset_dict), markers=ctc.read_ctc_markers(dataset_dict),
        silver=ctc.read_ctc_silver(dataset_dict), dilation=int(dataset_dict.get("target_dilation") or 2))
    return np.packbits(ignore.ravel())


def _cached_ignore(dataset_dict: dict, labels: np.ndarray) -> np.ndarray:
    """:func:`sparse_ignore_mask` of a sparse CTC frame, computed once per process (bit-packed)."""
    fields = ("file_name", "height", "width", "label_file_name", "label_slice", "tra_file_name",
              "tra_slice", "st_label_file_name", "slice", "target_dilation")
    items = tuple((k, dataset_dict.get(k)) for k in fields)
    mtimes = tuple(os.stat(p).st_mtime_ns if p else None for p in
                   (dataset_dict.get("label_file_name"), dataset_dict.get("tra_file_name"),
                    dataset_dict.get("st_label_file_name")))
    bits = _ignore_bits(items + (("mtimes", mtimes),), labels.shape, items)
    return np.unpackbits(bits, count=labels.size).reshape(labels.shape).astype(bool)


def dense_target_for_dict(dataset_dict: dict, target_fn: Callable[..., np.ndarray]) -> np.ndarray | None:
    """Training target of one dataset dict (the dense mappers' single entry point).

    Reads the labels (CTC dicts through :mod:`deepcens.data.ctc`, which handles planes of 3D
    stacks; other dicts from ``label_file_name``), builds ``target_fn(labels, dilation=...)``
    with the dict's ``target_dilation`` when present, and for dicts with ``sparse_labels``
    sets the pixels of :func:`sparse_ignore_mask` (from ST / TRA references) to 255.
    Returns None for dicts without labels.
    """
    if "ctc_dataset" in dataset_dict:
        from deepcens.data import ctc  # local: ctc registers datasets on import

        labels = ctc.read_ctc_labels(dataset_dict)
        if labels is None:
            return None
        target = target_fn(labels, dilation=dataset_dict.get("target_dilation"))
        if dataset_dict.get("sparse_labels"):
            target[_cached_ignore(dataset_dict, labels)] = IGNORE_VALUE
        return target
    path = dataset_dict.get("label_file_name")
    if not path:
        return None
    from deepcens.data.io import read_label

    labels = read_label(path, (dataset_dict["height"], dataset_dict["width"]) if "height" in dataset_dict else None)
    return target_fn(labels, dilation=dataset_dict.get("target_dilation"))


@TARGET_REGISTRY.register()
def tertiary(cfg: CfgNode) -> Callable[..., np.ndarray]:
    """XB-Net tertiary target with ``MODEL.DENSE.TARGET_DILATION`` / ``TARGET_EROSION``."""
    default_dilation = int(cfg.MODEL.DENSE.TARGET_DILATION)
    erosion = int(cfg.MODEL.DENSE.TARGET_EROSION)

    def target(labels: np.ndarray, dilation: int | None = None) -> np.ndarray:
        return tertiary_target(labels, default_dilation if dilation is None else int(dilation), erosion)

    return target


def foreground_target(labels: np.ndarray, dilation: int | None = None) -> np.ndarray:
    """Binary target (uint8): 1 on every labelled pixel, 0 elsewhere (EfficientCellSeg's two classes)."""
    return (_as_labels(labels) > 0).astype(np.uint8)


def centre_heatmap(labels: np.ndarray, sigma: float) -> np.ndarray:
    """float32 heatmap: a unit-height Gaussian (``sigma`` pixels) at each object's centre, max over objects.

    The centre is the centroid, or the object's pixel nearest to it when the centroid falls
    outside the object (non-convex cells).
    """
    labels = _as_labels(labels)
    heatmap = np.zeros(labels.shape, dtype=np.float32)
    ids = np.unique(labels)
    ids = ids[ids > 0]
    if not len(ids) or sigma <= 0:
        return heatmap
    radius = int(math.ceil(4 * sigma))
    objects = ndimage.find_objects(labels)
    for label_id in ids:
        box = objects[int(label_id) - 1]
        coords = np.argwhere(labels[box] == label_id) + np.array([b.start for b in box])
        centroid = coords.mean(axis=0)
        centre = np.round(centroid).astype(int)
        if labels[tuple(centre)] != label_id:
            centre = coords[np.argmin(((coords - centroid) ** 2).sum(axis=1))]
        window = tuple(slice(max(c - radius, 0), min(c + radius + 1, n)) for c, n in zip(centre, labels.shape))
        grids = np.meshgrid(*[np.arange(w.start, w.stop) - c for w, c in zip(window, centre)], indexing="ij")
        gaussian = np.exp(-sum(g.astype(np.float32) ** 2 for g in grids) / np.float32(2 * sigma ** 2))
        np.maximum(heatmap[window], gaussian, out=heatmap[window])
    return heatmap


@TARGET_REGISTRY.register()
def foreground(cfg: CfgNode) -> Callable[..., np.ndarray]:
    """Foreground / background target (EfficientCellSeg segmentation network)."""
    return foreground_target


@TARGET_REGISTRY.register()
def foreground_centre(cfg: CfgNode) -> Callable[..., np.ndarray]:
    """float32 ``(H, W, 2)``: the foreground target and the centre heatmap of
    ``MODEL.DENSE.ECS.CENTRE_SIGMA`` (EfficientCellSeg segmentation + heatmap networks)."""
    sigma = float(cfg.MODEL.DENSE.ECS.CENTRE_SIGMA)

    def target(labels: np.ndarray, dilation: int | None = None) -> np.ndarray:
        return np.dstack([foreground_target(labels).astype(np.float32), centre_heatmap(labels, sigma)])

    return target


def build_target(cfg: CfgNode) -> Callable[..., np.ndarray]:
    """The target callable named by ``cfg.MODEL.DENSE.TARGET``."""
    return TARGET_REGISTRY.get(cfg.MODEL.DENSE.TARGET)(cfg)
