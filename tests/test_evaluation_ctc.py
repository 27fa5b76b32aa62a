"""CTC SEG / DET / OP_CSB: hand-checked cases and exact agreement with py-ctcmetrics."""
from __future__ import annotations

import os

import numpy as np
import pytest
import tifffile

from deepcens.benchmarks.ctc_metrics import (
    make_subset_gt, perturbed_sequence, reference_measures, write_result_folder,
)
from deepcens.data.io import read_label
from deepcens.errors import DeepcensInputError
from deepcens.evaluation.ctc_measures import (
    CTCCounts, ctc_frame_files, det_counts, evaluate_ctc_folders, frame_counts, match_label_images, seg_counts,
    sum_counts,
)


def _squares() -> np.ndarray:
    ref = np.zeros((20, 20), np.uint16)
    ref[0:4, 0:4] = 1      # 16 px
    ref[0:4, 10:14] = 2    # 16 px
    ref[10:14, 0:4] = 3    # 16 px
    ref[10:12, 10:12] = 4  # 4 px
    return ref


def test_hand_checked_frame():
    ref = _squares()
    comp = np.zeros_like(ref)
    comp[0:4, 0:3] = 7        # covers 12/16 of ref 1 -> match, IoU 12/16
    comp[0:4, 10:14] = 9      # one object over ref 2 ...
    comp[10:14, 0:4] = 9      # ... and ref 3: merged -> one split needed
    comp[10:11, 10:12] = 5    # covers 2/4 of ref 4: exactly half -> no match
    comp[18:20, 18:20] = 6    # false positive
    match = match_label_images(ref, comp)
    iou_sum, n_ref, per_ref = seg_counts(match)
    # ref 2 and 3 are each covered fully by object 9 (area 32): IoU 16/32
    assert n_ref == 4
    assert per_ref.tolist() == pytest.approx([12 / 16, 0.5, 0.5, 0.0])
    split, fn, fp, n_markers = det_counts(match)
    assert (split, fn, fp, n_markers) == (1, 1, 2, 4)  # objects 5 and 6 match nothing
    counts, record = frame_counts(comp, ref)
    assert counts.aogm_d == 5 * 1 + 10 * 1 + 1 * 2
    assert counts.det() == pytest.approx(1 - 17 / 40)
    assert record["SEG"] == pytest.approx((0.75 + 0.5 + 0.5) / 4)


def test_pooling_over_frames_is_not_the_mean_of_frames():
    ref = _squares()
    perfect = frame_counts(ref, ref)[0]
    empty = frame_counts(np.zeros_like(ref), ref[:, :])[0]
    tiny = np.zeros((5, 5), np.uint16)
    tiny[1:3, 1:3] = 1
    one = frame_counts(tiny, tiny)[0]
    total = sum_counts([perfect, empty, one])
    assert total.seg() == pytest.approx((4 + 0 + 1) / 9)  # over all reference objects
    assert total.det() == pytest.approx(1 - 40 / 90)      # over summed AOGM
    assert CTCCounts().det() != CTCCounts().det()          # nan without reference


def test_dense_and_sparse_pair_tables_agree(monkeypatch):
    rng = np.random.default_rng(1)
    ref = rng.integers(0, 30, size=(64, 64)).astype(np.uint16)
    comp = rng.integers(0, 40, size=(64, 64)).astype(np.int32)
    dense = match_label_images(ref, comp)
    import deepcens.evaluation.ctc_measures as module

    monkeypatch.setattr(module, "_DENSE_TABLE_LIMIT", 0)
    sparse = match_label_images(ref, comp)
    assert dense.intersection.sum() == np.count_nonzero((ref > 0) & (comp > 0))
    for a, b in ((dense.pair_ref, sparse.pair_ref), (dense.pair_comp, sparse.pair_comp),
                 (dense.intersection, sparse.intersection)):
        np.testing.assert_array_equal(a, b)


SEQUENCES = ["Fluo-N2DH-SIM+", "Fluo-N2DH-GOWT1", "Fluo-C2DL-MSC"]


@pytest.mark.parametrize("name", SEQUENCES)
def test_identical_to_py_ctcmetrics_on_real_sequences(shared_data, tmp_path, name):
    """5 frames that have SEG (sparse on GOWT1/MSC): py-ctcmetrics needs one result mask per
    TRA frame, so the frames go into a renumbered GT subset folder."""
    gt_dir = str(shared_data / "ctc" / name / "01_GT")
    seg = ctc_frame_files(os.path.join(gt_dir, "SEG"), "seg")
    frames = sorted(seg)[:: max(1, len(seg) // 5)][:5]
    subset = str(tmp_path / "01_GT")
    make_subset_gt(gt_dir, frames, subset)
    predictions = perturbed_sequence(gt_dir, frames, seed=3)
    renumbered = {new: predictions[frame] for new, frame in enumerate(frames)}
    res_dir = str(tmp_path / "01_RES")
    write_result_folder(renumbered, res_dir)

    reference = reference_measures(subset, res_dir)
    ours_folder = evaluate_ctc_folders(subset, res_dir)
    tra = ctc_frame_files(os.path.join(gt_dir, "TRA"), "tra")
    ours_arrays = sum_counts(
        frame_counts(predictions[f], read_label(seg[f]), read_label(tra[f]))[0] for f in frames).measures()
    for key in ("SEG", "DET", "OP_CSB"):
        assert abs(ours_folder[key] - reference[key]) < 1e-9, (key, ours_folder[key], reference[key])
        assert abs(ours_arrays[key] - reference[key]) < 1e-9, (key, ours_arrays[key], reference[key])
    assert 0.2 < reference["SEG"] < 0.95 and 0.2 < reference["DET"] < 0.99  # the perturbation bites


def _write_tiny_ctc(root, frames=3, shape=(32, 32)):
    gt = root / "01_GT"
    res = root / "01_RES"
    for sub in (gt / "SEG", gt / "TRA", res):
        sub.mkdir(parents=True)
    labels = np.zeros(shape, np.uint16)
    labels[2:10, 2:10] = 1
    labels[15:25, 15:25] = 2
    for t in range(frames):
        tifffile.imwrite(gt / "SEG" / f"man_seg{t:03d}.tif", labels)
        tifffile.imwrite(gt / "TRA" / f"man_track{t:03d}.tif", labels)
        eroded = labels.copy()
        eroded[15:17] = 0
        tifffile.imwrite(res / f"mask{t:03d}.tif", eroded)
    return gt, res


def test_folder_errors(tmp_path):
    gt, res = _write_tiny_ctc(tmp_path)
    result = evaluate_ctc_folders(gt, res)
    assert result["DET"] == 1.0 and result["SEG"] == pytest.approx((1 + 80 / 100) / 2)
    os.remove(res / "mask001.tif")
    with pytest.raises(DeepcensInputError, match=r"mask001\.tif: missing result frame 1"):
        evaluate_ctc_folders(gt, res)
    tifffile.imwrite(res / "mask001.tif", np.zeros((16, 32), np.uint16))
    with pytest.raises(DeepcensInputError, match=r"mask001\.tif: label size 16x32 differs"):
        evaluate_ctc_folders(gt, res)
    with pytest.raises(DeepcensInputError, match="no maskTTT.tif"):
        evaluate_ctc_folders(gt, tmp_path / "01_GT" / "SEG")


def test_cell_evaluator_on_ctc_dicts_matches_folder_measures(shared_data, tmp_path):
    """CellEvaluator on C1's CTC dataset dicts (SEG frames of SIM+) scores rendered Instances
    exactly as the folder path scores the same label images."""
    from deepcens.data.ctc import load_ctc_dicts
    from deepcens.evaluation import CellEvaluator
    from deepcens.postprocess.instances import label_image_to_instances

    root = str(shared_data / "ctc")
    dicts = load_ctc_dicts(root, "Fluo-N2DH-SIM+", ["01"], "GT", frames=[0, 30, 60])
    gt_dir = os.path.join(root, "Fluo-N2DH-SIM+", "01_GT")
    predictions = perturbed_sequence(gt_dir, [d["frame"] for d in dicts], seed=5)
    res_dir = tmp_path / "01_RES"
    res_dir.mkdir()
    evaluator = CellEvaluator("sim_subset", None, distributed=False, dataset_dicts=dicts, class_names=["cell"])
    for record in dicts:
        labels = predictions[record["frame"]]
        tifffile.imwrite(res_dir / f"mask{record['frame']:03d}.tif", labels.astype(np.uint16))
        evaluator.process([{"image_id": record["image_id"]}], [{"instances": label_image_to_instances(labels)}])
    ctc = evaluator.evaluate()["ctc"]
    folder = evaluate_ctc_folders(gt_dir, res_dir, frames=[0, 30, 60])
    for key in ("SEG", "DET", "OP_CSB"):
        assert abs(ctc[key] - folder[key]) < 1e-12, key
    assert ctc["SEG-Fluo-N2DH-SIM+/01"] == ctc["SEG"] and ctc["num_frames_det"] == 3
