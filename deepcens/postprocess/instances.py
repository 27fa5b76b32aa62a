"""Conversions between instance label images, detectron2 ``Instances``, COCO results and RLE.

The one place where masks become label images and back, where segmentations (polygons /
RLE) become masks, and where ``Instances`` become COCO results and back: the decoders, the
evaluator, the prediction writers, the report and the datasets all call these.

Masks travel as :class:`deepcens.structures.CroppedMasks` (box crops), so every conversion
costs in proportion to the objects' pixels; dense ``(N, H, W)`` masks (as detectron2's own
R-CNN gives) are accepted everywhere and cropped once.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pycocotools.mask as mask_util
import torch
from detectron2.structures import Boxes, BoxMode, Instances

from deepcens.errors import DeepcensInputError
from deepcens.structures.masks import CroppedMasks


def label_boxes(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ids present in ``labels`` (sorted, > 0) and their XYXY boxes (pixel-edge coordinates)."""
    masks, ids = CroppedMasks.from_label_image(labels)
    return ids, masks.boxes.astype(np.float32)


def label_image_to_instances(
    labels: np.ndarray,
    scores: np.ndarray | None = None,
    classes: np.ndarray | int = 0,
    min_area: int = 0,
) -> Instances:
    """Turn an instance label image (0 = background) into ``Instances`` with cropped masks.

    ``scores`` and ``classes`` are per label id present (in ascending id order); the default
    score is 1 and the default class 0. Objects smaller than ``min_area`` pixels are dropped.
    """
    masks, ids = CroppedMasks.from_label_image(labels)
    if scores is None:
        scores = np.ones(len(ids), dtype=np.float32)
    scores = np.asarray(scores, dtype=np.float32)
    if len(scores) != len(ids):
        raise ValueError(f"{len(scores)} scores for {len(ids)} objects")
    classes = np.array(np.broadcast_to(np.asarray(classes, dtype=np.int64), (len(ids),)))
    if min_area > 1 and len(ids):
        keep = masks.areas() >= min_area
        masks, scores, classes = masks[keep], scores[keep], classes[keep]
    result = Instances(masks.image_size)
    result.pred_masks = masks
    result.pred_boxes = Boxes(torch.from_numpy(masks.boxes.astype(np.float32)))
    result.scores = torch.from_numpy(np.ascontiguousarray(scores))
    result.pred_classes = torch.from_numpy(classes)
    return result


def compact_masks(instances: Instances, mask_threshold: float = 0.5) -> CroppedMasks:
    """The masks of ``instances`` as :class:`CroppedMasks`: as they are when already cropped,
    cropped from dense ``pred_masks`` (bool, or soft ones kept where ``>= mask_threshold``),
    else filled predicted boxes."""
    if instances.has("pred_masks"):
        masks = instances.pred_masks
        if isinstance(masks, CroppedMasks):
            return masks
        return CroppedMasks.from_dense(masks, mask_threshold)
    boxes = instances.pred_boxes.tensor.detach().cpu().numpy() if len(instances) else np.zeros((0, 4))
    return CroppedMasks.from_boxes(boxes, tuple(instances.image_size))


def instance_masks(instances: Instances, mask_threshold: float = 0.5) -> np.ndarray:
    """Binary ``(N, H, W)`` masks of predicted instances: the dense view, N x H x W bytes; use
    :func:`compact_masks` wherever the objects' pixels are enough."""
    return compact_masks(instances, mask_threshold).dense()


def _scores(instances: Instances) -> np.ndarray:
    if instances.has("scores"):
        return instances.scores.detach().cpu().numpy()
    return np.ones(len(instances), dtype=np.float32)


def _classes(instances: Instances) -> np.ndarray:
    if instances.has("pred_classes"):
        return instances.pred_classes.detach().cpu().numpy()
    return np.zeros(len(instances), dtype=np.int64)


def instances_to_label_image(
    instances: Instances, score_threshold: float = 0.0, mask_threshold: float = 0.5
) -> np.ndarray:
    """Render instances into a uint16 label image; overlaps go to the higher score.

    Labels are numbered by decreasing score (1 = best), 0 is background. Instances left
    with no pixel after overlap resolution do not appear (the numbers stay consecutive).
    """
    height, width = instances.image_size
    labels = np.zeros((height, width), dtype=np.uint16)
    if len(instances) == 0:
        return labels
    scores = _scores(instances)
    chosen = np.flatnonzero(scores >= score_threshold)
    if len(chosen) > np.iinfo(np.uint16).max:
        raise ValueError(f"{len(chosen)} instances do not fit a uint16 label image")
    order = chosen[np.argsort(-scores[chosen], kind="stable")]
    masks = compact_masks(instances, mask_threshold)
    next_label = 1
    for index in order:  # best first; each takes only pixels no better instance holds
        taken = masks.paint(labels, [next_label], [index])
        if taken[0]:
            next_label += 1
    return labels


def mask_to_rle(mask: np.ndarray) -> dict:
    """COCO compressed RLE of one full-size binary mask, with a JSON-ready ``counts`` string."""
    rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def _json_rle(rle: dict) -> dict:
    counts = rle["counts"]
    return {"size": [int(v) for v in rle["size"]], "counts": counts.decode("ascii") if isinstance(counts, bytes) else counts}


def segmentation_to_rle(segmentation, height: int, width: int, where: str | None = None) -> dict | None:
    """Compressed RLE (bytes counts) of a COCO / detectron2 ``segmentation``: polygons,
    uncompressed or compressed RLE; None when it holds no usable polygon."""
    if segmentation is None:
        return None
    if isinstance(segmentation, list):
        polygons = [p for p in segmentation if len(p) >= 6 and len(p) % 2 == 0]
        if not polygons:
            return None
        return mask_util.merge(mask_util.frPyObjects(polygons, height, width))
    if isinstance(segmentation, dict):
        if "counts" not in segmentation or "size" not in segmentation:
            raise DeepcensInputError(where, "RLE segmentation without 'counts' and 'size'")
        if tuple(int(v) for v in segmentation["size"]) != (height, width):
            raise DeepcensInputError(
                where, f"mask RLE size {tuple(segmentation['size'])} differs from image size {(height, width)}")
        if isinstance(segmentation["counts"], list):
            return mask_util.frPyObjects(segmentation, height, width)
        rle = dict(segmentation)
        if isinstance(rle["counts"], str):
            rle["counts"] = rle["counts"].encode("ascii")
        return rle
    raise DeepcensInputError(where, f"unsupported segmentation type {type(segmentation).__name__}")


def segmentations_to_masks(segmentations: Sequence, height: int, width: int, where: str | None = None) -> CroppedMasks:
    """:class:`CroppedMasks` of COCO segmentations (a missing / empty one gives an empty mask)."""
    empty = {"size": [height, width], "counts": [height * width]}
    rles = [segmentation_to_rle(s, height, width, where) or empty for s in segmentations]
    try:
        return CroppedMasks.from_rles(rles, (height, width))
    except ValueError as exc:
        raise DeepcensInputError(where, str(exc)) from None


def instances_to_coco_results(instances: Instances, image_id, mask_threshold: float = 0.5) -> list[dict]:
    """COCO result dicts of one image: ``image_id``, contiguous ``category_id``, XYWH ``bbox``,
    ``score`` and (when the instances carry masks) an RLE ``segmentation`` with string counts,
    encoded from the crops (as detectron2's ``instances_to_coco_json`` gives them)."""
    count = len(instances)
    if count == 0:
        return []
    if instances.has("pred_boxes"):
        boxes = instances.pred_boxes.tensor.detach().cpu().numpy()
    else:
        boxes = compact_masks(instances, mask_threshold).tight_boxes()
    boxes = BoxMode.convert(np.asarray(boxes, dtype=np.float64), BoxMode.XYXY_ABS, BoxMode.XYWH_ABS).tolist()
    scores, classes = _scores(instances).tolist(), _classes(instances).tolist()
    rles = compact_masks(instances, mask_threshold).to_rles() if instances.has("pred_masks") else None
    results = []
    for index in range(count):
        entry = {"image_id": image_id, "category_id": int(classes[index]), "bbox": boxes[index],
                 "score": float(scores[index])}
        if rles is not None:
            entry["segmentation"] = _json_rle(rles[index])
        results.append(entry)
    return results


def coco_results_to_instances(entries: Sequence[dict], height: int, width: int,
                              dataset_to_contiguous: dict | None = None, where: str | None = None) -> Instances:
    """``Instances`` of one image from COCO result dicts (RLE ``segmentation`` and/or XYWH
    ``bbox``, ``score``, ``category_id``); category ids map through ``dataset_to_contiguous``
    when given. Masks are decoded into crops; entries without any segmentation give box-only
    instances."""
    entries = list(entries)
    classes = []
    for entry in entries:
        category = int(entry.get("category_id", 0))
        if dataset_to_contiguous is not None:
            if category not in dataset_to_contiguous:
                raise DeepcensInputError(where, f"unknown category_id {category}")
            category = dataset_to_contiguous[category]
        classes.append(category)
    has_masks = bool(entries) and all(e.get("segmentation") is not None for e in entries)
    masks = segmentations_to_masks([e["segmentation"] for e in entries], height, width, where) if has_masks else None
    boxes = []
    for index, entry in enumerate(entries):
        if "bbox" in entry:
            boxes.append(BoxMode.convert(list(entry["bbox"]), BoxMode.XYWH_ABS, BoxMode.XYXY_ABS))
        elif masks is not None:
            boxes.append(masks[index].tight_boxes()[0].tolist())
        else:
            raise DeepcensInputError(where, "a result has neither bbox nor segmentation")
    result = Instances((height, width))
    result.pred_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
    result.scores = torch.tensor([float(e.get("score", 1.0)) for e in entries], dtype=torch.float32)
    result.pred_classes = torch.tensor(classes, dtype=torch.int64)
    if masks is not None or not entries:
        result.pred_masks = masks if masks is not None else CroppedMasks([], np.zeros((0, 4)), (height, width))
    return result


def label_image_to_annotations(labels: np.ndarray, category_id: int = 0) -> list[dict]:
    """detectron2 annotation dicts (RLE masks with string counts, XYWH boxes, areas) for every
    object of a label image, in ascending label order."""
    masks, ids = CroppedMasks.from_label_image(labels)
    annotations = []
    for label_id, (x0, y0, x1, y1), rle, area in zip(ids, masks.boxes, masks.to_rles(), masks.areas()):
        annotations.append({
            "bbox": [float(x0), float(y0), float(x1 - x0), float(y1 - y0)],
            "bbox_mode": BoxMode.XYWH_ABS,
            "segmentation": _json_rle(rle),
            "area": float(area),
            "category_id": category_id,
            "iscrowd": 0,
            "label_id": int(label_id),
        })
    return annotations
