"""Bad-input errors raised inside DataLoader worker processes, turned back into one line.

torch's DataLoader re-raises a worker's exception by calling ``type(exc)(message)`` with the
whole worker traceback as ``message``; ``DeepcensInputError(path, problem)`` cannot be built
from one argument, so the main process gets a ``RuntimeError`` holding a traceback, and the
tools' ``except DeepcensInputError`` misses it. :func:`input_error_from_worker` recovers the
original one-line error from that text.
"""
from __future__ import annotations

import re

from deepcens.errors import DeepcensInputError

_HEADER = re.compile(r"^Caught (\w+) in DataLoader worker process \d+\.")
_LAST_LINE = re.compile(r"^(?:[\w.]+\.)?DeepcensInputError: (.*)$")


def input_error_from_worker(error: BaseException) -> DeepcensInputError | None:
    """The ``DeepcensInputError`` a DataLoader worker raised, if ``error`` is its re-raise."""
    text = str(error)
    header = _HEADER.match(text)
    if header is None or header.group(1) != "DeepcensInputError":
        return None
    lines = [line for line in text.strip().splitlines() if line.strip()]
    match = _LAST_LINE.match(lines[-1].strip()) if lines else None
    if match is None:
        return DeepcensInputError(None, "bad input in a DataLoader worker: " + " ".join(text.split())[-300:])
    message = match.group(1)
    path, separator, problem = message.partition(": ")
    return DeepcensInputError(path, problem) if separator else DeepcensInputError(None, message)
