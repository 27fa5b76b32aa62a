"""Errors that tools turn into one-line messages instead of tracebacks."""
from __future__ import annotations

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


def run_tool(main: Callable[[], int]) -> int:
    """Run a tool's ``main``: bad input becomes one ``error: ...`` line on stderr and status 2."""
    try:
        return main()
    except DeepcensInputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
