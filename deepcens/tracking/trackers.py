"""The registered trackers: LAP linking with laptrack, and XB-Net's frame-to-frame rule.

``LapTracker`` solves the linear assignment problems of Jaqaman et al. (2008) through
``laptrack.LapTrack``: frame-to-frame linking, then gap closing over up to
``TRACKING.GAP_CLOSING_FRAMES`` missing frames and divisions (a segment start joined to an
object of the frame before it, which then has two successors). Costs are squared centroid
distances (``TRACKING.COST centroid``, vectorised in scipy) or one minus the overlap
coefficient of the two masks (``overlap``: intersection / smaller area, from the same
vectorised pair table the CTC measures use).

``GreedyTracker`` is the rule of the XB-Net paper (section 5.6): objects of consecutive frames
are matched by nearest centroid within a distance threshold, tracks end or begin where no
match is found; no gaps, no divisions.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from detectron2.config import CfgNode
from scipy.spatial import cKDTree

from deepcens.evaluation.ctc_measures import match_label_images
from deepcens.tracking.base import TRACKER_REGISTRY, FrameObjects, TrackingResult, check_frames, frame_objects, links_to_tracks


@TRACKER_REGISTRY.register()
class LapTracker:
    """LAP linking (laptrack) with gap closing and divisions on centroid or overlap costs."""

    def __init__(self, *, cost: str = "centroid", max_distance: float = 30.0, min_overlap: float = 0.2,
                 gap_closing_frames: int = 2, gap_closing_max_distance: float = 40.0,
                 divisions: bool = True, division_max_distance: float = 40.0):
        if cost not in ("centroid", "overlap"):
            raise ValueError(f"TRACKING.COST must be 'centroid' or 'overlap', got {cost!r}")
        if max_distance <= 0 or gap_closing_frames < 0 or not 0 < min_overlap <= 1:
            raise ValueError("TRACKING: MAX_DISTANCE > 0, GAP_CLOSING_FRAMES >= 0 and 0 < MIN_OVERLAP <= 1 are required")
        self.cost = cost
        self.max_distance = float(max_distance)
        self.min_overlap = float(min_overlap)
        self.gap_closing_frames = int(gap_closing_frames)
        self.gap_closing_max_distance = float(gap_closing_max_distance)
        self.divisions = bool(divisions)
        self.division_max_distance = float(division_max_distance)

    @classmethod
    def from_config(cls, cfg: CfgNode) -> "LapTracker":
        t = cfg.TRACKING
        return cls(cost=t.COST, max_distance=t.MAX_DISTANCE, min_overlap=t.MIN_OVERLAP,
                   gap_closing_frames=t.GAP_CLOSING_FRAMES, gap_closing_max_distance=t.GAP_CLOSING_MAX_DISTANCE,
                   divisions=t.DIVISIONS, division_max_distance=t.DIVISION_MAX_DISTANCE)

    def _laptrack(self, frames: list[np.ndarray]):
        from laptrack import LapTrack

        gap = self.gap_closing_frames > 0
        if self.cost == "centroid":
            metric, link_cutoff = "sqeuclidean", self.max_distance ** 2
            gap_cutoff, division_cutoff = self.gap_closing_max_distance ** 2, self.division_max_distance ** 2
        else:
            metric = _OverlapCost(frames)
            link_cutoff = gap_cutoff = division_cutoff = 1.0 - self.min_overlap + 1e-9  # laptrack keeps costs < cutoff
        # Leaving a segment end / start unlinked or a division unused costs the cutoff, so every
        # gap closing or division within its cutoff is taken unless a cheaper one competes
        # (laptrack's default, a percentile of the candidate costs, rejects most of them on
        # sequences with few candidates).
        return LapTrack(
            metric=metric, cutoff=link_cutoff,
            gap_closing_metric=metric, gap_closing_cutoff=gap_cutoff if gap else False,
            gap_closing_max_frame_count=self.gap_closing_frames + 1,
            splitting_metric=metric, splitting_cutoff=division_cutoff if self.divisions else False,
            merging_cutoff=False, segment_start_cost=gap_cutoff, segment_end_cost=gap_cutoff,
            no_splitting_cost=division_cutoff, no_merging_cost=division_cutoff)

    def link(self, frames: list[np.ndarray], objects: list[FrameObjects]) -> tuple[np.ndarray, np.ndarray]:
        """Links (source, target) between global object indices."""
        if self.cost == "centroid":
            coords = [o.centroids for o in objects]
        else:  # the overlap metric looks objects up by (frame, index)
            coords = [np.stack([np.full(len(o.ids), t), np.arange(len(o.ids))], axis=1).astype(float)
                      for t, o in enumerate(objects)]
        if sum(len(c) for c in coords) == 0:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        graph = self._laptrack(frames).predict(coords)
        offsets = np.concatenate([[0], np.cumsum([len(o.ids) for o in objects])])
        nodes = np.array(list(graph.edges()), dtype=np.int64).reshape(-1, 2, 2)  # ((frame, index), (frame, index))
        global_index = offsets[nodes[..., 0]] + nodes[..., 1]
        return global_index[:, 0], global_index[:, 1]

    def track(self, label_frames: Sequence[np.ndarray]) -> TrackingResult:
        frames = check_frames(label_frames)
        objects = [frame_objects(f) for f in frames]
        source, target = self.link(frames, objects)
        return links_to_tracks(frames, objects, source, target)


class _OverlapCost:
    """laptrack metric on (frame, index) coordinates: 1 - intersection / smaller area."""

    def __init__(self, frames: list[np.ndarray]):
        self.frames = frames
        self.tables: dict[tuple[int, int], np.ndarray] = {}

    def table(self, first: int, second: int) -> np.ndarray:
        if (first, second) in self.tables:
            return self.tables[first, second]
        match = match_label_images(self.frames[first], self.frames[second])
        table = np.zeros((len(match.ref_ids), len(match.comp_ids)))
        smaller = np.minimum(match.ref_areas[match.pair_ref], match.comp_areas[match.pair_comp])
        table[match.pair_ref, match.pair_comp] = match.intersection / smaller
        self.tables[first, second] = table
        return table

    def __call__(self, a: np.ndarray, b: np.ndarray) -> float:
        (f1, i1), (f2, i2) = (int(a[0]), int(a[1])), (int(b[0]), int(b[1]))
        if f1 > f2:
            (f1, i1), (f2, i2) = (f2, i2), (f1, i1)
        return 1.0 - float(self.table(f1, f2)[i1, i2])


@TRACKER_REGISTRY.register()
class GreedyTracker:
    """XB-Net section 5.6: nearest-centroid matching of consecutive frames within a distance
    threshold (closest pairs first, each object used once); no gaps, no divisions."""

    def __init__(self, *, max_distance: float = 30.0):
        if max_distance <= 0:
            raise ValueError("TRACKING.MAX_DISTANCE must be > 0")
        self.max_distance = float(max_distance)

    @classmethod
    def from_config(cls, cfg: CfgNode) -> "GreedyTracker":
        return cls(max_distance=cfg.TRACKING.MAX_DISTANCE)

    def track(self, label_frames: Sequence[np.ndarray]) -> TrackingResult:
        frames = check_frames(label_frames)
        objects = [frame_objects(f) for f in frames]
        offsets = np.concatenate([[0], np.cumsum([len(o.ids) for o in objects])])
        sources, targets = [], []
        for t in range(len(objects) - 1):
            first, second = objects[t].centroids, objects[t + 1].centroids
            if not len(first) or not len(second):
                continue
            pairs = cKDTree(first).sparse_distance_matrix(cKDTree(second), self.max_distance, output_type="ndarray")
            pairs = pairs[np.lexsort((pairs["j"], pairs["i"], pairs["v"]))]
            used_first = np.zeros(len(first), bool)
            used_second = np.zeros(len(second), bool)
            for i, j in zip(pairs["i"].tolist(), pairs["j"].tolist()):
                if not used_first[i] and not used_second[j]:
                    used_first[i] = used_second[j] = True
                    sources.append(offsets[t] + i)
                    targets.append(offsets[t + 1] + j)
        return links_to_tracks(frames, objects, np.asarray(sources, np.int64), np.asarray(targets, np.int64))
