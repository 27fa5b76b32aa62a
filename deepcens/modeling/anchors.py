"""Small anchors for cells and nuclei: a paper-style flat size list spread over the FPN levels.

DeepCeNS (Khalid et al., sec. VI) gives its anchor sizes as one flat list per setting
(cell, cell+nucleus: ``2 6 17 31 64 127 256 512 1024``; nucleus: ``2 6 8 12 17 24 31 64 127 256``)
with aspect ratios ``0.25 0.5 1 2 4``. detectron2's RPN head needs the *same number of anchors
per location on every FPN level*, and its ``DefaultAnchorGenerator`` expects per-level lists.
:class:`FlatSizesAnchorGenerator` reads ``MODEL.ANCHOR_GENERATOR.FLAT_SIZES`` and maps it onto
the levels with :func:`flat_sizes_to_levels`, by ``FLAT_SIZES_MAPPING``:

``all_levels`` (default)
    every size on every level (what detectron2 itself does with ``SIZES: [[2, 6, ...]]``):
    ``n * len(ASPECT_RATIOS)`` anchors per location (45 for the cell list, 50 for nuclei).
``split``
    sort the sizes; every level gets ``k = ceil(n / L)`` consecutive sizes, level ``i`` the
    window ``sizes[s_i : s_i + k]`` with ``s_i = min(i * k, n - k)`` (the coarsest levels
    re-use the largest sizes when ``n < k * L``): 10 anchors per location for both lists.

Both keep every size and satisfy the RPN rule. ``all_levels`` is the default because it is the
one that reaches small objects: a size-``s`` anchor on a level of stride ``t`` can be up to
``t / 2`` off an object's centre in x and y, and under ``split`` the mid sizes land on coarse
levels (nucleus list: 17/24 px on stride 16, 31/64 px on stride 32). Measured with
``deepcens anchors`` (:mod:`deepcens.analysis.anchor_stats`, exact best IoU over the anchor grid, 1024x1024 input frame), the
share of ground-truth boxes no anchor reaches at IoU >= 0.5 with the nucleus list is 3.5 %
(``all_levels``) vs 41 % (``split``) on 3,147 DSB-2018 nuclei, and 1.6 % vs 29 % on 1,360
Usiigaci cells (detectron2's default anchors: 22 % and 3.7 %). See docs/anchors.md.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from detectron2.config import CfgNode
from detectron2.layers import ShapeSpec
from detectron2.modeling.anchor_generator import ANCHOR_GENERATOR_REGISTRY, DefaultAnchorGenerator
from detectron2.structures.boxes import Boxes, matched_pairwise_iou

__all__ = ["flat_sizes_to_levels", "FlatSizesAnchorGenerator", "anchor_level_sizes", "best_anchor_iou", "MAPPINGS"]

MAPPINGS = ("all_levels", "split")


def flat_sizes_to_levels(sizes: Sequence[float], num_levels: int, mapping: str = "all_levels") -> list[list[float]]:
    """Map a flat anchor-size list onto ``num_levels`` equal-length, ascending per-level lists.

    ``mapping="all_levels"``: the whole sorted list on every level. ``"split"``: each level holds
    ``ceil(n / num_levels)`` consecutive sizes, the coarsest levels re-using the largest ones when
    sizes run out. Either way every input size appears on at least one level (see module doc).
    """
    if num_levels < 1:
        raise ValueError(f"num_levels must be >= 1, got {num_levels}")
    if mapping not in MAPPINGS:
        raise ValueError(f"FLAT_SIZES_MAPPING must be one of {MAPPINGS}, got {mapping!r}")
    values = sorted(float(s) for s in sizes)
    if not values:
        raise ValueError("anchor size list is empty")
    if any(not math.isfinite(s) or s <= 0 for s in values):
        raise ValueError(f"anchor sizes must be positive and finite, got {list(sizes)}")
    if len(set(values)) != len(values):
        raise ValueError(f"anchor sizes must be distinct, got {list(sizes)}")
    if mapping == "all_levels":
        return [list(values) for _ in range(num_levels)]
    count = len(values)
    per_level = math.ceil(count / num_levels)
    levels = []
    for level in range(num_levels):
        start = min(level * per_level, count - per_level)
        levels.append(values[start:start + per_level])
    return levels


@ANCHOR_GENERATOR_REGISTRY.register()
class FlatSizesAnchorGenerator(DefaultAnchorGenerator):
    """``DefaultAnchorGenerator`` fed by ``MODEL.ANCHOR_GENERATOR.FLAT_SIZES`` (a flat list).

    The flat list is spread over the feature levels by :func:`flat_sizes_to_levels` (mapping
    ``MODEL.ANCHOR_GENERATOR.FLAT_SIZES_MAPPING``); the same
    ``ASPECT_RATIOS`` are used on every level. With an empty ``FLAT_SIZES`` it behaves exactly
    like ``DefaultAnchorGenerator`` (per-level ``SIZES``).
    """

    @classmethod
    def from_config(cls, cfg: CfgNode, input_shape: list[ShapeSpec]) -> dict:
        args = super().from_config(cfg, input_shape)
        flat = list(cfg.MODEL.ANCHOR_GENERATOR.FLAT_SIZES)
        if flat:
            args["sizes"] = flat_sizes_to_levels(flat, len(input_shape), cfg.MODEL.ANCHOR_GENERATOR.FLAT_SIZES_MAPPING)
            # ASPECT_RATIOS (flat list or [[...]]) is broadcast to every level by the parent class
        return args


def anchor_level_sizes(generator: DefaultAnchorGenerator) -> list[list[float]]:
    """The anchor sizes (sqrt of anchor area, rounded to 0.01 px) on each level of ``generator``,
    recovered from its cell anchors: what the RPN really uses, whatever config made it."""
    result = []
    for _, anchors in generator.cell_anchors.named_buffers():
        areas = ((anchors[:, 2] - anchors[:, 0]) * (anchors[:, 3] - anchors[:, 1])).sqrt()
        result.append(sorted({round(float(area), 2) for area in areas}))
    return result


def best_anchor_iou(
    gt_boxes: torch.Tensor,
    image_size: tuple[int, int],
    generator: DefaultAnchorGenerator,
    size_divisibility: int = 32,
) -> torch.Tensor:
    """For each XYXY box (G, 4), the highest IoU any anchor of ``generator`` reaches on the image grid.

    Exact and cheap: two axis-aligned boxes of fixed sizes overlap the more, the closer their
    centres are, separately in x and in y; so for every level and cell anchor the best grid
    position is the anchor centre nearest to the box centre (grid as detectron2 lays it out on
    the padded image, no clipping, as the RPN matches anchors). Equals the maximum of
    ``pairwise_iou`` over all generated anchors, without materialising them.
    """
    boxes = gt_boxes.reshape(-1, 4).float()
    best = torch.zeros(len(boxes))
    if not len(boxes):
        return best
    height, width = image_size
    if size_divisibility > 1:
        height = math.ceil(height / size_divisibility) * size_divisibility
        width = math.ceil(width / size_divisibility) * size_divisibility
    centre_x = (boxes[:, 0] + boxes[:, 2]) / 2
    centre_y = (boxes[:, 1] + boxes[:, 3]) / 2
    cell_anchors = [anchors for _, anchors in generator.cell_anchors.named_buffers()]
    for stride, anchors in zip(generator.strides, cell_anchors):
        start = generator.offset * stride
        grid_w, grid_h = math.ceil(width / stride), math.ceil(height / stride)
        x = start + ((centre_x - start) / stride).round().clamp(0, grid_w - 1) * stride
        y = start + ((centre_y - start) / stride).round().clamp(0, grid_h - 1) * stride
        shifts = torch.stack([x, y, x, y], dim=1)  # (G, 4)
        placed = shifts[:, None, :] + anchors[None, :, :].float()  # (G, A, 4)
        repeated = boxes[:, None, :].expand_as(placed)
        ious = matched_pairwise_iou(Boxes(repeated.reshape(-1, 4)), Boxes(placed.reshape(-1, 4)))
        best = torch.maximum(best, ious.reshape(len(boxes), -1).max(dim=1).values)
    return best
