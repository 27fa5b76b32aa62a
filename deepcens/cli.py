"""The ``deepcens`` command: one entry point for every tool (``deepcens COMMAND --help``).

Each command is a module of the package with ``add_arguments(parser)`` and ``run(args) -> int``;
modules are imported only when their command runs, so ``deepcens --help`` is quick and a
command whose dependencies are missing does not break the others. ``tools/*.py`` are thin
shims over the same modules. Every command runs under :func:`deepcens.errors.run_tool`: bad
input is one ``error: <path>: <problem>`` line and status 2, Ctrl-C one line and status 130.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys

#: command -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("deepcens.engine.train_net", "train or evaluate a model (detectron2 launcher; tools/train_net.py)"),
    "evaluate": ("deepcens.evaluation.offline", "score saved predictions: COCO results, label images, CTC folders"),
    "predict": ("deepcens.predict.cli", "predict label images, CTC results and COCO json with a trained model"),
    "report": ("deepcens.report", "HTML/Markdown report of an evaluated run (best and worst images)"),
    "plot": ("deepcens.plots", "plot loss and validation metrics from a run's metrics.json"),
    "anchors": ("deepcens.analysis.anchor_stats", "object-size statistics and anchor sizes of a dataset"),
    "grid-search": ("deepcens.analysis.grid_search", "grid-search the dense decoder's thresholds on a dataset"),
    "synthetic": ("deepcens.data.make_synthetic", "write the deterministic synthetic datasets"),
    "benchmark": ("deepcens.benchmarks.cli", "speed, memory and metric benchmarks"),
}


def _top_parser() -> argparse.ArgumentParser:
    listing = "\n".join(f"  {name:<12} {help_text}" for name, (_, help_text) in COMMANDS.items())
    parser = argparse.ArgumentParser(
        prog="deepcens", description="deepcens: cell and nucleus instance segmentation on detectron2",
        usage="deepcens COMMAND [options]", epilog=f"commands:\n{listing}\n\n'deepcens COMMAND --help' "
        "shows a command's options.", formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=list(COMMANDS), metavar="COMMAND", help="one of the commands below")
    return parser


def command_parser(name: str):
    """``(module, parser)`` of one command; imports only that command's module."""
    module = importlib.import_module(COMMANDS[name][0])
    parser = argparse.ArgumentParser(prog=f"deepcens {name}", description=module.__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    module.add_arguments(parser)
    return module, parser


def run_command(name: str, argv: list[str]) -> int:
    """Parse ``argv`` for command ``name`` and run it under the tools' error convention."""
    from deepcens.errors import run_tool

    @run_tool
    def guarded() -> int:
        module, parser = command_parser(name)
        parse = parser.parse_intermixed_args if getattr(module, "PARSE_INTERMIXED", False) else parser.parse_args
        args = parse(argv)
        if not logging.getLogger().handlers:
            logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s", stream=sys.stderr)
        return int(module.run(args) or 0)

    return guarded()


def main(argv: list[str] | None = None) -> int:
    """``deepcens COMMAND [options]``; returns the exit status (2 on bad input, 130 on Ctrl-C)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0].startswith("-") or argv[0] not in COMMANDS:
        _top_parser().parse_args(argv[:1])  # prints help, or the usage error for an unknown command
        return 2
    return run_command(argv[0], argv[1:])


if __name__ == "__main__":
    sys.exit(main())
