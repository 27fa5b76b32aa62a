"""Benchmarks run by ``tools/benchmark.py``: each module here exposes ``NAME``, ``HELP``,
``add_arguments(parser)`` and ``run(args) -> dict`` (figures to print and record)."""
