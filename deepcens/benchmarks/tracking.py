"""Linking speed: the configured tracker on a long synthetic sequence with known tracks.

Cells (discs) random-walk, divide and leave the field on a ``--size`` square image; the
sequence has ``--frames`` frames with about ``--cells`` cells each. The benchmark times the
tracker (object extraction + linking + relabelling) and scores its TRA against the true
tracks with deepcens' TRA. ``tools/benchmark.py tracking --frames 1000 --cells 100``.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
from detectron2.config import get_cfg

NAME = "tracking"
HELP = "tracking: link a synthetic sequence (default 1,000 frames x 100 cells), time it and score TRA"


def synthetic_sequence(frames: int, cells: int, size: int, seed: int = 0, radius: int = 5,
                       step: float = 2.0, division_rate: float = 0.004) -> tuple[list[np.ndarray], np.ndarray]:
    """Label images with true track ids and the true ``L B E P`` table (divisions included;
    a daughter pair replaces its mother; cells that divide beyond ``cells`` leave instead)."""
    rng = np.random.default_rng(seed)
    margin = radius + 1
    positions = rng.uniform(margin, size - margin, size=(cells, 2))
    ids = np.arange(1, cells + 1)
    rows = {int(i): [int(i), 0, 0, 0] for i in ids}
    next_id = cells + 1
    yy, xx = np.mgrid[-radius:radius + 1, -radius:radius + 1]
    disc = yy ** 2 + xx ** 2 <= radius ** 2
    images = []
    for t in range(frames):
        if t:
            positions = np.clip(positions + rng.normal(0, step, positions.shape), margin, size - margin - 1)
            dividing = rng.random(len(ids)) < division_rate
            new_positions, new_ids = [positions[~dividing]], [ids[~dividing]]
            for mother, centre in zip(ids[dividing].tolist(), positions[dividing]):
                offset = rng.normal(0, 1, 2)
                offset *= (radius + 1.5) / max(np.linalg.norm(offset), 1e-6)
                daughters = np.clip(np.stack([centre + offset, centre - offset]), margin, size - margin - 1)
                new_positions.append(daughters)
                new_ids.append(np.array([next_id, next_id + 1]))
                for d in (next_id, next_id + 1):
                    rows[d] = [d, t, t, mother]
                next_id += 2
            positions, ids = np.concatenate(new_positions), np.concatenate(new_ids)
            if len(ids) > cells:  # keep the count steady: the surplus leaves the field
                keep = np.sort(rng.choice(len(ids), cells, replace=False))
                positions, ids = positions[keep], ids[keep]
        labels = np.zeros((size, size), np.uint16)
        order = np.argsort(ids)  # deterministic painting order where discs touch
        for label, (cy, cx) in zip(ids[order].tolist(), np.round(positions[order]).astype(int)):
            window = labels[cy - radius:cy + radius + 1, cx - radius:cx + radius + 1]
            window[disc & (window == 0)] = label
        present = np.unique(labels[labels > 0])
        for label in present.tolist():
            rows[label][2] = t
        images.append(labels)
    # Tracks must be present in every frame of their span (painting order can hide a cell).
    from deepcens.tracking.base import frame_objects, links_to_tracks

    objects = [frame_objects(f) for f in images]
    offsets = np.concatenate([[0], np.cumsum([len(o.ids) for o in objects])])
    source, target = [], []
    position = {}
    for t, o in enumerate(objects):
        for index, label in enumerate(o.ids.tolist()):
            position[(t, label)] = offsets[t] + index
    last_seen: dict[int, int] = {}
    for t, o in enumerate(objects):
        for label in o.ids.tolist():
            before = last_seen.get(label)
            if before is not None:
                source.append(position[(before, label)])
                target.append(position[(t, label)])
            elif rows[label][3] and rows[label][3] in last_seen:
                source.append(position[(last_seen[rows[label][3]], rows[label][3])])
                target.append(position[(t, label)])
            last_seen[label] = t
    truth = links_to_tracks(images, objects, np.array(source, np.int64), np.array(target, np.int64))
    return truth.labels, truth.tracks


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--frames", type=int, default=1000, help="sequence length")
    parser.add_argument("--cells", type=int, default=100, help="cells per frame")
    parser.add_argument("--size", type=int, default=256, help="image side (pixels)")
    parser.add_argument("--tracker", default="LapTracker", help="TRACKING.NAME")
    parser.add_argument("--cost", default="centroid", help="TRACKING.COST")
    parser.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace) -> dict:
    from deepcens.config import add_deepcens_config
    from deepcens.evaluation.ctc_measures import match_label_images
    from deepcens.evaluation.ctc_tra import tra_counts
    from deepcens.tracking import build_tracker

    truth_frames, truth_tracks = synthetic_sequence(args.frames, args.cells, args.size, args.seed)
    cfg = get_cfg()
    add_deepcens_config(cfg)
    cfg.TRACKING.NAME, cfg.TRACKING.COST = args.tracker, args.cost
    tracker = build_tracker(cfg)
    tracker.track(truth_frames[:3])  # imports and warm-up outside the timing
    start, cpu_start = time.perf_counter(), time.process_time()
    result = tracker.track(truth_frames)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    counts = tra_counts([match_label_images(t, r) for t, r in zip(truth_frames, result.labels)], truth_tracks, result.tracks)
    return {
        "frames": args.frames, "cells_per_frame": round(float(np.mean([len(np.unique(f)) - 1 for f in truth_frames])), 1),
        "image_side": args.size, "tracker": args.tracker, "cost": args.cost,
        "true_tracks": len(truth_tracks), "true_divisions": int(np.count_nonzero(np.unique(truth_tracks[truth_tracks[:, 3] > 0, 3], return_counts=True)[1] == 2)),
        "tracks": result.num_tracks, "divisions": result.divisions(),
        "link_seconds": round(seconds, 2), "ms_per_frame": round(1000 * seconds / args.frames, 2),
        "link_cpu_seconds": round(cpu_seconds, 2),  # wall time inflates on a shared machine
        "TRA": round(counts.tra(), 5),
    }
