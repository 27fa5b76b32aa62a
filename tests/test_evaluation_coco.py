"""CellEvaluator: COCO AP (faster-coco-eval == pycocotools), maxDets, GT from annotations and
from label images, CTC measures from the same predictions, bad input, reports."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import tifffile
import torch
from detectron2.structures import BoxMode, Instances

from deepcens.errors import DeepcensInputError
from deepcens.evaluation import CellEvaluator, build_evaluator, format_summary_table, write_reports
from deepcens.evaluation.coco import build_coco_dict, evaluate_coco, label_annotations
from deepcens.postprocess.instances import label_image_to_instances


def _grid_labels(n_side: int, cell: int = 6, gap: int = 2) -> np.ndarray:
    """n_side x n_side square objects on a grid (ids 1..n_side**2)."""
    size = n_side * (cell + gap) + gap
    labels = np.zeros((size, size), np.int32)
    for i in range(n_side):
        for j in range(n_side):
            y, x = gap + i * (cell + gap), gap + j * (cell + gap)
            labels[y:y + cell, x:x + cell] = i * n_side + j + 1
    return labels


def _noisy_instances(labels: np.ndarray, rng: np.random.Generator) -> Instances:
    """Predictions from GT: shifted masks, random scores, some dropped, some false ones."""
    shifted = np.roll(labels, shift=(int(rng.integers(-1, 2)), int(rng.integers(-1, 2))), axis=(0, 1))
    ids = np.unique(shifted)[1:]
    dropped = rng.choice(ids, size=len(ids) // 8, replace=False)
    shifted[np.isin(shifted, dropped)] = 0
    shifted[0:3, -5:] = labels.max() + 1  # a false object
    instances = label_image_to_instances(shifted, scores=None)
    instances.scores = torch.as_tensor(rng.uniform(0.05, 1.0, len(instances)), dtype=torch.float32)
    return instances


def _coco_inputs(seed: int = 0):
    rng = np.random.default_rng(seed)
    images, annotations, results = [], [], []
    for image_id in (1, 2, 3):
        labels = _grid_labels(12 if image_id == 1 else 5)  # image 1: 144 objects (> COCO's 100)
        images.append({"id": image_id, "height": labels.shape[0], "width": labels.shape[1]})
        anns = label_annotations(labels)
        for k, a in enumerate(anns):
            a["category_id"] = k % 2
        annotations.append(anns)
        instances = _noisy_instances(labels, rng)
        instances.pred_classes = torch.as_tensor(rng.integers(0, 2, len(instances)))
        from detectron2.evaluation.coco_evaluation import instances_to_coco_json

        for entry in instances_to_coco_json(instances, image_id):
            entry["category_id"] += 1
            results.append(entry)
    return build_coco_dict(images, annotations, ["cell", "nucleus"]), results


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_faster_coco_eval_equals_pycocotools(iou_type):
    gt, results = _coco_inputs()
    fast = evaluate_coco(gt, results, iou_type, 500, ["cell", "nucleus"], "faster_coco_eval")
    slow = evaluate_coco(gt, results, iou_type, 500, ["cell", "nucleus"], "pycocotools")
    assert set(fast) == set(slow) == {"AP", "AP50", "AP75", "APs", "APm", "APl", "AP-cell", "AP-nucleus"}
    for key in fast:
        if math.isnan(slow[key]):
            assert math.isnan(fast[key]), key
        else:
            assert fast[key] == pytest.approx(slow[key], abs=1e-9), key
    assert 5 < fast["AP"] < 95


def test_max_dets_from_config_counts_beyond_100():
    labels = _grid_labels(12)  # 144 objects, all predicted perfectly
    gt = build_coco_dict([{"id": 1, "height": labels.shape[0], "width": labels.shape[1]}],
                         [label_annotations(labels)], ["cell"])
    from detectron2.evaluation.coco_evaluation import instances_to_coco_json

    results = instances_to_coco_json(label_image_to_instances(labels), 1)
    for entry in results:
        entry["category_id"] += 1
    assert evaluate_coco(gt, results, "segm", 500, ["cell"])["AP"] == pytest.approx(100.0)
    assert evaluate_coco(gt, results, "segm", 100, ["cell"])["AP"] < 75.0
    empty = evaluate_coco(gt, [], "segm", 500, ["cell"])
    assert empty["AP"] == 0.0 and empty["AP-cell"] == 0.0


def _polygon(x0, y0, x1, y1):
    return [[x0, y0, x1, y0, x1, y1, x0, y1]]


def _annotation_dicts():
    """EVICAN-like dicts: cells with nuclei inside (overlapping classes), one empty image."""
    dicts = []
    for image_id, n in ((10, 3), (11, 2), (12, 0)):
        anns = []
        for k in range(n):
            x = 4 + 20 * k
            anns.append({"bbox": [x, 4, 16, 16], "bbox_mode": BoxMode.XYWH_ABS, "category_id": 0,
                         "segmentation": _polygon(x, 4, x + 16, 20), "iscrowd": 0})
            anns.append({"bbox": [x + 5, 9, 6, 6], "bbox_mode": BoxMode.XYWH_ABS, "category_id": 1,
                         "segmentation": _polygon(x + 5, 9, x + 11, 15), "iscrowd": 0})
        dicts.append({"file_name": f"img{image_id}.png", "image_id": image_id, "height": 32, "width": 64,
                      "annotations": anns})
    return dicts


def _perfect(record) -> Instances:
    masks, classes, boxes = [], [], []
    for ann in record["annotations"]:
        x0, y0, x1, y1 = ann["segmentation"][0][0], ann["segmentation"][0][1], ann["segmentation"][0][4], ann["segmentation"][0][5]
        mask = np.zeros((record["height"], record["width"]), bool)
        mask[y0:y1, x0:x1] = True
        masks.append(mask)
        classes.append(ann["category_id"])
        boxes.append([x0, y0, x1, y1])
    instances = Instances((record["height"], record["width"]))
    instances.pred_masks = torch.as_tensor(np.array(masks, dtype=bool).reshape(-1, record["height"], record["width"]))
    from detectron2.structures import Boxes

    instances.pred_boxes = Boxes(torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4))
    instances.scores = torch.ones(len(masks))
    instances.pred_classes = torch.as_tensor(classes, dtype=torch.int64)
    return instances


def test_annotation_dataset_perfect_predictions_and_reports(tmp_path):
    dicts = _annotation_dicts()
    evaluator = CellEvaluator("demo_eval_easy_cell_nucleus", str(tmp_path / "inference"), distributed=False,
                              dataset_dicts=dicts, class_names=["Cell", "Nucleus"])
    evaluator.reset()
    for record in dicts:
        evaluator.process([{"image_id": record["image_id"]}], [{"instances": _perfect(record)}])
    results = evaluator.evaluate()
    for task in ("bbox", "segm"):
        assert results[task]["AP"] == pytest.approx(100.0)
        assert results[task]["AP-Nucleus"] == pytest.approx(100.0)
    ctc = results["ctc"]
    assert ctc["SEG"] == pytest.approx(1.0) and ctc["DET"] == pytest.approx(1.0)
    assert ctc["SEG-Cell"] == pytest.approx(1.0) and ctc["num_ref_seg"] == 10
    per_image = json.loads((tmp_path / "inference" / "per_image.json").read_text())
    assert [im["image_id"] for im in per_image["images"]] == ["10", "11", "12"]
    assert per_image["images"][0]["segm_ap_proxy"] == pytest.approx(1.0)
    assert per_image["images"][2]["segm_ap_proxy"] is None  # no GT, no prediction
    assert not list((tmp_path / "inference").glob("*coco_format.json"))

    all_results = {"demo_eval_difficult_cell_nucleus": {"bbox": {"AP": 10.0}, "segm": {"AP": 5.0}},
                   "demo_eval_easy_cell_nucleus": dict(results)}
    paths = write_reports(all_results, tmp_path / "reports")
    table = (tmp_path / "reports" / "evaluation.md").read_text()
    assert table.index("| demo_eval_easy") < table.index("| demo_eval_difficult")  # difficulty order
    assert "Det. AP-Nucleus" in table and "OP_CSB" in table
    json.loads(open(paths["json"]).read(), parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))
    csv_lines = open(paths["instance_csv"]).read().splitlines()
    assert csv_lines[0].startswith("dataset,difficulty,Det. mAP") and len(csv_lines) == 3
    summary = format_summary_table(results, "demo_eval_medium_cell_nucleus")  # one dataset's dict, named
    assert "Seg. mAP" in summary and "1.0000" in summary and "medium" in summary


def test_worse_predictions_score_lower_and_gt_is_never_cached(tmp_path):
    dicts = _annotation_dicts()
    scores = []
    for shift in (0, 3):
        evaluator = CellEvaluator("demo", str(tmp_path), distributed=False, dataset_dicts=dicts,
                                  class_names=["Cell", "Nucleus"])
        for record in dicts:
            instances = _perfect(record)
            instances.pred_masks = torch.roll(instances.pred_masks, shifts=shift, dims=2)
            evaluator.process([{"image_id": record["image_id"]}], [{"instances": instances}])
        scores.append(evaluator.evaluate())
    assert scores[1]["segm"]["AP"] < scores[0]["segm"]["AP"]
    assert scores[1]["ctc"]["SEG"] < scores[0]["ctc"]["SEG"]
    # Changing the GT changes the score at once: nothing is cached between evaluations.
    edited = _annotation_dicts()
    edited[0]["annotations"] = edited[0]["annotations"][2:]
    evaluator = CellEvaluator("demo", str(tmp_path), distributed=False, dataset_dicts=edited, class_names=["Cell", "Nucleus"])
    for record, original in zip(edited, dicts):
        evaluator.process([{"image_id": record["image_id"]}], [{"instances": _perfect(original)}])
    assert evaluator.evaluate()["segm"]["AP"] < 100.0


def _ctc_like(tmp_path, sparse=False):
    labels = _grid_labels(4)
    markers = np.where(np.isin(labels, [1, 2, 3]), labels, 0).astype(np.uint16)
    dicts = []
    for frame in range(2):
        seg = tmp_path / f"man_seg{frame:03d}.tif"
        tra = tmp_path / f"man_track{frame:03d}.tif"
        tifffile.imwrite(seg, labels.astype(np.uint16))
        tifffile.imwrite(tra, markers if sparse else labels.astype(np.uint16))
        dicts.append({"file_name": str(tmp_path / f"t{frame:03d}.tif"), "image_id": frame, "height": labels.shape[0],
                      "width": labels.shape[1], "label_file_name": str(seg), "tra_file_name": str(tra),
                      "ctc_dataset": "Fluo-Demo", "sequence": "01", "frame": frame, "sparse_labels": sparse})
    return labels, dicts


def test_label_image_dataset_with_markers(tmp_path):
    labels, dicts = _ctc_like(tmp_path)
    evaluator = CellEvaluator("ctc_demo", None, distributed=False, dataset_dicts=dicts, class_names=["cell"])
    pred = labels.copy()
    pred[pred == 5] = 6  # merge two objects: one split needed, one FN-free merge
    for record in dicts:
        evaluator.process([{"image_id": record["image_id"]}], [{"instances": label_image_to_instances(pred)}])
    results = evaluator.evaluate()
    assert results["segm"]["AP50"] < 100.0
    assert results["ctc"]["NS"] == 2.0 and results["ctc"]["FN"] == 0.0  # one split per frame
    assert results["ctc"]["DET"] == pytest.approx(1 - 10 / 320)
    assert results["ctc"]["SEG-Fluo-Demo/01"] == results["ctc"]["SEG"]
    assert results["ctc"]["OP_CSB-Fluo-Demo"] == pytest.approx(results["ctc"]["OP_CSB"])
    paths = write_reports({"ctc_demo": results}, tmp_path / "reports")
    rows = open(paths["ctc_csv"]).read().splitlines()
    assert rows[0] == "dataset,OP_CSB,SEG,DET"
    assert [r.split(",")[0] for r in rows[1:]] == ["ctc_demo", "ctc_demo > Fluo-Demo", "ctc_demo > Fluo-Demo/01"]


def test_sparse_labels_skip_coco_but_keep_ctc(tmp_path):
    labels, dicts = _ctc_like(tmp_path, sparse=True)
    evaluator = CellEvaluator("ctc_sparse", None, distributed=False, dataset_dicts=dicts, class_names=["cell"])
    for record in dicts:
        evaluator.process([{"image_id": record["image_id"]}], [{"instances": label_image_to_instances(labels)}])
    results = evaluator.evaluate()
    assert "segm" not in results and "bbox" not in results
    assert results["ctc"]["SEG"] == 1.0
    assert results["ctc"]["FP"] == 2 * 13  # markers label only 3 of 16 objects


def test_bad_input_is_one_line_error(tmp_path):
    labels, dicts = _ctc_like(tmp_path)
    evaluator = CellEvaluator("ctc_bad", None, distributed=False, dataset_dicts=dicts, class_names=["cell"])
    with pytest.raises(DeepcensInputError, match="unknown image id 99"):
        evaluator.process([{"image_id": 99}], [{"instances": label_image_to_instances(labels)}])
    with pytest.raises(DeepcensInputError, match=r"t000\.tif: prediction size \(8, 8\) differs"):
        evaluator.process([{"image_id": 0}], [{"instances": label_image_to_instances(labels[:8, :8])}])
    tifffile.imwrite(dicts[1]["label_file_name"], labels[:10].astype(np.uint16))
    with pytest.raises(DeepcensInputError, match=r"man_seg001\.tif: label size"):
        evaluator.process([{"image_id": 1}], [{"instances": label_image_to_instances(labels)}])
    empty = CellEvaluator("ctc_empty", None, distributed=False, dataset_dicts=dicts[:1], class_names=["cell"])
    empty.process([{"image_id": 0}], [{"instances": label_image_to_instances(np.zeros_like(labels))}])
    results = empty.evaluate()
    assert results["segm"]["AP"] == 0.0 and results["ctc"]["SEG"] == 0.0 and results["ctc"]["DET"] == 0.0


def test_build_evaluator_from_config(tmp_path):
    from detectron2.config import get_cfg
    from detectron2.data import DatasetCatalog, MetadataCatalog

    from deepcens.config import add_deepcens_config

    _, dicts = _ctc_like(tmp_path)
    name = "test_evaluation_ctc_like"
    if name not in DatasetCatalog.list():
        DatasetCatalog.register(name, lambda: dicts)
        MetadataCatalog.get(name).set(thing_classes=["cell"], evaluator_type="cell")
    cfg = get_cfg()
    add_deepcens_config(cfg)
    cfg.TEST.DETECTIONS_PER_IMAGE = 7
    evaluator = build_evaluator(cfg, name, str(tmp_path / "out"))
    assert isinstance(evaluator, CellEvaluator) and evaluator._max_dets == 7 and evaluator.class_names == ["cell"]
