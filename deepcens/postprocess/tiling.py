"""Tiled inference: the tile grid, per-tile windows and the merge back into one image.

One module for every method that runs an image larger than its tile size in pieces
(the pattern of stardist's ``big.py``: a grid of overlapping tiles covering the image, a
per-tile result, a merge):

- :func:`tile_grid` / :func:`tile_starts`: the overlapping tiles covering an image;
- dense (U-Net) methods blend per-tile probabilities with :func:`blend_window` weights
  (:func:`blend_tiled_probabilities`, used by ``DenseSegmentor``);
- instance (R-CNN) methods merge per-tile ``Instances`` by mask overlap
  (:func:`merge_tiled_instances`, used by ``deepcens predict``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
from detectron2.structures import Boxes, Instances


def tile_starts(length: int, tile: int, stride: int) -> list[int]:
    """Start offsets of tiles of side ``tile`` every ``stride`` pixels covering ``[0, length)``."""
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile, stride))
    starts.append(length - tile)
    return starts


def tile_stride(tile: int, overlap: float) -> int:
    """Distance between tile starts for a fractional ``overlap`` (at least 1 pixel)."""
    return max(int(tile * (1.0 - overlap)), 1)


def tile_grid(height: int, width: int, tile: int, overlap: float) -> list[tuple[int, int]]:
    """``(top, left)`` of every ``tile`` x ``tile`` tile covering a ``height`` x ``width`` image."""
    stride = tile_stride(tile, overlap)
    return [(top, left) for top in tile_starts(height, tile, stride) for left in tile_starts(width, tile, stride)]


def blend_window(tile: int, overlap: float, device=None) -> torch.Tensor:
    """(tile,) weights: 1 in the middle, a cosine ramp over the overlap at both ends, never 0."""
    ramp = max(int(round(tile * overlap)), 1)
    position = torch.arange(tile, dtype=torch.float32, device=device)
    distance = torch.minimum(position + 0.5, tile - position - 0.5)  # to the nearer edge
    weights = 0.5 - 0.5 * torch.cos(math.pi * torch.clamp(distance / ramp, max=1.0))
    return weights.clamp(min=1e-3)


def blend_tiled_probabilities(x: torch.Tensor, tile: int, overlap: float,
                              predict: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """Blend ``predict``'s ``(K, tile, tile)`` maps over the tiles of ``x`` ``(1, C, H, W)``.

    ``x`` must be at least ``tile`` on both sides. Each tile's map is weighted by the 2D
    :func:`blend_window`, so seams between tiles fade smoothly; returns ``(K, H, W)``.
    """
    height, width = x.shape[-2:]
    window = blend_window(tile, overlap, x.device)
    weight2d = window[:, None] * window[None, :]
    total = None
    weights = torch.zeros((height, width), device=x.device)
    for top, left in tile_grid(height, width, tile, overlap):
        probs = predict(x[..., top:top + tile, left:left + tile])
        if total is None:
            total = torch.zeros((probs.shape[0], height, width), device=x.device)
        total[:, top:top + tile, left:left + tile] += probs * weight2d
        weights[top:top + tile, left:left + tile] += weight2d
    return total / weights


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
    from deepcens.postprocess.instances import instance_masks

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
