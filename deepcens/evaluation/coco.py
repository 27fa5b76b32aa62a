"""COCO box / mask AP for cell datasets, built in memory (no cached ``*_coco_format.json``).

The ground truth COCO dict is made fresh from detectron2 dataset dicts (``annotations``) or
from label images (``label_file_name``) at every evaluation, so an edited dataset is never
scored against a stale conversion. Scoring runs through faster-coco-eval (default) or
pycocotools; AP values come from COCOeval's accumulated precision array at
``maxDets = TEST.DETECTIONS_PER_IMAGE`` (COCO's own summary uses 100, too few for cells).
"""
from __future__ import annotations

import collections
import contextlib
import copy
import io
import logging
import math
from typing import Sequence

import numpy as np
import pycocotools.mask as mask_util
from detectron2.structures import BoxMode
from scipy import ndimage

from deepcens.data.io import read_label
from deepcens.errors import DeepcensInputError
from deepcens.postprocess.instances import label_image_to_annotations, segmentation_to_rle

logger = logging.getLogger(__name__)

COCO_BACKENDS = ("faster_coco_eval", "pycocotools")
AREA_KEYS = {"small": "APs", "medium": "APm", "large": "APl"}


def ground_truth_annotations(record: dict) -> list[dict]:
    """COCO-style GT annotations of one dataset dict (``category_id`` contiguous, 0-based).

    Dicts with ``annotations`` use them (polygons / RLE, any ``bbox_mode``); dicts with a
    ``label_file_name`` get one object per label (class 0). Each returned annotation has a
    compressed RLE ``segmentation`` (bytes counts) or None, an XYWH ``bbox`` and an ``area``.
    """
    height, width = int(record["height"]), int(record["width"])
    where = record.get("file_name", str(record.get("image_id")))
    if "annotations" in record:
        result = []
        for annotation in record["annotations"]:
            rle = segmentation_to_rle(annotation.get("segmentation"), height, width, where)
            if "bbox" in annotation:
                mode = annotation.get("bbox_mode", BoxMode.XYWH_ABS)
                box = BoxMode.convert(list(annotation["bbox"]), mode, BoxMode.XYWH_ABS)
            elif rle is not None:
                box = mask_util.toBbox(rle).tolist()
            else:
                raise DeepcensInputError(where, "annotation without bbox or segmentation")
            area = float(mask_util.area(rle)) if rle is not None else float(box[2] * box[3])
            result.append({
                "category_id": int(annotation["category_id"]), "bbox": [float(v) for v in box],
                "segmentation": rle, "area": area, "iscrowd": int(annotation.get("iscrowd", 0)),
            })
        return result
    label_file = record.get("label_file_name")
    if not label_file:
        return []
    return label_annotations(read_label(label_file, (height, width)))


def label_annotations(labels: np.ndarray) -> list[dict]:
    """GT annotations (class 0, compressed RLE with bytes counts) of every object of a label image."""
    result = []
    for annotation in label_image_to_annotations(labels, category_id=0):
        rle = annotation["segmentation"]
        rle["counts"] = rle["counts"].encode("ascii")
        result.append({"category_id": 0, "bbox": annotation["bbox"], "segmentation": rle,
                       "area": annotation["area"], "iscrowd": 0})
    return result


def build_coco_dict(images: Sequence[dict], annotations: Sequence[Sequence[dict]], class_names: Sequence[str]) -> dict:
    """A COCO ground-truth dict from image entries (``id``, ``height``, ``width``) and their
    annotations (as from :func:`ground_truth_annotations`); category ids are contiguous + 1."""
    coco_annotations = []
    for image, image_annotations in zip(images, annotations):
        for annotation in image_annotations:
            entry = {
                "id": len(coco_annotations) + 1, "image_id": image["id"],
                "category_id": annotation["category_id"] + 1, "bbox": annotation["bbox"],
                "area": annotation["area"], "iscrowd": annotation["iscrowd"],
            }
            rle = annotation["segmentation"]
            if rle is not None:
                counts = rle["counts"]
                entry["segmentation"] = {"size": list(rle["size"]),
                                         "counts": counts.decode("ascii") if isinstance(counts, bytes) else counts}
            coco_annotations.append(entry)
    return {
        "info": {"description": "deepcens in-memory ground truth"},
        "images": [dict(image) for image in images],
        "annotations": coco_annotations,
        "categories": [{"id": i + 1, "name": name} for i, name in enumerate(class_names)],
    }


def _coco_api(backend: str):
    if backend == "faster_coco_eval":
        from faster_coco_eval.core.coco import COCO
        from faster_coco_eval.core.faster_eval_api import COCOeval_faster

        def make_eval(gt, dt, iou_type):
            return COCOeval_faster(gt, dt, iou_type, print_function=logger.debug)
        return COCO, make_eval
    if backend == "pycocotools":
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
        return COCO, COCOeval
    raise ValueError(f"unknown COCO backend {backend!r}; use one of {COCO_BACKENDS}")


def _mean_precision(values: np.ndarray) -> float:
    values = values[values > -1]
    return float(np.mean(values) * 100) if values.size else math.nan


def summarize_precision(precision: np.ndarray, iou_thresholds: np.ndarray, area_labels: Sequence[str],
                        max_dets_index: int, class_names: Sequence[str]) -> dict[str, float]:
    """AP, AP50, AP75, APs, APm, APl and ``AP-<class>`` (percent, nan where undefined) from
    COCOeval's ``eval['precision']`` (T x R x K x A x M)."""
    area_labels = list(area_labels)
    all_index = area_labels.index("all")
    p = precision[..., max_dets_index]
    result = {"AP": _mean_precision(p[:, :, :, all_index])}
    for threshold, key in ((0.5, "AP50"), (0.75, "AP75")):
        rows = np.flatnonzero(np.isclose(iou_thresholds, threshold))
        result[key] = _mean_precision(p[rows][:, :, :, all_index]) if rows.size else math.nan
    for label, key in AREA_KEYS.items():
        result[key] = _mean_precision(p[:, :, :, area_labels.index(label)]) if label in area_labels else math.nan
    for k, name in enumerate(class_names):
        result[f"AP-{name}"] = _mean_precision(p[:, :, k, all_index]) if k < p.shape[2] else math.nan
    return result


def empty_summary(class_names: Sequence[str], has_gt: Sequence[bool]) -> dict[str, float]:
    """The documented score of an empty prediction set: 0 wherever GT exists, nan elsewhere."""
    any_gt = any(has_gt)
    result = {key: 0.0 if any_gt else math.nan for key in ("AP", "AP50", "AP75", "APs", "APm", "APl")}
    for name, present in zip(class_names, has_gt):
        result[f"AP-{name}"] = 0.0 if present else math.nan
    return result


SPLIT_PAIRS = 1 << 22  # detection x GT pairs of one image above which it is scored as independent groups
GROUP_SIZE = 512  # objects per virtual image when an image is split


def _pairs_per_image(gt_dict: dict, results: Sequence[dict]) -> list[int]:
    gt_counts = collections.Counter(a["image_id"] for a in gt_dict["annotations"])
    dt_counts = collections.Counter(r["image_id"] for r in results)
    return [dt_counts[i] * gt_counts[i] for i in dt_counts]


def _entry_box(entry: dict) -> list[float]:
    """XYXY box around an entry's ``bbox`` and ``segmentation`` (RLE), whichever are present."""
    boxes = []
    if entry.get("bbox") is not None:
        x, y, w, h = entry["bbox"]
        boxes.append((x, y, x + w, y + h))
    segmentation = entry.get("segmentation")
    if isinstance(segmentation, dict):
        x, y, w, h = mask_util.toBbox(segmentation_to_rle(segmentation, *segmentation["size"])).tolist()
        boxes.append((x, y, x + w, y + h))
    if not boxes:
        return [0.0, 0.0, 0.0, 0.0]
    boxes = np.asarray(boxes)
    return [boxes[:, 0].min(), boxes[:, 1].min(), boxes[:, 2].max(), boxes[:, 3].max()]


def split_into_independent_images(gt_dict: dict, results: list[dict], max_dets: int,
                                  group_size: int | None = None) -> tuple[dict, list[dict]]:
    """The same COCO evaluation with every crowded image cut into groups of objects that cannot
    overlap (connected components of their boxes, packed into virtual images of about
    ``group_size`` objects), so that COCOeval's dense detection x GT IoU matrix stays small.

    COCOeval matches detections greedily in score order and only to overlapping GT, so the
    matches are those of the whole image. The ranking COCOeval would use (score, then image,
    then input order, with ``max_dets`` per image and class) is made explicit: the kept
    detections get strictly decreasing scores in that order, which yields the same precision
    and recall; AP values are identical (tests compare both ways).
    """
    group_size = group_size or GROUP_SIZE
    images = {image["id"]: image for image in gt_dict["images"]}
    order = {image_id: position for position, image_id in enumerate(sorted(images))}
    by_pair: dict[tuple, list[int]] = collections.defaultdict(list)
    for index, entry in enumerate(results):
        by_pair[(entry["image_id"], entry["category_id"])].append(index)
    ranked = []
    for (image_id, _), indices in by_pair.items():
        indices = sorted(indices, key=lambda i: -results[i]["score"])[:max_dets]  # stable, as COCOeval
        ranked += [(-results[i]["score"], order.get(image_id, len(order)), position, i)
                   for position, i in enumerate(indices)]
    ranked.sort()
    kept = [dict(results[item[-1]], score=1.0 - rank / len(ranked)) for rank, item in enumerate(ranked)]
    gt_counts = collections.Counter(a["image_id"] for a in gt_dict["annotations"])
    dt_counts = collections.Counter(r["image_id"] for r in kept)
    split_ids = {i for i in dt_counts if i in images and dt_counts[i] * gt_counts[i] > SPLIT_PAIRS}
    new_images = [dict(images[i]) for i in sorted(images) if i not in split_ids]
    annotations = [dict(a) for a in gt_dict["annotations"] if a["image_id"] not in split_ids]
    out_results = [r for r in kept if r["image_id"] not in split_ids]
    next_id = max(images) + 1
    for image_id in sorted(split_ids):
        height, width = images[image_id]["height"], images[image_id]["width"]
        members = ([("gt", a) for a in gt_dict["annotations"] if a["image_id"] == image_id]
                   + [("dt", r) for r in kept if r["image_id"] == image_id])
        canvas = np.zeros((height, width), dtype=bool)
        corners = []
        for _, entry in members:
            x0, y0, x1, y1 = _entry_box(entry)
            left, top = min(max(int(np.floor(x0)), 0), width - 1), min(max(int(np.floor(y0)), 0), height - 1)
            canvas[top:max(int(np.ceil(y1)), top + 1), left:max(int(np.ceil(x1)), left + 1)] = True
            corners.append((top, left))
        components, _ = ndimage.label(canvas)
        component = np.asarray([components[top, left] for top, left in corners])
        positions = np.argsort(component, kind="stable")
        sizes = np.bincount(component)
        first_of = np.r_[0, np.cumsum(sizes)[:-1]]  # position of each component's first member
        virtual = np.zeros(len(members), dtype=np.int64)
        virtual[positions] = (first_of[component[positions]] // group_size)
        for value in np.unique(virtual):
            new_images.append({"id": next_id + int(value), "height": height, "width": width})
        for (kind, entry), value in zip(members, virtual):
            moved = dict(entry, image_id=next_id + int(value))
            (annotations if kind == "gt" else out_results).append(moved)
        next_id += int(virtual.max()) + 1
    return dict(gt_dict, images=new_images, annotations=annotations), out_results


def evaluate_coco(gt_dict: dict, results: list[dict], iou_type: str, max_dets: int,
                  class_names: Sequence[str], backend: str = "faster_coco_eval") -> dict[str, float]:
    """COCO AP of ``results`` (detectron2 ``instances_to_coco_json`` entries with category ids
    already +1) on ``gt_dict`` for ``iou_type`` ``bbox`` or ``segm``, at ``max_dets`` per image."""
    if max_dets < 1:
        raise ValueError("TEST.DETECTIONS_PER_IMAGE must be >= 1")
    has_gt = [any(a["category_id"] == k + 1 for a in gt_dict["annotations"]) for k in range(len(class_names))]
    if not results:
        return empty_summary(class_names, has_gt)
    COCO, make_eval = _coco_api(backend)
    gt = COCO()
    gt.dataset = copy.deepcopy(gt_dict)
    gt.createIndex()
    results = copy.deepcopy(results)
    if any(count > SPLIT_PAIRS for count in _pairs_per_image(gt_dict, results)):
        gt.dataset, results = split_into_independent_images(gt.dataset, results, max_dets)
        gt.createIndex()
    if iou_type == "segm":
        for entry in results:
            entry.pop("bbox", None)  # mask area (not box area) decides the size range, as in detectron2
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress to stdout
        dt = gt.loadRes(results)
        evaluator = make_eval(gt, dt, iou_type)
        evaluator.params.maxDets = sorted({1, 10, int(max_dets)})
        evaluator.params.imgIds = sorted(image["id"] for image in gt.dataset["images"])
        evaluator.evaluate()
        evaluator.accumulate()
    params = evaluator.params
    return summarize_precision(
        np.asarray(evaluator.eval["precision"]), np.asarray(params.iouThrs), params.areaRngLbl,
        list(params.maxDets).index(int(max_dets)), class_names)
