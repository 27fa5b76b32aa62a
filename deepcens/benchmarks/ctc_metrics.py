"""CTC SEG/DET/OP_CSB: deepcens' vectorised measures against py-ctcmetrics (exactness and speed).

Predictions are made by perturbing the ground truth of a real CTC sequence (eroded, dilated,
dropped, split and merged objects plus false objects), written as a CTC result folder
(``maskTTT.tif`` + ``res_track.txt``) and scored by both implementations.
``tools/benchmark.py ctc_metrics --sequence datasets/ctc/Fluo-N2DH-SIM+/01``.
The helpers :func:`perturb_labels`, :func:`prediction_base` and :func:`write_result_folder`
are also used by the exactness tests.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import os
import shutil
import tempfile
import time

import numpy as np
from scipy import ndimage

from deepcens.data.ctc_files import write_result_folder
from deepcens.data.io import read_label
from deepcens.evaluation.ctc_measures import (
    ctc_frame_files, evaluate_ctc_folders, frame_counts, sum_counts,
)

NAME = "ctc_metrics"
HELP = "CTC SEG/DET/OP_CSB: deepcens vs py-ctcmetrics on a perturbed real sequence (time per frame, max difference)"


def prediction_base(gt_seg: np.ndarray | None, markers: np.ndarray | None, grow: int = 4) -> np.ndarray:
    """A plausible full prediction: the GT masks plus, for cells only marked in TRA (sparse
    SEG), their markers grown by ``grow`` pixels into the background."""
    if gt_seg is None and markers is None:
        raise ValueError("need SEG or TRA labels")
    base = np.zeros_like(gt_seg if gt_seg is not None else markers, dtype=np.int32)
    if gt_seg is not None:
        base[:] = gt_seg
    if markers is not None:
        covered = np.unique(markers[base > 0])
        extra = np.where(np.isin(markers, covered, invert=True), markers, 0)
        extra = ndimage.grey_dilation(extra, size=2 * grow + 1)
        offset = int(base.max())
        fill = (base == 0) & (extra > 0)
        base[fill] = extra[fill] + offset
    return base


def perturb_labels(labels: np.ndarray, rng: np.random.Generator, false_objects: int = 3) -> np.ndarray:
    """Perturb each object of a label image at random: keep, erode, dilate, drop, split or
    merge with a neighbour; then add ``false_objects`` discs in the background."""
    labels = np.asarray(labels, dtype=np.int32)
    out = labels.copy()
    ids = np.unique(labels)
    ids = ids[ids > 0]
    if len(ids):
        action = rng.choice(["keep", "erode", "dilate", "drop", "split", "merge"], size=len(ids),
                            p=[0.3, 0.2, 0.15, 0.1, 0.15, 0.1])
        chosen = {name: ids[action == name] for name in np.unique(action)}
        lo = ndimage.grey_erosion(labels, size=5)
        hi = ndimage.grey_dilation(labels, size=5)
        if "erode" in chosen:
            inner = (lo == labels) & (hi == labels)
            out[np.isin(labels, chosen["erode"]) & ~inner] = 0
        if "drop" in chosen:
            out[np.isin(labels, chosen["drop"])] = 0
        if "dilate" in chosen:
            grow = (labels == 0) & np.isin(hi, chosen["dilate"])
            out[grow] = hi[grow]
        next_id = int(labels.max()) + 1
        if "split" in chosen:
            boxes = ndimage.find_objects(labels)
            for label_id in chosen["split"]:  # per object, vectorised over its bounding box
                box = boxes[label_id - 1]
                member = labels[box] == label_id
                rows, cols = np.nonzero(member)
                angle = rng.uniform(0, np.pi)
                side = (np.cos(angle) * (rows - rows.mean()) + np.sin(angle) * (cols - cols.mean())) > 0
                window = out[box]
                keep = window[rows, cols] == label_id
                window[rows[side & keep], cols[side & keep]] = next_id
                next_id += 1
        if "merge" in chosen and len(ids) > 1:
            centroids = np.array(ndimage.center_of_mass(np.ones_like(labels), labels, ids))
            for label_id in chosen["merge"]:
                index = int(np.searchsorted(ids, label_id))
                distance = np.linalg.norm(centroids - centroids[index], axis=1)
                distance[index] = np.inf
                partner = ids[int(np.argmin(distance))]
                out[out == partner] = label_id
    height, width = labels.shape
    rows, cols = np.ogrid[:height, :width]
    for _ in range(false_objects):
        cy, cx, radius = rng.integers(0, height), rng.integers(0, width), rng.integers(3, 12)
        disc = ((rows - cy) ** 2 + (cols - cx) ** 2 <= radius ** 2) & (out == 0)
        out[disc] = int(out.max()) + 1
    return out


def make_subset_gt(gt_dir: str, frames: list[int], out_dir: str) -> None:
    """A CTC GT folder holding only ``frames`` (renumbered 0..n-1), for py-ctcmetrics, which
    insists on one result mask per TRA frame. man_track.txt lists every marker as a track over
    the frames where it appears without parents (DET does not use links)."""
    seg = ctc_frame_files(os.path.join(gt_dir, "SEG"), "seg")
    tra = ctc_frame_files(os.path.join(gt_dir, "TRA"), "tra")
    os.makedirs(os.path.join(out_dir, "SEG"), exist_ok=True)
    os.makedirs(os.path.join(out_dir, "TRA"), exist_ok=True)
    spans: dict[int, list[int]] = {}
    for new, frame in enumerate(frames):
        if frame in seg:
            shutil.copyfile(seg[frame], os.path.join(out_dir, "SEG", f"man_seg{new:03d}.tif"))
        shutil.copyfile(tra[frame], os.path.join(out_dir, "TRA", f"man_track{new:03d}.tif"))
        for label in np.unique(read_label(tra[frame])):
            if label:
                spans.setdefault(int(label), []).append(new)
    with open(os.path.join(out_dir, "TRA", "man_track.txt"), "w", encoding="utf-8") as handle:
        for label, seen in sorted(spans.items()):
            handle.write(f"{label} {min(seen)} {max(seen)} 0\n")


def perturbed_sequence(gt_dir: str, frames: list[int], seed: int = 0) -> dict[int, np.ndarray]:
    """Perturbed predictions for ``frames`` of a CTC GT folder (keys are the frame numbers)."""
    seg = ctc_frame_files(os.path.join(gt_dir, "SEG"), "seg")
    tra = ctc_frame_files(os.path.join(gt_dir, "TRA"), "tra")
    rng = np.random.default_rng(seed)
    predictions = {}
    for frame in frames:
        gt_seg = read_label(seg[frame]) if frame in seg else None
        markers = read_label(tra[frame]) if frame in tra else None
        predictions[frame] = perturb_labels(prediction_base(gt_seg, markers), rng)
    return predictions


def reference_match(ref_path: str, comp_path: str):
    """py-ctcmetrics' per-frame work: read both label images and match their objects."""
    from ctc_metrics.utils.representations import match

    return match(ref_path, comp_path)


def reference_measures(gt_dir: str, res_dir: str) -> dict:
    """py-ctcmetrics' SEG, DET, OP_CSB on CTC folders (single-threaded, its prints silenced)."""
    from ctc_metrics import evaluate_sequence

    with contextlib.redirect_stdout(io.StringIO()):
        result = evaluate_sequence(res_dir, gt_dir, metrics=["SEG", "DET"], threads=1)
    result["OP_CSB"] = 0.5 * result["SEG"] + 0.5 * result["DET"]
    return result


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sequence", default="datasets/ctc/Fluo-N2DH-SIM+/01",
                        help="CTC sequence folder; its GT is <sequence>_GT")
    parser.add_argument("--seed", type=int, default=0, help="perturbation seed")
    parser.add_argument("--repeats", type=int, default=3, help="timing repeats (best is kept)")


def run(args: argparse.Namespace) -> dict:
    gt_dir = os.path.normpath(args.sequence) + "_GT"
    tra = ctc_frame_files(os.path.join(gt_dir, "TRA"), "tra")
    frames = sorted(tra)
    predictions = perturbed_sequence(gt_dir, frames, args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        res_dir = os.path.join(tmp, "01_RES")
        write_result_folder(predictions, res_dir)
        ref_times, our_folder_times, match_times = [], [], []
        seg_files = ctc_frame_files(os.path.join(gt_dir, "SEG"), "seg")
        res_files = ctc_frame_files(res_dir, "res")
        pairs = [(tra[f], res_files[f]) for f in frames] + [(seg_files[f], res_files[f]) for f in frames if f in seg_files]
        for _ in range(args.repeats):
            start = time.perf_counter()
            reference = reference_measures(gt_dir, res_dir)
            ref_times.append(time.perf_counter() - start)
            start = time.perf_counter()
            for ref_path, comp_path in pairs:  # py-ctcmetrics' per-frame part alone (read + match)
                reference_match(ref_path, comp_path)
            match_times.append(time.perf_counter() - start)
            start = time.perf_counter()
            ours = evaluate_ctc_folders(gt_dir, res_dir)
            our_folder_times.append(time.perf_counter() - start)
    # Arrays only (what CellEvaluator does per image; files already decoded).
    seg = ctc_frame_files(os.path.join(gt_dir, "SEG"), "seg")
    arrays = [(predictions[f], read_label(seg[f]) if f in seg else None, read_label(tra[f])) for f in frames]
    array_times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        total = sum_counts(frame_counts(pred, gt_seg, markers)[0] for pred, gt_seg, markers in arrays)
        array_times.append(time.perf_counter() - start)
    ours_arrays = total.measures()
    n = len(frames)
    ref_ms, match_ms, folder_ms, array_ms = (
        1000 * min(t) / n for t in (ref_times, match_times, our_folder_times, array_times))
    return {
        "sequence": args.sequence,
        "frames": n,
        "height_width": list(arrays[0][2].shape),
        "py_ctcmetrics": {k: float(reference[k]) for k in ("SEG", "DET", "OP_CSB")},
        "deepcens": {k: float(ours[k]) for k in ("SEG", "DET", "OP_CSB")},
        "max_abs_difference": max(abs(float(reference[k]) - float(v[k]))
                                  for k in ("SEG", "DET", "OP_CSB") for v in (ours, ours_arrays)),
        "ms_per_frame_py_ctcmetrics_folder": round(ref_ms, 3),
        "ms_per_frame_py_ctcmetrics_match_only": round(match_ms, 3),
        "ms_per_frame_deepcens_folder": round(folder_ms, 3),
        "ms_per_frame_deepcens_arrays": round(array_ms, 3),
        "speedup_folder": round(ref_ms / folder_ms, 1),
        "speedup_arrays": round(ref_ms / array_ms, 1),
        "speedup_folder_vs_match_only": round(match_ms / folder_ms, 1),
    }
