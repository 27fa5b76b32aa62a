"""Decoders: dense network outputs -> detectron2 ``Instances`` (found by ``cfg.MODEL.DENSE.DECODER``).

A decoder builder in :data:`DECODER_REGISTRY` is called as ``builder(cfg)`` and returns a
callable ``decode(probabilities: Tensor[C, H, W], dataset_name: str | None) -> Instances``;
``probabilities`` are softmax scores at the original image size, ``dataset_name`` selects
per-dataset post-processing thresholds.

``"tertiary"``: the XB-Net paper's post-processing (Section 5.5 and the authors' inference
code): a pixel is "cell" when the cell score beats both others, then small objects are
removed and small holes filled, and connected components (face connectivity) of what is
left become the instances. Optionally (``MODEL.DENSE.GROW_INTO_BOUNDARY`` > 0, not in the
paper) components then grow by up to that many pixels into boundary-class pixels that lie
between two components, giving back the contact band the target carves out of touching cells
(the boundary ring around an isolated cell lies outside the cell and is left alone). Each
instance is scored by its mean cell probability.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from detectron2.config import CfgNode
from detectron2.data import MetadataCatalog
from detectron2.structures import Instances
from detectron2.utils.registry import Registry
from scipy import ndimage
from skimage import morphology
from skimage.segmentation import expand_labels

from deepcens.data.targets import CELL
from deepcens.postprocess.instances import label_image_to_instances

DECODER_REGISTRY = Registry("DENSE_DECODER")
DECODER_REGISTRY.__doc__ = "Decoders: (cfg) -> callable(probabilities [C,H,W], dataset_name) -> Instances."



def parse_postprocess_overrides(entries) -> dict[str, tuple[int, int]]:
    """``[["Fluo-N2DH-SIM+", 30, 50], ...]`` -> ``{"Fluo-N2DH-SIM+": (30, 50)}`` (min size, max hole)."""
    overrides = {}
    for entry in entries:
        if isinstance(entry, str) or len(entry) != 3 or not isinstance(entry[0], str) or not entry[0]:
            raise ValueError(f"MODEL.DENSE.POSTPROCESS_PER_DATASET entry {entry!r} is not [dataset, min_size, max_hole]")
        try:
            min_size, max_hole = int(entry[1]), int(entry[2])
        except (TypeError, ValueError):
            raise ValueError(f"MODEL.DENSE.POSTPROCESS_PER_DATASET entry {entry!r}: sizes must be integers") from None
        if min_size < 0 or max_hole < 0 or min_size != entry[1] or max_hole != entry[2]:
            raise ValueError(f"MODEL.DENSE.POSTPROCESS_PER_DATASET entry {entry!r}: sizes must be integers >= 0")
        overrides[entry[0]] = (min_size, max_hole)
    return overrides


def _clean_plane(cell: np.ndarray, min_object_size: int, max_hole_size: int) -> np.ndarray:
    # scikit-image 0.25: objects / holes with area < the threshold are removed / filled.
    if min_object_size > 1:
        cell = morphology.remove_small_objects(cell, min_size=min_object_size)
    if max_hole_size > 0:
        cell = morphology.remove_small_holes(cell, area_threshold=max_hole_size + 1)
    return cell


def tertiary_labels(
    probabilities: np.ndarray | torch.Tensor,
    min_object_size: int = 0,
    max_hole_size: int = 0,
    grow_into_boundary: int = 0,
) -> np.ndarray:
    """Instance label image (int32) from tertiary scores ``(3, H, W)`` or ``(3, Z, H, W)``.

    A pixel is cell when its cell score is strictly above the background and boundary scores.
    Objects smaller than ``min_object_size`` pixels are removed and holes of at most
    ``max_hole_size`` pixels filled (per plane for volumes, as the authors do), then connected
    components (face connectivity) are labelled; ``grow_into_boundary`` > 0 grows them into
    boundary-class pixels.
    """
    if isinstance(probabilities, torch.Tensor):
        probabilities = probabilities.detach().float().cpu().numpy()
    probabilities = np.asarray(probabilities)
    if probabilities.ndim not in (3, 4) or probabilities.shape[0] != 3:
        raise ValueError(f"expected tertiary scores of shape (3, H, W) or (3, Z, H, W), got {probabilities.shape}")
    background, boundary, cell_score = probabilities
    cell = (cell_score > background) & (cell_score > boundary)
    if cell.ndim == 2:
        cell = _clean_plane(cell, min_object_size, max_hole_size)
    else:
        cell = np.stack([_clean_plane(plane, min_object_size, max_hole_size) for plane in cell])
    labels, _ = ndimage.label(cell)
    if grow_into_boundary > 0 and labels.any():
        # Only boundary pixels between two components (a second one within twice the growth)
        # are given back: the target carves such contact bands out of touching cells, while
        # the boundary ring around an isolated cell lies outside it.
        is_boundary = (boundary >= background) & (boundary >= cell_score) & ~cell
        size = 4 * grow_into_boundary + 1  # a contact band pixel: near one cell, the other within 2x
        big = np.iinfo(np.int32).max
        window_max = ndimage.maximum_filter(labels, size=size, mode="constant", cval=0)
        window_min = ndimage.minimum_filter(np.where(labels > 0, labels, big), size=size, mode="constant", cval=big)
        contact = is_boundary & (window_max > 0) & (window_min < window_max)
        grown = expand_labels(labels, distance=grow_into_boundary)
        labels = np.where(cell | contact, grown, 0)
    return labels.astype(np.int32, copy=False)


def object_scores(labels: np.ndarray, cell_score: np.ndarray) -> np.ndarray:
    """Mean cell probability of each object ``1..labels.max()`` (the score ``decode_tertiary`` gives it)."""
    count = int(labels.max()) if labels.size else 0
    if not count:
        return np.zeros(0, dtype=np.float64)
    return np.asarray(ndimage.mean(np.asarray(cell_score, dtype=np.float64), labels, np.arange(1, count + 1)))


def drop_low_score_objects(labels: np.ndarray, scores: np.ndarray, min_score: float) -> np.ndarray:
    """``labels`` with the objects whose score (``object_scores``) is below ``min_score`` set to 0."""
    if min_score <= 0 or not len(scores):
        return labels
    keep = np.concatenate([[True], np.asarray(scores) >= min_score])
    return np.where(keep[labels], labels, 0).astype(labels.dtype, copy=False)


def decode_tertiary(
    probabilities: np.ndarray | torch.Tensor,
    min_object_size: int = 0,
    max_hole_size: int = 0,
    grow_into_boundary: int = 0,
    min_score: float = 0.0,
) -> Instances:
    """``Instances`` (class 0, score = mean cell probability) from ``(3, H, W)`` tertiary scores;
    objects whose score is below ``min_score`` are dropped (faint background structures)."""
    if isinstance(probabilities, torch.Tensor):
        probabilities = probabilities.detach().float().cpu().numpy()
    labels = tertiary_labels(probabilities, min_object_size, max_hole_size, grow_into_boundary)
    if labels.ndim != 2:
        raise ValueError("decode_tertiary takes one 2D image; use tertiary_labels for volumes")
    instances = label_image_to_instances(labels)
    cell_score = probabilities[CELL]
    scores = [cell_score[y0:y1, x0:x1][crop].mean(dtype=np.float64) for (x0, y0, x1, y1), crop
              in instances.pred_masks.items()]
    instances.scores = torch.tensor(scores, dtype=torch.float32)
    if min_score > 0:
        instances = instances[instances.scores >= min_score]
    return instances


def _dataset_keys(dataset_name: str | None) -> list[str]:
    if not dataset_name:
        return []
    keys = [dataset_name]
    if dataset_name in MetadataCatalog.list():
        ctc_dataset = MetadataCatalog.get(dataset_name).get("ctc_dataset", None)
        if ctc_dataset:
            keys.append(ctc_dataset)
    return keys


@DECODER_REGISTRY.register()
def tertiary(cfg: CfgNode) -> Callable[[torch.Tensor, str | None], Instances]:
    """XB-Net decoder with ``MODEL.DENSE.MIN_OBJECT_SIZE`` / ``MAX_HOLE_SIZE`` /
    ``GROW_INTO_BOUNDARY`` and per-dataset overrides ``MODEL.DENSE.POSTPROCESS_PER_DATASET``
    (matched on the registered name, then on its ``ctc_dataset`` metadata)."""
    default = (int(cfg.MODEL.DENSE.MIN_OBJECT_SIZE), int(cfg.MODEL.DENSE.MAX_HOLE_SIZE))
    overrides = parse_postprocess_overrides(cfg.MODEL.DENSE.POSTPROCESS_PER_DATASET)
    grow = int(cfg.MODEL.DENSE.GROW_INTO_BOUNDARY)
    min_score = float(cfg.MODEL.DENSE.MIN_SCORE)

    def decode(probabilities: torch.Tensor, dataset_name: str | None = None) -> Instances:
        min_size, max_hole = default
        for key in _dataset_keys(dataset_name):
            if key in overrides:
                min_size, max_hole = overrides[key]
                break
        return decode_tertiary(probabilities, min_size, max_hole, grow, min_score)

    def labels(probabilities: torch.Tensor) -> np.ndarray:
        """Label image or volume from ``(3, H, W)`` / ``(3, Z, H, W)`` scores (3D components for volumes)."""
        return tertiary_labels(probabilities, *default, grow)

    decode.labels = labels
    return decode


def build_decoder(cfg: CfgNode) -> Callable[[torch.Tensor, str | None], Instances]:
    """The decoder callable named by ``cfg.MODEL.DENSE.DECODER``."""
    return DECODER_REGISTRY.get(cfg.MODEL.DENSE.DECODER)(cfg)
