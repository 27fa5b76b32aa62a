"""Input discovery for ``deepcens predict``: what the user gave -> named sources of pages.

A *source* is one input as the user gave it (an image file, a multi-page TIFF stack or a
Cell Tracking Challenge sequence folder of ``tTTT.tif`` frames) and becomes one output; a
*page* is one 2D image of it. Source names are unique by construction: file stems, prefixed
by as many parent folders as needed (``set1_raw``, ``set2_raw``), with the suffix kept where
two files differ only by it (``img_png``, ``img_tif``); names are compared ignoring case, so
outputs never collide on case-insensitive file systems either.
"""
from __future__ import annotations

import glob
import os
import re
from dataclasses import dataclass, field
from typing import Sequence

from deepcens.data.ctc_files import PATTERNS as CTC_PATTERNS
from deepcens.data.io import IMAGE_SUFFIXES, iter_image_files, tiff_page_count
from deepcens.errors import DeepcensInputError

GLOB_CHARS = re.compile(r"[*?\[]")


@dataclass
class Page:
    """One 2D image to predict: a file, a page of a stack or a frame of a sequence."""

    file_name: str
    index: int | None = None  # page of a stack; None for a plain file
    frame: int | None = None  # frame number (sequences, stacks)
    digits: int = 3  # zero-padding of the frame number in CTC names

    @property
    def label(self) -> str:
        """How the page is named in messages and results: ``file`` or ``file[page]``."""
        return self.file_name if self.index is None else f"{self.file_name}[{self.index}]"


@dataclass
class Source:
    """One input as the user gave it, written as one label output."""

    kind: str  # "image" | "stack" | "sequence"
    path: str
    pages: list[Page] = field(default_factory=list)
    name_parts: tuple[str, ...] = ()  # unique output name, most specific part last

    @property
    def name(self) -> str:
        return "_".join(self.name_parts)


def parse_frames(text: str | None) -> slice | None:
    """``"START:STOP"`` (either may be empty) -> a slice over frame numbers / page indices."""
    if not text:
        return None
    match = re.fullmatch(r"\s*(\d*)\s*:\s*(\d*)\s*", text)
    if not match:
        raise DeepcensInputError(None, f"--frames {text!r} is not START:STOP (e.g. 0:3)")
    start, stop = (int(v) if v else None for v in match.groups())
    if start is not None and stop is not None and stop <= start:
        raise DeepcensInputError(None, f"--frames {text!r} selects no frame (STOP must be above START)")
    return slice(start, stop)


def in_range(value: int, frames: slice | None) -> bool:
    """Whether frame / page ``value`` is inside ``--frames``."""
    if frames is None:
        return True
    return (frames.start is None or value >= frames.start) and (frames.stop is None or value < frames.stop)


def _file_source(path: str, frames: slice | None) -> Source:
    if not path.lower().endswith(IMAGE_SUFFIXES):
        raise DeepcensInputError(path, f"not an image file (expected one of {', '.join(IMAGE_SUFFIXES)})")
    count = tiff_page_count(path)
    if count > 1:
        pages = [Page(path, index=i, frame=i, digits=max(3, len(str(count - 1))))
                 for i in range(count) if in_range(i, frames)]
        if not pages:
            raise DeepcensInputError(path, f"no page of the {count}-page stack is in --frames")
        return Source("stack", path, pages)
    return Source("image", path, [Page(path)])


def _sequence_frames(folder: str) -> list[Page] | None:
    """CTC frames ``tTTT.tif`` of a folder holding nothing but them, else None."""
    files = list(iter_image_files(folder))
    matches = [CTC_PATTERNS["frame"].match(os.path.basename(f)) for f in files]
    if not files or not all(matches):
        return None
    pages = sorted((Page(f, frame=int(m.group(1)), digits=len(m.group(1))) for f, m in zip(files, matches)),
                   key=lambda page: page.frame)
    for before, after in zip(pages, pages[1:]):
        if before.frame == after.frame:
            raise DeepcensInputError(after.file_name, f"same frame as {os.path.basename(before.file_name)}: keep one")
    return pages


def collect_inputs(inputs: Sequence[str], frames: str | None = None, skipped: list[str] | None = None) -> list[Source]:
    """Expand files, folders, globs, stacks and CTC sequence folders into uniquely named sources.

    With a ``skipped`` list, files that cannot be opened are appended to it (as
    ``"path: problem"``) instead of ending the run (``--skip-bad``).
    """
    frame_range = parse_frames(frames)
    sources: list[Source] = []

    def add_file(path: str) -> None:
        try:
            sources.append(_file_source(path, frame_range))
        except DeepcensInputError as error:
            if skipped is None:
                raise
            skipped.append(str(error))

    for given in inputs:
        paths = [given]
        if not os.path.exists(given) and GLOB_CHARS.search(given):
            paths = sorted(glob.glob(given))
            if not paths:
                raise DeepcensInputError(given, "no file matches this pattern")
        for path in paths:
            if os.path.isdir(path):
                pages = _sequence_frames(path)
                if pages is not None:
                    pages = [p for p in pages if in_range(p.frame, frame_range)]
                    if not pages:
                        raise DeepcensInputError(path, "no frame of the sequence is in --frames")
                    sources.append(Source("sequence", path, pages))
                    continue
                files = list(iter_image_files(path))
                if not files:
                    raise DeepcensInputError(path, "folder holds no image file")
                for file in files:
                    add_file(file)
            elif os.path.isfile(path):
                add_file(path)
            else:
                raise DeepcensInputError(path, "file not found")
    assign_names(sources)
    return sources


def _name_parts(source: Source, keep_suffix: bool) -> list[str]:
    path = os.path.abspath(source.path).rstrip(os.sep)
    base = os.path.basename(path)
    if source.kind == "sequence":
        stem = base
    else:
        stem, suffix = os.path.splitext(base)
        if keep_suffix and suffix:
            stem = f"{stem}_{suffix[1:]}"
    return [p for p in os.path.dirname(path).split(os.sep) if p] + [stem]


def assign_names(sources: list[Source]) -> None:
    """Give every source a unique (case-insensitively) ``name_parts``; see the module docstring."""
    seen: set[str] = set()
    for source in sources:
        real = os.path.realpath(source.path)
        if real in seen:
            raise DeepcensInputError(source.path, "given more than once")
        seen.add(real)

    def key(parts: Sequence[str]) -> tuple[str, ...]:
        return tuple(p.casefold() for p in parts)

    stems = [key(_name_parts(s, False)) for s in sources]
    all_parts = [_name_parts(s, stems.count(k) > 1) for s, k in zip(sources, stems)]
    depths = [1] * len(sources)
    while True:  # lengthen only the names that collide
        names = [key(p[-d:]) for p, d in zip(all_parts, depths)]
        colliding = [i for i, n in enumerate(names) if names.count(n) > 1 and depths[i] < len(all_parts[i])]
        if not colliding:
            break
        for i in colliding:
            depths[i] += 1
    final = [list(p[-d:]) for p, d in zip(all_parts, depths)]
    used: set[tuple[str, ...]] = set()
    for source, parts in zip(sources, final):
        number = 1
        candidate = list(parts)
        while key(["_".join(candidate)]) in used:  # names equal but for case, e.g. A.tif and a.tif
            number += 1
            candidate = parts[:-1] + [f"{parts[-1]}_{number}"]
        used.add(key(["_".join(candidate)]))
        source.name_parts = tuple(candidate)
