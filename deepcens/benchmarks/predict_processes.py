"""``deepcens predict`` in one process against several: images per second end to end.

``tools/benchmark.py predict-processes [--processes 1,2] [--images 32] [--size 128] [--threads 2]``

Writes ``--images`` synthetic cell images (``--size`` pixels square) into a temporary folder
and predicts them with ``--config-file`` (default: the demo Cascade Mask R-CNN, CPU) once per
entry of ``--processes``, each run a fresh ``deepcens predict --num-gpus N --device cpu``
command with ``OMP_NUM_THREADS=--threads`` (the processes of a run share those threads). Without
``--weights`` the model's random weights are saved once, so every run uses the same model.

Per run: ``wall_s`` (command start to exit: imports, model building and weight loading in
every process included) with ``images_per_s`` over it, and ``steady_images_per_s``: the sum
over processes of (sources - 1) / (time between the process's first and last finished
source), read from the run's journals, i.e. throughput without the start-up.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

NAME = "predict-processes"
HELP = "deepcens predict in 1 vs N processes on CPU: wall time and images/s"
DEMO_CONFIG = os.path.join("configs", "demo", "synthetic_cell_nucleus.yaml")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--processes", default="1,2", help="comma-separated process counts, one run each")
    parser.add_argument("--images", type=int, default=32, help="synthetic images to predict")
    parser.add_argument("--size", type=int, default=128, help="image side in pixels")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="OMP_NUM_THREADS of each run (shared by its processes)")
    parser.add_argument("--config-file", default=DEMO_CONFIG, help="model config")
    parser.add_argument("--weights", default="", help="checkpoint (default: the model's random weights, saved once)")


def _write_images(folder: str, count: int, size: int) -> None:
    import numpy as np

    from deepcens.data.io import write_png
    from deepcens.data.synthetic import make_scene, render_scene

    for index in range(count):
        rng = np.random.default_rng([7, index])
        image = render_scene(rng, make_scene(rng, size, difficulty=0.3), "phase", contrast=0.8, photons=200.0)
        write_png(os.path.join(folder, f"img{index:04d}.png"), (np.clip(image, 0, 1) * 255).astype(np.uint8))


def _random_weights(config_file: str, path: str) -> None:
    import torch
    from detectron2.modeling import build_model

    import deepcens  # noqa: F401  (registrations)
    from deepcens.engine.setup import load_config

    torch.manual_seed(0)
    torch.save({"model": build_model(load_config(config_file, [])).state_dict()}, path)


def steady_rate(output_dir: str) -> float:
    """Sum over processes of (sources - 1) / (last - first finished source time)."""
    from deepcens.predict.sharded import journal_paths

    rate = 0.0
    for path in journal_paths(output_dir):
        with open(path, encoding="utf-8") as handle:
            times = [entry["time"] for entry in map(json.loads, handle) if "done" in entry]
        if len(times) > 1 and times[-1] > times[0]:
            rate += (len(times) - 1) / (times[-1] - times[0])
    return rate


def run(args: argparse.Namespace) -> dict:
    counts = [int(text) for text in args.processes.split(",") if text.strip()]
    results: dict = {"images": args.images, "size": args.size, "threads": args.threads,
                     "config": args.config_file, "runs": {}}
    with tempfile.TemporaryDirectory(prefix="deepcens-predict-bench-") as work:
        images = os.path.join(work, "images")
        os.makedirs(images)
        _write_images(images, args.images, args.size)
        weights = args.weights or os.path.join(work, "random.pth")
        if not args.weights:
            _random_weights(args.config_file, weights)
        for count in counts:
            output = os.path.join(work, f"out{count}")
            command = [sys.executable, "-m", "deepcens.cli", "predict", "--config-file", args.config_file,
                       "--input", images, "--output", output, "--no-progress", "--device", "cpu",
                       "--num-gpus", str(count), "MODEL.WEIGHTS", weights]
            env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
            start = time.perf_counter()
            done = subprocess.run(command, env=env, capture_output=True, text=True)
            wall = time.perf_counter() - start
            if done.returncode != 0:
                raise RuntimeError(f"predict with {count} processes failed:\n{done.stderr[-2000:]}")
            results["runs"][str(count)] = {"wall_s": round(wall, 2), "images_per_s": round(args.images / wall, 3),
                                           "steady_images_per_s": round(steady_rate(output), 3)}
    return results
