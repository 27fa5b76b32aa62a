"""``metrics.json`` (one JSON object per line) that survives crashes and resumes.

detectron2's ``JSONWriter`` appends lines to ``metrics.json``. A process killed in the middle
of a write leaves a partial last line; a resumed run then appends to it and the joined line
breaks every reader, and the lines written after the last checkpoint stay in the file next
to the ones the resumed run writes again for the same iterations.

:class:`SafeJSONWriter` writes each iteration's record with one ``write`` call followed by
flush + fsync, drops a partial trailing line before appending, and
:meth:`SafeJSONWriter.truncate_from` removes records at or after the iteration a resumed run
starts from. :func:`read_metrics` reads such a file and skips a trailing partial line.
"""
from __future__ import annotations

import json
import logging
import os
from collections import defaultdict

from detectron2.utils.events import EventWriter, get_event_storage

from deepcens.utils.atomic import atomic_write

logger = logging.getLogger(__name__)


def _complete_lines(data: bytes) -> list[bytes]:
    """The newline-terminated lines of ``data`` (a trailing partial line is left out)."""
    lines = data.split(b"\n")
    return lines[:-1]  # the last element is b"" (clean end) or an unterminated partial line


def read_metrics(path: str | os.PathLike) -> list[dict]:
    """Records of a ``metrics.json``: the one reader (training resume, plots, report).

    Rule for damaged lines: a trailing partial line (a crash mid-write) is left out silently,
    a broken line in the middle is skipped with one warning counting them, so one damaged
    record does not hide the rest of a training curve. When iterations repeat (a run resumed
    with an older writer), the last record of each iteration wins. A missing file, or one
    with no JSON record at all (binary data, another format), is a ``DeepcensInputError``.
    """
    from deepcens.errors import DeepcensInputError

    if not os.path.isfile(path):
        raise DeepcensInputError(path, "metrics file not found (is this a training output folder?)")
    with open(path, "rb") as handle:
        data = handle.read()
    records: dict[object, dict] = {}
    order: list[object] = []
    broken: list[int] = []
    for number, line in enumerate(_complete_lines(data), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except (ValueError, UnicodeDecodeError):
            broken.append(number)
            continue
        if not isinstance(record, dict):
            continue
        key = record.get("iteration", ("line", number))
        if key not in records:
            order.append(key)
        records[key] = record
    if data.strip() and not records:
        raise DeepcensInputError(path, "holds no JSON metrics record (not a detectron2 metrics.json)")
    if broken:
        logger.warning(f"{os.fspath(path)}: {len(broken)} line(s) are not valid JSON (first: line {broken[0]}); skipped")
    return [records[key] for key in order]


def repair_metrics(path: str | os.PathLike, first_dropped_iteration: int | None = None) -> int:
    """Rewrite ``path`` atomically without a partial trailing line and, if given, without
    records whose ``iteration`` is ``>= first_dropped_iteration``. Returns the lines dropped."""
    if not os.path.isfile(path):
        return 0
    with open(path, "rb") as handle:
        data = handle.read()
    lines = _complete_lines(data)
    dropped = 1 if data and not data.endswith(b"\n") else 0
    kept: list[bytes] = []
    for line in lines:
        if first_dropped_iteration is not None:
            try:
                iteration = json.loads(line).get("iteration")
            except (ValueError, AttributeError, UnicodeDecodeError):
                iteration = None
            if isinstance(iteration, int) and iteration >= first_dropped_iteration:
                dropped += 1
                continue
        kept.append(line)
    if dropped:
        with atomic_write(path, "wb") as handle:
            handle.write(b"".join(line + b"\n" for line in kept))
    return dropped


class SafeJSONWriter(EventWriter):
    """detectron2's ``JSONWriter`` with crash-safe appends (see the module docstring)."""

    def __init__(self, json_file: str, window_size: int = 20):
        self._path = json_file
        self._window_size = window_size
        self._last_write = -1
        self._handle = None

    def truncate_from(self, iteration: int) -> None:
        """Drop records at or after ``iteration`` (called when a resumed run starts there)."""
        if self._handle is not None:
            self._handle.close()
            self._handle = None
        dropped = repair_metrics(self._path, iteration)
        if dropped:
            logger.info(f"Removed {dropped} records of {self._path} written after the checkpoint resumed from")

    def _open(self):
        if self._handle is None:
            repair_metrics(self._path)
            self._handle = open(self._path, "ab")
        return self._handle

    def write(self) -> None:
        storage = get_event_storage()
        to_save: dict[int, dict] = defaultdict(dict)
        for key, (value, iteration) in storage.latest_with_smoothing_hint(self._window_size).items():
            if iteration <= self._last_write:
                continue
            to_save[iteration][key] = value
        if not to_save:
            return
        self._last_write = max(to_save)
        lines = []
        for iteration in sorted(to_save):
            record = dict(to_save[iteration], iteration=iteration)
            lines.append(json.dumps(record, sort_keys=True) + "\n")
        handle = self._open()
        handle.write("".join(lines).encode("utf-8"))  # one write: no interleaving of partial records
        handle.flush()
        os.fsync(handle.fileno())

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None
