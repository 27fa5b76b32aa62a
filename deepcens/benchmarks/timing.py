"""Timing a repeated step for the benchmarks: untimed warm-up calls, CUDA queue drained around
the timed calls, wall and process CPU time (all threads; on a shared machine the CPU time still
says what the work costs)."""
from __future__ import annotations

import time
from typing import Callable

import torch


def time_calls(step: Callable[[], object], iters: int, warmup: int, device: torch.device,
               reset_peak_memory: bool = False) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of ``iters`` calls of ``step`` after ``warmup`` untimed
    ones; with ``reset_peak_memory`` the CUDA peak allocation counts from the first timed call."""
    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        if reset_peak_memory:
            torch.cuda.reset_peak_memory_stats(device)
    start, start_cpu = time.perf_counter(), time.process_time()
    for _ in range(iters):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start, time.process_time() - start_cpu
