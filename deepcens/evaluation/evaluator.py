"""``CellEvaluator``: one detectron2 evaluator for every method (R-CNN and dense U-Nets).

Per image it turns the predicted ``Instances`` into COCO results (RLE masks) and, rendered
into label images (overlaps resolved by score), into CTC SEG/DET sums against the GT label
image (TRA markers for DET when the dataset has them) and, on fully labelled images, into
instance F1 counts at IoU 0.5 and foreground Dice (:mod:`deepcens.evaluation.matching`;
result task ``F1``). At the end it scores COCO bbox/segm AP
(maxDets = ``TEST.DETECTIONS_PER_IMAGE``) on a GT COCO dict built in memory, pools the CTC
sums (overall, per class, per CTC dataset and sequence) and writes ``per_image.json``.
"""
from __future__ import annotations

import collections
import itertools
import logging
import math
import os
from typing import Any, Sequence

import numpy as np
import torch
from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import DatasetEvaluator
from detectron2.structures import Boxes, Instances
from detectron2.utils import comm
from detectron2.utils.registry import Registry

from deepcens.data.io import read_label
from deepcens.errors import DeepcensInputError
from deepcens.evaluation.coco import build_coco_dict, evaluate_coco, ground_truth_annotations, label_annotations
from deepcens.evaluation.ctc_measures import CTCCounts, LabelMatch, det_counts, match_label_images, seg_counts
from deepcens.postprocess.instances import compact_masks, instances_to_coco_results, instances_to_label_image
from deepcens.structures.masks import CroppedMasks
from deepcens.evaluation.matching import F1Counts, f1_counts

logger = logging.getLogger(__name__)

EVALUATOR_REGISTRY = Registry("EVALUATOR")
EVALUATOR_REGISTRY.__doc__ = "Dataset evaluators: classes with from_config(cfg, dataset_name, output_dir)."

PROXY_THRESHOLDS = np.round(np.arange(0.5, 0.96, 0.05), 2)  # IoU thresholds of the per-image AP proxy


def build_evaluator(cfg: CfgNode, dataset_name: str, output_dir: str | None = None) -> DatasetEvaluator:
    """The evaluator named by ``cfg.TEST.EVALUATOR`` (default ``CellEvaluator``) for one dataset."""
    return EVALUATOR_REGISTRY.get(cfg.TEST.EVALUATOR).from_config(cfg, dataset_name, output_dir)


def render_annotations(annotations: Sequence[dict], height: int, width: int, category: int) -> np.ndarray:
    """Label image of the GT annotations of one class (ids 1..n in annotation order); where
    GT objects overlap, the smaller object keeps the pixel."""
    labels = np.zeros((height, width), dtype=np.int32)
    chosen = [a for a in annotations if a["category_id"] == category and a["segmentation"] is not None]
    if chosen:
        masks = CroppedMasks.from_rles([a["segmentation"] for a in chosen], (height, width))
        order = sorted(range(len(chosen)), key=lambda i: -chosen[i]["area"])
        masks.paint(labels, [i + 1 for i in order], order, overwrite=True)
    return labels


def ap_proxy_counts(match: LabelMatch) -> np.ndarray:
    """(thresholds x 3) TP, FP, FN of one-to-one matches with IoU > t (unique for t >= 0.5 on
    non-overlapping label images): the DSB-2018 per-image score's counts."""
    iou = match.iou()
    tp = (iou[None, :] > PROXY_THRESHOLDS[:, None]).sum(1)
    return np.stack([tp, len(match.comp_ids) - tp, len(match.ref_ids) - tp], axis=1)


def _read_labels(record: dict, path_key: str) -> np.ndarray:
    """A label image of a dataset dict at its size (a plane of a 3D CTC stack when the dict
    names one), through the CTC reader for CTC dicts."""
    if "ctc_dataset" in record:
        from deepcens.data.ctc import read_ctc_labels, read_ctc_markers

        reader = read_ctc_labels if path_key == "label_file_name" else read_ctc_markers
        return reader(record)
    return read_label(record[path_key], (int(record["height"]), int(record["width"])))


def _build_tracker(cfg: CfgNode):
    from deepcens.tracking import build_tracker

    return build_tracker(cfg)


def f1_results(per_image: list[F1Counts]) -> dict[str, float]:
    """Instance F1 at IoU 0.5 over a dataset: ``F1`` is the mean of the per-image F1 (the
    challenge's score; images without objects and predictions are left out), ``precision``,
    ``recall`` and ``F1_pooled`` come from the pooled counts; ``Dice`` is the mean per-image
    foreground Dice, ``Dice_pooled`` over all pixels."""
    pooled = F1Counts()
    for counts in per_image:
        pooled = pooled + counts
    image_f1 = [c.f1() for c in per_image if not math.isnan(c.f1())]
    image_dice = [c.dice() for c in per_image if not math.isnan(c.dice())]
    return {
        "F1": float(np.mean(image_f1)) if image_f1 else float("nan"),
        "precision": pooled.precision(), "recall": pooled.recall(), "F1_pooled": pooled.f1(),
        "TP": pooled.tp, "FP": pooled.fp, "FN": pooled.fn, "images": len(per_image),
        "Dice": float(np.mean(image_dice)) if image_dice else float("nan"), "Dice_pooled": pooled.dice(),
    }


def _nan_to_none(value: float | None) -> float | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else value


@EVALUATOR_REGISTRY.register()
class CellEvaluator(DatasetEvaluator):
    """COCO AP (bbox, segm) and CTC SEG/DET/OP_CSB of instance predictions on one dataset.

    Works with dataset dicts holding ``annotations`` (EVICAN-like) and with label-image dicts
    (``label_file_name``, optional ``tra_file_name``, CTC-like). Images without a label file
    or with ``sparse_labels`` are left out of COCO AP (unlabelled cells would count as false
    positives) but still count for CTC SEG (over labelled objects) and DET (over markers).
    """

    def __init__(
        self,
        dataset_name: str,
        output_dir: str | None = None,
        *,
        max_dets: int = 500,
        ctc_metrics: bool = True,
        coco_backend: str = "faster_coco_eval",
        mask_threshold: float = 0.5,
        ctc_score_threshold: float = 0.5,
        distributed: bool = True,
        dataset_dicts: Sequence[dict] | None = None,
        class_names: Sequence[str] | None = None,
        tracker: Any = None,
    ):
        self._dataset_name = dataset_name
        self._output_dir = output_dir
        self._max_dets = int(max_dets)
        self._ctc_metrics = bool(ctc_metrics)
        self._backend = coco_backend
        self._mask_threshold = float(mask_threshold)
        self._ctc_score_threshold = float(ctc_score_threshold)
        self._distributed = distributed
        if dataset_dicts is None:
            dataset_dicts = DatasetCatalog.get(dataset_name)
        metadata = MetadataCatalog.get(dataset_name) if dataset_name in MetadataCatalog.list() else None
        if class_names is None:
            class_names = list(metadata.get("thing_classes", [])) if metadata is not None else []
        if not class_names:
            class_names = ["object"]
        self._class_names = list(class_names)
        id_map = metadata.get("thing_dataset_id_to_contiguous_id", None) if metadata is not None else None
        self._contiguous_to_dataset_id = {v: k for k, v in id_map.items()} if id_map else None
        self._records: dict[Any, tuple[int, dict]] = {}
        for index, record in enumerate(dataset_dicts):
            self._records[record["image_id"]] = (index + 1, record)
        self._predictions: list[dict] = []
        self._tracker = tracker  # links each CTC sequence's predictions for TRA (None: no TRA)

    @classmethod
    def from_config(cls, cfg: CfgNode, dataset_name: str, output_dir: str | None = None) -> "CellEvaluator":
        return cls(
            dataset_name, output_dir,
            max_dets=cfg.TEST.DETECTIONS_PER_IMAGE, ctc_metrics=cfg.TEST.CTC_METRICS,
            coco_backend=cfg.TEST.COCO_BACKEND, mask_threshold=cfg.TEST.MASK_THRESHOLD,
            ctc_score_threshold=cfg.TEST.CTC_SCORE_THRESHOLD,
            tracker=_build_tracker(cfg) if cfg.TRACKING.EVALUATE else None,
        )

    @property
    def class_names(self) -> list[str]:
        return list(self._class_names)

    def reset(self) -> None:
        self._predictions = []

    def process(self, inputs: list[dict], outputs: list[dict]) -> None:
        for inp, out in zip(inputs, outputs):
            image_id = inp["image_id"]
            if image_id not in self._records:
                raise DeepcensInputError(self._dataset_name, f"prediction for unknown image id {image_id!r}")
            index, record = self._records[image_id]
            instances = out.get("instances")
            if instances is None:
                instances = Instances((int(record["height"]), int(record["width"])))
            self._predictions.append(self._process_one(index, record, instances.to("cpu")))

    # ---- per image ----------------------------------------------------------------------------

    def _process_one(self, index: int, record: dict, instances: Instances) -> dict:
        height, width = int(record["height"]), int(record["width"])
        where = record.get("file_name", str(record["image_id"]))
        if tuple(instances.image_size) != (height, width):
            raise DeepcensInputError(where, f"prediction size {tuple(instances.image_size)} differs from image size {(height, width)}")
        if len(instances) and not instances.has("pred_classes"):
            instances.pred_classes = torch.zeros(len(instances), dtype=torch.int64)
        if len(instances) and not instances.has("scores"):
            instances.scores = torch.ones(len(instances))
        if len(instances):
            classes = instances.pred_classes.numpy()
            if classes.min() < 0 or classes.max() >= len(self._class_names):
                raise DeepcensInputError(where, f"predicted class ids {sorted(set(classes.tolist()))} outside 0..{len(self._class_names) - 1}")
        if instances.has("pred_masks") and len(instances):
            instances.pred_masks = compact_masks(instances, self._mask_threshold)
            if not instances.has("pred_boxes"):
                instances.pred_boxes = Boxes(torch.from_numpy(instances.pred_masks.tight_boxes()))

        label_file = record.get("label_file_name")
        has_annotations = "annotations" in record
        gt_annotations: list[dict] = []
        gt_labels: dict[int, np.ndarray] = {}
        if has_annotations:
            gt_annotations = ground_truth_annotations(record)
            if self._ctc_metrics:
                gt_labels = {c: render_annotations(gt_annotations, height, width, c) for c in range(len(self._class_names))}
        elif label_file:
            labels = _read_labels(record, "label_file_name")
            gt_labels = {0: labels}
            gt_annotations = label_annotations(labels)
        coco_eligible = has_annotations or (bool(label_file) and not record.get("sparse_labels", False))
        markers = None
        if self._ctc_metrics and record.get("tra_file_name"):
            markers = _read_labels(record, "tra_file_name")

        payload: dict = {"index": index, "coco_eligible": coco_eligible, "height": height, "width": width}
        if coco_eligible:
            payload["gt"] = gt_annotations
            dt = instances_to_coco_results(instances, index, self._mask_threshold)
            for entry in dt:
                entry["category_id"] += 1
            payload["dt"] = dt
        info = {
            "image_id": str(record["image_id"]), "file_name": record.get("file_name"),
            "height": height, "width": width, "num_gt": len(gt_annotations) if (has_annotations or label_file) else None,
            "num_pred": len(instances),
        }
        for key in ("ctc_dataset", "sequence", "frame", "difficulty"):
            if key in record:
                info[key] = record[key]
        payload["info"] = info
        payload["group"] = (record["ctc_dataset"], str(record.get("sequence", ""))) if "ctc_dataset" in record else None

        per_class: dict[int, CTCCounts] = {}
        proxy = np.zeros((len(PROXY_THRESHOLDS), 3), dtype=np.int64)
        f1 = F1Counts() if coco_eligible else None  # instance F1 / Dice: fully labelled images only
        rendered = 0
        if self._ctc_metrics and (gt_labels or markers is not None):
            single_class = len(self._class_names) == 1
            for c in range(len(self._class_names)):
                gt_seg = gt_labels.get(c)
                class_markers = markers if single_class else None
                if gt_seg is None and class_markers is None:
                    continue
                chosen = instances[instances.pred_classes == c] if len(instances) else instances
                pred = instances_to_label_image(chosen, self._ctc_score_threshold, self._mask_threshold)
                counts = CTCCounts()
                seg_match = None
                if gt_seg is not None:
                    seg_match = match_label_images(gt_seg, pred)
                    counts.seg_iou_sum, counts.seg_num_ref, _ = seg_counts(seg_match)
                    counts.seg_frames = 1
                    if coco_eligible:
                        proxy += ap_proxy_counts(seg_match)
                        f1 = f1 + f1_counts(gt_seg, pred, match=seg_match)
                    rendered += len(seg_match.comp_ids)
                det_match = match_label_images(class_markers, pred) if class_markers is not None else seg_match
                counts.det_split, counts.det_fn, counts.det_fp, counts.det_num_ref = det_counts(det_match)
                counts.det_frames = 1
                if seg_match is None:
                    rendered += len(det_match.comp_ids)
                per_class[c] = counts
                if self._tracker is not None and single_class and class_markers is not None and record.get("slice") is None:
                    payload["tra"] = (pred.astype(np.uint16), class_markers.astype(np.uint16),
                                      os.path.join(os.path.dirname(record["tra_file_name"]), "man_track.txt"), record["frame"])
        payload["ctc"] = per_class
        payload["f1"] = f1 if per_class and f1 is not None and any(c.seg_frames for c in per_class.values()) else None
        info["F1"] = _nan_to_none(payload["f1"].f1()) if payload["f1"] is not None else None
        info["Dice"] = _nan_to_none(payload["f1"].dice()) if payload["f1"] is not None else None
        total = CTCCounts()
        for counts in per_class.values():
            total = total + counts
        info["num_pred_rendered"] = rendered if per_class else None
        info["SEG"] = _nan_to_none(total.seg()) if total.seg_frames else None
        info["DET"] = _nan_to_none(total.det()) if total.det_frames else None
        denominators = proxy.sum(1)
        info["segm_ap_proxy"] = (
            float(np.mean(proxy[:, 0] / denominators)) if coco_eligible and per_class and denominators[0] > 0 else None)
        return payload

    # ---- aggregation --------------------------------------------------------------------------

    def evaluate(self) -> collections.OrderedDict:
        if self._distributed:
            comm.synchronize()
            gathered = comm.gather(self._predictions, dst=0)
            if not comm.is_main_process():
                return collections.OrderedDict()
            predictions = list(itertools.chain(*gathered))
        else:
            predictions = self._predictions
        predictions.sort(key=lambda p: p["index"])
        results: collections.OrderedDict = collections.OrderedDict()
        if not predictions:
            logger.warning("CellEvaluator on %s received no predictions", self._dataset_name)
            return results
        eligible = [p for p in predictions if p["coco_eligible"]]
        if eligible:
            images = [{"id": p["index"], "height": p["height"], "width": p["width"]} for p in eligible]
            gt_dict = build_coco_dict(images, [p["gt"] for p in eligible], self._class_names)
            dt = [entry for p in eligible for entry in p["dt"]]
            if not dt:
                logger.warning("%s: empty prediction set; COCO AP is 0 wherever GT exists", self._dataset_name)
            results["bbox"] = evaluate_coco(gt_dict, dt, "bbox", self._max_dets, self._class_names, self._backend)
            if any(a.get("segmentation") is not None for a in gt_dict["annotations"]):
                results["segm"] = evaluate_coco(gt_dict, dt, "segm", self._max_dets, self._class_names, self._backend)
        if self._ctc_metrics and any(p["ctc"] for p in predictions):
            results["ctc"] = self._ctc_results(predictions)
            if any("tra" in p for p in predictions):
                results["ctc"].update(self._tra_results(predictions))
                if "TRA" in results["ctc"]:
                    results["ctc"]["OP_CTB"] = 0.5 * results["ctc"]["SEG"] + 0.5 * results["ctc"]["TRA"]
        if any(p.get("f1") is not None for p in predictions):
            results["F1"] = f1_results([p["f1"] for p in predictions if p.get("f1") is not None])
        if self._output_dir and comm.is_main_process():
            self._write(predictions, results)
        return results

    def _ctc_results(self, predictions: list[dict]) -> dict[str, float]:
        """Pooled CTC measures, per class (several classes), per CTC sequence and per CTC
        dataset (mean over its sequences, as the challenge reports datasets)."""
        total = CTCCounts()
        by_class: dict[int, CTCCounts] = collections.defaultdict(CTCCounts)
        by_sequence: dict[tuple, CTCCounts] = collections.defaultdict(CTCCounts)
        for p in predictions:
            for c, counts in p["ctc"].items():
                total = total + counts
                by_class[c] = by_class[c] + counts
                if p["group"] is not None:
                    by_sequence[p["group"]] = by_sequence[p["group"]] + counts
        result = total.measures()
        if len(self._class_names) > 1:
            for c, counts in sorted(by_class.items()):
                for key in ("SEG", "DET", "OP_CSB"):
                    result[f"{key}-{self._class_names[c]}"] = counts.measures()[key]
        per_dataset: dict[str, list[dict]] = collections.defaultdict(list)
        for (dataset, sequence), counts in sorted(by_sequence.items()):
            measures = counts.measures()
            per_dataset[dataset].append(measures)
            for key in ("SEG", "DET", "OP_CSB"):
                result[f"{key}-{dataset}/{sequence}"] = measures[key]
        for dataset, sequences in per_dataset.items():
            for key in ("SEG", "DET", "OP_CSB"):
                result[f"{key}-{dataset}"] = float(np.mean([m[key] for m in sequences]))
        return result

    def _tra_results(self, predictions: list[dict]) -> dict[str, float]:
        """TRA per CTC sequence (its frames linked by the tracker, scored against man_track.txt
        clipped to those frames; they must be consecutive) and pooled over sequences."""
        from deepcens.data.ctc import parse_track_file
        from deepcens.evaluation.ctc_tra import TRACounts, clip_track_table, sequence_tra

        by_sequence: dict[tuple, list] = collections.defaultdict(list)
        for p in predictions:
            if "tra" in p and p["group"] is not None:
                by_sequence[p["group"]].append(p["tra"])
        result: dict[str, float] = {}
        total = TRACounts()
        for (dataset, sequence), items in sorted(by_sequence.items()):
            items.sort(key=lambda item: item[3])
            frames = [item[3] for item in items]
            if frames != list(range(frames[0], frames[0] + len(frames))):
                logger.info("no TRA for %s/%s: its frames are not consecutive", dataset, sequence)
                continue
            ref_tracks = clip_track_table(parse_track_file(items[0][2]), frames[0], frames[-1])
            counts = sequence_tra(self._tracker, [i[0] for i in items], [i[1] for i in items], ref_tracks)
            total = total + counts
            result[f"TRA-{dataset}/{sequence}"] = counts.tra()
        if total.num_vertices:
            result.update(total.measures())
        return result

    def _write(self, predictions: list[dict], results: dict) -> None:
        from deepcens.evaluation.reports import write_per_image, write_predictions_json

        os.makedirs(self._output_dir, exist_ok=True)
        write_per_image(os.path.join(self._output_dir, "per_image.json"), self._dataset_name,
                        self._class_names, [p["info"] for p in predictions])
        dataset_ids = {index: record["image_id"] for record_id, (index, record) in self._records.items()}
        entries = []
        for p in predictions:
            for entry in p.get("dt", []):
                entry = dict(entry, image_id=dataset_ids[entry["image_id"]], category_id=entry["category_id"] - 1)
                if self._contiguous_to_dataset_id is not None:
                    entry["category_id"] = self._contiguous_to_dataset_id[entry["category_id"]]
                entries.append(entry)
        write_predictions_json(os.path.join(self._output_dir, "coco_instances_results.json"), entries)
