"""Distributed-launch helpers: a dead or hung rank must not make the others wait forever.

detectron2's ``launch`` passes ``timeout`` to ``torch.distributed.init_process_group``; a
collective (all-reduce, barrier, gather) that waits longer than that on a peer raises on
the waiting ranks, and ``launch`` (``torch.multiprocessing`` with ``join``) then ends the
remaining local processes and re-raises. The timeout comes from ``cfg.RUN.DIST_TIMEOUT_SECONDS``.
"""
from __future__ import annotations

import argparse
import datetime
import functools
import sys
from typing import Any, Callable

from detectron2.config import CfgNode


def dist_timeout(cfg: CfgNode) -> datetime.timedelta:
    """``cfg.RUN.DIST_TIMEOUT_SECONDS`` as the ``timedelta`` detectron2's ``launch`` takes."""
    seconds = float(cfg.RUN.DIST_TIMEOUT_SECONDS)
    if seconds <= 0:
        raise ValueError(f"RUN.DIST_TIMEOUT_SECONDS must be positive, got {seconds}")
    return datetime.timedelta(seconds=seconds)


def dist_timeout_from_args(args: argparse.Namespace) -> datetime.timedelta:
    """The timeout of the config named by ``args.config_file`` with ``args.opts`` applied
    (arguments of detectron2's ``default_argument_parser``)."""
    from deepcens.engine.setup import load_config

    return dist_timeout(load_config(args.config_file, list(args.opts or [])))


def end_process_group() -> None:
    """Wait for every rank, then tear the process groups down.

    ``launch`` leaves them to interpreter exit, where gloo's threads can abort the process
    ("terminate called without an active exception") after the work is done.
    """
    import torch.distributed as dist
    from detectron2.utils import comm

    if dist.is_available() and dist.is_initialized():
        comm.synchronize()
        dist.destroy_process_group()


#: exit status of the tools for bad input and for a training stopped by a non-finite loss
EXIT_ERROR = 2


class exit_on_error:  # noqa: N801  (used as a decorator)
    """Wrap a tool's ``main``: ``DeepcensInputError`` / ``NonFiniteLossError`` become one
    ``error: ...`` line on stderr and exit status 2, in every process ``launch`` starts
    (exceptions of spawned ranks would otherwise reach the parent only as traceback text).

    A class, not a closure, so the wrapped ``main`` pickles for ``launch``'s spawn.
    """

    def __init__(self, main: Callable):
        self.main = main
        functools.update_wrapper(self, main)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        from deepcens.engine.hooks import NonFiniteLossError
        from deepcens.errors import DeepcensInputError

        try:
            result = self.main(*args, **kwargs)
            end_process_group()
            return result
        except (DeepcensInputError, NonFiniteLossError) as error:
            print(f"error: {error}", file=sys.stderr, flush=True)
            raise SystemExit(EXIT_ERROR) from None

    def __reduce__(self):
        return (exit_on_error, (self.main,))


def launch_reporting_errors(main: Callable, num_gpus_per_machine: int, **launch_kwargs: Any) -> int:
    """detectron2's ``launch`` of ``exit_on_error(main)``; returns the tool's exit status.

    A rank that stopped with a reported error (status 2) makes ``launch`` end the others and
    raise ``ProcessExitedException``; that becomes status 2 without a second traceback.
    """
    from detectron2.engine import launch
    from torch.multiprocessing import ProcessExitedException

    guarded = main if isinstance(main, exit_on_error) else exit_on_error(main)
    try:
        launch(guarded, num_gpus_per_machine, **launch_kwargs)
    except SystemExit as exit_request:  # single process: main ran here
        if exit_request.code == EXIT_ERROR:
            return EXIT_ERROR
        raise
    except ProcessExitedException as error:
        if error.exit_code == EXIT_ERROR:
            return EXIT_ERROR
        raise
    return 0
