"""Tertiary target: whole-image (vectorised) vs per-cell Algorithm 1 on a crowded frame.

``tools/benchmark.py targets [--size 1024 --cells 400 --repeats 3]``: a deterministic frame of
touching cells (nearest-seed Voronoi regions cut at a radius), the per-cell implementation
(one whole-image dilation, erosion and window test per cell, as the paper's Algorithm 1 is
written), the same restricted to each cell's bounding box, and
:func:`deepcens.data.targets.tertiary_target`; all three must agree exactly.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
from scipy import ndimage

from deepcens.data.targets import tertiary_target

NAME = "targets"
HELP = "tertiary target: vectorised vs per-cell Algorithm 1 on a 1024x1024 frame of touching cells"


def voronoi_frame(size: int = 1024, cells: int = 400, radius: float = 30.0, seed: int = 0) -> np.ndarray:
    """Deterministic label image of touching cells: nearest-seed regions within ``radius``."""
    rng = np.random.default_rng(seed)
    seeds = np.zeros((size, size), np.int32)
    flat = rng.permutation(size * size)[:cells]
    rows, cols = np.divmod(flat, size)
    seeds[rows, cols] = np.arange(1, cells + 1)
    distance, indices = ndimage.distance_transform_edt(seeds == 0, return_indices=True)
    labels = seeds[tuple(indices)]
    labels[distance > radius] = 0
    return labels


def per_cell_tertiary_target(labels: np.ndarray, dilation: int = 2, erosion: int = 2) -> np.ndarray:
    """Algorithm 1 literally, one cell at a time on whole-image masks (the baseline)."""
    cross = ndimage.generate_binary_structure(labels.ndim, 1)
    square = np.ones((2 * erosion + 1,) * labels.ndim, bool)
    background = labels == 0
    out = np.zeros(labels.shape, np.uint8)
    for cell in np.unique(labels)[1:]:
        mask = labels == cell
        if dilation:
            out[ndimage.binary_dilation(mask, cross, iterations=dilation) & background] = 1
        out[mask] = 2
        if erosion:
            candidates = mask & ~ndimage.binary_erosion(mask, cross, iterations=erosion)
            near_other = ndimage.binary_dilation(~background & ~mask, square)
            out[candidates & near_other] = 1
    return out


def per_cell_cropped_tertiary_target(labels: np.ndarray, dilation: int = 2, erosion: int = 2) -> np.ndarray:
    """The per-cell algorithm on each cell's bounding box plus a margin (a stronger baseline)."""
    cross = ndimage.generate_binary_structure(labels.ndim, 1)
    square = np.ones((2 * erosion + 1,) * labels.ndim, bool)
    margin = max(dilation, erosion) + 1
    out = np.zeros(labels.shape, np.uint8)
    for index, box in enumerate(ndimage.find_objects(labels)):
        if box is None:
            continue
        box = tuple(slice(max(s.start - margin, 0), s.stop + margin) for s in box)
        sub, sub_out = labels[box], out[box]
        mask = sub == index + 1
        background = sub == 0
        if dilation:
            sub_out[ndimage.binary_dilation(mask, cross, iterations=dilation) & background] = 1
        sub_out[mask] = 2
        if erosion:
            candidates = mask & ~ndimage.binary_erosion(mask, cross, iterations=erosion)
            sub_out[candidates & ndimage.binary_dilation(~background & ~mask, square)] = 1
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--size", type=int, default=1024, help="frame side in pixels")
    parser.add_argument("--cells", type=int, default=400, help="number of Voronoi cells")
    parser.add_argument("--radius", type=float, default=30.0, help="cell radius cut (pixels)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of the vectorised version (best taken)")


def run(args: argparse.Namespace) -> dict:
    labels = voronoi_frame(args.size, args.cells, args.radius)
    touching = int(np.unique(np.concatenate([
        labels[:, 1:][(labels[:, 1:] != labels[:, :-1]) & (labels[:, 1:] > 0) & (labels[:, :-1] > 0)],
        labels[1:][(labels[1:] != labels[:-1]) & (labels[1:] > 0) & (labels[:-1] > 0)]])).size)
    start = time.perf_counter()
    reference = per_cell_tertiary_target(labels)
    per_cell_s = time.perf_counter() - start
    start = time.perf_counter()
    cropped = per_cell_cropped_tertiary_target(labels)
    per_cell_cropped_s = time.perf_counter() - start
    times = []
    for _ in range(max(args.repeats, 1)):
        start = time.perf_counter()
        result = tertiary_target(labels)
        times.append(time.perf_counter() - start)
    vectorised_s = min(times)
    return {
        "size": args.size,
        "cells": int(len(np.unique(labels)) - 1),
        "touching_cells": touching,
        "per_cell_s": round(per_cell_s, 4),
        "vectorised_s": round(vectorised_s, 4),
        "speedup": round(per_cell_s / vectorised_s, 1),
        "per_cell_cropped_s": round(per_cell_cropped_s, 4),
        "speedup_vs_cropped": round(per_cell_cropped_s / vectorised_s, 1),
        "identical": bool(np.array_equal(result, reference) and np.array_equal(cropped, reference)),
    }
