"""Track tables on disk: the CTC ``res_track.txt`` and a per-track CSV with centroids."""
from __future__ import annotations

import csv
import os
from typing import Sequence

import numpy as np

from deepcens.tracking.base import TrackingResult, frame_objects
from deepcens.utils.atomic import atomic_write


def write_track_table(path: str | os.PathLike, tracks: np.ndarray) -> None:
    """``L B E P`` rows, one per track, as the CTC's ``res_track.txt`` (written atomically)."""
    tracks = np.asarray(tracks, dtype=np.int64).reshape(-1, 4)
    with atomic_write(path, "w", encoding="utf-8") as handle:
        handle.writelines(f"{l} {b} {e} {p}\n" for l, b, e, p in tracks.tolist())


def track_centroids(label_frames: Sequence[np.ndarray]) -> list[tuple[int, int, np.ndarray]]:
    """(track id, frame, centroid) of every object of relabelled frames, by track then frame."""
    rows = []
    for frame, labels in enumerate(label_frames):
        objects = frame_objects(labels)
        rows.extend((int(i), frame, c) for i, c in zip(objects.ids, objects.centroids))
    rows.sort(key=lambda row: (row[0], row[1]))
    return rows


def write_track_csv(path: str | os.PathLike, result: TrackingResult, frame_numbers: Sequence[int] | None = None) -> None:
    """One row per track and frame: ``track_id, start, end, parent, frame`` and the centroid
    (``y, x`` in 2D, ``z, y, x`` in 3D; pixels). ``frame_numbers`` maps positions to the
    frame numbers of the input when they do not start at 0."""
    numbers = list(frame_numbers) if frame_numbers is not None else list(range(len(result.labels)))
    table = {int(row[0]): row for row in result.tracks.tolist()}
    ndim = result.labels[0].ndim if result.labels else 2
    axes = ["z", "y", "x"][-ndim:]
    with atomic_write(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["track_id", "start", "end", "parent", "frame", *axes])
        for track_id, position, centroid in track_centroids(result.labels):
            _, begin, end, parent = table[track_id]
            writer.writerow([track_id, numbers[begin], numbers[end], parent, numbers[position],
                             *(f"{value:.2f}" for value in centroid)])
