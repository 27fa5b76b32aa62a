"""Speed and memory benchmarks (never in unit tests): ``deepcens benchmark NAME [options]``.

Each benchmark lives in ``deepcens/benchmarks/<module>.py`` (with ``NAME``, ``HELP``,
``add_arguments`` and ``run``); results print as JSON and, with ``--json FILE``, are written
atomically. Recorded figures live in docs/benchmarks.md.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import pkgutil
import sys


def benchmark_modules() -> dict:
    """NAME -> module of every benchmark in this package."""
    import deepcens.benchmarks

    modules = {}
    for info in pkgutil.iter_modules(deepcens.benchmarks.__path__):
        if info.name == "cli":
            continue
        module = importlib.import_module(f"deepcens.benchmarks.{info.name}")
        if hasattr(module, "run") and hasattr(module, "NAME"):
            modules[module.NAME] = module
    return modules


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One sub-command per benchmark, each with ``--json``."""
    sub = parser.add_subparsers(dest="name", required=True, metavar="NAME")
    for name, module in sorted(benchmark_modules().items()):
        sub_parser = sub.add_parser(name, help=module.HELP, description=module.__doc__,
                                    formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(sub_parser)
        sub_parser.add_argument("--json", default="", help="also write the results to this JSON file")
        sub_parser.set_defaults(benchmark=module)


def run(args: argparse.Namespace) -> int:
    """Run the chosen benchmark; print (and with ``--json`` write) its results."""
    from deepcens.errors import DeepcensInputError
    from deepcens.utils.atomic import atomic_save_json, check_output_folder

    if args.json:
        if os.path.isdir(args.json):
            raise DeepcensInputError(args.json, "--json names a folder; give a file name")
        check_output_folder(os.path.dirname(os.path.abspath(args.json)), "folder of --json")
    results = args.benchmark.run(args)
    print(json.dumps(results, indent=2))
    if args.json:
        atomic_save_json(args.json, {"benchmark": args.name, "command": " ".join(sys.argv), "results": results})
    return 0
