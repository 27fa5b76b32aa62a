"""Instance F1 (the NeurIPS 2022 Cell Segmentation challenge measure) and foreground Dice.

F1 at IoU threshold t: ground-truth and predicted objects are matched one to one; a match
needs IoU >= t (the challenge's rule); TP = matched pairs, FP = unmatched predictions, FN =
unmatched ground-truth objects, F1 = 2 TP / (2 TP + FP + FN).

Overlaps come from :func:`deepcens.evaluation.ctc_measures.match_label_images` (one
``bincount`` over paired labels; only overlapping pairs are listed). For label images
(non-overlapping objects) and t > 0.5 every object takes part in at most one candidate pair
(IoU > 0.5 means the pair shares more than half of each object), so the candidates are the
matching and no assignment is solved. For t <= 0.5 (at exactly 0.5 two half-objects can
tie) the candidates that share an object are resolved by
``scipy.optimize.linear_sum_assignment``, maximising the number of matches and then their
IoU sum, as the challenge's evaluation does.

Dice of the semantic (foreground) map: ``2 |G & P| / (|G| + |P|)`` of the label images'
foregrounds.
"""
from __future__ import annotations

import dataclasses

import numpy as np
from scipy.optimize import linear_sum_assignment

from deepcens.evaluation.counts import AdditiveCounts
from deepcens.evaluation.ctc_measures import LabelMatch, match_label_images


@dataclasses.dataclass
class F1Counts(AdditiveCounts):
    """Additive TP / FP / FN counts (pool images by ``+``) and foreground pixel sums for Dice."""

    tp: int = 0
    fp: int = 0
    fn: int = 0
    fg_intersection: int = 0
    fg_sum: int = 0

    def f1(self) -> float:
        denominator = 2 * self.tp + self.fp + self.fn
        return 2 * self.tp / denominator if denominator else float("nan")

    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else float("nan")

    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else float("nan")

    def dice(self) -> float:
        return 2 * self.fg_intersection / self.fg_sum if self.fg_sum else float("nan")


def matched_pairs(match: LabelMatch, iou_threshold: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Indices into ``match.ref_ids`` / ``match.comp_ids`` of the one-to-one matched pairs."""
    iou = match.iou()
    candidate = iou >= iou_threshold
    ref, comp, values = match.pair_ref[candidate], match.pair_comp[candidate], iou[candidate]
    if len(ref) == 0:
        return ref, comp
    if len(np.unique(ref)) == len(ref) and len(np.unique(comp)) == len(comp):
        return ref, comp  # always the case for iou_threshold > 0.5
    ref_ids, ref_index = np.unique(ref, return_inverse=True)
    comp_ids, comp_index = np.unique(comp, return_inverse=True)
    # maximise the number of matches first, their IoU second (IoU <= 1 < the count's weight)
    weight = np.zeros((len(ref_ids), len(comp_ids)))
    weight[ref_index, comp_index] = 1.0 + values / (2.0 * max(len(ref_ids), len(comp_ids)))
    rows, cols = linear_sum_assignment(weight, maximize=True)
    keep = weight[rows, cols] > 0
    return ref_ids[rows[keep]], comp_ids[cols[keep]]


def f1_counts(reference: np.ndarray, prediction: np.ndarray, iou_threshold: float = 0.5,
              match: LabelMatch | None = None) -> F1Counts:
    """TP / FP / FN at ``iou_threshold`` and foreground Dice sums of two label images
    (``match``: their :func:`match_label_images`, when the caller already has it)."""
    if match is None:
        match = match_label_images(reference, prediction)
    ref_matched, _ = matched_pairs(match, iou_threshold)
    tp = len(ref_matched)
    fg_intersection = int(match.intersection.sum())
    fg_sum = int(match.ref_areas.sum() + match.comp_areas.sum())
    return F1Counts(tp, len(match.comp_ids) - tp, len(match.ref_ids) - tp, fg_intersection, fg_sum)


def f1_score(reference: np.ndarray, prediction: np.ndarray, iou_threshold: float = 0.5) -> float:
    """Instance F1 of one prediction label image against its reference (nan when both are empty)."""
    return f1_counts(reference, prediction, iou_threshold).f1()
