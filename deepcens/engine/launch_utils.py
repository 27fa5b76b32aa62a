"""Distributed-launch helpers: a dead or hung rank must not make the others wait forever.

detectron2's ``launch`` passes ``timeout`` to ``torch.distributed.init_process_group``; a
collective (all-reduce, barrier, gather) that waits longer than that on a peer raises on
the waiting ranks, and ``launch`` (``torch.multiprocessing`` with ``join``) then ends the
remaining local processes and re-raises. The timeout comes from ``cfg.DIST_TIMEOUT_SECONDS``.
"""
from __future__ import annotations

import argparse
import datetime
from typing import Sequence

from detectron2.config import CfgNode


def dist_timeout(cfg: CfgNode) -> datetime.timedelta:
    """``cfg.DIST_TIMEOUT_SECONDS`` as the ``timedelta`` detectron2's ``launch`` takes."""
    seconds = float(cfg.DIST_TIMEOUT_SECONDS)
    if seconds <= 0:
        raise ValueError(f"DIST_TIMEOUT_SECONDS must be positive, got {seconds}")
    return datetime.timedelta(seconds=seconds)


def dist_timeout_from_args(args: argparse.Namespace) -> datetime.timedelta:
    """The timeout of the config named by ``args.config_file`` with ``args.opts`` applied
    (arguments of detectron2's ``default_argument_parser``)."""
    from deepcens.engine.setup import load_config

    return dist_timeout(load_config(args.config_file, list(args.opts or [])))


def dist_timeout_from_argv(argv: Sequence[str] | None = None) -> datetime.timedelta:
    """Parse a ``tools/train_net.py`` command line and return its distributed timeout."""
    from detectron2.engine import default_argument_parser

    return dist_timeout_from_args(default_argument_parser().parse_args(None if argv is None else list(argv)))
