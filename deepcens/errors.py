"""Errors that tools turn into one-line messages instead of tracebacks."""
from __future__ import annotations

import functools
import os
import sys
from typing import Callable


class DeepcensInputError(ValueError):
    """Bad input data: a file that cannot be read or holds something unusable.

    The message always names the file and the problem, e.g.
    ``datasets/x/img.tif: truncated TIFF (cannot decode)``.
    """

    def __init__(self, path: str | os.PathLike | None, problem: str):
        self.path = None if path is None else os.fspath(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}" if self.path else problem)


def exit_2_on_input_error(main: Callable[..., int]) -> Callable[..., int]:
    """Decorate a tool's ``main``: ``DeepcensInputError`` becomes one ``error: ...`` line on
    stderr and return status 2, the convention of every deepcens tool."""
    @functools.wraps(main)
    def guarded(*args, **kwargs) -> int:
        try:
            return main(*args, **kwargs)
        except DeepcensInputError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
    return guarded
