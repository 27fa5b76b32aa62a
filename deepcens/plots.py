"""Training curves from a run's ``metrics.json`` (``deepcens plot``; the DeepCeNS paper's Fig. 2).

    deepcens plot OUTPUT_DIR [--output DIR] [--metric PATTERN ...]

Writes ``loss.png`` (``total_loss`` and ``val_total_loss`` over iterations) and
``metrics.png`` (validation AP / CTC measures: ``*segm/AP``, ``*bbox/AP``, ``*SEG``, ...)
into ``OUTPUT_DIR/plots`` (or ``--output``). ``metrics.json`` is read by
:func:`deepcens.utils.metrics_log.read_metrics`.
"""
from __future__ import annotations

import argparse
import fnmatch
import io
import math
import os
from typing import Iterable, Sequence

from deepcens.errors import DeepcensInputError
from deepcens.utils.atomic import atomic_save_bytes

LOSS_KEYS = ("total_loss", "val_total_loss")
DEFAULT_METRIC_PATTERNS = ("*segm/AP", "*bbox/AP", "*SEG", "*DET", "*OP_CSB")


def read_metrics(path: str) -> list[dict]:
    """Training records (those with an ``iteration``) of a ``metrics.json``, read by
    :func:`deepcens.utils.metrics_log.read_metrics` (its rule for a torn line applies)."""
    from deepcens.utils.metrics_log import read_metrics as read_metrics_log

    records = [r for r in read_metrics_log(path) if "iteration" in r]
    if not records:
        raise DeepcensInputError(path, "no metrics record with an 'iteration'")
    return records


def metric_series(records: Iterable[dict], key: str) -> tuple[list[int], list[float]]:
    """(iterations, values) of one scalar; later records of a resumed run replace earlier ones."""
    by_iteration: dict[int, float] = {}
    for record in records:
        value = record.get(key)
        if isinstance(value, (int, float)) and math.isfinite(value):
            by_iteration[int(record["iteration"])] = float(value)
    iterations = sorted(by_iteration)
    return iterations, [by_iteration[i] for i in iterations]


def matching_keys(records: Sequence[dict], patterns: Sequence[str]) -> list[str]:
    """Scalar keys matching any fnmatch pattern, in first-seen order."""
    keys: list[str] = []
    for record in records:
        for key in record:
            if key not in keys and any(fnmatch.fnmatchcase(key, p) for p in patterns):
                keys.append(key)
    return keys


def _save_figure(figure, path: str) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    atomic_save_bytes(path, buffer.getvalue())
    return path


def _is_ctc_key(key: str) -> bool:
    return "ctc/" in key or key.rsplit("/", 1)[-1].split("-")[0] in ("SEG", "DET", "OP_CSB")


def plot_metrics(output_dir: str, plot_dir: str | None = None,
                 metric_patterns: Sequence[str] = DEFAULT_METRIC_PATTERNS) -> dict[str, str]:
    """Write ``loss.png`` and (when validation metrics exist) ``metrics.png``; returns {name: path}."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    records = read_metrics(os.path.join(output_dir, "metrics.json"))
    plot_dir = plot_dir or os.path.join(output_dir, "plots")
    written: dict[str, str] = {}
    loss_keys = [k for k in LOSS_KEYS if metric_series(records, k)[0]]
    if loss_keys:
        figure, axis = plt.subplots(figsize=(6, 4))
        for key in loss_keys:
            iterations, values = metric_series(records, key)
            axis.plot(iterations, values, marker="o" if len(values) < 30 else None, markersize=3,
                      label="training loss" if key == "total_loss" else "validation loss")
        axis.set_xlabel("iteration")
        axis.set_ylabel("loss")
        axis.set_title("Training and validation loss")
        axis.grid(alpha=0.3)
        axis.legend()
        written["loss"] = _save_figure(figure, os.path.join(plot_dir, "loss.png"))
        plt.close(figure)
    metric_keys = [k for k in matching_keys(records, metric_patterns) if metric_series(records, k)[0]]
    # COCO AP is in percent, CTC measures in 0..1: one panel each so neither is flattened.
    groups = [(title, ylabel, keys) for title, ylabel, keys in (
        ("Validation COCO AP", "AP (%)", [k for k in metric_keys if not _is_ctc_key(k)]),
        ("Validation CTC measures", "SEG / DET / OP_CSB", [k for k in metric_keys if _is_ctc_key(k)])) if keys]
    if groups:
        figure, axes = plt.subplots(1, len(groups), figsize=(6 * len(groups), 4), squeeze=False)
        for axis, (title, ylabel, keys) in zip(axes[0], groups):
            for key in keys:
                iterations, values = metric_series(records, key)
                axis.plot(iterations, values, marker="o", markersize=3, label=key)
            axis.set_xlabel("iteration")
            axis.set_ylabel(ylabel)
            axis.set_title(title)
            axis.grid(alpha=0.3)
            axis.legend(fontsize="small")
        written["metrics"] = _save_figure(figure, os.path.join(plot_dir, "metrics.png"))
        plt.close(figure)
    if not written:
        raise DeepcensInputError(os.path.join(output_dir, "metrics.json"),
                                 f"none of {list(LOSS_KEYS)} or {list(metric_patterns)} is recorded")
    return written


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``plot`` options."""
    parser.add_argument("output_dir", help="training output folder holding metrics.json")
    parser.add_argument("--output", default="", help="folder for the PNGs (default OUTPUT_DIR/plots)")
    parser.add_argument("--metric", action="append", default=None, metavar="PATTERN",
                        help=f"metric key pattern (fnmatch), repeatable; default {' '.join(DEFAULT_METRIC_PATTERNS)}")


def run(args: argparse.Namespace) -> int:
    """Write the plots and print their paths."""
    written = plot_metrics(args.output_dir, args.output or None, tuple(args.metric or DEFAULT_METRIC_PATTERNS))
    for path in written.values():
        print(path)
    return 0
