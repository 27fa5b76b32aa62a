#!/usr/bin/env python
"""Speed and memory benchmarks (never in unit tests): ``tools/benchmark.py NAME [options]``.

Each benchmark lives in ``deepcens/benchmarks/<module>.py``; results print as a table and,
with ``--json FILE``, are written atomically. Recorded figures live in docs/benchmarks.md.
"""
from __future__ import annotations

import argparse
import importlib
import json
import pkgutil
import sys

import deepcens.benchmarks
from deepcens.utils.atomic import atomic_save_json


def _benchmark_modules() -> dict:
    modules = {}
    for info in pkgutil.iter_modules(deepcens.benchmarks.__path__):
        module = importlib.import_module(f"deepcens.benchmarks.{info.name}")
        if hasattr(module, "run") and hasattr(module, "NAME"):
            modules[module.NAME] = module
    return modules


def main(argv: list[str] | None = None) -> int:
    modules = _benchmark_modules()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="name", required=True)
    for name, module in sorted(modules.items()):
        sub_parser = sub.add_parser(name, help=module.HELP)
        module.add_arguments(sub_parser)
        sub_parser.add_argument("--json", default="", help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    results = modules[args.name].run(args)
    print(json.dumps(results, indent=2))
    if args.json:
        atomic_save_json(args.json, {"benchmark": args.name, "command": " ".join(sys.argv), "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
