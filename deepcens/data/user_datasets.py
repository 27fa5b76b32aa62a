"""The user's own data as detectron2 datasets: folders of label images and COCO json files.

Both kinds work for every method: each dataset dict carries ``annotations`` (RLE masks, XYWH
boxes: what the R-CNN mapper reads) and, for label folders, ``label_file_name`` (the instance
label image the dense mapper turns into its training target).

**Label folders** (:func:`register_label_folder`): an image folder and a label folder (they
may be the same folder). An image ``<stem>.<ext>`` pairs with the label image whose stem is
``<stem>`` or ``<stem>`` plus one of :data:`LABEL_SUFFIXES` (``a.png`` <-> ``a.tif``,
``a_label.tif``, ``a_labels.png``, ``a_masks.tif``, ``a_seg.tif``), and a Cell Tracking
Challenge frame ``tNNN.tif`` with ``man_segNNN.tif``. Images may be 8/16-bit or float, 1-4
channels, TIFF/PNG/JPEG/BMP; labels are 8/16/32-bit TIFF or PNG (0 = background). Pairs that
do not match (no label, several labels for one image, a label without image, a label whose
size differs from its image, a file that cannot be read) follow ``BAD_INPUT_POLICY``:
``fail`` raises one :class:`DeepcensInputError` naming the file, ``skip`` leaves the pair
out, warns for each and logs the counts.

**COCO files** (:func:`register_coco_json`): instances json (polygon or RLE ``segmentation``,
``bbox`` derived when missing) read by detectron2's ``load_coco_json``; categories become
contiguous ids in the order of their json ids. Missing image files and unusable
segmentations follow the same policy.

From a config (:func:`register_user_datasets_from_cfg`, run by every tool and every launched
process): ``DATASETS.FOLDERS`` lists ``(name, images_dir, labels_dir)`` and
``DATASETS.COCO`` lists ``(name, json_file, image_root)``; ``DATASETS.TRAIN`` / ``TEST`` /
``VAL`` then name them. Relative paths are taken from the working folder. Loading is lazy:
nothing is read until a dataset is used.
"""
from __future__ import annotations

import logging
import os
import re
from collections import Counter, defaultdict
from typing import Sequence

from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog, MetadataCatalog

from deepcens.data.io import IMAGE_SUFFIXES, read_image, read_json, read_label
from deepcens.errors import DeepcensInputError

logger = logging.getLogger(__name__)

__all__ = [
    "LABEL_SUFFIXES", "pair_label_folder", "load_label_folder", "register_label_folder",
    "load_coco_instances", "register_coco_json", "register_user_datasets_from_cfg",
]

#: label-file stem suffixes accepted after the image stem (cellpose, stardist, NeurIPS CellSeg use these)
LABEL_SUFFIXES = ("_label", "_labels", "_masks", "_seg")
LABEL_FILE_SUFFIXES = (".tif", ".tiff", ".png")
POLICIES = ("fail", "skip")
_CTC_FRAME = re.compile(r"^t(\d+)$")
_CTC_SEG = re.compile(r"^man_seg(\d+)$")

# registered name -> arguments: re-registering with the same arguments does nothing
_REGISTERED: dict[str, tuple] = {}


class _BadPairs:
    """``fail``: raise the first problem; ``skip``: warn, count by kind, go on."""

    def __init__(self, where: str, policy: str):
        if policy not in POLICIES:
            raise ValueError(f"bad-input policy must be one of {POLICIES}, got {policy!r}")
        self.where = where
        self.policy = policy
        self.counts: Counter = Counter()

    def report(self, kind: str, error: DeepcensInputError) -> None:
        if self.policy == "fail":
            raise error
        self.counts[kind] += 1
        logger.warning(f"skipping (DATASETS.BAD_INPUT_POLICY=skip): {error}")

    def log(self) -> None:
        if self.counts:
            summary = ", ".join(f"{n} {kind}" for kind, n in sorted(self.counts.items()))
            logger.warning(f"{self.where}: skipped {summary}")


def _stem(path: str) -> str:
    return os.path.splitext(os.path.basename(path))[0]


def _label_key(stem: str) -> str | None:
    """Image key a label stem belongs to (``a_masks`` -> ``a``, ``man_seg007`` -> ``#7``);
    None when the stem has no label suffix (then it pairs by the same stem)."""
    match = _CTC_SEG.match(stem)
    if match:
        return f"#{int(match.group(1))}"
    for suffix in LABEL_SUFFIXES:
        if stem.endswith(suffix) and len(stem) > len(suffix):
            return stem[: -len(suffix)]
    return None


def _image_key(stem: str) -> str:
    match = _CTC_FRAME.match(stem)
    return f"#{int(match.group(1))}" if match else stem


def _list_files(folder: str, suffixes: tuple[str, ...]) -> list[str]:
    if not os.path.isdir(folder):
        raise DeepcensInputError(folder, "folder not found")
    return [os.path.join(folder, n) for n in sorted(os.listdir(folder))
            if n.lower().endswith(suffixes) and os.path.isfile(os.path.join(folder, n))]


def pair_label_folder(images_dir: str, labels_dir: str, policy: str = "fail") -> list[tuple[str, str]]:
    """``(image, label)`` path pairs of two folders by the naming rules of the module docstring.

    In one shared folder, files with a label suffix (or ``man_seg``) are the labels. Problems
    (no label, several candidates, a label without image) follow ``policy``.
    """
    problems = _BadPairs(images_dir, policy)
    same = os.path.normpath(images_dir) == os.path.normpath(labels_dir)
    label_files = _list_files(labels_dir, LABEL_FILE_SUFFIXES)
    image_files = _list_files(images_dir, IMAGE_SUFFIXES)
    if same:
        label_files = [p for p in label_files if _label_key(_stem(p)) is not None]
        image_files = [p for p in image_files if _label_key(_stem(p)) is None]
    if not image_files:
        raise DeepcensInputError(images_dir, f"no image files ({', '.join(IMAGE_SUFFIXES)}) in the image folder")

    images_by_key: dict[str, list[str]] = defaultdict(list)
    for path in image_files:
        images_by_key[_image_key(_stem(path))].append(path)
    by_suffix: dict[str, list[str]] = defaultdict(list)
    by_stem: dict[str, list[str]] = defaultdict(list)
    for path in label_files:
        stem = _stem(path)
        key = _label_key(stem)
        if key is not None:
            by_suffix[key].append(path)
        if not same:
            by_stem[stem].append(path)

    pairs, used = [], set()
    for key, images in sorted(images_by_key.items(), key=lambda kv: kv[1][0]):
        if len(images) > 1:
            problems.report("ambiguous images", DeepcensInputError(
                images[0], f"several images share the stem {_stem(images[0])!r}: "
                f"{', '.join(os.path.basename(p) for p in images)}"))
            used.update(by_suffix.get(key, []) + by_stem.get(_stem(images[0]), []))
            continue
        image = images[0]
        candidates = by_stem.get(_stem(image), []) + [p for p in by_suffix.get(key, []) if p not in by_stem.get(_stem(image), [])]
        used.update(candidates)
        if not candidates:
            problems.report("images without label", DeepcensInputError(
                image, f"no label image in {labels_dir} (expected {_stem(image)}.tif, or "
                f"{_stem(image)}{{{','.join(LABEL_SUFFIXES)}}}.tif/.png, or man_segNNN.tif for tNNN)"))
            continue
        if len(candidates) > 1:
            problems.report("ambiguous labels", DeepcensInputError(
                image, f"several label images match: {', '.join(os.path.basename(p) for p in candidates)}"))
            continue
        pairs.append((image, candidates[0]))
    for path in label_files:
        if path not in used:
            problems.report("labels without image", DeepcensInputError(
                path, f"label image has no image in {images_dir}"))
    problems.log()
    return pairs


def load_label_folder(images_dir: str, labels_dir: str, policy: str = "fail",
                      dataset_name: str | None = None) -> list[dict]:
    """Dataset dicts of the image / label pairs of two folders (see the module docstring).

    Each dict: ``file_name``, ``image_id`` (0, 1, ... in file-name order), ``height``, ``width``,
    ``label_file_name``, ``annotations`` (one per label id: RLE ``segmentation``, XYWH
    ``bbox``, ``category_id`` 0) and ``dataset_name``. Every file is read once here, so a
    size mismatch or an unreadable file is found before training starts.
    """
    from deepcens.postprocess.instances import label_image_to_annotations

    pairs = pair_label_folder(images_dir, labels_dir, policy)
    problems = _BadPairs(images_dir, policy)
    dicts = []
    for image_path, label_path in pairs:
        try:
            height, width = read_image(image_path).shape[:2]
            labels = read_label(label_path, (height, width))
        except DeepcensInputError as error:
            problems.report("unreadable or mismatched pairs", error)
            continue
        dicts.append({
            "file_name": image_path, "image_id": len(dicts), "height": int(height), "width": int(width),
            "label_file_name": label_path, "annotations": label_image_to_annotations(labels, category_id=0),
            "dataset_name": dataset_name,
        })
    problems.log()
    if not dicts:
        raise DeepcensInputError(images_dir, "no usable image / label pair")
    count = sum(len(d["annotations"]) for d in dicts)
    logger.info(f"{images_dir} + {labels_dir}: {len(dicts)} images, {count} instances")
    return dicts


def _replace_registration(name: str, key: tuple) -> bool:
    """True when ``name`` must be (re-)registered; refuses names of built-in datasets."""
    if _REGISTERED.get(name) == key:
        return False
    if name in DatasetCatalog.list():
        if name not in _REGISTERED:
            raise DeepcensInputError(None, f"dataset name {name!r} is already taken by a built-in dataset; choose another")
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    return True


def register_label_folder(name: str, images_dir: str, labels_dir: str, policy: str = "fail",
                          class_name: str = "cell") -> str:
    """Register the image / label pairs of two folders as dataset ``name`` (lazy, idempotent).

    ``name`` can then go into ``DATASETS.TRAIN`` / ``TEST`` of any method. One class
    (``class_name``); ``policy`` is ``fail`` or ``skip`` (see the module docstring).
    """
    if policy not in POLICIES:
        raise ValueError(f"bad-input policy must be one of {POLICIES}, got {policy!r}")
    images_dir, labels_dir = os.path.normpath(images_dir), os.path.normpath(labels_dir)
    if _replace_registration(name, ("folder", images_dir, labels_dir, policy, class_name)):
        DatasetCatalog.register(name, lambda: load_label_folder(images_dir, labels_dir, policy, name))
        MetadataCatalog.get(name).set(thing_classes=[class_name], evaluator_type="cell",
                                      images_dir=images_dir, labels_dir=labels_dir)
        _REGISTERED[name] = ("folder", images_dir, labels_dir, policy, class_name)
    return name


def load_coco_instances(json_file: str, image_root: str, policy: str = "fail",
                        dataset_name: str | None = None) -> list[dict]:
    """Dataset dicts of a COCO instances json through detectron2's ``load_coco_json``, checked.

    Missing image files and unusable segmentations (degenerate polygons, broken RLE) follow
    ``policy``; a missing ``bbox`` is derived from the segmentation.
    """
    from detectron2.data.datasets.coco import load_coco_json

    from deepcens.data.evican import check_segmentation

    data = read_json(json_file)
    if not isinstance(data, dict) or not all(isinstance(data.get(k), list) for k in ("images", "annotations", "categories")):
        raise DeepcensInputError(json_file, "not a COCO instances file (needs 'images', 'annotations' and 'categories' lists)")
    if not data["categories"]:
        raise DeepcensInputError(json_file, "no categories")
    del data
    try:
        dicts = load_coco_json(json_file, image_root, dataset_name)
    except DeepcensInputError:
        raise
    except Exception as exc:  # pycocotools / detectron2 raise many types on malformed entries
        raise DeepcensInputError(json_file, f"cannot read COCO instances ({type(exc).__name__}: {exc})") from None
    problems = _BadPairs(json_file, policy)
    kept = []
    for record in dicts:
        if not os.path.isfile(record["file_name"]):
            problems.report("missing image files", DeepcensInputError(record["file_name"], f"image file not found (listed in {json_file})"))
            continue
        annotations = []
        for ann in record.get("annotations", []):
            if "segmentation" in ann:
                checked = check_segmentation(ann["segmentation"], record["height"], record["width"])
                if isinstance(checked, str):
                    problems.report("unusable segmentations", DeepcensInputError(
                        json_file, f"image {record['image_id']}: {checked}"))
                    continue
                ann["segmentation"], bbox, ann["area"] = checked
                ann.setdefault("bbox", bbox)
            elif "bbox" not in ann:
                problems.report("annotations without bbox or segmentation", DeepcensInputError(
                    json_file, f"image {record['image_id']}: annotation without bbox or segmentation"))
                continue
            annotations.append(ann)
        record["annotations"] = annotations
        record["dataset_name"] = dataset_name
        kept.append(record)
    problems.log()
    if not kept:
        raise DeepcensInputError(json_file, "no usable image")
    return kept


def register_coco_json(name: str, json_file: str, image_root: str, policy: str = "fail") -> str:
    """Register a COCO instances json (images under ``image_root``) as dataset ``name`` (lazy, idempotent).

    The class names (``thing_classes``) are set from the json's categories when it is loaded.
    """
    if policy not in POLICIES:
        raise ValueError(f"bad-input policy must be one of {POLICIES}, got {policy!r}")
    json_file, image_root = os.path.normpath(json_file), os.path.normpath(image_root)
    key = ("coco", json_file, image_root, policy)
    if _replace_registration(name, key):
        DatasetCatalog.register(name, lambda: load_coco_instances(json_file, image_root, policy, name))
        MetadataCatalog.get(name).set(evaluator_type="cell", json_file=json_file, image_root=image_root)
        _REGISTERED[name] = key
    return name


def _entries(cfg_value: Sequence, key: str, fields: str) -> list[tuple[str, str, str]]:
    entries = []
    for entry in cfg_value:
        if (not isinstance(entry, (list, tuple)) or len(entry) != 3
                or not all(isinstance(v, str) and v for v in entry)):
            raise DeepcensInputError(None, f"{key} entry {entry!r} is not a list of three strings ({fields})")
        entries.append(tuple(entry))
    names = [e[0] for e in entries]
    if len(set(names)) != len(names):
        raise DeepcensInputError(None, f"{key} names a dataset twice: {names}")
    return entries


def register_user_datasets_from_cfg(cfg: CfgNode) -> list[str]:
    """Register ``DATASETS.FOLDERS`` and ``DATASETS.COCO`` with ``DATASETS.BAD_INPUT_POLICY``; returns the names."""
    policy = cfg.DATASETS.BAD_INPUT_POLICY
    names = [register_label_folder(name, images, labels, policy)
             for name, images, labels in _entries(cfg.DATASETS.FOLDERS, "DATASETS.FOLDERS", "name, images_dir, labels_dir")]
    names += [register_coco_json(name, json_file, image_root, policy)
              for name, json_file, image_root in _entries(cfg.DATASETS.COCO, "DATASETS.COCO", "name, json_file, image_root")]
    return names
