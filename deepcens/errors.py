"""Errors that tools turn into one-line messages instead of tracebacks, and the one wrapper
every tool runs under (:func:`run_tool`)."""
from __future__ import annotations

import functools
import os
import sys
from typing import Callable

INTERRUPTED_STATUS = 130  # the shell's status for a command ended by Ctrl-C (128 + SIGINT)
_ORIGIN_MARK = "DeepcensInputError: "


class DeepcensInputError(ValueError):
    """Bad input data: a file that cannot be read or holds something unusable.

    The message always names the file and the problem, e.g.
    ``datasets/x/img.tif: truncated TIFF (cannot decode)``.

    The error can be rebuilt from its message alone (``DeepcensInputError(str(error))``):
    that is how torch's DataLoader re-raises a worker's exception, with the worker's traceback
    as the message. The rebuilt error keeps only the original one-line message (the last
    ``DeepcensInputError: ...`` line of that text) and the traceback in :attr:`details`.
    """

    def __init__(self, path: str | os.PathLike | None, problem: str | None = None):
        self.details = ""
        if problem is None:  # rebuilt from a message (pickling, DataLoader worker re-raise)
            message = "" if path is None else str(path)
            if "\n" in message:
                self.details = message
                lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
                last = lines[-1] if lines else ""
                message = last.partition(_ORIGIN_MARK)[2] or last
            self.path, self.problem = None, message
            super().__init__(message)
            return
        self.path = None if path is None else os.fspath(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}" if self.path else problem)

    def __reduce__(self):
        return (_rebuild_input_error, (self.path, self.problem))


def _rebuild_input_error(path: str | None, problem: str) -> DeepcensInputError:
    return DeepcensInputError(path, problem) if path is not None else DeepcensInputError(problem)


def report_input_error(error: DeepcensInputError) -> int:
    """Print ``error: <path>: <problem>`` on stderr; return the tools' bad-input status 2."""
    print(f"error: {error}", file=sys.stderr, flush=True)
    return 2


def run_tool(main: Callable[..., int]) -> Callable[..., int]:
    """Decorate a tool's entry point with the convention of every deepcens tool.

    ``DeepcensInputError`` becomes one ``error: ...`` line on stderr and status 2; Ctrl-C
    becomes one ``interrupted`` line and status 130, never a traceback.
    """
    @functools.wraps(main)
    def guarded(*args, **kwargs) -> int:
        try:
            return main(*args, **kwargs)
        except DeepcensInputError as error:
            return report_input_error(error)
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr, flush=True)
            return INTERRUPTED_STATUS
    return guarded


exit_2_on_input_error = run_tool  # the name tools used before run_tool handled Ctrl-C too


BAD_INPUT_POLICIES = ("fail", "skip")  # DATASETS.BAD_INPUT_POLICY: stop at a bad file, or skip and count it


def check_bad_input_policy(policy: str) -> str:
    """Return ``policy`` if it is one of :data:`BAD_INPUT_POLICIES`, else raise ``ValueError``."""
    if policy not in BAD_INPUT_POLICIES:
        raise ValueError(f"DATASETS.BAD_INPUT_POLICY must be one of {', '.join(BAD_INPUT_POLICIES)}, got {policy!r}")
    return policy
