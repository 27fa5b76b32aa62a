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
from deepcens.postprocess.instances import compact_masks, instances_to_coco_results
from deepcens.predict.inputs import Page, Source
from deepcens.utils.atomic import atomic_save_json, atomic_write

RCNN_ARCHITECTURES = ("GeneralizedRCNN", "CompactMaskRCNN")  # meta-architectures with ROI_HEADS classes
CLASS_MAP_SUFFIX = ".classes.json"  # beside a label image: {"class_names": [...], "classes": {label: class}}


def class_names_for(cfg: CfgNode, given: str = "", dataset_name: str | None = None) -> list[str]:
    """Class names: ``--class-names``, else a registered dataset's ``thing_classes``, else generic."""
    from detectron2.data import MetadataCatalog

    if given:
        return [name.strip() for name in given.split(",") if name.strip()]
    num_classes = int(cfg.MODEL.ROI_HEADS.NUM_CLASSES) if cfg.MODEL.META_ARCHITECTURE in RCNN_ARCHITECTURES else 1
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
    best_overlap = np.zeros(int(labels.max()) + 1, dtype=np.int64)
    best_class = np.zeros(int(labels.max()) + 1, dtype=np.int64)
    for index, ((x0, y0, x1, y1), crop) in enumerate(compact_masks(instances, mask_threshold).items()):
        covered, counts = np.unique(labels[y0:y1, x0:x1][crop], return_counts=True)
        better = (covered > 0) & (counts > best_overlap[covered])  # the first instance wins ties
        best_overlap[covered[better]] = counts[better]
        best_class[covered[better]] = classes[index]
    return {int(label): int(best_class[label]) for label in ids}


class SourceWriter:
    """Writes the outputs of one source, page by page, and finishes them after its last page.

    ``save`` writes one file through the run folder (which refuses paths it may not write);
    state that spans pages (a stack's pages, a sequence's CTC labels) lives here.
    """

    def __init__(self, source: Source, output_dir: str, *, ctc_format: bool, overlays: bool,
                 class_names: Sequence[str], tracker=None):
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
        self.tracker = tracker if self.ctc else None  # links the CTC folder into tracks after the last page

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
        if self.tracker is not None:
            paths.append(self.tracks_csv_path())
        return paths

    def tracks_csv_path(self) -> str:
        """``<seq>_tracks.csv`` beside the ``<seq>_RES`` folder (one row per track and frame)."""
        return os.path.join(self.output_dir, *self.source.name_parts[:-1], self.source.name_parts[-1] + "_tracks.csv")

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
                      save: Callable[[str, Callable[[str], object]], str]) -> str | None:
        from deepcens.visualize import write_overlay

        if self.tracker is not None:
            return None  # drawn with track ids once the sequence is tracked (finish)
        return save(self.overlay_path(page), lambda target: write_overlay(target, image, instances, self.class_names))

    def finish(self, save: Callable[[str, Callable[[str], object]], str],
               image_of: Callable[[Page], np.ndarray] | None = None) -> None:
        """After the source's last page: a stack's multi-page labels, a sequence's res_track.txt
        (with a tracker: the folder linked into tracks, the track CSV and track-id overlays;
        ``image_of(page)`` gives the page's image for those overlays)."""
        if self._ctc is not None:
            save(os.path.join(self._ctc.res_dir, "res_track.txt"), lambda target: self._ctc.finish())
            if self.tracker is not None:
                from deepcens.tracking.folder import track_result_folder

                pages = {page.frame: page for page in self.source.pages}
                track_result_folder(
                    self._ctc.res_dir, self.tracker, csv_path=self.tracks_csv_path(), save=save,
                    image_of=(lambda frame: image_of(pages[frame])) if self.overlays and image_of else None,
                    overlay_path=lambda frame: self.overlay_path(pages[frame]))
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
        areas = compact_masks(instances, mask_threshold).areas()
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
    results = []
    for entry in instances_to_coco_results(instances, image_id, mask_threshold):
        cls = entry["category_id"]
        entry.update(file_name=file_name, category_id=cls + 1,
                     category_name=class_names[cls] if cls < len(class_names) else f"class{cls}")
        if frame is not None:
            entry["frame"] = int(frame)
        results.append(entry)
    return results
