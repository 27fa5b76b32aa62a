"""Overlays: the one place where instances are drawn on images.

``draw_instances`` draws every instance's contour in its class colour and, when the
instances carry scores, the score beside it. Training (``deepcens.engine.outputs``), the
predictor (``deepcens.predict``) and the visual report (``deepcens.report``) all use it, so
overlays look the same everywhere.
"""
from __future__ import annotations

import os
from typing import Sequence

import cv2
import numpy as np
import torch
from detectron2.structures import Boxes, Instances

from deepcens.data.io import encode_png
from deepcens.postprocess.instances import instance_masks
from deepcens.utils.atomic import atomic_save_bytes

# Colour-blind-friendly class colours (Okabe-Ito), RGB: class 0 orange, class 1 sky blue, ...
CLASS_COLORS: tuple[tuple[int, int, int], ...] = (
    (230, 159, 0), (86, 180, 233), (0, 158, 115), (240, 228, 66),
    (0, 114, 178), (213, 94, 0), (204, 121, 167), (255, 255, 255),
)


def class_color(class_id: int) -> tuple[int, int, int]:
    """RGB colour of a contiguous class id (cycles after the palette's end)."""
    return CLASS_COLORS[int(class_id) % len(CLASS_COLORS)]


def to_display_uint8(image: np.ndarray, percentiles: tuple[float, float] = (0.5, 99.8)) -> np.ndarray:
    """(H, W, 3) uint8 RGB for display from an image of any dtype and 1-4 channels.

    Contrast is stretched between the given percentiles, so dark 16-bit phase or
    fluorescence images become visible; 8-bit RGB(A) images are kept as they are.
    """
    image = np.asarray(image)
    if image.ndim == 2:
        image = image[:, :, None]
    if image.shape[2] == 4:
        image = image[:, :, :3]
    elif image.shape[2] == 2:
        image = image[:, :, :1]
    if image.dtype == np.uint8 and image.shape[2] == 3:
        return np.ascontiguousarray(image)
    data = image.astype(np.float32)
    low, high = (float(v) for v in np.percentile(data, percentiles))
    if high <= low:
        low, high = float(data.min()), float(data.max())
    data = np.clip((data - low) * (255.0 / max(high - low, 1e-6)), 0, 255).astype(np.uint8)
    if data.shape[2] == 1:
        data = np.repeat(data, 3, axis=2)
    return np.ascontiguousarray(data)


def draw_instances(
    image_rgb_uint8: np.ndarray,
    instances: Instances,
    class_names: Sequence[str] | None = None,
    *,
    show_scores: bool = True,
    thickness: int = 1,
    mask_threshold: float = 0.5,
) -> np.ndarray:
    """Draw instance contours (coloured by class) and scores on a copy of an RGB uint8 image.

    ``instances`` are predictions (``pred_masks`` or ``pred_boxes``, optional ``scores`` and
    ``pred_classes``) in the image's size; ground truth converted with
    :func:`deepcens.postprocess.instances.label_image_to_instances` draws the same way. A
    legend of the class names present is written in the top-left corner.
    """
    image = np.asarray(image_rgb_uint8)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"draw_instances expects an (H, W, 3) uint8 RGB image, got {image.shape} {image.dtype}")
    if tuple(instances.image_size) != image.shape[:2]:
        raise ValueError(f"instances are for size {tuple(instances.image_size)}, image is {image.shape[:2]}")
    canvas = np.ascontiguousarray(image.copy())
    count = len(instances)
    if count:
        masks = instance_masks(instances, mask_threshold)
        classes = (instances.pred_classes.cpu().numpy() if instances.has("pred_classes")
                   else np.zeros(count, dtype=np.int64))
        scores = instances.scores.cpu().numpy() if instances.has("scores") and show_scores else None
        font_scale = max(0.3, min(image.shape[:2]) / 1200.0)
        text_items = []
        for index in range(count):
            mask = masks[index].astype(np.uint8)
            if not mask.any():
                continue
            color = class_color(classes[index])
            contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
            cv2.drawContours(canvas, contours, -1, color, thickness, lineType=cv2.LINE_8)
            if scores is not None:
                ys, xs = np.nonzero(mask)
                text_items.append((f"{scores[index]:.2f}", (int(xs.min()), max(int(ys.min()) - 2, 8)), color))
        for text, origin, color in text_items:  # text after contours so no contour hides it
            cv2.putText(canvas, text, origin, cv2.FONT_HERSHEY_SIMPLEX, font_scale, color, 1, cv2.LINE_AA)
        if class_names:
            present = sorted({int(c) for c in classes})
            _draw_legend(canvas, [(class_names[c] if c < len(class_names) else f"class {c}", class_color(c))
                                  for c in present], font_scale)
    return canvas


def upscale_for_display(image_rgb_uint8: np.ndarray, instances: Instances,
                        min_side: int = 512) -> tuple[np.ndarray, Instances]:
    """Enlarge a small image and its instances by an integer factor (nearest neighbour) so that
    contours and score labels stay readable; images already ``min_side`` or larger pass through."""
    factor = int(np.ceil(min_side / max(1, min(image_rgb_uint8.shape[:2]))))
    if factor <= 1:
        return image_rgb_uint8, instances
    image = np.repeat(np.repeat(image_rgb_uint8, factor, axis=0), factor, axis=1)
    masks = torch.as_tensor(instance_masks(instances, 0.5))
    scaled = Instances(image.shape[:2])
    scaled.pred_masks = masks.repeat_interleave(factor, dim=1).repeat_interleave(factor, dim=2)
    for field in ("scores", "pred_classes"):
        if instances.has(field):
            scaled.set(field, instances.get(field))
    if instances.has("pred_boxes"):
        scaled.pred_boxes = Boxes(instances.pred_boxes.tensor * factor)
    return image, scaled


def _draw_legend(canvas: np.ndarray, entries: list[tuple[str, tuple[int, int, int]]], font_scale: float) -> None:
    """Class names in their colours, on a dark box in the top-left corner."""
    if not entries:
        return
    line = int(22 * font_scale / 0.5) + 2
    width = max(cv2.getTextSize(name, cv2.FONT_HERSHEY_SIMPLEX, font_scale, 1)[0][0] for name, _ in entries) + 8
    height = line * len(entries) + 4
    region = canvas[:height, :width]
    region[:] = (region.astype(np.float32) * 0.35).astype(np.uint8)
    for row, (name, color) in enumerate(entries):
        cv2.putText(canvas, name, (4, line * (row + 1) - 4), cv2.FONT_HERSHEY_SIMPLEX, font_scale, color, 1,
                    cv2.LINE_AA)


def write_overlay(
    path: str | os.PathLike,
    image: np.ndarray,
    instances: Instances | None = None,
    class_names: Sequence[str] | None = None,
    **draw_kwargs,
) -> str:
    """Write an overlay PNG atomically and return its path.

    ``image`` is either a finished drawing (RGB uint8, ``instances`` None) or a raw image of
    any dtype (made displayable with :func:`to_display_uint8`) on which ``instances`` are drawn.
    """
    path = os.fspath(path)
    if instances is not None:
        image = draw_instances(to_display_uint8(image), instances, class_names, **draw_kwargs)
    elif image.dtype != np.uint8:
        image = to_display_uint8(image)
    atomic_save_bytes(path, encode_png(image))
    return path


def side_by_side(images: Sequence[np.ndarray], titles: Sequence[str] = (), gap: int = 4) -> np.ndarray:
    """Concatenate RGB uint8 images horizontally, each under a title bar when ``titles`` are given."""
    height = max(image.shape[0] for image in images)
    scale = max(0.35, height / 900.0)
    bar = int(24 * scale / 0.5) if any(titles) else 0
    panels = []
    for index, image in enumerate(images):
        panel = np.zeros((height + bar, image.shape[1], 3), dtype=np.uint8)
        panel[bar:bar + image.shape[0]] = image
        if bar and index < len(titles) and titles[index]:
            cv2.putText(panel, titles[index], (4, bar - 6), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1,
                        cv2.LINE_AA)
        panels.append(panel)
        if index < len(images) - 1:
            panels.append(np.full((height + bar, gap, 3), 255, dtype=np.uint8))
    return np.concatenate(panels, axis=1)
