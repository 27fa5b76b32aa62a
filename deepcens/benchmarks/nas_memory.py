"""NAS U-Net search memory: binarised (ProxylessNAS) vs all-paths (DARTS) supernet steps.

``tools/benchmark.py nas_memory [--size 256 --batch 8 --repeats 2]``: for each mode, a fresh
Python process builds the same supernet (same seed), makes a random frame-pair batch and runs
an architecture step and a weight step (forward + backward, as the search loop does);
it reports its resident-set size before the steps and its peak (``ru_maxrss``) after them, and
the number of basic operations run per step (paths alive in memory). The step's peak memory
is the difference. Separate processes keep one mode's allocator high-water mark out of the
other's figure.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

NAME = "nas_memory"
HELP = "NAS U-Net search step peak memory: binarised paths vs all paths (DARTS)"

_CHILD = r"""
import json, resource, sys, time
import torch
torch.set_num_threads(int(sys.argv[5]))
from deepcens.modeling.dense.nas_unet import NasUNet

def rss_mib():
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")

mode, size, batch, repeats = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
torch.manual_seed(0)
net = NasUNet(genotype=None, search_mode=mode)
net.train()
x = torch.rand(batch, 2, size, size)
before = rss_mib()
evaluations, seconds = {}, {}
for phase in ("arch", "weight"):
    for repeat in range(repeats):
        net.begin_step(phase, repeat)
        for p in net.arch_parameters():
            p.requires_grad_(phase == "arch")
        for p in net.weight_parameters():
            p.requires_grad_(phase == "weight")
        start = time.process_time()
        segmentation, markers = net(x)
        (segmentation.float().mean() + markers.float().mean()).backward()
        net.zero_grad(set_to_none=True)
        seconds[phase] = time.process_time() - start
        evaluations[phase] = net.last_bo_evaluations
        del segmentation, markers
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
print(json.dumps({"mode": mode, "rss_before_mib": round(before, 1), "peak_mib": round(peak, 1),
                  "step_peak_mib": round(peak - before, 1), "bo_evaluations": evaluations,
                  "cpu_seconds_last_step": {k: round(v, 2) for k, v in seconds.items()}}))
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--size", type=int, default=256, help="crop side (paper: 256)")
    parser.add_argument("--batch", type=int, default=8, help="frame pairs per batch (paper: 8)")
    parser.add_argument("--repeats", type=int, default=2, help="steps per phase (different sampled paths)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads in each process")


def measure(mode: str, size: int, batch: int, repeats: int, threads: int = 1) -> dict:
    """One mode's figures, measured in a fresh interpreter."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    result = subprocess.run([sys.executable, "-c", _CHILD, mode, str(size), str(batch), str(repeats), str(threads)],
                            capture_output=True, text=True, env=env, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"nas_memory child ({mode}) failed: {result.stderr[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def run(args: argparse.Namespace) -> dict:
    binary = measure("binary", args.size, args.batch, args.repeats, args.threads)
    all_paths = measure("all_paths", args.size, args.batch, args.repeats, args.threads)
    return {"size": args.size, "batch": args.batch, "binary": binary, "all_paths": all_paths,
            "step_peak_ratio_all_paths_over_binary": round(all_paths["step_peak_mib"] / max(binary["step_peak_mib"], 1e-6), 2)}
