"""Cell Tracking Challenge file names and result folders, in one place.

Naming rule (reading): frames ``tTTT``, reference masks ``man_segTTT`` / ``man_seg_TTT_ZZZ``,
markers ``man_trackTTT`` and results ``maskTTT``, with the suffix ``.tif`` or ``.tiff`` in
any letter case; the number may have any count of digits. Writing always uses ``.tif`` and
at least three digits, as the challenge's tools expect. The dataset reader, the evaluation
and ``deepcens predict`` all follow these rules.

:class:`CTCResultWriter` writes a ``<seq>_RES`` folder: ``maskTTT.tif`` with labels unique
over the sequence and a ``res_track.txt`` listing every object as a one-frame track (no
tracking; DET and SEG need no links).
"""
from __future__ import annotations

import os
import re

import numpy as np

from deepcens.errors import DeepcensInputError
from deepcens.utils.atomic import atomic_write

_SUFFIX = r"\.tiff?$"
PATTERNS: dict[str, re.Pattern] = {
    "frame": re.compile(r"^t(\d+)" + _SUFFIX, re.IGNORECASE),
    "seg": re.compile(r"^man_seg(\d+)" + _SUFFIX, re.IGNORECASE),
    "seg_slice": re.compile(r"^man_seg_(\d+)_(\d+)" + _SUFFIX, re.IGNORECASE),
    "tra": re.compile(r"^man_track(\d+)" + _SUFFIX, re.IGNORECASE),
    "res": re.compile(r"^mask(\d+)" + _SUFFIX, re.IGNORECASE),
}
_PREFIX = {"frame": "t", "seg": "man_seg", "tra": "man_track", "res": "mask"}


def match_frame(name: str, kind: str) -> tuple[int, ...] | None:
    """The number(s) in a CTC file name of ``kind``, or None when the name is not one."""
    found = PATTERNS[kind].match(name)
    return tuple(int(g) for g in found.groups()) if found else None


def frame_file_name(kind: str, frame: int, digits: int = 3) -> str:
    """The name to write for ``frame`` (``mask007.tif``); at least three digits."""
    return f"{_PREFIX[kind]}{frame:0{max(3, digits)}d}.tif"


def frame_files(folder: str | os.PathLike, kind: str) -> dict:
    """Frame number (``(frame, slice)`` for ``seg_slice``) -> path of the CTC files of one kind.

    Two files for one frame (``t001.tif`` beside ``t1.tiff``) are refused: which one is meant
    cannot be guessed.
    """
    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        raise DeepcensInputError(folder, "folder not found")
    found: dict = {}
    for name in sorted(os.listdir(folder)):
        numbers = match_frame(name, kind)
        if numbers is None:
            continue
        key = numbers if len(numbers) > 1 else numbers[0]
        if key in found:
            raise DeepcensInputError(os.path.join(folder, name),
                                     f"same frame as {os.path.basename(found[key])}: keep one of them")
        found[key] = os.path.join(folder, name)
    return found


def check_tra_frames(tra_dir: str, files: dict, num_frames: int) -> None:
    """The TRA rule of the dataset reader and the evaluation: a marker file for every frame
    ``0 .. num_frames - 1`` and none beyond (missing markers would score DET over fewer frames)."""
    missing = [t for t in range(num_frames) if t not in files]
    if missing:
        raise DeepcensInputError(tra_dir, "missing TRA frame(s) "
                                 + ", ".join(frame_file_name("tra", t) for t in missing[:5])
                                 + (" ..." if len(missing) > 5 else ""))
    extra = sorted(t for t in files if t >= num_frames)
    if extra:
        raise DeepcensInputError(files[extra[0]], f"TRA frame {extra[0]} has no image (the sequence has {num_frames} frames)")


class CTCResultWriter:
    """Writes one sequence's ``<seq>_RES`` folder, frame by frame (see the module docstring)."""

    def __init__(self, res_dir: str | os.PathLike, digits: int = 3):
        self.res_dir = os.fspath(res_dir)
        self.digits = digits
        self.next_label = 1
        self.tracks: list[tuple[int, int]] = []

    def add(self, frame: int, labels: np.ndarray) -> str:
        """Relabel ``labels`` to labels unused so far in the sequence, write ``maskTTT.tif``; return its path."""
        from deepcens.data.io import write_label_tiff

        ids = np.unique(labels)
        ids = ids[ids > 0]
        if self.next_label - 1 + len(ids) > np.iinfo(np.uint16).max:
            raise DeepcensInputError(self.res_dir, "more than 65535 objects in the sequence: CTC labels overflow uint16")
        lut = np.zeros(int(labels.max()) + 1 if labels.size else 1, dtype=np.uint16)
        lut[ids] = np.arange(self.next_label, self.next_label + len(ids))
        self.tracks.extend((label, frame) for label in range(self.next_label, self.next_label + len(ids)))
        self.next_label += len(ids)
        path = os.path.join(self.res_dir, frame_file_name("res", frame, self.digits))
        return write_label_tiff(path, lut[labels])

    def finish(self) -> str:
        """Write ``res_track.txt`` (``L B E P`` rows); returns its path."""
        path = os.path.join(self.res_dir, "res_track.txt")
        with atomic_write(path, "w") as handle:
            for label, frame in self.tracks:
                handle.write(f"{label} {frame} {frame} 0\n")
        return path


def write_result_folder(predictions: dict[int, np.ndarray], res_dir: str | os.PathLike) -> list[str]:
    """Write a whole sequence ``{frame: labels}`` as a CTC result folder; returns the paths."""
    writer = CTCResultWriter(res_dir)
    written = [writer.add(frame, predictions[frame]) for frame in sorted(predictions)]
    return written + [writer.finish()]
