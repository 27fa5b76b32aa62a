#!/usr/bin/env python
"""Score saved predictions without a model.

CTC folders (SEG / DET / OP_CSB, identical to py-ctcmetrics; no track files needed):
    tools/evaluate.py --ctc-gt data/Fluo-N2DH-SIM+/01_GT --ctc-res out/01_RES --json out.json

Instance predictions with CellEvaluator (COCO bbox/segm AP + CTC measures, paper tables):
    tools/evaluate.py --dataset evican_eval_easy_cell --pred-coco coco_instances_results.json --output-dir out/
    tools/evaluate.py --dataset NAME --pred-labels predicted_label_folder/ --output-dir out/
    tools/evaluate.py --gt-labels label_folder/ --pred-labels predicted_label_folder/ --json out.json

``--pred-coco`` is a COCO results list (RLE ``segmentation``, XYWH ``bbox``, ``score``,
``category_id``, ``image_id`` as in the dataset; CellEvaluator writes such a file).
``--pred-labels`` holds one label image per image, matched by file stem. Bad input ends with
one line ``error: <file>: <problem>`` and exit status 2.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections import defaultdict

import numpy as np
import torch

from deepcens.errors import DeepcensInputError, exit_2_on_input_error

logger = logging.getLogger("deepcens.evaluate")


def _stem(path: str) -> str:
    name = os.path.basename(path)
    for suffix in (".ome.tif", ".ome.tiff"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return os.path.splitext(name)[0]


def label_folder_dicts(folder: str) -> list[dict]:
    """Dataset dicts (``label_file_name``) for a folder of GT label images, ids = file stems."""
    from deepcens.data.io import iter_image_files, read_label

    if not os.path.isdir(folder):
        raise DeepcensInputError(folder, "label folder not found")
    dicts = []
    for path in iter_image_files(folder):
        labels = read_label(path)
        dicts.append({"file_name": path, "image_id": _stem(path), "height": labels.shape[0],
                      "width": labels.shape[1], "label_file_name": path})
    if not dicts:
        raise DeepcensInputError(folder, "no label images in folder")
    return dicts


def instances_from_labels(folder: str, dataset_dicts: list[dict]) -> dict:
    """image_id -> Instances read from predicted label images named like the images."""
    from deepcens.data.io import iter_image_files, read_label
    from deepcens.postprocess.instances import label_image_to_instances

    if not os.path.isdir(folder):
        raise DeepcensInputError(folder, "prediction folder not found")
    files = {_stem(p): p for p in iter_image_files(folder)}
    by_stem = {_stem(d["file_name"]): d for d in dataset_dicts}
    if len(by_stem) != len(dataset_dicts):
        raise DeepcensInputError(folder, "image file names of the dataset are not unique by stem "
                                 "(e.g. several CTC sequences): score a COCO results json instead")
    unknown = sorted(set(files) - set(by_stem))
    if unknown:
        raise DeepcensInputError(files[unknown[0]], f"prediction names unknown image {unknown[0]!r}")
    predictions = {}
    for stem, record in by_stem.items():
        if stem not in files:
            raise DeepcensInputError(os.path.join(folder, stem + ".tif"), f"missing prediction for image {record['file_name']}")
        labels = read_label(files[stem], (int(record["height"]), int(record["width"])))
        predictions[record["image_id"]] = label_image_to_instances(labels)
    return predictions


def instances_from_coco(path: str, dataset_dicts: list[dict], dataset_id_to_contiguous: dict | None) -> dict:
    """image_id -> Instances from a COCO results json (RLE masks decoded at image size)."""
    import pycocotools.mask as mask_util
    from detectron2.structures import Boxes, BoxMode, Instances

    try:
        with open(path, encoding="utf-8") as handle:
            entries = json.load(handle)
    except FileNotFoundError:
        raise DeepcensInputError(path, "file not found") from None
    except (OSError, ValueError) as exc:
        raise DeepcensInputError(path, f"not a readable JSON file ({exc})") from None
    if not isinstance(entries, list):
        raise DeepcensInputError(path, "expected a JSON list of COCO results")
    records = {d["image_id"]: d for d in dataset_dicts}
    by_str = {str(k): k for k in records}
    grouped: dict = defaultdict(list)
    for number, entry in enumerate(entries):
        if not isinstance(entry, dict) or "image_id" not in entry or "score" not in entry:
            raise DeepcensInputError(path, f"entry {number} lacks image_id or score")
        key = entry["image_id"] if entry["image_id"] in records else by_str.get(str(entry["image_id"]))
        if key is None:
            raise DeepcensInputError(path, f"entry {number} names unknown image id {entry['image_id']!r}")
        grouped[key].append(entry)
    predictions = {}
    for image_id, record in records.items():
        height, width = int(record["height"]), int(record["width"])
        chosen = grouped.get(image_id, [])
        instances = Instances((height, width))
        classes = []
        for entry in chosen:
            category = int(entry.get("category_id", 0))
            if dataset_id_to_contiguous is not None:
                if category not in dataset_id_to_contiguous:
                    raise DeepcensInputError(path, f"unknown category_id {category} for image {image_id!r}")
                category = dataset_id_to_contiguous[category]
            classes.append(category)
        masks = []
        for entry in chosen:
            segmentation = entry.get("segmentation")
            if segmentation is None:
                masks = None
                break
            rle = dict(segmentation)
            if tuple(rle.get("size", ())) != (height, width):
                raise DeepcensInputError(path, f"mask size {rle.get('size')} of image {image_id!r} differs from image size {[height, width]}")
            masks.append(mask_util.decode(_bytes_rle(rle)).astype(bool))
        boxes = []
        for entry in chosen:
            if "bbox" in entry:
                box = list(entry["bbox"])
            elif entry.get("segmentation") is not None:
                box = mask_util.toBbox(_bytes_rle(entry["segmentation"])).tolist()
            else:
                raise DeepcensInputError(path, f"a result for image {image_id!r} has neither bbox nor segmentation")
            boxes.append(BoxMode.convert(box, BoxMode.XYWH_ABS, BoxMode.XYXY_ABS))
        instances.pred_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
        instances.scores = torch.tensor([float(e["score"]) for e in chosen], dtype=torch.float32)
        instances.pred_classes = torch.tensor(classes, dtype=torch.int64)
        if masks is not None:
            instances.pred_masks = torch.from_numpy(np.stack(masks)) if masks else torch.zeros((0, height, width), dtype=torch.bool)
        predictions[image_id] = instances
    if not entries:
        logger.warning("%s holds no predictions: every AP and CTC score is 0 where GT exists", path)
    return predictions


def _bytes_rle(segmentation: dict) -> dict:
    rle = dict(segmentation)
    if isinstance(rle.get("counts"), str):
        rle["counts"] = rle["counts"].encode("ascii")
    return rle


def run_ctc(args: argparse.Namespace) -> dict:
    from deepcens.evaluation.ctc_measures import evaluate_ctc_folders

    result = evaluate_ctc_folders(args.ctc_gt, args.ctc_res)
    summary = {k: result[k] for k in ("SEG", "DET", "OP_CSB")}
    print(" ".join(f"{k}={v:.6f}" for k, v in summary.items()))
    return result


def run_instances(args: argparse.Namespace) -> dict:
    from detectron2.data import DatasetCatalog, MetadataCatalog

    from deepcens.evaluation import CellEvaluator, format_summary_table, write_reports

    id_map = None
    if args.dataset:
        import deepcens  # noqa: F401  (registers datasets)

        if args.dataset not in DatasetCatalog.list():
            raise DeepcensInputError(None, f"dataset {args.dataset!r} is not registered")
        dicts = DatasetCatalog.get(args.dataset)
        id_map = MetadataCatalog.get(args.dataset).get("thing_dataset_id_to_contiguous_id", None)
        name, class_names = args.dataset, None
    else:
        dicts = label_folder_dicts(args.gt_labels)
        name, class_names = os.path.basename(os.path.normpath(args.gt_labels)), ["object"]
    if args.pred_coco:
        predictions = instances_from_coco(args.pred_coco, dicts, id_map)
    else:
        predictions = instances_from_labels(args.pred_labels, dicts)
    evaluator = CellEvaluator(
        name, args.output_dir or None, max_dets=args.max_dets, coco_backend=args.coco_backend,
        ctc_score_threshold=args.ctc_score_threshold, distributed=False, dataset_dicts=dicts,
        class_names=class_names)
    evaluator.reset()
    for record in dicts:
        evaluator.process([{"image_id": record["image_id"]}], [{"instances": predictions[record["image_id"]]}])
    results = {name: dict(evaluator.evaluate())}
    if "F1" in results[name]:  # instance F1 at IoU 0.5 (with precision, recall, Dice) under the key F1
        print("F1={F1:.4f} precision={precision:.4f} recall={recall:.4f} Dice={Dice:.4f}".format(**results[name]["F1"]))
    print(format_summary_table(results))
    if args.output_dir:
        write_reports(results, args.output_dir)
    return results


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ctc-gt", help="CTC ground-truth folder <seq>_GT (SEG/, TRA/)")
    parser.add_argument("--ctc-res", help="CTC result folder with maskTTT.tif")
    parser.add_argument("--dataset", help="registered dataset name to score against")
    parser.add_argument("--gt-labels", help="folder of GT label images to score against")
    parser.add_argument("--pred-coco", help="COCO results json (RLE masks)")
    parser.add_argument("--pred-labels", help="folder of predicted label images (same file stems as the images)")
    parser.add_argument("--output-dir", default="", help="write evaluation reports and per_image.json here")
    parser.add_argument("--json", default="", help="write the results as JSON to this file")
    parser.add_argument("--max-dets", type=int, default=500, help="COCO maxDets (detections per image)")
    parser.add_argument("--coco-backend", default="faster_coco_eval", choices=["faster_coco_eval", "pycocotools"])
    parser.add_argument("--ctc-score-threshold", type=float, default=0.5,
                        help="instances below this score are left out of CTC label images")
    args = parser.parse_args(argv)
    if args.ctc_gt or args.ctc_res:
        if not (args.ctc_gt and args.ctc_res):
            parser.error("--ctc-gt and --ctc-res go together")
    else:
        if bool(args.dataset) == bool(args.gt_labels):
            parser.error("give either --ctc-gt/--ctc-res, or exactly one of --dataset / --gt-labels")
        if bool(args.pred_coco) == bool(args.pred_labels):
            parser.error("give exactly one of --pred-coco / --pred-labels")
        if args.pred_coco and not args.dataset:
            parser.error("--pred-coco needs --dataset")
    return args


@exit_2_on_input_error
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    results = run_ctc(args) if args.ctc_gt else run_instances(args)
    if args.json:
        from deepcens.evaluation.reports import clean_json
        from deepcens.utils.atomic import atomic_save_json

        atomic_save_json(args.json, clean_json(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
