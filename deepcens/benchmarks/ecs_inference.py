"""EfficientCellSeg inference time per slice, next to the paper's Table 2 (TI_CPU / TI_GPU).

``tools/benchmark.py ecs_inference [--device cpu --size 384 --iters 5 --warmup 1 --threads 2]``
builds the network for each decoder width of Table 2 ([64, 48, 32, 16], [112, 80, 48, 16],
[512, 256, 128, 64]; random weights: speed does not depend on them) and times, in eval mode
without gradients, the network on one ``3 x size x size`` slice (the paper's per-sample
inference) and the sigmoid map's decoding; the Context Aware Pseudocoloring of one
``size x size`` slice from its two neighbours is timed once per run. The machine's load
average is reported beside the figures, and the process CPU time (all threads) beside the
wall time: on a shared machine the CPU time still says what the work costs.
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch

NAME = "ecs_inference"
HELP = "EfficientCellSeg ms per 384x384 slice (network, pseudocolouring, decoding) for the Table 2 decoders"

TABLE2_DECODERS = {"model3": (64, 48, 32, 16), "model4": (112, 80, 48, 16), "model5": (512, 256, 128, 64)}
PAPER_TI_CPU_MS = {"model3": 334.0, "model4": 652.0, "model5": 1470.0}  # Table 2, Intel Xeon CPU
PAPER_TI_GPU_MS = {"model3": 79.5, "model4": 80.3, "model5": 92.0}  # Table 2, Tesla P100


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``tools/benchmark.py ecs_inference``."""
    parser.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    parser.add_argument("--size", type=int, default=384, help="slice side (paper: 384)")
    parser.add_argument("--iters", type=int, default=5, help="timed slices per model")
    parser.add_argument("--warmup", type=int, default=1, help="untimed slices before timing")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    parser.add_argument("--models", nargs="+", default=list(TABLE2_DECODERS), choices=list(TABLE2_DECODERS))


def _slices(size: int, seed: int = 0) -> np.ndarray:
    """Three deterministic neighbouring slices with blob-shaped cells (z-1, z, z+1)."""
    rng = np.random.default_rng(seed)
    grid = np.indices((size, size))
    stack = np.zeros((3, size, size), np.float32)
    for _ in range(max(size // 16, 4)):
        centre, radius = rng.uniform(0, size, 2), rng.uniform(size / 40, size / 15)
        blob = np.exp(-(((grid[0] - centre[0]) ** 2 + (grid[1] - centre[1]) ** 2) / (2 * radius ** 2)))
        for z, fade in enumerate(rng.uniform(0.4, 1.0, 3)):
            stack[z] += fade * blob
    return stack + rng.normal(0, 0.02, stack.shape).astype(np.float32)


def run(args: argparse.Namespace) -> dict:
    """Time each model of ``args.models``; returns figures in ms per slice beside the paper's."""
    from deepcens.benchmarks.timing import time_calls
    from deepcens.data.pseudocolor import pseudocolor_image
    from deepcens.modeling.dense.efficientcellseg import EfficientCellSegModel, count_parameters
    from deepcens.postprocess.ecs_decoders import distance_watershed_labels

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    stack = _slices(args.size)
    results: dict = {"device": args.device, "size": args.size, "iters": args.iters, "threads": torch.get_num_threads(),
                     "load_average_1_5_15": [round(v, 2) for v in os.getloadavg()]}
    start = time.perf_counter()
    pseudocolour = pseudocolor_image(stack[1], stack[0], stack[2])
    results["pseudocolor_ms"] = round(1000.0 * (time.perf_counter() - start), 1)
    x = torch.from_numpy(pseudocolour.transpose(2, 0, 1).copy())[None].to(device)
    for name in args.models:
        torch.manual_seed(0)
        model = EfficientCellSegModel(TABLE2_DECODERS[name]).to(device).eval()
        with torch.no_grad():
            network_s, network_cpu_s = time_calls(lambda: model(x), args.iters, args.warmup, device)
            network_ms, network_cpu_ms = (1000.0 * v / max(args.iters, 1) for v in (network_s, network_cpu_s))
            maps = torch.sigmoid(model(x))[0].cpu().numpy()
        start = time.perf_counter()
        distance_watershed_labels(maps[0])
        results[name] = {
            "decoder_channels": list(TABLE2_DECODERS[name]),
            "params_m": round(count_parameters(model) / 1e6, 3),
            "network_ms_per_slice": round(network_ms, 1),
            "network_cpu_ms_per_slice": round(network_cpu_ms, 1),  # all threads: compare on a loaded machine
            "decode_ms_per_slice": round(1000.0 * (time.perf_counter() - start), 1),
            "paper_ti_cpu_ms": PAPER_TI_CPU_MS[name],
            "paper_ti_gpu_ms": PAPER_TI_GPU_MS[name],
        }
    results["load_average_after"] = [round(v, 2) for v in os.getloadavg()]
    return results
