"""A prediction run's output folder, handled as a unit.

- **lock**: one run writes into a folder at a time (an ``flock`` on ``.predict.lock``, released
  by the system however the process ends); a second run is refused at once;
- **status**: ``predict_run.json`` says ``running`` from the start, ``complete`` at the end and
  ``incomplete`` (with the reason) after an error or Ctrl-C, so a folder never looks complete
  when it is not; a run's summary.csv / coco_results.json of an earlier run are removed when
  a new run starts;
- **ownership**: the run writes only files it planned before the model ran; a planned path
  that is an input, or an existing file no earlier ``deepcens predict`` wrote here, is
  refused before anything is written (``predict_run.json`` lists the files written by
  predict runs in this folder).
"""
from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import logging
import os
import sys
from typing import Callable, Iterable

from deepcens.errors import DeepcensInputError
from deepcens.utils.atomic import atomic_save_json, check_output_folder

logger = logging.getLogger(__name__)

STATUS_FILE = "predict_run.json"
LOCK_FILE = ".predict.lock"
RUN_FILES = ("summary.csv", "coco_results.json")  # written once per run, at its end


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


class RunFolder:
    """The output folder of one prediction run (see the module docstring)."""

    def __init__(self, output_dir: str):
        self.output_dir = check_output_folder(output_dir, "output folder")
        self.status_path = os.path.join(self.output_dir, STATUS_FILE)
        self._lock_handle = None
        self._owned = self._files_of_earlier_runs()
        self._planned: set[str] = set()
        self.written: list[str] = []
        self.status: dict = {}

    def _rel(self, path: str) -> str:
        return os.path.relpath(os.path.abspath(path), os.path.abspath(self.output_dir))

    def _files_of_earlier_runs(self) -> set[str]:
        if not os.path.isfile(self.status_path):
            return set()
        try:
            with open(self.status_path, encoding="utf-8") as handle:
                files = json.load(handle).get("files", [])
            return {str(f) for f in files}
        except (OSError, ValueError, AttributeError):
            raise DeepcensInputError(self.status_path, "unreadable run status file; remove it, or use another "
                                     "--output") from None

    # ---- lock ----------------------------------------------------------------------------------
    def lock(self) -> None:
        """Take the folder's lock or refuse: another run is writing here."""
        handle = open(os.path.join(self.output_dir, LOCK_FILE), "a+")  # noqa: SIM115 (held for the run)
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            raise DeepcensInputError(self.output_dir, "another deepcens predict is writing into this folder; "
                                     "wait for it or choose another --output") from None
        self._lock_handle = handle

    def unlock(self) -> None:
        if self._lock_handle is not None:
            fcntl.flock(self._lock_handle.fileno(), fcntl.LOCK_UN)
            self._lock_handle.close()
            self._lock_handle = None

    # ---- plan ----------------------------------------------------------------------------------
    def plan(self, paths: Iterable[str], inputs: Iterable[str]) -> None:
        """Check every path the run will write, before any work: unique, not an input, and
        either new or written by an earlier predict run here."""
        input_files = {os.path.realpath(p) for p in inputs}
        seen: dict[str, str] = {}
        reserved = {os.path.realpath(os.path.join(self.output_dir, name)) for name in (STATUS_FILE, LOCK_FILE)}
        for path in paths:
            real = os.path.realpath(path)
            key = os.path.normcase(real).casefold()
            if key in seen:
                raise DeepcensInputError(path, f"two outputs of this run would share this file ({seen[key]})")
            seen[key] = path
            if real in input_files:
                raise DeepcensInputError(path, "output would overwrite an input file; choose another --output")
            if real in reserved:
                raise DeepcensInputError(path, "output would overwrite the run's own status file")
            if os.path.isdir(real):
                raise DeepcensInputError(path, "output file name is taken by a folder")
            if os.path.lexists(path) and self._rel(path) not in self._owned:
                raise DeepcensInputError(path, "exists and was not written by deepcens predict; "
                                         "choose another --output or move the file")
            self._planned.add(real)

    # ---- status --------------------------------------------------------------------------------
    def start(self, command: str) -> None:
        """Mark the run in progress; remove run-level files of an earlier run (they would look current)."""
        for name in RUN_FILES:
            path = os.path.join(self.output_dir, name)
            if os.path.isfile(path) and name in self._owned:
                os.unlink(path)
        self.status = {"state": "running", "started": _now(), "command": command, "pid": os.getpid(),
                       "files": sorted(self._owned)}
        self._write_status()

    def save(self, path: str, write: Callable[[str], object]) -> str:
        """Write one planned file through ``write(path)``; returns ``path``."""
        if os.path.realpath(path) not in self._planned:
            raise RuntimeError(f"{path}: not a planned output of this run")
        write(path)
        self.written.append(path)
        relative = self._rel(path)
        if relative not in self._owned:
            self._owned.add(relative)
            self.status["files"] = sorted(self._owned)
            self._write_status()
        return path

    def finish(self, state: str, **details) -> None:
        """Record the final ``state`` (``complete`` / ``incomplete``) with ``details``."""
        self.status.update(details, state=state, finished=_now(), files=sorted(self._owned))
        self._write_status()

    def _write_status(self) -> None:
        atomic_save_json(self.status_path, self.status)


@contextlib.contextmanager
def run_folder(output_dir: str):
    """A locked :class:`RunFolder`; an exception or Ctrl-C marks the run ``incomplete``."""
    folder = RunFolder(output_dir)
    folder.lock()
    try:
        yield folder
    except BaseException as error:
        if folder.status:
            reason = "interrupted (Ctrl-C)" if isinstance(error, KeyboardInterrupt) else " ".join(str(error).split())[:300]
            with contextlib.suppress(Exception):
                folder.finish("incomplete", error=reason or type(error).__name__)
        raise
    finally:
        folder.unlock()


def command_line() -> str:
    """The command as typed, for the status file."""
    return " ".join(sys.argv)
