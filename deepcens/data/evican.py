"""EVICAN2 (Schwendy et al. 2020) registered as detectron2 datasets, in the three DeepCeNS settings.

Layout under ``root`` (the published files, or the renamed short form; both are accepted)::

    annotations/instances_train2019.json         (or annotations_EVICAN2/instances_train2019_EVICAN2.json)
    annotations/instances_val2019.json
    annotations/instances_eval2019_{easy,medium,difficult}.json
    train2019/  val2019/  eval2019/               (or Images/EVICAN_{train,val,eval}2019/)

The EVICAN2 json holds polygon ``segmentation`` only; ``bbox`` (XYWH, from the polygon
extent) and ``area`` (rasterised pixel count, pycocotools) are derived here, as the DeepCeNS
paper does (sec. IV). Images without annotations of the setting's classes are dropped from
train and val (the paper discards 750 + 250 background images) and the counts are logged.

Registered names (:func:`register_evican`)::

    {prefix}_{train,val}_{cell,nucleus,cell_nucleus}
    {prefix}_eval_{easy,medium,difficult}_{cell,nucleus,cell_nucleus}

``evican`` (root ``$DEEPCENS_DATASETS/EVICAN``, default ``datasets/EVICAN``) and
``synthetic_evican`` (``$DEEPCENS_DATASETS/synthetic/evican``) are registered at import.
Loading is lazy: missing files raise :class:`DeepcensInputError` only when a dataset is used.
"""
from __future__ import annotations

import logging
import math
import os
from collections import Counter
from typing import Any

from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode
from pycocotools import mask as mask_util

from deepcens.data.io import read_json
from deepcens.errors import BAD_INPUT_POLICIES, DeepcensInputError, check_bad_input_policy

logger = logging.getLogger(__name__)

__all__ = [
    "SETTINGS", "SPLITS", "DIFFICULTIES", "register_evican", "register_evican_from_cfg",
    "load_evican_json", "find_evican_files", "evican_dataset_names", "check_segmentation",
]

#: setting name -> category names (lower case, as in the EVICAN2 json) in contiguous-id order
SETTINGS: dict[str, tuple[str, ...]] = {
    "cell": ("cell",),  # paper setting 1
    "nucleus": ("nucleus",),  # paper setting 2
    "cell_nucleus": ("cell", "nucleus"),  # paper setting 3
}
SPLITS = ("train", "val")
DIFFICULTIES = ("easy", "medium", "difficult")
POLICIES = BAD_INPUT_POLICIES

_ANNOTATION_DIRS = ("annotations", "annotations_EVICAN2", os.path.join("annotations", "EVICAN2"))
# registered name -> (root, policy): makes register_evican idempotent
_REGISTERED: dict[str, tuple[str, str]] = {}


def _split_stem(split: str) -> str:
    """``train`` -> ``train2019``, ``eval_easy`` -> ``eval2019_easy`` (the EVICAN2 naming)."""
    if split.startswith("eval_"):
        return "eval2019_" + split[len("eval_"):]
    return split + "2019"


def _image_folder_name(split: str) -> str:
    return ("eval" if split.startswith("eval_") else split) + "2019"


def find_evican_files(root: str, split: str) -> tuple[str, str]:
    """``(json_file, image_root)`` of one EVICAN2 split (``train``, ``val``, ``eval_easy``, ...).

    Raises :class:`DeepcensInputError` saying which files to put where when they are missing.
    """
    stem = _split_stem(split)
    json_names = (f"instances_{stem}.json", f"instances_{stem}_EVICAN2.json")
    json_candidates = [os.path.join(root, d, n) for d in _ANNOTATION_DIRS for n in json_names]
    json_file = next((p for p in json_candidates if os.path.isfile(p)), None)
    folder = _image_folder_name(split)
    image_candidates = [os.path.join(root, folder), os.path.join(root, "Images", f"EVICAN_{folder}"),
                        os.path.join(root, "images", f"EVICAN_{folder}"), os.path.join(root, f"EVICAN_{folder}")]
    image_root = next((p for p in image_candidates if os.path.isdir(p)), None)
    if json_file is None:
        raise DeepcensInputError(
            os.path.join(root, "annotations", json_names[0]),
            f"EVICAN2 annotation file not found: put {json_names[0]} (or the original {json_names[1]}) "
            f"into {os.path.join(root, 'annotations')}/ and the images into {os.path.join(root, folder)}/ "
            "(see datasets/README.md)")
    if image_root is None:
        raise DeepcensInputError(
            os.path.join(root, folder),
            f"EVICAN2 image folder not found: put the {folder} images into {os.path.join(root, folder)}/ "
            f"(or {os.path.join(root, 'Images', 'EVICAN_' + folder)}/), next to {json_file}")
    return json_file, image_root


class _Problems:
    """Bad-input bookkeeping: raise at the first problem (``fail``) or count and go on (``skip``)."""

    def __init__(self, path: str, policy: str):
        check_bad_input_policy(policy)
        self.path = path
        self.policy = policy
        self.counts: Counter = Counter()

    def report(self, kind: str, detail: str) -> None:
        if self.policy == "fail":
            raise DeepcensInputError(self.path, detail)
        self.counts[kind] += 1

    def log(self) -> None:
        if self.counts:
            summary = ", ".join(f"{n} {kind}" for kind, n in sorted(self.counts.items()))
            logger.warning(f"{self.path}: skipped bad entries (DATASETS.BAD_INPUT_POLICY=skip): {summary}")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _polygon_area(coords: list[float]) -> float:
    """Shoelace area of one flat ``[x0, y0, x1, y1, ...]`` polygon."""
    xs, ys = coords[0::2], coords[1::2]
    total = 0.0
    for i in range(len(xs)):
        j = (i + 1) % len(xs)
        total += xs[i] * ys[j] - xs[j] * ys[i]
    return abs(total) / 2.0


def check_segmentation(segmentation: Any, height: int, width: int) -> tuple[list | dict, list[float], float] | str:
    """Validated ``(segmentation, bbox XYWH, pixel area)`` or a string saying what is wrong."""
    if isinstance(segmentation, dict):  # RLE (not used by EVICAN2, accepted for COCO-style files)
        try:
            rle = segmentation
            if isinstance(rle.get("counts"), list):
                rle = mask_util.frPyObjects(rle, *rle["size"])
            area = float(mask_util.area(rle))
            bbox = [float(v) for v in mask_util.toBbox(rle)]
        except Exception as exc:  # pycocotools raises several types for bad RLE
            return f"unreadable RLE segmentation ({exc})"
        if area <= 0:
            return "RLE segmentation covers no pixel"
        return segmentation, bbox, area
    if not isinstance(segmentation, list) or not segmentation:
        return "segmentation is not a non-empty list of polygons"
    polygons = []
    for polygon in segmentation:
        if not isinstance(polygon, list) or not all(_is_number(v) for v in polygon):
            return "polygon is not a list of finite numbers"
        if len(polygon) % 2 or len(polygon) < 6:
            return f"degenerate polygon with {len(polygon) / 2:g} points (needs >= 3 x,y pairs)"
        if _polygon_area(polygon) <= 0:
            return "degenerate polygon with zero area"
        polygons.append([float(v) for v in polygon])
    rle = mask_util.merge(mask_util.frPyObjects(polygons, height, width))
    area = float(mask_util.area(rle))
    if area <= 0:
        return "polygon covers no pixel of the image"
    xs = [v for p in polygons for v in p[0::2]]
    ys = [v for p in polygons for v in p[1::2]]
    x0, y0 = max(min(xs), 0.0), max(min(ys), 0.0)
    x1, y1 = min(max(xs), float(width)), min(max(ys), float(height))
    if x1 <= x0 or y1 <= y0:
        return "polygon lies outside the image"
    return polygons, [x0, y0, x1 - x0, y1 - y0], area


def _is_id(value: Any) -> bool:
    """COCO ids are integers or strings (hashable scalars), never lists, dicts or booleans."""
    return isinstance(value, (int, str)) and not isinstance(value, bool)


def load_evican_json(
    json_file: str,
    image_root: str,
    setting: str = "cell_nucleus",
    drop_empty: bool = True,
    policy: str = "fail",
    check_files: bool = True,
    dataset_name: str | None = None,
) -> list[dict]:
    """Read an EVICAN2 json into detectron2 dataset dicts for one setting.

    Categories are matched by name (``Cell`` / ``Nucleus``, case-insensitive) and renumbered
    contiguously in :data:`SETTINGS` order; annotations of other classes are left out.
    ``drop_empty`` removes images with no annotation left (train/val). Bad entries raise
    :class:`DeepcensInputError` (``policy="fail"``) or are skipped and counted (``"skip"``).
    With ``dataset_name``, its metadata gets ``thing_dataset_id_to_contiguous_id`` (json id -> id).
    """
    if setting not in SETTINGS:
        raise ValueError(f"EVICAN setting must be one of {sorted(SETTINGS)}, got {setting!r}")
    problems = _Problems(json_file, policy)
    data = read_json(json_file)
    if not isinstance(data, dict):
        raise DeepcensInputError(json_file, "json top level is not an object")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise DeepcensInputError(json_file, f"missing or non-list key '{key}'")

    names: dict[Any, str] = {}
    for category in data["categories"]:
        if not isinstance(category, dict) or not _is_id(category.get("id")) or not isinstance(category.get("name"), str):
            raise DeepcensInputError(json_file, f"category entry without 'id' and 'name': {category!r}"[:200])
        names[category["id"]] = category["name"].strip().lower()
    wanted = SETTINGS[setting]
    dataset_ids = {}
    for contiguous, class_name in enumerate(wanted):
        ids = [cid for cid, name in names.items() if name == class_name]
        if not ids:
            raise DeepcensInputError(
                json_file, f"no category named '{class_name}' (categories: {sorted(set(names.values()))})")
        for cid in ids:
            dataset_ids[cid] = contiguous
    if dataset_name is not None:
        MetadataCatalog.get(dataset_name).set(thing_dataset_id_to_contiguous_id=dict(dataset_ids))

    records: dict[Any, dict] = {}
    for image in data["images"]:
        if not isinstance(image, dict):
            problems.report("bad image entries", f"image entry is not an object: {image!r}"[:200])
            continue
        missing = [k for k in ("id", "file_name", "height", "width") if k not in image]
        if missing:
            problems.report("bad image entries", f"image entry {image.get('id', '?')!r} misses keys {missing}"[:200])
            continue
        if not _is_id(image["id"]) or not isinstance(image["file_name"], str):
            problems.report("bad image entries", f"image entry has a non-scalar id or non-string file_name: {image!r}"[:200])
            continue
        if image["id"] in records:
            raise DeepcensInputError(json_file, f"duplicate image id {image['id']}")
        height, width = image["height"], image["width"]
        if not (isinstance(height, int) and isinstance(width, int) and height > 0 and width > 0):
            problems.report("bad image entries", f"image {image['id']} has invalid size {height}x{width}")
            continue
        file_name = os.path.join(image_root, image["file_name"])
        if check_files and not os.path.isfile(file_name):
            problems.report("missing image files", f"image {image['id']} file not found: {file_name}")
            continue
        records[image["id"]] = {"file_name": file_name, "image_id": image["id"], "height": height,
                                "width": width, "annotations": []}

    skipped_images = {image.get("id") for image in data["images"]
                      if isinstance(image, dict) and _is_id(image.get("id"))} - set(records)
    for index, ann in enumerate(data["annotations"]):
        label = f"annotation {ann.get('id', index) if isinstance(ann, dict) else index}"
        if not isinstance(ann, dict):
            problems.report("bad annotations", f"{label} is not an object")
            continue
        missing = [k for k in ("image_id", "category_id", "segmentation") if k not in ann]
        if missing:
            problems.report("bad annotations", f"{label} misses keys {missing}")
            continue
        if not (_is_id(ann["image_id"]) and _is_id(ann["category_id"])):
            problems.report("bad annotations", f"{label} has a non-scalar image_id or category_id")
            continue
        if ann["category_id"] not in names:
            problems.report("unknown category ids", f"{label} has unknown category_id {ann['category_id']!r}")
            continue
        record = records.get(ann["image_id"])
        if record is None:
            if ann["image_id"] not in skipped_images:  # annotations of skipped images go with them
                problems.report("annotations of missing images", f"{label} names missing image_id {ann['image_id']!r}")
            continue
        if ann["category_id"] not in dataset_ids:
            continue  # other class: filtered by the setting, not an error
        checked = check_segmentation(ann["segmentation"], record["height"], record["width"])
        if isinstance(checked, str):
            problems.report("degenerate segmentations", f"{label} (image {ann['image_id']}): {checked}")
            continue
        segmentation, bbox, area = checked
        record["annotations"].append({
            "bbox": bbox, "bbox_mode": BoxMode.XYWH_ABS, "segmentation": segmentation, "area": area,
            "category_id": dataset_ids[ann["category_id"]], "iscrowd": int(ann.get("iscrowd", 0) or 0),
        })
    problems.log()

    dicts = list(records.values())
    if drop_empty:
        kept = [r for r in dicts if r["annotations"]]
        logger.info(f"{json_file} [{setting}]: kept {len(kept)} of {len(dicts)} images, dropped "
                    f"{len(dicts) - len(kept)} without {'/'.join(wanted)} annotations")
        dicts = kept
    count = sum(len(r["annotations"]) for r in dicts)
    logger.info(f"{json_file} [{setting}]: {len(dicts)} images, {count} instances")
    return dicts


def evican_dataset_names(prefix: str) -> list[str]:
    """Every dataset name :func:`register_evican` registers for ``prefix``."""
    names = []
    for setting in SETTINGS:
        names += [f"{prefix}_{split}_{setting}" for split in SPLITS]
        names += [f"{prefix}_eval_{difficulty}_{setting}" for difficulty in DIFFICULTIES]
    return names


def _loader(name: str, root: str, split: str, setting: str, policy: str):
    def load() -> list[dict]:
        json_file, image_root = find_evican_files(root, split)
        return load_evican_json(json_file, image_root, setting, drop_empty=split in SPLITS, policy=policy,
                                dataset_name=name)
    return load


def register_evican(prefix: str, root: str, policy: str = "fail") -> list[str]:
    """Register the EVICAN2 splits under ``root`` as ``{prefix}_*`` datasets (lazy, idempotent).

    Calling again with the same ``(root, policy)`` does nothing; with another one the names are
    re-registered. Returns the registered names.
    """
    check_bad_input_policy(policy)
    root = os.path.normpath(root)
    names = []
    for setting, classes in SETTINGS.items():
        splits = [(split, f"{prefix}_{split}_{setting}", None) for split in SPLITS]
        splits += [(f"eval_{d}", f"{prefix}_eval_{d}_{setting}", d) for d in DIFFICULTIES]
        for split, name, difficulty in splits:
            names.append(name)
            if _REGISTERED.get(name) == (root, policy):
                continue
            if name in DatasetCatalog.list():
                DatasetCatalog.remove(name)
                MetadataCatalog.remove(name)
            DatasetCatalog.register(name, _loader(name, root, split, setting, policy))
            try:  # the files found now; else where they are expected (loading re-checks)
                json_file, image_root = find_evican_files(root, split)
            except DeepcensInputError:
                json_file = os.path.join(root, "annotations", f"instances_{_split_stem(split)}.json")
                image_root = os.path.join(root, _image_folder_name(split))
            MetadataCatalog.get(name).set(
                thing_classes=list(classes),
                evaluator_type="cell",
                difficulty=difficulty,
                setting=setting,
                split=split,
                root=root,
                # the raw EVICAN2 json: polygons only, both classes; evaluate from the dataset
                # dicts (bbox/area derived, setting-filtered), not from this file
                json_file=json_file,
                image_root=image_root,
            )
            _REGISTERED[name] = (root, policy)
    return names


def register_evican_from_cfg(cfg: CfgNode) -> list[str]:
    """Re-register ``evican`` and ``synthetic_evican`` under ``cfg.DATASETS.ROOT`` with its bad-input policy."""
    root = cfg.DATASETS.ROOT
    policy = cfg.DATASETS.BAD_INPUT_POLICY
    return (register_evican("evican", os.path.join(root, "EVICAN"), policy)
            + register_evican("synthetic_evican", os.path.join(root, "synthetic", "evican"), policy))


def _register_default() -> None:
    root = os.environ.get("DEEPCENS_DATASETS", "datasets")
    register_evican("evican", os.path.join(root, "EVICAN"))
    register_evican("synthetic_evican", os.path.join(root, "synthetic", "evican"))


_register_default()
