"""Instance F1 at IoU 0.5 and foreground Dice against a brute-force reference on perturbed label images."""
from __future__ import annotations

import itertools
import json
import subprocess
import sys

import numpy as np
import pytest
import tifffile

from conftest import REPO
from deepcens.evaluation.matching import F1Counts, f1_counts, f1_score


def brute_force_f1(reference: np.ndarray, prediction: np.ndarray, threshold: float = 0.5) -> tuple[float, int]:
    """F1 and TP from per-object masks and the best of every one-to-one assignment."""
    ref_ids = [i for i in np.unique(reference) if i]
    pred_ids = [i for i in np.unique(prediction) if i]
    ok = np.zeros((len(ref_ids), len(pred_ids)), dtype=bool)
    for a, r in enumerate(ref_ids):
        for b, p in enumerate(pred_ids):
            inter = np.logical_and(reference == r, prediction == p).sum()
            union = np.logical_or(reference == r, prediction == p).sum()
            ok[a, b] = inter / union >= threshold
    best = 0
    small, large = (ok, len(pred_ids)) if len(ref_ids) <= len(pred_ids) else (ok.T, len(ref_ids))
    for chosen in itertools.permutations(range(large), small.shape[0]):
        best = max(best, int(sum(small[row, col] for row, col in enumerate(chosen))))
    denominator = 2 * best + (len(pred_ids) - best) + (len(ref_ids) - best)
    return (2 * best / denominator if denominator else float("nan")), best


def _scene(rng: np.random.RandomState) -> np.ndarray:
    labels = np.zeros((48, 48), np.int32)
    for index in range(1, 6):
        top, left = rng.randint(0, 38, size=2)
        h, w = rng.randint(5, 11, size=2)
        labels[top:top + h, left:left + w] = index  # later objects overwrite: touching / cut objects
    return labels


def _perturb(labels: np.ndarray, rng: np.random.RandomState) -> np.ndarray:
    out = labels.copy()
    ids = [i for i in np.unique(labels) if i]
    if not ids:
        return out
    kind = rng.randint(4)
    target = ids[rng.randint(len(ids))]
    if kind == 0 and len(ids) > 1:  # merge two objects
        out[out == ids[-1]] = ids[0]
    elif kind == 1:  # split one object in two halves
        rows, cols = np.nonzero(out == target)
        half = cols > np.median(cols)
        out[rows[half], cols[half]] = labels.max() + 1
    elif kind == 2:  # miss one object
        out[out == target] = 0
    else:  # shift one object
        mask = labels == target
        out[mask] = 0
        shift = rng.randint(1, 5)
        out[np.roll(mask, shift, axis=1) & (out == 0)] = target
    return out


@pytest.mark.parametrize("seed", range(25))
def test_f1_matches_brute_force_on_perturbed_label_images(seed):
    rng = np.random.RandomState(seed)
    reference = _scene(rng)
    prediction = reference
    for _ in range(rng.randint(1, 4)):
        prediction = _perturb(prediction, rng)
    expected_f1, expected_tp = brute_force_f1(reference, prediction)
    counts = f1_counts(reference, prediction)
    assert counts.tp == expected_tp
    assert counts.fp == len(np.unique(prediction)) - 1 - expected_tp
    assert counts.fn == len(np.unique(reference)) - 1 - expected_tp
    np.testing.assert_allclose(counts.f1(), expected_f1)
    # foreground Dice of the semantic maps
    g, p = reference > 0, prediction > 0
    np.testing.assert_allclose(counts.dice(), 2 * (g & p).sum() / (g.sum() + p.sum()))


def test_named_cases_and_exact_half_tie():
    reference = np.zeros((20, 20), np.int32)
    reference[2:8, 2:8] = 1
    reference[10:18, 10:18] = 2
    assert f1_score(reference, reference) == 1.0
    merged = (reference > 0).astype(np.int32)  # one object covering both: IoU 64/100 with the larger only
    area = int((reference > 0).sum())
    assert f1_counts(reference, merged) == F1Counts(1, 0, 1, area, 2 * area)
    # a 2x4 object split into two 2x2 halves: both halves have IoU exactly 0.5, one of them matches
    tie_ref = np.zeros((6, 6), np.int32)
    tie_ref[1:3, 1:5] = 1
    halves = np.zeros_like(tie_ref)
    halves[1:3, 1:3], halves[1:3, 3:5] = 1, 2
    counts = f1_counts(tie_ref, halves)
    assert (counts.tp, counts.fp, counts.fn) == (1, 1, 0)
    assert brute_force_f1(tie_ref, halves)[1] == 1
    assert np.isnan(f1_score(np.zeros((4, 4), np.int32), np.zeros((4, 4), np.int32)))


def test_evaluate_tool_writes_f1_under_its_key(tmp_path):
    gt_dir, pred_dir = tmp_path / "gt", tmp_path / "pred"
    gt_dir.mkdir()
    pred_dir.mkdir()
    rng = np.random.RandomState(3)
    expected = F1Counts()
    per_image = []
    for index in range(3):
        reference = _scene(rng)
        prediction = _perturb(reference, rng)
        tifffile.imwrite(gt_dir / f"img{index}.tif", reference.astype(np.uint16))
        tifffile.imwrite(pred_dir / f"img{index}.tif", prediction.astype(np.uint16))
        counts = f1_counts(reference, prediction)
        expected = expected + counts
        per_image.append(counts.f1())
    out = tmp_path / "out.json"
    result = subprocess.run([sys.executable, "tools/evaluate.py", "--gt-labels", str(gt_dir), "--pred-labels",
                             str(pred_dir), "--json", str(out)], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    scores = json.loads(out.read_text())["gt"]["F1"]
    np.testing.assert_allclose(scores["F1"], np.mean(per_image))
    np.testing.assert_allclose(scores["precision"], expected.precision())
    np.testing.assert_allclose(scores["recall"], expected.recall())
    np.testing.assert_allclose(scores["Dice_pooled"], expected.dice())
    assert (scores["TP"], scores["FP"], scores["FN"]) == (expected.tp, expected.fp, expected.fn)
    assert "F1=" in result.stdout
