"""What ``deepcens predict`` writes, one owner per kind of output.

- :class:`SourceWriter`: the outputs of one source (``labels/<name>.tif``, a stack's
  multi-page TIFF, a sequence's ``labels/<seq>/tTTT.tif`` or ``<seq>_RES`` CTC folder, the
  class maps of multi-class models, overlays); it knows every path it will write before the
  model runs (:meth:`SourceWriter.planned_paths`), so clashes are found first;
- :class:`SummaryTable`: ``summary.csv``, one row per page;
- :func:`coco_results`: ``coco_results.json`` entries (RLE masks, ``file_name`` so that
  ``deepcens evaluate --pred-coco`` matches them to a dataset's images).
"""
from __future__ import annotations

import csv
import os
from typing import Callable, Sequence

import numpy as np
from detectron2.config import CfgNode
from detectron2.structures import Instances

from deepcens.data.ctc_files import CTCResultWriter, frame_file_name
from deepcens.data.io import write_label_tiff
from deepcens.postprocess.instances import instance_masks, mask_to_rle
from deepcens.predict.inputs import Page, Source
from deepcens.utils.atomic import atomic_save_json, atomic_write

CLASS_MAP_SUFFIX = ".classes.json"  # beside a label image: {"class_names": [...], "classes": {label: class}}


def class_names_for(cfg: CfgNode, given: str = "", dataset_name: str | None = None) -> list[str]:
    """Class names: ``--class-names``, else a registered dataset's ``thing_classes``, else generic."""
    from detectron2.data import MetadataCatalog

    if given:
        return [name.strip() for name in given.split(",") if name.strip()]
    num_classes = int(cfg.MODEL.ROI_HEADS.NUM_CLASSES) if cfg.MODEL.META_ARCHITECTURE == "GeneralizedRCNN" else 1
    candidates = [dataset_name] if dataset_name else []
    candidates += list(cfg.DATASETS.TEST) + list(cfg.DATASETS.TRAIN)
    for name in candidates:
        if name and name in MetadataCatalog.list():
            names = MetadataCatalog.get(name).get("thing_classes", None)
            if names and (len(names) == num_classes or dataset_name):
                return list(names)
    return ["cell"] if num_classes == 1 else [f"class{i}" for i in range(num_classes)]


def label_classes(labels: np.ndarray, instances: Instances, mask_threshold: float) -> dict[int, int]:
    """label -> class of the instance that drew it (the instance covering most of the label)."""
    ids = np.unique(labels)
    ids = ids[ids > 0]
    if not len(ids):
        return {}
    classes = (instances.pred_classes.numpy() if instances.has("pred_classes")
               else np.zeros(len(instances), dtype=np.int64))
    overlap = np.zeros((len(instances), int(labels.max()) + 1), dtype=np.int64)
    for index, mask in enumerate(instance_masks(instances, mask_threshold)):
        overlap[index] = np.bincount(labels[mask].astype(np.int64), minlength=overlap.shape[1])
    return {int(label): int(classes[int(np.argmax(overlap[:, label]))]) for label in ids}


class SourceWriter:
    """Writes the outputs of one source, page by page, and finishes them after its last page.

    ``save`` writes one file through the run folder (which refuses paths it may not write);
    state that spans pages (a stack's pages, a sequence's CTC labels) lives here.
    """

    def __init__(self, source: Source, output_dir: str, *, ctc_format: bool, overlays: bool,
                 class_names: Sequence[str]):
        self.source = source
        self.output_dir = output_dir
        self.ctc = ctc_format and source.kind in ("sequence", "stack")
        self.overlays = overlays
        self.class_names = list(class_names)
        self.multi_class = len(self.class_names) > 1
        self._stack_pages: list[np.ndarray] = []
        self._stack_classes: list[dict[str, int]] = []
        res_dir = os.path.join(output_dir, *source.name_parts[:-1], source.name_parts[-1] + "_RES")
        self._ctc = CTCResultWriter(res_dir, max(p.digits for p in source.pages)) if self.ctc else None

    # ---- paths -------------------------------------------------------------------------------
    def label_path(self, page: Page) -> str:
        """Where the labels of ``page`` go (a stack's pages share its one multi-page TIFF)."""
        if self._ctc is not None:
            return os.path.join(self._ctc.res_dir, frame_file_name("res", page.frame, self._ctc.digits))
        if self.source.kind == "sequence":
            stem = os.path.splitext(os.path.basename(page.file_name))[0]
            return os.path.join(self.output_dir, "labels", *self.source.name_parts, stem + ".tif")
        return os.path.join(self.output_dir, "labels", self.source.name + ".tif")

    def overlay_path(self, page: Page) -> str:
        if self.source.kind == "sequence":
            stem = os.path.splitext(os.path.basename(page.file_name))[0]
            return os.path.join(self.output_dir, "overlays", *self.source.name_parts, stem + ".png")
        if self.source.kind == "stack":
            return os.path.join(self.output_dir, "overlays", self.source.name, f"{page.frame:0{page.digits}d}.png")
        return os.path.join(self.output_dir, "overlays", self.source.name + ".png")

    def planned_paths(self) -> list[str]:
        """Every file this writer will write, known before the model runs."""
        paths: list[str] = []
        for page in self.source.pages:
            label = self.label_path(page)
            if label not in paths:
                paths.append(label)
                if self.multi_class and self._ctc is None:
                    paths.append(class_map_path(label))
            if self.overlays:
                paths.append(self.overlay_path(page))
        if self._ctc is not None:
            paths.append(os.path.join(self._ctc.res_dir, "res_track.txt"))
        return paths

    # ---- writing -----------------------------------------------------------------------------
    def write_page(self, page: Page, labels: np.ndarray, instances: Instances, mask_threshold: float,
                   save: Callable[[str, Callable[[str], object]], str]) -> str:
        """Write (or keep, for a stack) one page's labels; returns the label path the page is in."""
        path = self.label_path(page)
        classes = label_classes(labels, instances, mask_threshold) if self.multi_class else {}
        if self._ctc is not None:
            save(path, lambda target: self._ctc.add(page.frame, labels))
        elif self.source.kind == "stack":
            self._stack_pages.append(labels)
            self._stack_classes.append({str(k): v for k, v in classes.items()})
        else:
            save(path, lambda target: write_label_tiff(target, labels))
            if self.multi_class:
                save(class_map_path(path), lambda target: atomic_save_json(
                    target, {"class_names": self.class_names, "classes": {str(k): v for k, v in classes.items()}}))
        return path

    def write_overlay(self, page: Page, image: np.ndarray, instances: Instances,
                      save: Callable[[str, Callable[[str], object]], str]) -> str:
        from deepcens.visualize import write_overlay

        return save(self.overlay_path(page), lambda target: write_overlay(target, image, instances, self.class_names))

    def finish(self, save: Callable[[str, Callable[[str], object]], str]) -> None:
        """After the source's last page: a stack's multi-page labels, a sequence's res_track.txt."""
        if self._ctc is not None:
            save(os.path.join(self._ctc.res_dir, "res_track.txt"), lambda target: self._ctc.finish())
        elif self.source.kind == "stack" and self._stack_pages:
            path = self.label_path(self.source.pages[0])
            save(path, lambda target: write_label_tiff(target, np.stack(self._stack_pages)))
            if self.multi_class:
                save(class_map_path(path), lambda target: atomic_save_json(
                    target, {"class_names": self.class_names, "pages": self._stack_classes}))


def class_map_path(label_path: str) -> str:
    """``labels/x.tif`` -> ``labels/x.classes.json``."""
    return os.path.splitext(label_path)[0] + CLASS_MAP_SUFFIX


class SummaryTable:
    """Per-image rows of the run's summary CSV: instances and mean area (pixels) per class."""

    def __init__(self, class_names: Sequence[str]):
        self.class_names = list(class_names)
        self.rows: list[dict] = []

    def add(self, page: Page, output: str, instances: Instances, mask_threshold: float) -> dict:
        height, width = instances.image_size
        areas = instance_masks(instances, mask_threshold).reshape(len(instances), height * width).sum(1)
        classes = instances.pred_classes.numpy() if instances.has("pred_classes") else np.zeros(len(instances), int)
        row = {"input": page.file_name, "frame": "" if page.frame is None else page.frame, "output": output,
               "height": height, "width": width, "instances": len(instances),
               "mean_area": round(float(areas.mean()), 2) if len(areas) else 0.0}
        for cls, name in enumerate(self.class_names):
            selected = areas[classes == cls]
            row[f"{name}_count"] = int(len(selected))
            row[f"{name}_mean_area"] = round(float(selected.mean()), 2) if len(selected) else 0.0
        self.rows.append(row)
        return row

    def write(self, path: str) -> str:
        columns = ["input", "frame", "output", "height", "width", "instances", "mean_area"]
        for name in self.class_names:
            columns += [f"{name}_count", f"{name}_mean_area"]
        with atomic_write(path, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=columns)
            writer.writeheader()
            writer.writerows(self.rows)
        return path


def coco_results(instances: Instances, image_id: int, file_name: str, frame: int | None,
                 class_names: Sequence[str], mask_threshold: float) -> list[dict]:
    """COCO result dicts (RLE segmentation, XYWH box, score) for one image.

    ``category_id`` is the contiguous class id + 1 (COCO ids start at 1); the class name is kept
    too. ``file_name`` names the image, so results match a dataset's images by file.
    """
    masks = instance_masks(instances, mask_threshold)
    boxes = instances.pred_boxes.tensor.numpy() if instances.has("pred_boxes") else np.zeros((len(instances), 4))
    scores = instances.scores.numpy() if instances.has("scores") else np.ones(len(instances))
    classes = instances.pred_classes.numpy() if instances.has("pred_classes") else np.zeros(len(instances), int)
    results = []
    for mask, (x0, y0, x1, y1), score, cls in zip(masks, boxes, scores, classes):
        entry = {"image_id": image_id, "file_name": file_name, "category_id": int(cls) + 1,
                 "category_name": class_names[cls] if cls < len(class_names) else f"class{cls}",
                 "bbox": [float(x0), float(y0), float(x1 - x0), float(y1 - y0)], "score": float(score),
                 "segmentation": mask_to_rle(mask)}
        if frame is not None:
            entry["frame"] = int(frame)
        results.append(entry)
    return results
