"""Run a trained model over microscopy images and write label images (``deepcens predict``).

    tools/predict.py --config-file CFG --input PATH [PATH ...] --output DIR [options] [KEY VALUE ...]

Inputs are image files (8/16-bit, float, 1-4 channels), folders, glob patterns, multi-page
TIFF stacks and Cell Tracking Challenge sequence folders (``tTTT.tif`` frames). Every
method goes through one path: the config's test mapper (``INPUT.MAPPER``) builds the model
input, the model returns ``Instances``, and the writers below turn them into

- ``labels/<name>.tif``: uint16 label image of the input's height x width (0 background,
  1 = highest score; stacks give one multi-page TIFF, sequences ``labels/<seq>/tTTT.tif``);
- ``<seq>_RES/maskTTT.tif`` + ``res_track.txt`` with ``--ctc-format`` (labels unique over the
  sequence, every object its own one-frame track);
- ``overlays/<name>.png`` with ``--overlays``; ``coco_results.json`` with ``--coco-json``;
- ``summary.csv``: one row per image (instances and mean area per class).

R-CNN models run images larger than ``--tile-size`` in overlapping tiles whose instances are
merged by mask overlap; dense (U-Net) models tile inside their meta-architecture
(``MODEL.DENSE.SLIDING_WINDOW``, which ``--tile-size`` sets). All files are written atomically.
"""
from __future__ import annotations

import argparse
import csv
import glob
import io
import logging
import os
import re
import sys
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import numpy as np
import tifffile
import torch
from detectron2.config import CfgNode
from detectron2.structures import Boxes, Instances

from deepcens.data.io import IMAGE_SUFFIXES, iter_image_files, read_image, read_stack
from deepcens.errors import DeepcensInputError, exit_2_on_input_error
from deepcens.modeling.meta_arch.dense import tile_starts
from deepcens.postprocess.instances import instance_masks, instances_to_label_image, mask_to_rle
from deepcens.utils.atomic import atomic_save_bytes, atomic_save_json, atomic_write

logger = logging.getLogger(__name__)

CTC_FRAME = re.compile(r"^t(\d+)\.tiff?$", re.IGNORECASE)
GLOB_CHARS = re.compile(r"[*?\[]")


# ---- inputs ----------------------------------------------------------------------------------
@dataclass
class Page:
    """One 2D image to predict: a file, a page of a stack or a frame of a sequence."""

    file_name: str
    index: int | None = None  # page of a stack; None for a plain file
    frame: int | None = None  # frame number (sequences, stacks)
    digits: int = 3  # zero-padding of the frame number in CTC names


@dataclass
class Source:
    """One input as the user gave it, written as one label output."""

    kind: str  # "image" | "stack" | "sequence"
    path: str
    pages: list[Page] = field(default_factory=list)
    name_parts: tuple[str, ...] = ()  # unique output name, most specific part last

    @property
    def name(self) -> str:
        return "_".join(self.name_parts)


def parse_frames(text: str | None) -> slice | None:
    """``"START:STOP"`` (either may be empty) -> a slice over frame numbers / page indices."""
    if not text:
        return None
    match = re.fullmatch(r"\s*(\d*)\s*:\s*(\d*)\s*", text)
    if not match:
        raise DeepcensInputError(None, f"--frames {text!r} is not START:STOP (e.g. 0:3)")
    start, stop = (int(v) if v else None for v in match.groups())
    return slice(start, stop)


def _in_range(value: int, frames: slice | None) -> bool:
    if frames is None:
        return True
    return (frames.start is None or value >= frames.start) and (frames.stop is None or value < frames.stop)


def _tiff_page_count(path: str) -> int:
    """Number of images in a TIFF (1 = a single 2D image with 1-4 channels).

    Shapes are read as :func:`deepcens.data.io.read_stack` reads them (a trailing axis of at
    most 4 is channels), except that a leading sample / channel axis of at most 4 (planar RGB,
    ImageJ ``CYX``) is one image, as :func:`deepcens.data.io.read_image` reads it.
    """
    try:
        with tifffile.TiffFile(path) as handle:
            series = handle.series[0]
            axes, shape = series.axes, tuple(series.shape)
    except Exception as exc:  # tifffile raises many types for broken files
        raise DeepcensInputError(path, f"cannot decode TIFF ({type(exc).__name__}: {exc})") from None
    if len(shape) <= 2:
        return 1
    if len(shape) == 3 and (shape[-1] <= 4 < shape[0] or (axes[0] in "SC" and shape[0] <= 4)):
        return 1
    return int(shape[0])


def _file_source(path: str, frames: slice | None) -> Source:
    if not path.lower().endswith(IMAGE_SUFFIXES):
        raise DeepcensInputError(path, f"not an image file (expected one of {', '.join(IMAGE_SUFFIXES)})")
    if path.lower().endswith((".tif", ".tiff")) and os.path.getsize(path) > 0 and _tiff_page_count(path) > 1:
        count = _tiff_page_count(path)
        pages = [Page(path, index=i, frame=i, digits=max(3, len(str(count - 1))))
                 for i in range(count) if _in_range(i, frames)]
        if not pages:
            raise DeepcensInputError(path, f"no page of the {count}-page stack is in --frames")
        return Source("stack", path, pages)
    return Source("image", path, [Page(path)])


def _sequence_frames(folder: str) -> list[Page] | None:
    """CTC frames ``tTTT.tif`` of a folder holding nothing but them, else None."""
    files = list(iter_image_files(folder))
    matches = [CTC_FRAME.match(os.path.basename(f)) for f in files]
    if not files or not all(matches):
        return None
    return sorted((Page(f, frame=int(m.group(1)), digits=len(m.group(1))) for f, m in zip(files, matches)),
                  key=lambda page: page.frame)


def collect_inputs(inputs: Sequence[str], frames: str | None = None) -> list[Source]:
    """Expand files, folders, globs, stacks and CTC sequence folders into named sources.

    Names are the file stems (the folder name for sequences), prefixed by as many parent
    folders as needed to make them unique (``set1_raw``, ``set2_raw``).
    """
    frame_range = parse_frames(frames)
    sources: list[Source] = []
    for given in inputs:
        paths = [given]
        if not os.path.exists(given) and GLOB_CHARS.search(given):
            paths = sorted(glob.glob(given))
            if not paths:
                raise DeepcensInputError(given, "no file matches this pattern")
        for path in paths:
            if os.path.isdir(path):
                pages = _sequence_frames(path)
                if pages is not None:
                    pages = [p for p in pages if _in_range(p.frame, frame_range)]
                    if not pages:
                        raise DeepcensInputError(path, "no frame of the sequence is in --frames")
                    sources.append(Source("sequence", path, pages))
                    continue
                files = list(iter_image_files(path))
                if not files:
                    raise DeepcensInputError(path, "folder holds no image file")
                sources.extend(_file_source(f, frame_range) for f in files)
            elif os.path.isfile(path):
                sources.append(_file_source(path, frame_range))
            else:
                raise DeepcensInputError(path, "file not found")
    _assign_names(sources)
    return sources


def _assign_names(sources: list[Source]) -> None:
    def parts(source: Source) -> list[str]:
        path = os.path.abspath(source.path).rstrip(os.sep)
        stem = os.path.basename(path) if source.kind == "sequence" else os.path.splitext(os.path.basename(path))[0]
        return [p for p in os.path.dirname(path).split(os.sep) if p] + [stem]

    all_parts = [parts(s) for s in sources]
    seen: set[str] = set()
    for source, components in zip(sources, all_parts):
        if os.path.abspath(source.path) in seen:
            raise DeepcensInputError(source.path, "given more than once")
        seen.add(os.path.abspath(source.path))
    depths = [1] * len(sources)
    while True:  # lengthen only the names that collide
        names = [tuple(p[-d:]) for p, d in zip(all_parts, depths)]
        colliding = [i for i, n in enumerate(names) if names.count(n) > 1 and depths[i] < len(all_parts[i])]
        if not colliding:
            break
        for i in colliding:
            depths[i] += 1
    for source, name in zip(sources, names):
        source.name_parts = name


class PageReader:
    """Reads pages as raw ``(H, W, C)`` arrays, keeping the last stack in memory."""

    def __init__(self) -> None:
        self._stack_path: str | None = None
        self._stack: np.ndarray | None = None

    def __call__(self, page: Page) -> np.ndarray:
        if page.index is None:
            return read_image(page.file_name)
        if self._stack_path != page.file_name:
            self._stack, self._stack_path = read_stack(page.file_name), page.file_name
        image = self._stack[page.index]
        if image.ndim == 2:
            image = image[:, :, None]
        if image.ndim != 3 or image.shape[2] > 4:
            raise DeepcensInputError(page.file_name, f"stack page has unsupported shape {image.shape}")
        if image.dtype.kind == "f" and not np.isfinite(image).all():
            raise DeepcensInputError(page.file_name, f"page {page.index} contains NaN or infinite pixels")
        return image


def sequence_intensity_range(source: Source, reader: PageReader) -> tuple[float, float]:
    """(min, max) raw intensity over the pages of a stack or sequence, as CTC dataset dicts carry."""
    low, high = np.inf, -np.inf
    for page in source.pages:
        image = reader(page)
        low, high = min(low, float(image.min())), max(high, float(image.max()))
    return low, high


# ---- tiled R-CNN inference -------------------------------------------------------------------


@dataclass
class _Piece:
    box: list[int]  # x0, y0, x1, y1 (global, exclusive end)
    mask: np.ndarray  # bool crop of the box
    score: float
    cls: int
    truncated: bool  # touches a tile border inside the image


def merge_tiled_instances(parts: Sequence[tuple[Instances, int, int]], image_size: tuple[int, int],
                          overlap_threshold: float = 0.5, mask_threshold: float = 0.5) -> Instances:
    """Merge instances predicted on overlapping tiles into one ``Instances`` of ``image_size``.

    ``parts`` are ``(instances_in_tile_coordinates, top, left)``. Instances cut by an inner tile
    border are "truncated". Greedily, complete instances first and by score: a candidate whose
    mask overlaps an accepted one of the same class by ``overlap_threshold`` of the smaller
    mask is dropped (the same object seen twice), except that two truncated pieces are
    joined (an object larger than the tile overlap, cut in every tile).
    """
    height, width = image_size
    pieces: list[_Piece] = []
    for instances, top, left in parts:
        if len(instances) == 0:
            continue
        tile_h, tile_w = instances.image_size
        masks = instance_masks(instances, mask_threshold)
        scores = instances.scores.cpu().numpy() if instances.has("scores") else np.ones(len(instances))
        classes = (instances.pred_classes.cpu().numpy() if instances.has("pred_classes")
                   else np.zeros(len(instances), dtype=np.int64))
        for mask, score, cls in zip(masks, scores, classes):
            ys, xs = np.nonzero(mask)
            if len(ys) == 0:
                continue
            y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
            truncated = ((y0 == 0 and top > 0) or (x0 == 0 and left > 0)
                         or (y1 == tile_h and top + tile_h < height) or (x1 == tile_w and left + tile_w < width))
            pieces.append(_Piece([int(x0 + left), int(y0 + top), int(x1 + left), int(y1 + top)],
                                 mask[y0:y1, x0:x1].copy(), float(score), int(cls), bool(truncated)))
    pieces.sort(key=lambda p: (p.truncated, -p.score))
    kept: list[_Piece] = []
    kept_boxes = np.zeros((len(pieces), 4), dtype=np.int64)  # kept boxes, vectorised overlap pre-check
    kept_classes = np.zeros(len(pieces), dtype=np.int64)
    for piece in pieces:
        merged_into = None
        count = len(kept)
        boxes = kept_boxes[:count]
        overlapping = np.nonzero((kept_classes[:count] == piece.cls)
                                 & (boxes[:, 0] < piece.box[2]) & (boxes[:, 2] > piece.box[0])
                                 & (boxes[:, 1] < piece.box[3]) & (boxes[:, 3] > piece.box[1]))[0]
        for other_index in overlapping:
            other = kept[other_index]
            ix0, iy0 = max(piece.box[0], other.box[0]), max(piece.box[1], other.box[1])
            ix1, iy1 = min(piece.box[2], other.box[2]), min(piece.box[3], other.box[3])
            if ix0 >= ix1 or iy0 >= iy1:
                continue
            a = piece.mask[iy0 - piece.box[1]:iy1 - piece.box[1], ix0 - piece.box[0]:ix1 - piece.box[0]]
            b = other.mask[iy0 - other.box[1]:iy1 - other.box[1], ix0 - other.box[0]:ix1 - other.box[0]]
            inter = int(np.logical_and(a, b).sum())
            if inter >= overlap_threshold * min(int(piece.mask.sum()), int(other.mask.sum())):
                merged_into = int(other_index)
                break
        if merged_into is None:
            kept_boxes[len(kept)], kept_classes[len(kept)] = piece.box, piece.cls
            kept.append(piece)
        elif piece.truncated and kept[merged_into].truncated:
            _join(kept[merged_into], piece)
            kept_boxes[merged_into] = kept[merged_into].box
    result = Instances((height, width))
    masks = np.zeros((len(kept), height, width), dtype=bool)
    for index, piece in enumerate(kept):
        x0, y0, x1, y1 = piece.box
        masks[index, y0:y1, x0:x1] = piece.mask
    result.pred_masks = torch.from_numpy(masks)
    result.pred_boxes = Boxes(torch.tensor([p.box for p in kept], dtype=torch.float32).reshape(-1, 4))
    result.scores = torch.tensor([p.score for p in kept], dtype=torch.float32)
    result.pred_classes = torch.tensor([p.cls for p in kept], dtype=torch.int64)
    return result


def _join(target: _Piece, piece: _Piece) -> None:
    """Union ``piece`` into ``target`` (box, mask, best score)."""
    box = [min(target.box[0], piece.box[0]), min(target.box[1], piece.box[1]),
           max(target.box[2], piece.box[2]), max(target.box[3], piece.box[3])]
    mask = np.zeros((box[3] - box[1], box[2] - box[0]), dtype=bool)
    for p in (target, piece):
        mask[p.box[1] - box[1]:p.box[3] - box[1], p.box[0] - box[0]:p.box[2] - box[0]] |= p.mask
    target.box, target.mask, target.score = box, mask, max(target.score, piece.score)


# ---- the predictor ---------------------------------------------------------------------------
class Predictor:
    """Builds the model of a config (with its weights) and predicts raw images of any size.

    The config's test mapper turns each image into the model input, so R-CNN and dense
    methods share this code; R-CNN images larger than ``tile_size`` are tiled.
    """

    def __init__(self, cfg: CfgNode, tile_size: int = 0, tile_overlap: float = 0.25, dataset_name: str | None = None):
        from detectron2.modeling import META_ARCH_REGISTRY, build_model

        from deepcens.data.mappers import build_mapper
        from deepcens.engine.checkpoint import DeepcensCheckpointer

        if not 0.0 <= tile_overlap < 1.0:
            raise DeepcensInputError(None, f"--tile-overlap must be in [0, 1), got {tile_overlap}")
        self.is_dense = hasattr(META_ARCH_REGISTRY.get(cfg.MODEL.META_ARCHITECTURE), "predict_probabilities")
        if self.is_dense and tile_size > 0:
            cfg = cfg.clone()
            cfg.defrost()
            cfg.MODEL.DENSE.SLIDING_WINDOW = int(tile_size)  # the meta-architecture tiles itself
            cfg.MODEL.DENSE.SLIDING_OVERLAP = float(tile_overlap)
            cfg.freeze()
        self.cfg = cfg
        self.tile_size = 0 if self.is_dense else int(tile_size)
        self.tile_overlap = float(tile_overlap)
        self.dataset_name = dataset_name
        self.model = build_model(cfg)
        self.model.eval()
        weights = cfg.MODEL.WEIGHTS
        if weights:
            if "://" not in weights and not os.path.isfile(weights):
                raise DeepcensInputError(weights, "MODEL.WEIGHTS file not found")
            DeepcensCheckpointer(self.model, allow_unsafe=cfg.ALLOW_UNSAFE_CHECKPOINTS).load(weights)
            self.random_weights = False
        else:
            logger.warning("MODEL.WEIGHTS is empty: predicting with randomly initialised weights")
            self.random_weights = True
        self.mapper = build_mapper(cfg, is_train=False)

    def _record(self, image: np.ndarray, file_name: str, extra: dict | None) -> dict:
        record = {"file_name": file_name, "image_id": file_name, "height": int(image.shape[0]),
                  "width": int(image.shape[1]), "image": image}
        if self.dataset_name:
            record["dataset_name"] = self.dataset_name
        record.update(extra or {})
        return record

    @torch.no_grad()
    def _run(self, records: list[dict], batch_size: int) -> list[Instances]:
        results = []
        for start in range(0, len(records), batch_size):
            inputs = [self.mapper(r) for r in records[start:start + batch_size]]
            results.extend(out["instances"].to("cpu") for out in self.model(inputs))
        return results

    def __call__(self, images: Sequence[np.ndarray], file_names: Sequence[str], batch_size: int = 1,
                 extra: dict | None = None) -> list[Instances]:
        """Instances (on the CPU, in each image's own size) for raw ``(H, W, C)`` images."""
        results: list[Instances | None] = [None] * len(images)
        whole = []
        for index, (image, name) in enumerate(zip(images, file_names)):
            height, width = image.shape[:2]
            if self.tile_size and max(height, width) > self.tile_size:
                results[index] = self._tiled(image, name, batch_size, extra)
            else:
                whole.append(index)
        outputs = self._run([self._record(images[i], file_names[i], extra) for i in whole], batch_size)
        for index, instances in zip(whole, outputs):
            results[index] = instances
        return results  # type: ignore[return-value]

    def _tiled(self, image: np.ndarray, name: str, batch_size: int, extra: dict | None) -> Instances:
        height, width = image.shape[:2]
        tile = self.tile_size
        stride = max(int(tile * (1.0 - self.tile_overlap)), 1)
        offsets = [(top, left) for top in tile_starts(height, tile, stride) for left in tile_starts(width, tile, stride)]
        records = [self._record(np.ascontiguousarray(image[t:t + tile, l:l + tile]), name, extra) for t, l in offsets]
        outputs = self._run(records, batch_size)
        return merge_tiled_instances([(inst, t, l) for inst, (t, l) in zip(outputs, offsets)], (height, width),
                                     mask_threshold=self.cfg.TEST.MASK_THRESHOLD)


# ---- writers ---------------------------------------------------------------------------------
def write_label_tiff(path: str, labels: np.ndarray) -> None:
    """Uncompressed uint16 TIFF (2D, or a (Z, H, W) stack), written atomically."""
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, np.ascontiguousarray(labels.astype(np.uint16)), photometric="minisblack")
    atomic_save_bytes(path, buffer.getvalue())


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


class SummaryTable:
    """Per-image rows of the run's summary CSV: instances and mean area (pixels) per class."""

    def __init__(self, class_names: Sequence[str]):
        self.class_names = list(class_names)
        self.rows: list[dict] = []

    def add(self, source: Source, page: Page, output: str, instances: Instances, mask_threshold: float) -> dict:
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

    def write(self, path: str) -> None:
        columns = ["input", "frame", "output", "height", "width", "instances", "mean_area"]
        for name in self.class_names:
            columns += [f"{name}_count", f"{name}_mean_area"]
        with atomic_write(path, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=columns)
            writer.writeheader()
            writer.writerows(self.rows)


def coco_results(instances: Instances, image_id: int, file_name: str, frame: int | None,
                 class_names: Sequence[str], mask_threshold: float) -> list[dict]:
    """COCO result dicts (RLE segmentation, XYWH box, score) for one image.

    ``category_id`` is the contiguous class id + 1 (COCO ids start at 1); the class name is kept too.
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


def _threshold(instances: Instances, score_threshold: float) -> Instances:
    if len(instances) == 0 or not instances.has("scores"):
        return instances
    return instances[instances.scores >= score_threshold]


def _batched_pages(sources: list[Source], batch_size: int) -> Iterator[list[tuple[Source, Page]]]:
    batch: list[tuple[Source, Page]] = []
    for source in sources:
        for page in source.pages:
            batch.append((source, page))
            if len(batch) == batch_size:
                yield batch
                batch = []
    if batch:
        yield batch


def predict(cfg: CfgNode, inputs: Sequence[str], output_dir: str, *, batch_size: int = 1,
            score_threshold: float = 0.5, overlays: bool = False, coco_json: bool = False, ctc_format: bool = False,
            frames: str | None = None, tile_size: int = 0, tile_overlap: float = 0.25, class_names: str = "",
            dataset_name: str | None = None, progress: bool | None = None) -> dict:
    """Predict every input and write labels / overlays / COCO json / summary CSV under ``output_dir``.

    ``score_threshold`` applies to label images, overlays and the CSV; the COCO json keeps every
    detection (AP needs the low-score ones). Returns counts and the paths written.
    """
    from tqdm import tqdm

    from deepcens.visualize import write_overlay

    if batch_size < 1:
        raise DeepcensInputError(None, f"--batch-size must be >= 1, got {batch_size}")
    from deepcens import predict_volumes

    sources = collect_inputs(inputs, frames)
    predictor = Predictor(cfg, tile_size, tile_overlap, dataset_name)
    names = class_names_for(cfg, class_names, dataset_name)
    mask_threshold = float(cfg.TEST.MASK_THRESHOLD)
    reader = PageReader()
    summary = SummaryTable(names)
    coco: list[dict] = []
    written: list[str] = []
    with_context = predict_volumes.needs_context(predictor)
    volume_sources = ([s for s in sources if predict_volumes.is_volume_source(s, _tiff_page_count)]
                      if predict_volumes.decodes_volumes(predictor) else [])
    if volume_sources:  # 3D stacks: one 3D label TIFF per volume
        written.extend(predict_volumes.predict_volume_sources(predictor, volume_sources, output_dir, ctc_format,
                                                              summary, _write_page, _finish_source))
        sources = [s for s in sources if all(s is not v for v in volume_sources)]
    ranges = {}
    for source in sources:
        if source.kind in ("sequence", "stack"):
            ranges[id(source)] = sequence_intensity_range(source, reader)
    stacks: dict[int, list[np.ndarray]] = {}
    ctc_tracks: dict[int, list[tuple[int, int]]] = {}
    ctc_next_label: dict[int, int] = {}
    total = sum(len(s.pages) for s in sources)
    image_id = 0
    with tqdm(total=total, desc="predict", unit="img", disable=(None if progress is None else not progress)) as bar:
        for batch in _batched_pages(sources, batch_size):
            images = [reader(page) for _, page in batch]
            file_names = [page.file_name if page.index is None else f"{page.file_name}[{page.index}]"
                          for _, page in batch]
            # One model call per batch; intensity ranges differ per source, so group by source.
            results: list[Instances] = []
            start = 0
            while start < len(batch):
                stop = start
                while stop < len(batch) and batch[stop][0] is batch[start][0]:
                    stop += 1
                source = batch[start][0]
                extra = {"intensity_range": ranges[id(source)]} if id(source) in ranges else None
                if with_context:  # neighbouring pages of the same source, one image at a time
                    for k in range(start, stop):
                        context = predict_volumes.page_context(source.pages, source.pages.index(batch[k][1]), reader)
                        results.extend(predictor([images[k]], [file_names[k]], 1, dict(extra or {}, context_images=context)))
                else:
                    results.extend(predictor(images[start:stop], file_names[start:stop], batch_size, extra))
                start = stop
            for (source, page), image, file_name, all_instances in zip(batch, images, file_names, results):
                if coco_json:
                    coco.extend(coco_results(all_instances, image_id, file_name, page.frame, names, mask_threshold))
                instances = _threshold(all_instances, score_threshold)
                labels = instances_to_label_image(instances, mask_threshold=mask_threshold)
                out = _write_page(source, page, labels, output_dir, ctc_format, stacks, ctc_tracks, ctc_next_label)
                if out:
                    written.append(out)
                summary.add(source, page, out or os.path.join(output_dir, "labels", source.name + ".tif"),
                            instances, mask_threshold)
                if overlays:
                    suffix = "" if page.frame is None else f"_{page.frame:0{page.digits}d}"
                    path = os.path.join(output_dir, "overlays", f"{source.name}{suffix}.png")
                    written.append(write_overlay(path, image, instances, names))
                if page is source.pages[-1]:
                    written.extend(_finish_source(source, output_dir, ctc_format, stacks, ctc_tracks))
                image_id += 1
                bar.update(1)
    summary_path = os.path.join(output_dir, "summary.csv")
    summary.write(summary_path)
    written.append(summary_path)
    if coco_json:
        coco_path = os.path.join(output_dir, "coco_results.json")
        atomic_save_json(coco_path, coco, indent=None)
        written.append(coco_path)
    return {"images": total, "sources": len(sources), "instances": int(sum(r["instances"] for r in summary.rows)),
            "random_weights": predictor.random_weights, "outputs": written, "output_dir": output_dir}


def _ctc_dir(source: Source, output_dir: str) -> str:
    return os.path.join(output_dir, *source.name_parts[:-1], source.name_parts[-1] + "_RES")


def _write_page(source: Source, page: Page, labels: np.ndarray, output_dir: str, ctc_format: bool,
                stacks: dict, ctc_tracks: dict, ctc_next_label: dict) -> str | None:
    """Write one page's labels (or keep a stack page for later); return the path written, if any."""
    if ctc_format and source.kind in ("sequence", "stack"):
        # Unique labels over the sequence; every object becomes a one-frame track (no tracking).
        offset = ctc_next_label.get(id(source), 1) - 1
        count = int(labels.max())
        if offset + count > np.iinfo(np.uint16).max:
            raise DeepcensInputError(source.path, "more than 65535 objects in the sequence: CTC labels overflow uint16")
        unique = np.where(labels > 0, labels.astype(np.int64) + offset, 0).astype(np.uint16)
        ctc_next_label[id(source)] = offset + count + 1
        ctc_tracks.setdefault(id(source), []).extend((offset + k, page.frame) for k in range(1, count + 1))
        path = os.path.join(_ctc_dir(source, output_dir), f"mask{page.frame:0{page.digits}d}.tif")
        write_label_tiff(path, unique)
        return path
    if source.kind == "stack":
        stacks.setdefault(id(source), []).append(labels)
        return None
    if source.kind == "sequence":
        path = os.path.join(output_dir, "labels", *source.name_parts,
                            os.path.splitext(os.path.basename(page.file_name))[0] + ".tif")
    else:
        path = os.path.join(output_dir, "labels", source.name + ".tif")
    write_label_tiff(path, labels)
    return path


def _finish_source(source: Source, output_dir: str, ctc_format: bool, stacks: dict, ctc_tracks: dict) -> list[str]:
    """After a source's last page: write a stack's multi-page labels or a sequence's res_track.txt."""
    if ctc_format and source.kind in ("sequence", "stack"):
        path = os.path.join(_ctc_dir(source, output_dir), "res_track.txt")
        with atomic_write(path, "w") as handle:
            for label, frame in ctc_tracks.pop(id(source), []):
                handle.write(f"{label} {frame} {frame} 0\n")
        return [path]
    if source.kind == "stack":
        path = os.path.join(output_dir, "labels", source.name + ".tif")
        write_label_tiff(path, np.stack(stacks.pop(id(source))))
        return [path]
    return []


# ---- command line ----------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``predict`` options (shared by tools/predict.py and ``deepcens predict``)."""
    parser.add_argument("--config-file", required=True, metavar="FILE", help="model config (yaml)")
    parser.add_argument("--input", required=True, nargs="+", metavar="PATH",
                        help="image files, folders, glob patterns, TIFF stacks or CTC sequence folders")
    parser.add_argument("--output", required=True, metavar="DIR", help="output folder")
    parser.add_argument("--batch-size", type=int, default=1, help="images per model call")
    parser.add_argument("--device", default="", help="cpu or cuda (default: the config's MODEL.DEVICE)")
    parser.add_argument("--score-threshold", type=float, default=0.5,
                        help="minimum score for label images, overlays and the CSV (the COCO json keeps all)")
    parser.add_argument("--overlays", action="store_true", help="write overlay PNGs (contours by class, scores)")
    parser.add_argument("--coco-json", action="store_true", help="write COCO-style results (coco_results.json)")
    parser.add_argument("--ctc-format", action="store_true",
                        help="write sequences and stacks as CTC results (<seq>_RES/maskTTT.tif + res_track.txt)")
    parser.add_argument("--frames", default="", metavar="START:STOP",
                        help="only these frame numbers / stack pages (python slice, e.g. 0:3)")
    parser.add_argument("--tile-size", type=int, default=0,
                        help="sliding-window tile side for images larger than it (0 = whole images)")
    parser.add_argument("--tile-overlap", type=float, default=0.25, help="overlap between tiles (fraction)")
    parser.add_argument("--class-names", default="", help="comma-separated class names for overlays and the CSV")
    parser.add_argument("--dataset", default="", help="registered dataset whose metadata (class names, decoder "
                        "settings) applies")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("opts", nargs=argparse.REMAINDER, metavar="KEY VALUE",
                        help="config overrides, e.g. MODEL.WEIGHTS output/model_final.pth")


CONFIG_KEY = re.compile(r"^[A-Z][A-Z0-9_]*(\.[A-Z0-9_]+)+$")


def split_trailing_opts(inputs: Sequence[str], opts: Sequence[str] | None) -> tuple[list[str], list[str]]:
    """Split ``--input a b MODEL.WEIGHTS w.pth`` into inputs and config options.

    ``--input`` takes several values, so trailing ``KEY VALUE`` pairs land in it; the first
    token that looks like a config key (``UPPER.CASE``) starts the options.
    """
    inputs, opts = list(inputs), list(opts or [])
    for index, token in enumerate(inputs):
        if CONFIG_KEY.match(token) and not os.path.exists(token):
            inputs, opts = inputs[:index], inputs[index:] + opts
            break
    if opts and opts[0] == "--":
        opts = opts[1:]
    if not inputs:
        raise DeepcensInputError(None, "no --input given before the config options")
    return inputs, opts


def run(args: argparse.Namespace) -> dict:
    """Load the config (with trailing options) and predict; returns :func:`predict`'s summary."""
    import deepcens  # noqa: F401  (registrations)
    from deepcens.engine.setup import load_config

    inputs, opts = split_trailing_opts(args.input, args.opts)
    if args.device:
        opts += ["MODEL.DEVICE", args.device]
    cfg = load_config(args.config_file, opts)
    return predict(cfg, inputs, args.output, batch_size=args.batch_size, score_threshold=args.score_threshold,
                   overlays=args.overlays, coco_json=args.coco_json, ctc_format=args.ctc_format,
                   frames=args.frames or None, tile_size=args.tile_size, tile_overlap=args.tile_overlap,
                   class_names=args.class_names, dataset_name=args.dataset or None,
                   progress=False if args.no_progress else None)


def main(argv: list[str] | None = None) -> int:
    """``tools/predict.py``: exit 0 on success, 2 with a one-line error on bad input."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    return run_cli(parser.parse_args(argv))


@exit_2_on_input_error
def run_cli(args: argparse.Namespace) -> int:
    """Run with logging to stderr and the error convention of deepcens tools."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s", stream=sys.stderr)
    result = run(args)
    note = " (random weights)" if result["random_weights"] else ""
    print(f"{result['images']} images, {result['instances']} instances{note}; outputs in "
          f"{os.path.abspath(result['output_dir'])}")
    return 0
