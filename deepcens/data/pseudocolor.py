"""Context Aware Pseudocoloring (EfficientCellSeg paper, Sec. 2.2) and the input transforms that
turn a slice and its neighbours into the three-channel network input.

A transform in :data:`INPUT_TRANSFORM_REGISTRY` (found by ``cfg.INPUT.ECS.TRANSFORM``) is built
as ``builder(cfg)`` and called as ``transform(current, previous, following) -> (H, W, 3)``
float32 in [0, 1]; ``previous`` / ``following`` are the neighbouring slices z-1 / z+1 of a
3D stack -- or the frames t-1 / t+1 of a 2D time-lapse sequence -- or None where there is
none (the first / last slice, a single image).

``"context_pseudocolor"``: each neighbour is equalised with CLAHE (scikit-image), min-max
normalised, box-blurred and thresholded into a rough ROI mask ``M`` (empty for a missing
neighbour); with ``G`` the min-max normalised current slice, ``R = G + M_prev * G`` and
``B = G + M_next * G``; the channels are then min-max normalised (each, or together).
``"grey"``: the normalised slice repeated three times (ablation models 1 and 2, Sec. 3.2).
"""
from __future__ import annotations

import os
import re
from typing import Callable, Optional

import numpy as np
from detectron2.config import CfgNode
from detectron2.utils.registry import Registry
from scipy import ndimage
from skimage import exposure, filters

INPUT_TRANSFORM_REGISTRY = Registry("INPUT_TRANSFORM")
INPUT_TRANSFORM_REGISTRY.__doc__ = "Input transforms: (cfg) -> callable(current, previous, following) -> (H, W, 3) float32."

Transform = Callable[[np.ndarray, Optional[np.ndarray], Optional[np.ndarray]], np.ndarray]
_FRAME_NAME = re.compile(r"^(.*?)(\d+)(\.tiff?)$", re.IGNORECASE)


def minmax(image: np.ndarray) -> np.ndarray:
    """``(x - min) / (max - min)`` as float32; a constant image becomes zeros."""
    image = np.asarray(image, dtype=np.float32)
    low, high = float(image.min()), float(image.max())
    if high <= low:
        return np.zeros_like(image)
    return (image - low) / np.float32(high - low)


def neighbour_roi(
    neighbour: np.ndarray | None,
    shape: tuple[int, int],
    clip_limit: float = 0.01,
    tiles: int = 16,
    method: str = "adaptive",
    blur: int = 8,
    start: float = 0.2,
    step: float = 0.01,
    max_steps: int = 30,
    max_fraction: float = 0.03,
) -> np.ndarray:
    """Rough ROI mask (bool) of a neighbouring slice: CLAHE, min-max, box blur, threshold.

    ``method="otsu"``: Otsu's threshold. ``method="adaptive"`` (the authors' public code): the
    threshold starts at ``start`` and rises by ``step`` while the mask is empty or covers more
    than ``max_fraction`` of the image, at most ``max_steps`` times. A missing or constant
    neighbour gives an empty mask.
    """
    if neighbour is None:
        return np.zeros(shape, dtype=bool)
    neighbour = minmax(neighbour)
    if neighbour.shape != tuple(shape):
        raise ValueError(f"neighbour slice shape {neighbour.shape} differs from the slice shape {tuple(shape)}")
    if float(neighbour.max()) <= 0.0:
        return np.zeros(shape, dtype=bool)
    kernel = tuple(max(int(s) // max(int(tiles), 1), 2) for s in shape)
    equalised = minmax(exposure.equalize_adapthist(neighbour, kernel_size=kernel, clip_limit=clip_limit))
    if blur > 1:
        equalised = ndimage.uniform_filter(equalised, size=int(blur), mode="reflect")
    if method == "otsu":
        if float(equalised.max()) <= float(equalised.min()):
            return np.zeros(shape, dtype=bool)
        return equalised > filters.threshold_otsu(equalised)
    if method != "adaptive":
        raise ValueError(f"INPUT.ECS.ROI_METHOD must be adaptive or otsu, got {method!r}")
    mask = np.zeros(shape, dtype=bool)
    threshold = float(start)
    for _ in range(int(max_steps)):
        fraction = float(mask.mean())
        if 0.0 < fraction <= max_fraction:
            break
        mask = equalised > threshold
        threshold += float(step)
    return mask


def pseudocolor_image(
    current: np.ndarray,
    previous: np.ndarray | None,
    following: np.ndarray | None,
    norm_per_channel: bool = True,
    **roi_options,
) -> np.ndarray:
    """(H, W, 3) float32 pseudocolour image of ``current`` given its neighbours (module docstring)."""
    green = minmax(current)
    red = green + neighbour_roi(previous, green.shape, **roi_options) * green
    blue = green + neighbour_roi(following, green.shape, **roi_options) * green
    if norm_per_channel:
        return np.dstack([minmax(red), green, minmax(blue)]).astype(np.float32)
    return minmax(np.dstack([red, green, blue]))


def grey_three_channels(current: np.ndarray, previous=None, following=None) -> np.ndarray:
    """(H, W, 3) float32: the min-max normalised slice three times (neighbours unused)."""
    green = minmax(current)
    return np.dstack([green, green, green])


@INPUT_TRANSFORM_REGISTRY.register()
def context_pseudocolor(cfg: CfgNode) -> Transform:
    """Context Aware Pseudocoloring with the ``INPUT.ECS.*`` ROI options."""
    e = cfg.INPUT.ECS
    options = dict(clip_limit=float(e.CLAHE_CLIP_LIMIT), tiles=int(e.CLAHE_TILES), method=str(e.ROI_METHOD),
                   blur=int(e.ROI_BLUR), start=float(e.ROI_START), step=float(e.ROI_STEP),
                   max_steps=int(e.ROI_MAX_STEPS), max_fraction=float(e.ROI_MAX_FRACTION))

    def transform(current, previous, following):
        return pseudocolor_image(current, previous, following, bool(e.NORM_PER_CHANNEL), **options)

    transform.needs_context = True  # type: ignore[attr-defined]
    return transform


@INPUT_TRANSFORM_REGISTRY.register()
def grey(cfg: CfgNode) -> Transform:
    """The slice repeated three times (ablation: no pseudocolouring)."""
    return grey_three_channels


def build_input_transform(cfg: CfgNode) -> Transform:
    """The transform named by ``cfg.INPUT.ECS.TRANSFORM``."""
    return INPUT_TRANSFORM_REGISTRY.get(cfg.INPUT.ECS.TRANSFORM)(cfg)


# ---- neighbours of a dataset record -------------------------------------------------------------

def neighbour_frame_path(path: str, offset: int) -> str | None:
    """``.../t012.tif`` -> ``.../t013.tif`` for ``offset`` 1 (same zero-padding), if that file exists."""
    match = _FRAME_NAME.match(os.path.basename(path))
    if not match:
        return None
    prefix, digits, suffix = match.groups()
    number = int(digits) + offset
    if number < 0:
        return None
    candidate = os.path.join(os.path.dirname(path), f"{prefix}{number:0{len(digits)}d}{suffix}")
    return candidate if os.path.isfile(candidate) else None


def ctc_context(dataset_dict: dict) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Neighbours (z-1, z+1) of a slice of a 3D CTC stack, or frames (t-1, t+1) of a 2D CTC
    sequence, normalised like the slice itself; None where there is none."""
    from deepcens.data.ctc import read_ctc_image

    plane = dataset_dict.get("slice")
    neighbours = []
    for offset in (-1, 1):
        if plane is not None:
            index = int(plane) + offset
            depth = _stack_depth(dataset_dict["file_name"])
            neighbours.append(read_ctc_image(dict(dataset_dict, slice=index)) if 0 <= index < depth else None)
        else:
            path = neighbour_frame_path(dataset_dict["file_name"], offset)
            neighbours.append(read_ctc_image(dict(dataset_dict, file_name=path, slice=None)) if path else None)
    return neighbours[0], neighbours[1]


def _stack_depth(path: str) -> int:
    import tifffile

    with tifffile.TiffFile(path) as tif:
        shape = tif.series[0].shape
    return int(shape[0]) if len(shape) == 3 else 1
