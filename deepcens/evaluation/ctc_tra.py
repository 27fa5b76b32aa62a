"""Cell Tracking Challenge tracking measure TRA (AOGM with the CTC weights) on label sequences.

Definitions follow the reference implementation ``py-ctcmetrics`` (``ctc_metrics``) exactly
(Matula et al. 2015, "Cell Tracking Accuracy Measurement Based on Comparison of Acyclic
Oriented Graphs"):

* Vertices are the objects of every frame (reference: the TRA markers ``man_trackTTT.tif``;
  computed: the result masks ``maskTTT.tif``). A computed vertex *matches* a reference vertex
  when it covers strictly more than half of it (as for DET).
* Edges: a *track link* (semantic 0) joins the same label in consecutive frames whenever the
  label is present in both; a *parent link* (semantic 1) joins the last vertex of the parent
  track to the first vertex of every track that names it in ``L B E P``.
* AOGM = 5 NS + 10 FN + 1 FP + 1 ED + 1.5 EA + 1 EC, where NS, FN, FP are DET's vertex
  operations, ED are computed edges between uniquely matched vertices that the reference
  lacks, EA reference edges the computed graph lacks, EC edges present in both with a
  different semantic. AOGM_0 = 10 (reference vertices) + 1.5 (reference edges) and
  TRA = 1 - min(AOGM, AOGM_0) / AOGM_0.

Frames are positions 0..n-1 (the CTC numbering). Everything is vectorised per frame: the
per-frame :class:`~deepcens.evaluation.ctc_measures.LabelMatch` objects that DET computes
anyway are all TRA needs besides the two track tables.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import numpy as np

from deepcens.evaluation.counts import AdditiveCounts
from deepcens.evaluation.ctc_measures import LabelMatch

# AOGM weights of the CTC (Matula et al. 2015): split, false negative / positive vertex,
# redundant (deleted), missing (added) and wrong-semantic (changed) edge.
W_NS, W_FN, W_FP, W_ED, W_EA, W_EC = 5, 10, 1, 1, 1.5, 1


class TrackTableError(ValueError):
    """A track table (``L B E P``) disagrees with the label images it describes."""


@dataclasses.dataclass
class TRACounts(AdditiveCounts):
    """Graph operations behind TRA (additive over sequences: pool by ``+``)."""

    ns: int = 0
    fn: int = 0
    fp: int = 0
    ed: int = 0
    ea: int = 0
    ec: int = 0
    num_vertices: int = 0
    num_edges: int = 0

    @property
    def aogm(self) -> float:
        return (W_NS * self.ns + W_FN * self.fn + W_FP * self.fp
                + W_ED * self.ed + W_EA * self.ea + W_EC * self.ec)

    @property
    def aogm_0(self) -> float:
        return W_FN * self.num_vertices + W_EA * self.num_edges

    def tra(self) -> float:
        if not self.aogm_0:
            return math.nan
        return 1.0 - min(self.aogm, self.aogm_0) / self.aogm_0

    def measures(self) -> dict[str, float]:
        """TRA, AOGM, AOGM_0 and the operation counts (py-ctcmetrics' key names)."""
        return {
            "TRA": self.tra(), "AOGM": float(self.aogm), "AOGM_0": float(self.aogm_0),
            "AOGM_NS": float(self.ns), "AOGM_FN": float(self.fn), "AOGM_FP": float(self.fp),
            "AOGM_ED": float(self.ed), "AOGM_EA": float(self.ea), "AOGM_EC": float(self.ec),
            "num_vertices_tra": float(self.num_vertices), "num_edges_tra": float(self.num_edges),
        }


def graph_edges(ids_per_frame: Sequence[np.ndarray], tracks: np.ndarray, what: str = "track table") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Edges of the acyclic graph of a labelled sequence as global vertex indices.

    ``ids_per_frame[t]`` are the sorted labels present in frame t; vertex ``(t, i)`` has the
    global index ``offset[t] + i``. Returns ``(source, target, semantic)`` (0 = track link,
    1 = parent link). Raises :class:`TrackTableError` when a parent link names a vertex that
    is not in its frame.
    """
    counts = np.array([len(ids) for ids in ids_per_frame], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(counts)])
    sources, targets = [], []
    for t in range(len(ids_per_frame) - 1):
        _, first, second = np.intersect1d(ids_per_frame[t], ids_per_frame[t + 1], assume_unique=True, return_indices=True)
        sources.append(first + offsets[t])
        targets.append(second + offsets[t + 1])
    num_links = sum(len(s) for s in sources)
    tracks = np.asarray(tracks, dtype=np.int64).reshape(-1, 4)
    children = tracks[tracks[:, 3] != 0]
    if len(children):
        order = np.argsort(tracks[:, 0])
        row = np.searchsorted(tracks[order, 0], children[:, 3])
        row = np.minimum(row, len(order) - 1)
        if not np.array_equal(tracks[order[row], 0], children[:, 3]):
            bad = children[tracks[order[row], 0] != children[:, 3]][0]
            raise TrackTableError(f"{what}: track {bad[0]} names parent {bad[3]}, which is not a track")
        parents = tracks[order[row]]
        sources.append(_vertex_index(ids_per_frame, offsets, parents[:, 2], parents[:, 0], what))
        targets.append(_vertex_index(ids_per_frame, offsets, children[:, 1], children[:, 0], what))
    source = np.concatenate(sources) if sources else np.zeros(0, np.int64)
    target = np.concatenate(targets) if targets else np.zeros(0, np.int64)
    semantic = np.zeros(len(source), dtype=np.int8)
    semantic[num_links:] = 1
    return source.astype(np.int64), target.astype(np.int64), semantic


def _vertex_index(ids_per_frame: Sequence[np.ndarray], offsets: np.ndarray, frames: np.ndarray,
                  labels: np.ndarray, what: str) -> np.ndarray:
    out = np.empty(len(frames), dtype=np.int64)
    for k, (frame, label) in enumerate(zip(frames.tolist(), labels.tolist())):
        if not 0 <= frame < len(ids_per_frame):
            raise TrackTableError(f"{what}: track {label} refers to frame {frame}, outside 0..{len(ids_per_frame) - 1}")
        ids = ids_per_frame[frame]
        position = int(np.searchsorted(ids, label))
        if position >= len(ids) or ids[position] != label:
            raise TrackTableError(f"{what}: label {label} is not in frame {frame}, where its track link lies")
        out[k] = offsets[frame] + position
    return out


def tra_counts(matches: Sequence[LabelMatch], ref_tracks: np.ndarray, comp_tracks: np.ndarray | None) -> TRACounts:
    """AOGM operations of a computed sequence against the reference.

    ``matches[t]`` matches the reference markers of frame t (``ref``) with the computed labels
    (``comp``) of frame t, as :func:`~deepcens.evaluation.ctc_measures.match_label_images`
    gives it. ``comp_tracks`` None (no ``res_track.txt``) counts track links only.
    """
    ref_ids = [m.ref_ids for m in matches]
    comp_ids = [m.comp_ids for m in matches]
    ref_offsets = np.concatenate([[0], np.cumsum([len(i) for i in ref_ids])]).astype(np.int64)
    comp_offsets = np.concatenate([[0], np.cumsum([len(i) for i in comp_ids])]).astype(np.int64)
    num_ref, num_comp = int(ref_offsets[-1]), int(comp_offsets[-1])
    hit_ref, hit_comp = [], []
    for t, match in enumerate(matches):
        hit = match.matches()
        hit_ref.append(match.pair_ref[hit] + ref_offsets[t])
        hit_comp.append(match.pair_comp[hit] + comp_offsets[t])
    hit_ref = np.concatenate(hit_ref) if hit_ref else np.zeros(0, np.int64)
    hit_comp = np.concatenate(hit_comp) if hit_comp else np.zeros(0, np.int64)
    refs_per_comp = np.bincount(hit_comp, minlength=num_comp)
    counts = TRACounts(
        ns=int(np.maximum(refs_per_comp - 1, 0).sum()), fn=num_ref - len(hit_ref),
        fp=int(np.count_nonzero(refs_per_comp == 0)), num_vertices=num_ref)
    # Edges between uniquely matched computed vertices, carried over to reference vertices.
    comp_to_ref = np.full(num_comp, -1, dtype=np.int64)
    unique = refs_per_comp[hit_comp] == 1
    comp_to_ref[hit_comp[unique]] = hit_ref[unique]
    ref_source, ref_target, ref_semantic = graph_edges(ref_ids, ref_tracks, "reference track table")
    comp_tracks = np.zeros((0, 4), np.int64) if comp_tracks is None else comp_tracks
    comp_source, comp_target, comp_semantic = graph_edges(comp_ids, comp_tracks, "computed track table")
    comp_source, comp_target = comp_to_ref[comp_source], comp_to_ref[comp_target]
    kept = (comp_source >= 0) & (comp_target >= 0)
    ref_keys = ref_source * max(num_ref, 1) + ref_target
    comp_keys = comp_source[kept] * max(num_ref, 1) + comp_target[kept]
    _, in_ref, in_comp = np.intersect1d(ref_keys, comp_keys, assume_unique=True, return_indices=True)
    counts.num_edges = len(ref_keys)
    counts.ed = len(comp_keys) - len(in_comp)
    counts.ea = len(ref_keys) - len(in_ref)
    counts.ec = int(np.count_nonzero(ref_semantic[in_ref] != comp_semantic[kept][in_comp]))
    return counts


def track_table_problems(tracks: np.ndarray, ids_per_frame: Sequence[np.ndarray], limit: int = 5) -> list[str]:
    """Why a result is not a valid CTC tracking result (py-ctcmetrics' validity rules), at
    most ``limit`` reasons; empty when valid.

    Rules: tracks exist, labels are unique and > 0, parents exist and end before their
    children begin, ``E >= B``, and every label is in exactly the frames ``B..E`` of its track.
    """
    tracks = np.asarray(tracks, dtype=np.int64).reshape(-1, 4)
    problems: list[str] = []
    if not len(tracks):
        return ["no tracks"]
    labels = tracks[:, 0]
    if len(np.unique(labels)) != len(labels):
        problems.append("track labels are not unique")
    if (labels <= 0).any() or (tracks[:, 3] < 0).any():
        problems.append("labels must be > 0 and parents >= 0")
    for label, begin, end, _ in tracks[tracks[:, 2] < tracks[:, 1]][:limit].tolist():
        problems.append(f"track {label} ends (frame {end}) before it begins ({begin})")
    end_of = dict(zip(labels.tolist(), tracks[:, 2].tolist()))
    for label, begin, _, parent in tracks[tracks[:, 3] > 0].tolist():
        if parent not in end_of:
            problems.append(f"track {label} has unknown parent {parent}")
        elif end_of[parent] >= begin:
            problems.append(f"parent {parent} of track {label} ends at frame {end_of[parent]}, not before {begin}")
    # (frame, label) pairs the table promises, against the pairs present in the masks.
    lengths = np.maximum(tracks[:, 2] - tracks[:, 1] + 1, 0)
    promised_label = np.repeat(labels, lengths)
    promised_frame = np.repeat(tracks[:, 1], lengths) + (np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths))
    scale = int(max(labels.max(), max((int(i.max()) for i in ids_per_frame if len(i)), default=0))) + 1
    present = np.concatenate([t * scale + np.asarray(ids, np.int64) for t, ids in enumerate(ids_per_frame)] or [np.zeros(0, np.int64)])
    inside = promised_frame < len(ids_per_frame)  # py-ctcmetrics compares the frames it has
    promised = promised_frame[inside] * scale + promised_label[inside]
    for name, keys, other in (("in the masks but not in the track table", present, promised),
                              ("in the track table but not in the masks", promised, present)):
        missing = keys[~np.isin(keys, other)]
        if len(missing):
            frame, label = divmod(int(missing[0]), scale)
            problems.append(f"{len(missing)} (frame, label) pairs are {name}, e.g. label {label} in frame {frame}")
    return problems[:limit]


def clip_track_table(tracks: np.ndarray, first: int, last: int) -> np.ndarray:
    """A track table restricted to frames ``first..last`` and renumbered from 0: tracks that
    touch the window are clipped to it, parents outside it become 0 (the window scored as a
    sequence of its own)."""
    tracks = np.asarray(tracks, dtype=np.int64).reshape(-1, 4)
    alive = tracks[(tracks[:, 1] <= last) & (tracks[:, 2] >= first)].copy()
    keep_parent = np.isin(alive[:, 3], alive[:, 0]) & (alive[:, 1] > first)
    alive[:, 3] = np.where(keep_parent, alive[:, 3], 0)
    alive[:, 1] = np.maximum(alive[:, 1], first) - first
    alive[:, 2] = np.minimum(alive[:, 2], last) - first
    return alive


def sequence_tra(tracker, predictions: Sequence[np.ndarray], markers: Sequence[np.ndarray], ref_tracks: np.ndarray) -> TRACounts:
    """Link per-frame predicted label images with ``tracker`` and score TRA against the
    markers and reference tracks of the same consecutive frames."""
    from deepcens.evaluation.ctc_measures import match_label_images

    result = tracker.track(predictions)
    matches = [match_label_images(m, p) for m, p in zip(markers, result.labels)]
    return tra_counts(matches, ref_tracks, result.tracks)
