"""Cell Tracking Challenge segmentation measures SEG, DET and OP_CSB on label images.

Definitions follow the reference implementation ``py-ctcmetrics`` (``ctc_metrics``) exactly:

* A computed object *matches* a reference object when it covers strictly more than half of
  the reference object's pixels (so a reference object matches at most one computed object).
* SEG = (sum of the Jaccard indices of matched reference objects) / (number of reference
  objects), pooled over all frames (unmatched reference objects count 0).
* DET = 1 - min(AOGM-D, AOGM-D0) / AOGM-D0 with AOGM-D = 5 NS + 10 FN + 1 FP and
  AOGM-D0 = 10 * (number of reference markers), every count summed over all frames first.
  FN = reference markers matched by no computed object, FP = computed objects matching no
  marker, NS = sum over computed objects of (markers it matches - 1) (splits needed).
  Markers are the TRA images (``man_trackTTT.tif``) when present, else the GT masks.
* OP_CSB = (SEG + DET) / 2.

Label images may be 2D frames or 3D volumes (CTC 3D sequences; a 3D SEG reference annotated
in chosen planes, ``man_seg_TTT_ZZZ.tif``, is compared with those planes of the result). TRA
is in :mod:`deepcens.evaluation.ctc_tra`; the folder path adds it when both track files exist.

Everything is vectorised over pixels: one ``np.bincount`` per label image for the areas and
one over the paired labels of the reference foreground for the intersections. Undefined
values (no reference object / marker at all) are ``nan`` (py-ctcmetrics gives SEG 0 there).
"""
from __future__ import annotations

import dataclasses
import math
import os
from typing import Iterable

import numpy as np

from deepcens.data.ctc_files import check_tra_frames, frame_file_name, frame_files
from deepcens.data.io import read_label
from deepcens.errors import DeepcensInputError
from deepcens.evaluation.counts import AdditiveCounts

W_SPLIT, W_FN, W_FP = 5, 10, 1  # AOGM-D weights of the CTC (Matula et al. 2015)
_DENSE_TABLE_LIMIT = 1 << 24  # above this many (ref x comp) cells the pair table is built sparsely


@dataclasses.dataclass
class LabelMatch:
    """Overlaps between a reference and a computed label image (0 = background in both).

    ``pair_ref`` / ``pair_comp`` index ``ref_ids`` / ``comp_ids``; ``intersection`` is the
    pixel count shared by each listed pair (only pairs that overlap are listed).
    """

    ref_ids: np.ndarray
    comp_ids: np.ndarray
    ref_areas: np.ndarray
    comp_areas: np.ndarray
    pair_ref: np.ndarray
    pair_comp: np.ndarray
    intersection: np.ndarray

    def iou(self) -> np.ndarray:
        """Jaccard index of every listed pair (float64, as py-ctcmetrics computes it)."""
        union = self.ref_areas[self.pair_ref] + self.comp_areas[self.pair_comp] - self.intersection
        return self.intersection / np.maximum(union, 1)

    def matches(self) -> np.ndarray:
        """Boolean per listed pair: the computed object covers > half of the reference object."""
        return 2 * self.intersection > self.ref_areas[self.pair_ref]


def _as_labels(array: np.ndarray, what: str) -> np.ndarray:
    array = np.asarray(array)
    if array.dtype.kind == "b":
        array = array.astype(np.uint8)
    if array.dtype.kind not in "ui":
        raise ValueError(f"{what} must be an integer label image, got dtype {array.dtype}")
    if array.dtype.kind == "i":
        if array.size and array.min() < 0:
            raise ValueError(f"{what} has negative labels")
        if array.dtype.itemsize > 4 or (array.size and array.max() > np.iinfo(np.int32).max):
            raise ValueError(f"{what} has labels beyond int32")
    return array


def match_label_images(ref: np.ndarray, comp: np.ndarray) -> LabelMatch:
    """Areas of every object and intersections of every overlapping (ref, comp) object pair."""
    ref = _as_labels(ref, "reference")
    comp = _as_labels(comp, "computed")
    if ref.shape != comp.shape:
        raise ValueError(f"label images differ in shape: reference {ref.shape}, computed {comp.shape}")
    ref = ref.reshape(-1)
    comp = comp.reshape(-1)
    # Only reference-foreground pixels can contribute to an intersection; areas are counted on
    # foreground pixels too (a bincount over a whole image would copy it as int64).
    foreground = ref != 0
    ref_fg = ref[foreground]
    ref_counts = np.bincount(ref_fg, minlength=1)
    comp_counts = np.bincount(comp[comp != 0], minlength=1)
    ref_ids = np.flatnonzero(ref_counts[1:]) + 1
    comp_ids = np.flatnonzero(comp_counts[1:]) + 1
    n_ref, n_comp = len(ref_ids), len(comp_ids)
    empty = np.zeros(0, dtype=np.int64)
    if n_ref == 0 or n_comp == 0:
        return LabelMatch(ref_ids, comp_ids, ref_counts[ref_ids], comp_counts[comp_ids], empty, empty, empty)
    comp_fg = comp[foreground]
    ref_lut = np.zeros(len(ref_counts), dtype=np.int64)
    ref_lut[ref_ids] = np.arange(n_ref)
    comp_lut = np.zeros(len(comp_counts), dtype=np.int64)
    comp_lut[comp_ids] = np.arange(1, n_comp + 1)  # 0 stays "background"
    paired = ref_lut[ref_fg] * (n_comp + 1) + comp_lut[comp_fg]
    if n_ref * (n_comp + 1) <= _DENSE_TABLE_LIMIT:
        table = np.bincount(paired, minlength=n_ref * (n_comp + 1)).reshape(n_ref, n_comp + 1)
        table[:, 0] = 0
        pair_ref, pair_comp1 = np.nonzero(table)
        intersection = table[pair_ref, pair_comp1]
    else:
        keys, intersection = np.unique(paired, return_counts=True)
        pair_ref, pair_comp1 = np.divmod(keys, n_comp + 1)
        keep = pair_comp1 > 0
        pair_ref, pair_comp1, intersection = pair_ref[keep], pair_comp1[keep], intersection[keep]
    return LabelMatch(
        ref_ids, comp_ids, ref_counts[ref_ids], comp_counts[comp_ids],
        pair_ref.astype(np.int64), (pair_comp1 - 1).astype(np.int64), intersection.astype(np.int64))


@dataclasses.dataclass
class CTCCounts(AdditiveCounts):
    """Additive per-frame sums from which SEG / DET / OP_CSB are computed (pool by ``+``)."""

    seg_iou_sum: float = 0.0
    seg_num_ref: int = 0
    det_split: int = 0
    det_fn: int = 0
    det_fp: int = 0
    det_num_ref: int = 0
    seg_frames: int = 0
    det_frames: int = 0

    @property
    def aogm_d(self) -> int:
        return W_SPLIT * self.det_split + W_FN * self.det_fn + W_FP * self.det_fp

    @property
    def aogm_d0(self) -> int:
        return W_FN * self.det_num_ref

    def seg(self) -> float:
        return self.seg_iou_sum / self.seg_num_ref if self.seg_num_ref else math.nan

    def det(self) -> float:
        if not self.det_num_ref:
            return math.nan
        return 1.0 - min(self.aogm_d, self.aogm_d0) / self.aogm_d0

    def measures(self) -> dict[str, float]:
        """SEG, DET, OP_CSB and the counts behind them (all numbers, JSON-ready)."""
        seg, det = self.seg(), self.det()
        return {
            "SEG": seg, "DET": det, "OP_CSB": 0.5 * seg + 0.5 * det,
            "AOGM_D": float(self.aogm_d), "AOGM_D0": float(self.aogm_d0),
            "NS": float(self.det_split), "FN": float(self.det_fn), "FP": float(self.det_fp),
            "num_ref_seg": float(self.seg_num_ref), "num_ref_det": float(self.det_num_ref),
            "num_frames_seg": float(self.seg_frames), "num_frames_det": float(self.det_frames),
        }


def seg_counts(match: LabelMatch) -> tuple[float, int, np.ndarray]:
    """(sum of matched Jaccard indices, number of reference objects, per-reference Jaccard)."""
    per_ref = np.zeros(len(match.ref_ids), dtype=np.float64)
    hit = match.matches()
    per_ref[match.pair_ref[hit]] = match.iou()[hit]
    return float(per_ref.sum()), len(match.ref_ids), per_ref


def det_counts(match: LabelMatch) -> tuple[int, int, int, int]:
    """(NS, FN, FP, number of reference markers) of one frame."""
    hit = match.matches()
    refs_per_comp = np.bincount(match.pair_comp[hit], minlength=len(match.comp_ids))
    matched_refs = int(hit.sum())  # each reference matches at most one computed object
    fn = len(match.ref_ids) - matched_refs
    fp = int(np.count_nonzero(refs_per_comp == 0))
    split = int(np.sum(np.maximum(refs_per_comp - 1, 0)))
    return split, fn, fp, len(match.ref_ids)


def frame_counts(
    pred: np.ndarray, gt_seg: np.ndarray | None = None, gt_markers: np.ndarray | None = None
) -> tuple[CTCCounts, dict]:
    """CTC sums of one frame and its per-frame record.

    ``gt_seg`` (reference masks) feeds SEG, ``gt_markers`` (TRA markers) feeds DET; without
    markers DET uses ``gt_seg``. Either may be None (frame without that reference).
    """
    counts = CTCCounts()
    record: dict = {"SEG": None, "DET": None}
    seg_match = None
    if gt_seg is not None:
        seg_match = match_label_images(gt_seg, pred)
        iou_sum, n_ref, _ = seg_counts(seg_match)
        counts.seg_iou_sum, counts.seg_num_ref, counts.seg_frames = iou_sum, n_ref, 1
        record["SEG"] = iou_sum / n_ref if n_ref else None
        record["num_ref_seg"] = n_ref
    det_match = match_label_images(gt_markers, pred) if gt_markers is not None else seg_match
    if det_match is not None:
        split, fn, fp, n_ref = det_counts(det_match)
        counts.det_split, counts.det_fn, counts.det_fp, counts.det_num_ref = split, fn, fp, n_ref
        counts.det_frames = 1
        record["DET"] = CTCCounts(det_split=split, det_fn=fn, det_fp=fp, det_num_ref=n_ref).det() if n_ref else None
        record["num_ref_det"] = n_ref
        record["num_pred"] = len(det_match.comp_ids)
    return counts, record


def sum_counts(items: Iterable[CTCCounts]) -> CTCCounts:
    total = CTCCounts()
    for item in items:
        total = total + item
    return total


# ---- CTC folders --------------------------------------------------------------------------------

def ctc_frame_files(folder: str | os.PathLike, kind: str) -> dict[int, str]:
    """Frame number -> path of the 2D CTC files of one kind (``seg``, ``tra`` or ``res``)."""
    return frame_files(folder, kind)


def _sequence_length(tra_dir: str, tra_files: dict, seg_files: dict) -> int:
    """Frames of the sequence a GT folder annotates: up to the last frame ``man_track.txt``
    lists, else the last reference file."""
    from deepcens.data.ctc import parse_track_file

    last = max(list(tra_files) + list(seg_files))
    track_file = os.path.join(tra_dir, "man_track.txt")
    if os.path.isfile(track_file):
        tracks = parse_track_file(track_file)
        if len(tracks):
            last = max(last, int(tracks[:, 2].max()))
    return last + 1


def ctc_seg_slice_files(folder: str | os.PathLike) -> dict[int, dict[int, str]]:
    """Frame -> {plane -> path} of 3D SEG references given as planes (``man_seg_TTT_ZZZ.tif``)."""
    files: dict[int, dict[int, str]] = {}
    if os.path.isdir(folder):
        for (frame, plane), path in frame_files(folder, "seg_slice").items():
            files.setdefault(frame, {})[plane] = path
    return files


def _seg_reference(seg_files: dict, slice_files: dict, frame: int) -> tuple[np.ndarray | None, list[int] | None]:
    """The SEG reference of a frame: a 2D image / 3D volume, or the stack of its annotated
    planes together with their plane indices (compared with those planes of the result)."""
    if frame in seg_files:
        return read_label(seg_files[frame], volume=True), None
    if frame in slice_files:
        planes = sorted(slice_files[frame])
        return np.stack([read_label(slice_files[frame][z]) for z in planes]), planes
    return None, None


def evaluate_ctc_folders(
    gt_dir: str | os.PathLike, res_dir: str | os.PathLike, frames: Iterable[int] | None = None,
    tra: bool | None = None,
) -> dict:
    """SEG / DET / OP_CSB (and TRA / OP_CTB) of a CTC result folder against ``<seq>_GT``.

    SEG uses ``SEG/man_segTTT.tif`` (2D, or 3D volumes; 3D references annotated in planes
    ``man_seg_TTT_ZZZ.tif`` are compared with those planes); DET uses ``TRA/man_trackTTT.tif``
    when the TRA folder exists, else the SEG masks. ``frames`` restricts the frames (then
    there is no TRA). TRA needs ``TRA/man_track.txt`` and ``res_track.txt``: ``tra`` None
    scores it when both exist, True requires them, False skips it. Returns the
    :meth:`CTCCounts.measures` dict (+ :meth:`TRACounts.measures` and ``OP_CTB``) plus
    ``per_frame`` records.
    """
    gt_dir, res_dir = os.fspath(gt_dir), os.fspath(res_dir)
    seg_dir = os.path.join(gt_dir, "SEG")
    seg_files = ctc_frame_files(seg_dir, "seg") if os.path.isdir(seg_dir) else {}
    slice_files = ctc_seg_slice_files(seg_dir)
    tra_dir = os.path.join(gt_dir, "TRA")
    tra_files = ctc_frame_files(tra_dir, "tra") if os.path.isdir(tra_dir) else {}
    if not seg_files and not slice_files and not tra_files:
        raise DeepcensInputError(gt_dir, "no SEG/man_segTTT.tif or TRA/man_trackTTT.tif reference files")
    if tra_files:
        check_tra_frames(tra_dir, tra_files, _sequence_length(tra_dir, tra_files, seg_files))
    res_files = ctc_frame_files(res_dir, "res")
    if not res_files:
        raise DeepcensInputError(res_dir, "no maskTTT.tif result files")
    track_paths = (os.path.join(tra_dir, "man_track.txt"), os.path.join(res_dir, "res_track.txt"))
    if tra is None:
        tra = frames is None and all(os.path.isfile(p) for p in track_paths)
    elif tra and frames is not None:
        raise ValueError("TRA is defined on the whole sequence: do not restrict the frames")
    wanted = sorted(set(seg_files) | set(slice_files) | set(tra_files))
    if frames is not None:
        chosen = set(int(f) for f in frames)
        wanted = [f for f in wanted if f in chosen]
    total = CTCCounts()
    per_frame = []
    tra_matches: list[LabelMatch] = []
    digits = max(3, len(str(max(wanted)))) if wanted else 3
    for frame in wanted:
        if frame not in res_files:
            raise DeepcensInputError(
                os.path.join(res_dir, frame_file_name("res", frame, digits)), f"missing result frame {frame} (the GT has it)")
        gt_seg, planes = _seg_reference(seg_files, slice_files, frame)
        markers = read_label(tra_files[frame], volume=True) if frame in tra_files else None
        shape = markers.shape if markers is not None else (gt_seg.shape if planes is None else None)
        pred = read_label(res_files[frame], shape, volume=True)
        if planes is not None:
            if pred.ndim != 3 or max(planes) >= pred.shape[0] or pred.shape[1:] != gt_seg.shape[1:]:
                raise DeepcensInputError(res_files[frame], f"result shape {pred.shape} does not hold the annotated planes {planes} of shape {gt_seg.shape[1:]}")
            counts, record = frame_counts(pred[planes], gt_seg, None)
            if markers is not None:
                det_only, det_record = frame_counts(pred, None, markers)
                counts = dataclasses.replace(counts, **{k: getattr(det_only, k) for k in ("det_split", "det_fn", "det_fp", "det_num_ref", "det_frames")})
                record.update({k: det_record[k] for k in ("DET", "num_ref_det", "num_pred")})
        else:
            counts, record = frame_counts(pred, gt_seg, markers)
        if tra_files and markers is None:
            # DET is defined on the TRA markers: a frame with SEG but no TRA file adds no DET.
            counts = dataclasses.replace(counts, det_split=0, det_fn=0, det_fp=0, det_num_ref=0, det_frames=0)
            record["DET"] = None
        if tra and markers is not None:
            tra_matches.append(match_label_images(markers, pred))
        total = total + counts
        record["frame"] = frame
        per_frame.append(record)
    result = total.measures()
    if tra:
        result.update(_tra_of_folders(tra_files, tra_matches, *track_paths))
        result["OP_CTB"] = 0.5 * result["SEG"] + 0.5 * result["TRA"]
    result["per_frame"] = per_frame
    return result


def _tra_of_folders(tra_files: dict, matches: list[LabelMatch], man_track: str, res_track: str) -> dict[str, float]:
    from deepcens.data.ctc import parse_track_file
    from deepcens.evaluation.ctc_tra import TrackTableError, track_table_problems, tra_counts

    if sorted(tra_files) != list(range(len(tra_files))):
        raise DeepcensInputError(os.path.dirname(man_track), "TRA needs the marker frames 0..n-1 without gaps")
    for path in (man_track, res_track):
        if not os.path.isfile(path):
            raise DeepcensInputError(path, "track file not found (needed for TRA)")
    ref_tracks, comp_tracks = parse_track_file(man_track), parse_track_file(res_track)
    problems = track_table_problems(comp_tracks, [m.comp_ids for m in matches])
    if problems:
        raise DeepcensInputError(res_track, "not a valid CTC tracking result: " + "; ".join(problems))
    try:
        return tra_counts(matches, ref_tracks, comp_tracks).measures()
    except TrackTableError as exc:
        raise DeepcensInputError(man_track, str(exc)) from None
