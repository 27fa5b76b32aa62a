"""Atomic file writing: a crash never leaves a half-written checkpoint or result file.

Everything deepcens writes (checkpoints, metrics, reports, predictions) goes through
:func:`atomic_write` or :func:`atomic_save_bytes`: data goes to a temporary file in the same
folder, is flushed and fsynced, then renamed over the target (rename is atomic on POSIX).
The file gets the mode a plain ``open`` would give it (0666 less the umask), not the private
0600 of ``tempfile.mkstemp``, so collaborators and services can read results.
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from typing import IO, Any, Iterator


def _current_umask() -> int:
    mask = os.umask(0)  # reading the umask means setting it; put it straight back
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w", **open_kwargs: Any) -> Iterator[IO]:
    """Open a temporary file beside ``path``; on success rename it to ``path``.

    On any exception the temporary file is removed and ``path`` keeps its old content.
    """
    if mode not in ("w", "wb"):
        raise ValueError("atomic_write supports modes 'w' and 'wb'")
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp_path = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=folder)
    try:
        os.fchmod(fd, 0o666 & ~_current_umask())
        with os.fdopen(fd, mode, **open_kwargs) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_path, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_path)
        raise


def atomic_save_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_write(path, "wb") as handle:
        handle.write(data)


def atomic_save_json(path: str | os.PathLike, obj: Any, **dump_kwargs: Any) -> None:
    """Write ``obj`` as JSON to ``path`` atomically."""
    dump_kwargs.setdefault("indent", 2)
    with atomic_write(path, "w", encoding="utf-8") as handle:
        json.dump(obj, handle, **dump_kwargs)
        handle.write("\n")


def check_output_folder(path: str | os.PathLike, what: str = "output folder") -> str:
    """Create ``path`` if needed and make sure files can be written into it; returns it.

    Tools call this before any work starts, so a run whose results could not be written
    fails in a second with ``error: <path>: ...``, not after the model ran.
    """
    from deepcens.errors import DeepcensInputError

    path = os.fspath(path)
    if os.path.exists(path) and not os.path.isdir(path):
        raise DeepcensInputError(path, f"{what} is a file, not a folder")
    try:
        os.makedirs(path, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".deepcens-write-check.", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise DeepcensInputError(path, f"cannot write into the {what} ({exc.strerror or exc})") from None
    return path
