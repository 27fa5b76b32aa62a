"""Tracker registry, the result type and the graph -> CTC track conversion every tracker shares.

A tracker turns a sequence of per-frame label images (0 = background, any positive ids, as
:func:`deepcens.postprocess.instances.instances_to_label_image` renders every method's
``Instances``; trackers accept the ``Instances`` too) into label images whose ids persist over time plus a CTC track table
(``L B E P`` rows). Trackers only decide *links* between objects of different frames; this
module turns links into CTC tracks: a track is a run of objects in consecutive frames, and a
new track starts after a division (two successors; both daughters name the mother as parent)
and after a closed gap (the object after the gap names the one before it as parent, the CTC
way of declaring a gap), so the table is valid by construction.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np
from detectron2.config import CfgNode
from detectron2.utils.registry import Registry
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

TRACKER_REGISTRY = Registry("TRACKER")
TRACKER_REGISTRY.__doc__ = "Trackers: classes with from_config(cfg) and track(label_frames) -> TrackingResult."


def build_tracker(cfg: CfgNode):
    """The tracker named by ``cfg.TRACKING.NAME``."""
    return TRACKER_REGISTRY.get(cfg.TRACKING.NAME).from_config(cfg)


@dataclasses.dataclass
class FrameObjects:
    """Objects of one label image: sorted ids, areas and centroids (pixel units, axis order
    of the array: (row, col) in 2D, (plane, row, col) in 3D)."""

    ids: np.ndarray
    areas: np.ndarray
    centroids: np.ndarray


def frame_objects(labels: np.ndarray) -> FrameObjects:
    """Ids, areas and centroids of every object, one ``np.bincount`` per axis."""
    labels = np.asarray(labels)
    if labels.dtype.kind not in "ui":
        raise ValueError(f"label image must hold integers, got {labels.dtype}")
    flat = labels.reshape(-1).astype(np.int64, copy=False)
    foreground = np.flatnonzero(flat)
    values = flat[foreground]
    counts = np.bincount(values, minlength=1) if len(values) else np.zeros(1, np.int64)
    ids = np.flatnonzero(counts)
    ids = ids[ids > 0]
    coords = np.unravel_index(foreground, labels.shape)
    centroids = np.stack([np.bincount(values, weights=axis, minlength=len(counts))[ids] for axis in coords], axis=1) \
        if len(ids) else np.zeros((0, labels.ndim))
    areas = counts[ids]
    return FrameObjects(ids.astype(np.int64), areas.astype(np.int64), centroids / np.maximum(areas, 1)[:, None])


@dataclasses.dataclass
class TrackingResult:
    """Relabelled frames (ids = track labels) and the CTC track table (``L B E P`` rows)."""

    labels: list[np.ndarray]
    tracks: np.ndarray

    @property
    def num_tracks(self) -> int:
        return len(self.tracks)

    def divisions(self) -> int:
        """Number of mothers with two daughters."""
        parents, counts = np.unique(self.tracks[self.tracks[:, 3] > 0, 3], return_counts=True)
        return int(np.count_nonzero(counts >= 2))


def links_to_tracks(label_frames: Sequence[np.ndarray], objects: Sequence[FrameObjects],
                    source: np.ndarray, target: np.ndarray) -> TrackingResult:
    """CTC tracks from links between objects.

    Objects are numbered globally frame after frame (object i of frame t is
    ``offset[t] + i``); ``source[k] -> target[k]`` links an object to one in a later frame.
    An object may have at most one predecessor (the CTC has no merges) and any number of
    successors (two at a division).
    """
    counts = np.array([len(o.ids) for o in objects], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(counts)])
    num = int(offsets[-1])
    frame_of = np.repeat(np.arange(len(objects)), counts)
    source, target = np.asarray(source, np.int64), np.asarray(target, np.int64)
    if len(source) and np.any(frame_of[target] <= frame_of[source]):
        raise ValueError("links must point forward in time")
    in_degree = np.bincount(target, minlength=num)
    if np.any(in_degree > 1):
        raise ValueError("an object has two predecessors (merges are not CTC tracks)")
    out_degree = np.bincount(source, minlength=num)
    if num == 0:
        return TrackingResult([np.zeros(f.shape, np.uint16) for f in label_frames], np.zeros((0, 4), np.int64))
    continues = (out_degree[source] == 1) & (frame_of[target] - frame_of[source] == 1)
    graph = coo_matrix((np.ones(int(continues.sum())), (source[continues], target[continues])), shape=(num, num))
    _, segment = connected_components(graph, directed=True, connection="weak")
    # Number the segments 1.. in order of their first object (frame, then id order).
    first_object = np.full(segment.max() + 1, num, dtype=np.int64)
    np.minimum.at(first_object, segment, np.arange(num))
    order = np.argsort(first_object, kind="stable")
    track_id = np.empty_like(order)
    track_id[order] = np.arange(1, len(order) + 1)
    label_of = track_id[segment]
    begin = np.full(len(order), np.iinfo(np.int64).max, dtype=np.int64)
    end = np.full(len(order), -1, dtype=np.int64)
    np.minimum.at(begin, label_of - 1, frame_of)
    np.maximum.at(end, label_of - 1, frame_of)
    parent = np.zeros(len(order), dtype=np.int64)
    starts = ~continues
    parent[label_of[target[starts]] - 1] = label_of[source[starts]]
    tracks = np.stack([np.arange(1, len(order) + 1), begin, end, parent], axis=1)
    dtype = np.uint16 if len(order) <= np.iinfo(np.uint16).max else np.uint32
    relabelled = []
    for t, (labels, obj) in enumerate(zip(label_frames, objects)):
        lut = np.zeros(int(labels.max()) + 1 if labels.size else 1, dtype=dtype)
        lut[obj.ids] = label_of[offsets[t]:offsets[t + 1]]
        relabelled.append(lut[labels])
    return TrackingResult(relabelled, tracks.astype(np.int64))


def check_frames(label_frames: Sequence) -> list[np.ndarray]:
    """The frames as integer arrays of one shape (clear errors otherwise); per-frame
    ``Instances`` are rendered into label images first (overlaps to the higher score)."""
    from detectron2.structures import Instances

    from deepcens.postprocess.instances import instances_to_label_image

    frames = [instances_to_label_image(f) if isinstance(f, Instances) else np.asarray(f) for f in label_frames]
    if not frames:
        raise ValueError("no frames to track")
    for t, frame in enumerate(frames):
        if frame.dtype.kind not in "ui":
            raise ValueError(f"frame {t}: label image must hold integers, got {frame.dtype}")
        if frame.shape != frames[0].shape:
            raise ValueError(f"frame {t}: shape {frame.shape} differs from frame 0 {frames[0].shape}")
        if frame.dtype.kind == "i" and frame.size and frame.min() < 0:
            raise ValueError(f"frame {t}: negative labels")
    return frames
