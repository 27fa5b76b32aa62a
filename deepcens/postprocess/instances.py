"""Conversions between instance label images and detectron2 ``Instances`` / COCO annotations.

The one place where masks become label images and back: adapters, the evaluator, the
prediction writer and the datasets all call these.
"""
from __future__ import annotations

import numpy as np
import pycocotools.mask as mask_util
import torch
from detectron2.structures import BitMasks, Boxes, BoxMode, Instances
from scipy import ndimage


def label_boxes(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ids present in ``labels`` (sorted, > 0) and their XYXY boxes (pixel-edge coordinates)."""
    slices = ndimage.find_objects(labels)
    ids, boxes = [], []
    for index, sl in enumerate(slices):
        if sl is None:
            continue
        ids.append(index + 1)
        boxes.append((sl[1].start, sl[0].start, sl[1].stop, sl[0].stop))
    return np.asarray(ids, dtype=np.int64), np.asarray(boxes, dtype=np.float32).reshape(-1, 4)


def label_image_to_instances(
    labels: np.ndarray,
    scores: np.ndarray | None = None,
    classes: np.ndarray | int = 0,
    min_area: int = 0,
) -> Instances:
    """Turn an instance label image (0 = background) into ``Instances``.

    ``scores`` and ``classes`` are per label id present (in ascending id order); the default
    score is 1 and the default class 0. Objects smaller than ``min_area`` pixels are dropped.
    """
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"label image must be 2D, got shape {labels.shape}")
    height, width = labels.shape
    ids, boxes = label_boxes(labels.astype(np.int64, copy=False))
    if scores is None:
        scores = np.ones(len(ids), dtype=np.float32)
    classes = np.broadcast_to(np.asarray(classes, dtype=np.int64), (len(ids),))
    if len(ids):
        masks = labels[None] == ids[:, None, None]
        areas = masks.reshape(len(ids), -1).sum(1)
        keep = areas >= max(min_area, 1)
        masks, boxes = masks[keep], boxes[keep]
        scores, classes = np.asarray(scores)[keep], classes[keep]
    else:
        masks = np.zeros((0, height, width), dtype=bool)
    result = Instances((height, width))
    result.pred_masks = torch.from_numpy(np.ascontiguousarray(masks))
    result.pred_boxes = Boxes(torch.from_numpy(boxes))
    result.scores = torch.as_tensor(np.asarray(scores, dtype=np.float32))
    result.pred_classes = torch.as_tensor(np.asarray(classes, dtype=np.int64))
    return result


def instance_masks(instances: Instances, mask_threshold: float = 0.5) -> np.ndarray:
    """Binary ``(N, H, W)`` masks of predicted instances (from pred_masks or, if absent, boxes)."""
    height, width = instances.image_size
    if instances.has("pred_masks"):
        masks = instances.pred_masks
        if isinstance(masks, BitMasks):
            masks = masks.tensor
        masks = masks.detach().cpu()
        if masks.dtype != torch.bool:
            masks = masks >= mask_threshold
        return masks.numpy()
    boxes = instances.pred_boxes.tensor.detach().cpu().numpy() if len(instances) else np.zeros((0, 4))
    masks = np.zeros((len(boxes), height, width), dtype=bool)
    for index, (x0, y0, x1, y1) in enumerate(np.round(boxes).astype(int)):
        masks[index, max(y0, 0):max(y1, 0), max(x0, 0):max(x1, 0)] = True
    return masks


def instances_to_label_image(
    instances: Instances, score_threshold: float = 0.0, mask_threshold: float = 0.5
) -> np.ndarray:
    """Render instances into a uint16 label image; overlaps go to the higher score.

    Labels are numbered by decreasing score (1 = best), 0 is background. Instances left
    with no pixel after overlap resolution do not appear.
    """
    height, width = instances.image_size
    labels = np.zeros((height, width), dtype=np.uint16)
    if len(instances) == 0:
        return labels
    if len(instances) > np.iinfo(np.uint16).max:
        raise ValueError(f"{len(instances)} instances do not fit a uint16 label image")
    scores = instances.scores.detach().cpu().numpy() if instances.has("scores") else np.ones(len(instances))
    keep = scores >= score_threshold
    masks = instance_masks(instances, mask_threshold)[keep]
    order = np.argsort(-scores[keep], kind="stable")
    if len(order) == 0:
        return labels
    masks = masks[order]
    covered = masks.any(0)
    # Index of the first (best-scoring) mask covering each pixel.
    first = masks.argmax(0)
    labels[covered] = (first[covered] + 1).astype(np.uint16)
    # Renumber consecutively in case an instance lost all its pixels.
    present = np.unique(labels[covered])
    if len(present) != len(order):
        lookup = np.zeros(len(order) + 1, dtype=np.uint16)
        lookup[present] = np.arange(1, len(present) + 1, dtype=np.uint16)
        labels = lookup[labels]
    return labels


def mask_to_rle(mask: np.ndarray) -> dict:
    """COCO compressed RLE of one binary mask, with a JSON-ready ``counts`` string."""
    rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def label_image_to_annotations(labels: np.ndarray, category_id: int = 0) -> list[dict]:
    """detectron2 annotation dicts (RLE masks, XYWH boxes) for every object of a label image."""
    labels = np.asarray(labels)
    ids, boxes = label_boxes(labels.astype(np.int64, copy=False))
    annotations = []
    for label_id, (x0, y0, x1, y1) in zip(ids, boxes):
        annotations.append({
            "bbox": [float(x0), float(y0), float(x1 - x0), float(y1 - y0)],
            "bbox_mode": BoxMode.XYWH_ABS,
            "segmentation": mask_to_rle(labels == label_id),
            "category_id": category_id,
            "iscrowd": 0,
            "label_id": int(label_id),
        })
    return annotations
