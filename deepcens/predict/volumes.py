"""Slice-wise models in ``deepcens predict``: neighbouring slices as context, 3D stacks as volumes.

Models whose test mapper needs the neighbours of a slice (EfficientCellSeg's Context Aware
Pseudocoloring) receive, for every page, the previous and next page of the same stack or
sequence (``context_images``; None at the ends). Models with ``predict_volume`` and
``volume_decoding`` treat a multi-page TIFF stack, and every frame of a sequence whose frames
are stacks (3D Cell Tracking Challenge data), as one volume: the slices are predicted with their
z-neighbours, re-stacked and decoded into 3D objects, and written as one 3D uint16 label TIFF
(a stack's pages, or a CTC ``maskTTT.tif`` per frame) through the source's writer.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
from detectron2.structures import Instances

from deepcens.data.io import read_stack, tiff_page_count
from deepcens.predict.inputs import Page, Source


def needs_context(predictor: Any) -> bool:
    """Whether the predictor's test mapper uses neighbouring slices."""
    mapper = getattr(predictor.mapper, "mapper", predictor.mapper)  # unwrap the bad-input policy
    return bool(getattr(mapper, "needs_context", False))


def decodes_volumes(predictor: Any) -> bool:
    """Whether stacks go to the model as whole volumes (3D objects)."""
    return hasattr(predictor.model, "predict_volume") and bool(getattr(predictor.model, "volume_decoding", False))


def page_context(pages: Sequence[Page], position: int, reader: Callable[[Page], np.ndarray]
                 ) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Raw (previous, next) neighbours of ``pages[position]``: the adjacent pages of the same
    source whose frame / page number differs by one, else None."""
    page = pages[position]
    neighbours = []
    for offset in (-1, 1):
        other = position + offset
        if 0 <= other < len(pages) and pages[other].frame is not None and page.frame is not None \
                and abs(pages[other].frame - page.frame) == 1:
            neighbours.append(reader(pages[other]))
        else:
            neighbours.append(None)
    return neighbours[0], neighbours[1]


def is_volume_source(source: Source) -> bool:
    """A multi-page TIFF stack, or a sequence whose frames are stacks."""
    if source.kind == "stack":
        return True
    return source.kind == "sequence" and tiff_page_count(source.pages[0].file_name) > 1


def volume_labels(predictor: Any, stack: np.ndarray, file_name: str, intensity_range: tuple[float, float]) -> np.ndarray:
    """int32 ``(Z, H, W)`` labels of a ``(Z, H, W[, C])`` stack through ``predict_volume``."""
    import torch

    if stack.ndim == 3:
        stack = stack[..., None]
    inputs = []
    for z in range(stack.shape[0]):
        extra = {"intensity_range": intensity_range,
                 "context_images": (stack[z - 1] if z > 0 else None, stack[z + 1] if z + 1 < stack.shape[0] else None)}
        inputs.append(predictor.mapper(predictor._record(stack[z], f"{file_name}[{z}]", extra)))
    with torch.no_grad():
        return predictor.model.predict_volume(inputs)


def predict_volume_source(predictor: Any, writer: Any, save: Callable, summary: Any, mask_threshold: float) -> int:
    """Predict every volume of ``writer.source`` and hand its 3D labels to the writer; returns
    the number of volumes. Summary rows count 3D objects and their mean size in voxels."""
    source = writer.source
    if source.kind == "stack":
        stack = read_stack(source.path)
        labels = volume_labels(predictor, stack, source.path, (float(stack.min()), float(stack.max())))
        output = ""
        for z, page in enumerate(source.pages):
            output = writer.write_page(page, labels[z], Instances(labels.shape[1:]), mask_threshold, save)
        summary.rows.append(_summary_row(source.path, None, output, labels, summary.class_names))
        return 1
    volumes = [read_stack(page.file_name) for page in source.pages]  # one CTC sequence fits in memory
    intensity = (min(float(v.min()) for v in volumes), max(float(v.max()) for v in volumes))
    for page, stack in zip(source.pages, volumes):
        labels = volume_labels(predictor, stack, page.file_name, intensity)
        output = writer.write_page(page, labels, Instances(labels.shape[-2:]), mask_threshold, save)
        summary.rows.append(_summary_row(page.file_name, page.frame, output, labels, summary.class_names))
    return len(volumes)


def _summary_row(file_name: str, frame: int | None, output: str, labels: np.ndarray, class_names: Sequence[str]) -> dict:
    ids, sizes = np.unique(labels[labels > 0], return_counts=True)
    mean = round(float(sizes.mean()), 2) if len(ids) else 0.0
    row = {"input": file_name, "frame": "" if frame is None else frame, "output": output,
           "height": int(labels.shape[-2]), "width": int(labels.shape[-1]), "instances": int(len(ids)), "mean_area": mean}
    for index, name in enumerate(class_names):
        row[f"{name}_count"], row[f"{name}_mean_area"] = (int(len(ids)), mean) if index == 0 else (0, 0.0)
    return row
