"""Track a CTC result folder in place: persistent ids in ``maskTTT.tif``, a real ``res_track.txt``.

The prediction writer first writes every frame's objects (each a one-frame track); with
tracking it then calls :func:`track_result_folder`, which links the frames with the configured
tracker and rewrites the folder so that it passes the CTC validity check and scores TRA.
"""
from __future__ import annotations

import io
import os
from typing import Callable

import numpy as np
import tifffile

from deepcens.data.io import read_label
from deepcens.errors import DeepcensInputError
from deepcens.evaluation.ctc_measures import ctc_frame_files
from deepcens.tracking.io import write_track_csv, write_track_table
from deepcens.utils.atomic import atomic_save_bytes


def _tiff_bytes(labels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, np.ascontiguousarray(labels), photometric="minisblack")
    return buffer.getvalue()


def track_result_folder(res_dir: str | os.PathLike, tracker, *, csv_path: str | os.PathLike | None = None,
                        image_of: Callable[[int], np.ndarray] | None = None,
                        overlay_path: Callable[[int], str] | None = None) -> dict:
    """Link the ``maskTTT.tif`` frames of ``res_dir`` and rewrite them with track ids.

    Writes ``res_track.txt`` (frame numbers as in the file names, which must be consecutive),
    the per-track CSV at ``csv_path`` and, when ``image_of(frame)`` and ``overlay_path(frame)``
    are given, one overlay per 2D frame with the track ids drawn. Returns counts and paths.
    """
    res_dir = os.fspath(res_dir)
    files = ctc_frame_files(res_dir, "res")
    if not files:
        raise DeepcensInputError(res_dir, "no maskTTT.tif frames to track")
    numbers = sorted(files)
    if numbers != list(range(numbers[0], numbers[0] + len(numbers))):
        raise DeepcensInputError(res_dir, f"tracking needs consecutive frames, got {numbers[:3]}... with gaps")
    frames = [read_label(files[n], volume=True) for n in numbers]
    for n, frame in zip(numbers, frames):
        if frame.shape != frames[0].shape:
            raise DeepcensInputError(files[n], f"frame shape {frame.shape} differs from the first frame's {frames[0].shape}")
    result = tracker.track(frames)
    if result.num_tracks > np.iinfo(np.uint16).max:
        raise DeepcensInputError(res_dir, f"{result.num_tracks} tracks do not fit the CTC's 16-bit labels")
    written = []
    for n, labels in zip(numbers, result.labels):
        atomic_save_bytes(files[n], _tiff_bytes(labels.astype(np.uint16)))
        written.append(files[n])
    table = result.tracks.copy()
    table[:, 1:3] += numbers[0]
    track_path = os.path.join(res_dir, "res_track.txt")
    write_track_table(track_path, table)
    written.append(track_path)
    if csv_path is not None:
        write_track_csv(csv_path, result, frame_numbers=numbers)
        written.append(os.fspath(csv_path))
    if image_of is not None and overlay_path is not None and frames[0].ndim == 2:
        from deepcens.visualize import draw_tracks, to_display_uint8, write_overlay

        for n, labels in zip(numbers, result.labels):
            written.append(write_overlay(overlay_path(n), draw_tracks(to_display_uint8(image_of(n)), labels)))
    return {"tracks": result.num_tracks, "divisions": result.divisions(), "frames": len(numbers), "outputs": written}
