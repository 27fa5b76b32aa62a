"""Track a CTC result folder in place: persistent ids in ``maskTTT.tif``, a real ``res_track.txt``.

The prediction writer first writes every frame's objects (each a one-frame track); with
tracking it then calls :func:`track_result_folder`, which links the frames with the configured
tracker and rewrites the folder so that it passes the CTC validity check and scores TRA.
"""
from __future__ import annotations

import os
from typing import Callable

import numpy as np

from deepcens.data.io import read_label, write_label_tiff
from deepcens.errors import DeepcensInputError
from deepcens.data.ctc_files import frame_files
from deepcens.tracking.io import write_track_csv, write_track_table


def track_result_folder(res_dir: str | os.PathLike, tracker, *, csv_path: str | os.PathLike | None = None,
                        image_of: Callable[[int], np.ndarray] | None = None,
                        overlay_path: Callable[[int], str] | None = None,
                        save: Callable[[str, Callable[[str], object]], object] | None = None) -> dict:
    """Link the ``maskTTT.tif`` frames of ``res_dir`` and rewrite them with track ids.

    Writes ``res_track.txt`` (frame numbers as in the file names, which must be consecutive),
    the per-track CSV at ``csv_path`` and, when ``image_of(frame)`` and ``overlay_path(frame)``
    are given, one overlay per 2D frame with the track ids drawn. Every file goes through
    ``save(path, write)`` when given (a prediction run's folder), else ``write(path)``.
    Returns counts and paths.
    """
    save = save or (lambda path, write: write(path))
    res_dir = os.fspath(res_dir)
    files = frame_files(res_dir, "res")
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
        save(files[n], lambda path, labels=labels: write_label_tiff(path, labels))
        written.append(files[n])
    table = result.tracks.copy()
    table[:, 1:3] += numbers[0]
    track_path = os.path.join(res_dir, "res_track.txt")
    save(track_path, lambda path: write_track_table(path, table))
    written.append(track_path)
    if csv_path is not None:
        save(os.fspath(csv_path), lambda path: write_track_csv(path, result, frame_numbers=numbers))
        written.append(os.fspath(csv_path))
    if image_of is not None and overlay_path is not None and frames[0].ndim == 2:
        from deepcens.visualize import draw_tracks, to_display_uint8, write_overlay

        for n, labels in zip(numbers, result.labels):
            drawing = draw_tracks(to_display_uint8(image_of(n)), labels)
            save(overlay_path(n), lambda path, drawing=drawing: write_overlay(path, drawing))
            written.append(overlay_path(n))
    return {"tracks": result.num_tracks, "divisions": result.divisions(), "frames": len(numbers), "outputs": written}
