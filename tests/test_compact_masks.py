"""Cropped masks give the same label images, RLEs, COCO stats and CTC measures as dense masks."""
from __future__ import annotations

import numpy as np
import pycocotools.mask as mask_util
import pytest
import tifffile
import torch
from detectron2.structures import Boxes, Instances

from deepcens.data.io import read_label
from deepcens.evaluation.coco import build_coco_dict, evaluate_coco, label_annotations
from deepcens.evaluation.ctc_measures import frame_counts
from deepcens.postprocess.instances import (
    coco_results_to_instances,
    instances_to_coco_results,
    instances_to_label_image,
    label_image_to_instances,
    segmentations_to_masks,
)
from deepcens.structures.masks import CroppedMasks


def dense_label_image(masks: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """The dense rendering (every mask at full size, best score wins, consecutive numbers)."""
    labels = np.zeros(masks.shape[1:], dtype=np.uint16)
    order = np.argsort(-scores, kind="stable")
    masks = masks[order]
    covered = masks.any(0)
    labels[covered] = masks.argmax(0)[covered] + 1
    present = np.unique(labels[covered])
    lookup = np.zeros(len(order) + 1, dtype=np.uint16)
    lookup[present] = np.arange(1, len(present) + 1)
    return lookup[labels]


def overlapping_prediction(labels: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Dense masks of a label image's objects, each shifted at random (so they overlap), and scores."""
    ids = np.unique(labels)[1:]
    masks = np.stack([np.roll(labels == i, tuple(rng.integers(-3, 4, 2)), axis=(0, 1)) for i in ids])
    return masks, rng.random(len(ids)).astype(np.float32)


@pytest.fixture(scope="module")
def real_labels(shared_data) -> list[np.ndarray]:
    files = sorted((shared_data / "dsb2018-nuclei" / "labels").glob("*.tif"))[:4]
    return [read_label(str(f)) for f in files] + [tifffile.imread(shared_data / "stardist-dsb-sample" / "mask2d.tif")]


def test_rle_of_crops_is_pycocotools_encoding_and_decodes_back():
    rng = np.random.default_rng(0)
    for _ in range(60):
        height, width = rng.integers(1, 25, 2)
        dense = np.zeros((5, height, width), dtype=bool)
        dense[0] = rng.random((height, width)) < 0.5
        dense[1] = True  # full height: runs continue across columns
        y, x = rng.integers(0, height), rng.integers(0, width)
        dense[2, y:, x:] = rng.random((height - y, width - x)) < 0.8
        dense[3, y, x] = True  # dense[4] stays empty
        masks = CroppedMasks.from_dense(dense)
        expected = mask_util.encode(np.asfortranarray(dense.transpose(1, 2, 0).astype(np.uint8)))
        assert [r["counts"] for r in masks.to_rles()] == [r["counts"] for r in expected]
        assert (CroppedMasks.from_rles(expected, (height, width)).dense() == dense).all()
        as_text = [dict(r, counts=r["counts"].decode()) for r in expected]
        assert (CroppedMasks.from_rles(as_text, (height, width)).dense() == dense).all()


def test_round_trip_equals_dense_path_on_real_labels(real_labels):
    rng = np.random.default_rng(1)
    for labels in real_labels:
        instances = label_image_to_instances(labels)
        assert isinstance(instances.pred_masks, CroppedMasks)
        ids = np.unique(labels)[1:]
        assert (instances.pred_masks.dense() == (labels[None] == ids[:, None, None])).all()
        # Non-overlapping objects come back unchanged (renumbered in id order at equal scores).
        back = instances_to_label_image(instances)
        assert (back > 0).sum() == (labels > 0).sum() and len(np.unique(back)) == len(ids) + 1
        # Overlapping, scored masks resolve exactly as the dense rendering does.
        dense, scores = overlapping_prediction(labels, rng)
        predicted = Instances(labels.shape)
        predicted.pred_masks = CroppedMasks.from_dense(dense)
        predicted.scores = torch.from_numpy(scores)
        expected = dense_label_image(dense, scores)
        assert (instances_to_label_image(predicted) == expected).all()
        predicted.pred_masks = torch.from_numpy(dense)  # dense input gives the same
        assert (instances_to_label_image(predicted) == expected).all()


def test_coco_stats_and_ctc_measures_equal_dense_path(real_labels):
    rng = np.random.default_rng(2)
    images, gts, compact_dt, dense_dt = [], [], [], []
    for image_id, labels in enumerate(real_labels, 1):
        dense, scores = overlapping_prediction(labels, rng)
        predicted = Instances(labels.shape)
        predicted.pred_masks = CroppedMasks.from_dense(dense)
        predicted.pred_boxes = Boxes(torch.from_numpy(predicted.pred_masks.tight_boxes()))
        predicted.scores = torch.from_numpy(scores)
        predicted.pred_classes = torch.zeros(len(scores), dtype=torch.int64)
        images.append({"id": image_id, "height": labels.shape[0], "width": labels.shape[1]})
        gts.append(label_annotations(labels))
        for entry in instances_to_coco_results(predicted, image_id):
            compact_dt.append(dict(entry, category_id=1))
        for mask, score, box in zip(dense, scores, predicted.pred_boxes.tensor.tolist()):
            rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
            dense_dt.append({"image_id": image_id, "category_id": 1, "score": float(score),
                             "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]],
                             "segmentation": {"size": rle["size"], "counts": rle["counts"].decode()}})
        # GT RLEs from the crops are those of the full masks.
        ids = np.unique(labels)[1:]
        full = mask_util.encode(np.asfortranarray((labels[None] == ids[:, None, None]).transpose(1, 2, 0).astype(np.uint8)))
        assert [a["segmentation"]["counts"] for a in gts[-1]] == [r["counts"] for r in full]
        compact_counts, _ = frame_counts(instances_to_label_image(predicted), labels)
        dense_counts, _ = frame_counts(dense_label_image(dense, scores), labels)
        assert compact_counts == dense_counts
    gt = build_coco_dict(images, gts, ["cell"])
    for iou_type in ("bbox", "segm"):
        compact = evaluate_coco(gt, compact_dt, iou_type, 500, ["cell"])
        dense = evaluate_coco(gt, dense_dt, iou_type, 500, ["cell"])
        assert compact == pytest.approx(dense, nan_ok=True) and 0 < compact["AP"] < 100


def test_instances_indexing_cat_and_coco_results_round_trip():
    labels = np.zeros((40, 50), dtype=np.uint16)
    labels[2:10, 3:9], labels[20:35, 10:30], labels[5:8, 40:50] = 1, 2, 3
    instances = label_image_to_instances(labels, scores=np.array([0.2, 0.9, 0.5]), classes=np.array([0, 1, 0]))
    kept = instances[instances.scores > 0.3]
    assert len(kept) == 2 and kept.pred_masks.areas().tolist() == [300, 30]
    assert len(instances[1]) == 1 and instances[torch.tensor([2, 0])].pred_masks.boxes[:, 0].tolist() == [40, 3]
    joined = Instances.cat([kept, instances[:1]]).to("cpu")
    assert len(joined) == 3 and joined.pred_masks.shape == (3, 40, 50)
    assert (joined.pred_masks.tensor.sum((1, 2)) == torch.tensor([300, 30, 48])).all()
    entries = instances_to_coco_results(instances, image_id=7)
    assert [e["category_id"] for e in entries] == [0, 1, 0] and entries[1]["bbox"] == [10.0, 20.0, 20.0, 15.0]
    back = coco_results_to_instances(entries, 40, 50)
    assert (back.pred_masks.dense() == instances.pred_masks.dense()).all()
    assert (instances_to_label_image(back) == instances_to_label_image(instances)).all()
    square = [[3, 2, 9, 2, 9, 10, 3, 10]]
    polygon = segmentations_to_masks([square], 40, 50)
    expected = mask_util.decode(mask_util.merge(mask_util.frPyObjects(square, 40, 50))).astype(bool)
    assert (polygon.dense()[0] == expected).all() and polygon.areas()[0] == 48


def test_compact_mask_rcnn_pastes_the_pixels_of_the_dense_path(tmp_path):
    from detectron2.modeling import build_model

    from deepcens.engine.setup import load_config
    from tests.test_predict import TINY_RCNN

    config = tmp_path / "tiny.yaml"
    config.write_text(TINY_RCNN)
    torch.manual_seed(0)
    dense_model = build_model(load_config(str(config), [])).eval()
    compact_model = build_model(load_config(str(config), ["MODEL.META_ARCHITECTURE", "CompactMaskRCNN"])).eval()
    compact_model.load_state_dict(dense_model.state_dict())
    image = torch.from_numpy(np.random.default_rng(3).integers(0, 255, (3, 96, 128), dtype=np.uint8))
    inputs = [{"image": image, "height": 120, "width": 160}]  # rescaled output, as the mapper asks
    with torch.no_grad():
        dense = dense_model(inputs)[0]["instances"]
        compact = compact_model(inputs)[0]["instances"]
    assert isinstance(compact.pred_masks, CroppedMasks) and len(compact) == len(dense) > 0
    assert torch.equal(compact.pred_boxes.tensor, dense.pred_boxes.tensor)
    assert (compact.pred_masks.dense() == dense.pred_masks.numpy()).all()
    assert compact.pred_masks.areas().sum() > 0


@pytest.mark.parametrize("backend", ["faster_coco_eval", "pycocotools"])
def test_crowded_images_scored_as_independent_groups_give_identical_ap(real_labels, monkeypatch, backend):
    from deepcens.evaluation import coco

    rng = np.random.default_rng(4)
    images, gts, results = [], [], []
    for image_id, labels in enumerate(real_labels, 1):
        dense, scores = overlapping_prediction(labels, rng)
        scores = np.round(scores, 1)  # many ties: the order COCOeval breaks them by must be kept
        predicted = Instances(labels.shape)
        predicted.pred_masks = CroppedMasks.from_dense(dense)
        predicted.scores = torch.from_numpy(scores)
        predicted.pred_classes = torch.from_numpy(rng.integers(0, 2, len(scores)))
        images.append({"id": image_id, "height": labels.shape[0], "width": labels.shape[1]})
        gt = label_annotations(labels)
        for annotation in gt:
            annotation["category_id"] = int(rng.integers(0, 2))
        gts.append(gt)
        results += [dict(e, category_id=e["category_id"] + 1) for e in instances_to_coco_results(predicted, image_id)]
    gt_dict = build_coco_dict(images, gts, ["a", "b"])
    for iou_type in ("bbox", "segm"):
        for max_dets in (500, 20):
            whole = evaluate_coco(gt_dict, results, iou_type, max_dets, ["a", "b"], backend)
            with monkeypatch.context() as patch:
                patch.setattr(coco, "SPLIT_PAIRS", 50)
                patch.setattr(coco, "GROUP_SIZE", 8)
                split = evaluate_coco(gt_dict, results, iou_type, max_dets, ["a", "b"], backend)
                gt_split, _ = coco.split_into_independent_images(gt_dict, results, max_dets)
            assert len(gt_split["images"]) > 3 * len(images)
            assert split == pytest.approx(whole, nan_ok=True, abs=1e-12) and whole["AP"] > 0


def test_instances_benchmark_case_scores_both_paths_alike():
    from deepcens.benchmarks.instances import _run_case

    class Collect(list):
        put = list.append

    collected = Collect()
    _run_case("", 256, 30, 12, 0, True, collected)
    (result,) = collected
    cropped, dense = result["cropped"], result["dense"]
    assert dense["same_label_image"] and result["objects"] == 30
    for key in ("segm_AP", "SEG", "DET"):
        assert cropped[key] == dense[key]
    assert 0 < cropped["segm_AP"] < 100 and 0 < cropped["SEG"] < 1
