"""Score saved predictions without a model (``deepcens evaluate``).

CTC folders (SEG / DET / OP_CSB, 2D or 3D, and TRA / OP_CTB when man_track.txt and
res_track.txt exist; identical to py-ctcmetrics):
    deepcens evaluate --ctc-gt data/Fluo-N2DH-SIM+/01_GT --ctc-res out/01_RES --json out.json

Instance predictions with CellEvaluator (COCO bbox/segm AP + CTC measures, paper tables):
    deepcens evaluate --dataset evican_eval_easy_cell --pred-coco coco_instances_results.json --output-dir out/
    deepcens evaluate --dataset NAME --pred-labels predicted_label_folder/ --output-dir out/
    deepcens evaluate --gt-labels label_folder/ --pred-labels predicted_label_folder/ --json out.json

``--pred-coco`` is a COCO results list (RLE or polygon ``segmentation``, XYWH ``bbox``,
``score``, ``category_id``; images named by ``file_name`` when the entries carry one, as
``deepcens predict --coco-json`` writes them, else by the dataset's ``image_id``).
``--pred-labels`` holds one label image per image, matched by file stem; a
``<stem>.classes.json`` beside a label image (written by ``deepcens predict`` for multi-class
models) gives each label its class. Bad input ends with one line ``error: <file>: <problem>``
and exit status 2.
"""
from __future__ import annotations

import argparse
import logging
import math
import os
from collections import defaultdict

import numpy as np
import torch

from deepcens.data.io import iter_image_files, read_json, read_label
from deepcens.errors import DeepcensInputError

logger = logging.getLogger("deepcens.evaluate")

CLASS_MAP_SUFFIX = ".classes.json"


def file_stem(path: str) -> str:
    """File name without its image suffix (``.ome.tif`` counts as one suffix)."""
    name = os.path.basename(path)
    for suffix in (".ome.tif", ".ome.tiff"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return os.path.splitext(name)[0]


def label_folder_dicts(folder: str) -> list[dict]:
    """Dataset dicts (``label_file_name``) for a folder of GT label images, ids = file stems."""
    if not os.path.isdir(folder):
        raise DeepcensInputError(folder, "label folder not found")
    dicts = []
    for path in iter_image_files(folder):
        labels = read_label(path)
        dicts.append({"file_name": path, "image_id": file_stem(path), "height": labels.shape[0],
                      "width": labels.shape[1], "label_file_name": path})
    if not dicts:
        raise DeepcensInputError(folder, "no label images in folder")
    return dicts


def read_class_map(label_path: str) -> dict[int, int] | None:
    """label -> class of a predicted label image, from ``<stem>.classes.json`` beside it (None if absent)."""
    path = os.path.join(os.path.dirname(label_path), file_stem(label_path) + CLASS_MAP_SUFFIX)
    if not os.path.isfile(path):
        return None
    content = read_json(path)
    classes = content.get("classes") if isinstance(content, dict) else None
    if not isinstance(classes, dict):
        raise DeepcensInputError(path, "expected {\"classes\": {\"<label>\": <class id>, ...}}")
    try:
        return {int(label): int(cls) for label, cls in classes.items()}
    except (TypeError, ValueError):
        raise DeepcensInputError(path, "labels and class ids must be integers") from None


def instances_from_labels(folder: str, dataset_dicts: list[dict], num_classes: int = 1,
                          ignore_unmatched: bool = False) -> dict:
    """image_id -> Instances read from predicted label images named like the images.

    With several classes, each label image needs its class map (``<stem>.classes.json``);
    without one every object is scored as class 0, with a warning. Label images naming no
    image of the dataset are refused, or skipped with a warning when ``ignore_unmatched``.
    """
    from deepcens.postprocess.instances import label_image_to_instances

    if not os.path.isdir(folder):
        raise DeepcensInputError(folder, "prediction folder not found")
    files = {file_stem(p): p for p in iter_image_files(folder)}
    by_stem = {file_stem(d["file_name"]): d for d in dataset_dicts}
    if len(by_stem) != len(dataset_dicts):
        raise DeepcensInputError(folder, "image file names of the dataset are not unique by stem "
                                 "(e.g. several CTC sequences): score a COCO results json instead")
    unknown = sorted(set(files) - set(by_stem))
    if unknown and not ignore_unmatched:
        raise DeepcensInputError(files[unknown[0]], f"prediction names unknown image {unknown[0]!r} "
                                 f"({len(unknown)} such file(s); --ignore-unmatched skips them)")
    if unknown:
        logger.warning(f"{folder}: skipped {len(unknown)} label image(s) naming no image of the dataset: "
                       + ", ".join(os.path.basename(files[s]) for s in unknown[:5]) + (" ..." if len(unknown) > 5 else ""))
    predictions = {}
    without_classes = []
    for stem, record in by_stem.items():
        if stem not in files:
            raise DeepcensInputError(os.path.join(folder, stem + ".tif"), f"missing prediction for image {record['file_name']}")
        labels = read_label(files[stem], (int(record["height"]), int(record["width"])))
        instances = label_image_to_instances(labels)
        class_map = read_class_map(files[stem])
        if class_map is not None:
            ids = _instance_label_ids(labels)
            missing = [label for label in ids if label not in class_map]
            if missing:
                raise DeepcensInputError(files[stem], f"labels {missing[:5]} have no class in the class map")
            instances.pred_classes = torch.tensor([class_map[label] for label in ids], dtype=torch.int64)
        elif num_classes > 1:
            without_classes.append(os.path.basename(files[stem]))
        predictions[record["image_id"]] = instances
    if without_classes:
        logger.warning(f"{folder}: {len(without_classes)} label image(s) carry no class map ({without_classes[0]} ...): "
                       f"every object is scored as class 0 of {num_classes}; deepcens predict writes "
                       f"<name>{CLASS_MAP_SUFFIX} beside the label images of multi-class models")
    return predictions


def _instance_label_ids(labels: np.ndarray) -> list[int]:
    """Label values in the order :func:`label_image_to_instances` makes instances of them."""
    from deepcens.postprocess.instances import label_boxes

    return label_boxes(labels)[0].tolist()


def _image_key(entry: dict, number: int, path: str, records: dict, by_str: dict, by_file: dict,
               by_basename: dict) -> object:
    """The dataset image an entry belongs to: by ``file_name`` if it has one, else by ``image_id``."""
    file_name = entry.get("file_name")
    if isinstance(file_name, str) and file_name:
        key = by_file.get(os.path.normpath(os.path.abspath(file_name)))
        if key is None:
            candidates = by_basename.get(os.path.basename(file_name), [])
            if len(candidates) > 1:
                raise DeepcensInputError(path, f"entry {number}: file_name {file_name!r} matches several images "
                                         "of the dataset by name; give the full path")
            key = candidates[0] if candidates else None
        if key is None:
            raise DeepcensInputError(path, f"entry {number} names unknown image file {file_name!r}")
        return key
    if "image_id" not in entry:
        raise DeepcensInputError(path, f"entry {number} lacks image_id (and file_name)")
    key = entry["image_id"] if entry["image_id"] in records else by_str.get(str(entry["image_id"]))
    if key is None:
        raise DeepcensInputError(path, f"entry {number} names unknown image id {entry['image_id']!r}")
    return key


def _segmentation_rle(entry: dict, number: int, path: str, height: int, width: int) -> dict:
    """The entry's segmentation as compressed RLE, with errors that name the entry."""
    from deepcens.postprocess.instances import segmentation_to_rle

    segmentation = entry.get("segmentation")
    if segmentation is None:
        raise DeepcensInputError(path, f"entry {number} has no segmentation (mask results are needed)")
    if isinstance(segmentation, list):  # polygons [[x0, y0, x1, y1, ...], ...]
        try:
            polygons = [list(map(float, p)) for p in segmentation if len(p) >= 6]
        except (TypeError, ValueError):
            raise DeepcensInputError(path, f"entry {number}: polygon segmentation holds non-numbers") from None
        if not polygons:
            raise DeepcensInputError(path, f"entry {number}: polygon segmentation has no polygon of 3+ points")
        return segmentation_to_rle(polygons, height, width, path)
    if not isinstance(segmentation, dict) or "counts" not in segmentation or "size" not in segmentation:
        raise DeepcensInputError(path, f"entry {number}: segmentation is neither RLE {{size, counts}} nor polygons")
    if [int(v) for v in segmentation["size"]] != [height, width]:
        raise DeepcensInputError(
            path, f"entry {number}: mask size {segmentation['size']} differs from image size {[height, width]}")
    return segmentation_to_rle(segmentation, height, width, path)


def instances_from_coco(path: str, dataset_dicts: list[dict], dataset_id_to_contiguous: dict | None,
                        ignore_unknown_images: bool = False) -> dict:
    """image_id -> Instances from a COCO results json (RLE or polygon masks decoded at image size).

    Entries find their image by ``file_name`` when they carry one (full path, else the base
    name when unique in the dataset), else by ``image_id``. Scores must be finite numbers.
    """
    from deepcens.postprocess.instances import coco_results_to_instances

    entries = read_json(path)
    if not isinstance(entries, list):
        raise DeepcensInputError(path, "expected a JSON list of COCO results")
    records = {d["image_id"]: d for d in dataset_dicts}
    by_str = {str(k): k for k in records}
    by_file = {os.path.normpath(os.path.abspath(d["file_name"])): d["image_id"] for d in dataset_dicts}
    by_basename: dict = defaultdict(list)
    for d in dataset_dicts:
        by_basename[os.path.basename(d["file_name"])].append(d["image_id"])
    grouped: dict = defaultdict(list)
    skipped = 0
    for number, entry in enumerate(entries):
        if not isinstance(entry, dict) or "score" not in entry:
            raise DeepcensInputError(path, f"entry {number} is not a result with a score")
        score = entry["score"]
        if isinstance(score, bool) or not isinstance(score, (int, float)) or not math.isfinite(score):
            raise DeepcensInputError(path, f"entry {number} has score {score!r}: scores must be finite numbers")
        try:
            key = _image_key(entry, number, path, records, by_str, by_file, by_basename)
        except DeepcensInputError:
            if not ignore_unknown_images:
                raise
            skipped += 1
            continue
        grouped[key].append((number, entry))
    predictions = {}
    for image_id, record in records.items():
        height, width = int(record["height"]), int(record["width"])
        chosen = grouped.get(image_id, [])
        checked = []
        for number, entry in chosen:
            category = int(entry.get("category_id", 0))
            if dataset_id_to_contiguous is not None:
                if category not in dataset_id_to_contiguous:
                    raise DeepcensInputError(path, f"entry {number}: unknown category_id {category}")
                category = dataset_id_to_contiguous[category]
            checked.append(dict(entry, category_id=category,
                                segmentation=_segmentation_rle(entry, number, path, height, width)))
        predictions[image_id] = coco_results_to_instances(checked, height, width, where=path)
    if not entries:
        logger.warning("%s holds no predictions: every AP and CTC score is 0 where GT exists", path)
    return predictions


def run_ctc(args: argparse.Namespace) -> dict:
    """SEG / DET / OP_CSB (and TRA / OP_CTB on whole sequences with both track files) of
    ``--ctc-res`` against ``--ctc-gt`` (``--frames`` restricts the frames)."""
    from deepcens.evaluation.ctc_measures import evaluate_ctc_folders
    from deepcens.predict.inputs import parse_frames

    frames = parse_frames(args.frames) if args.frames else None
    chosen = None
    if frames is not None:
        start, stop = frames.start or 0, frames.stop if frames.stop is not None else 10 ** 9
        chosen = range(start, stop)
    result = evaluate_ctc_folders(args.ctc_gt, args.ctc_res, chosen)
    summary = {k: result[k] for k in ("SEG", "DET", "OP_CSB", "TRA", "OP_CTB") if k in result}
    scored = [r["frame"] for r in result["per_frame"]]
    note = f" over frames {scored[0]}..{scored[-1]} ({len(scored)} frames)" if scored else ""
    print(" ".join(f"{k}={v:.6f}" for k, v in summary.items()) + note)
    return result


def run_instances(args: argparse.Namespace) -> dict:
    """COCO AP + CTC measures of ``--pred-coco`` / ``--pred-labels`` against a dataset or label folder."""
    from detectron2.data import DatasetCatalog, MetadataCatalog

    from deepcens.evaluation import CellEvaluator, format_summary_table, write_reports

    id_map = None
    if args.dataset:
        import deepcens  # noqa: F401  (registers datasets)

        if args.dataset not in DatasetCatalog.list():
            raise DeepcensInputError(None, f"dataset {args.dataset!r} is not registered")
        dicts = DatasetCatalog.get(args.dataset)
        metadata = MetadataCatalog.get(args.dataset)
        id_map = metadata.get("thing_dataset_id_to_contiguous_id", None)
        name, class_names = args.dataset, None
        num_classes = len(metadata.get("thing_classes", None) or [None])
    else:
        dicts = label_folder_dicts(args.gt_labels)
        name, class_names, num_classes = os.path.basename(os.path.normpath(args.gt_labels)), ["object"], 1
    if args.pred_coco:
        predictions = instances_from_coco(args.pred_coco, dicts, id_map, args.ignore_unmatched)
    else:
        predictions = instances_from_labels(args.pred_labels, dicts, num_classes, args.ignore_unmatched)
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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``evaluate`` options."""
    parser.add_argument("--ctc-gt", help="CTC ground-truth folder <seq>_GT (SEG/, TRA/)")
    parser.add_argument("--ctc-res", help="CTC result folder with maskTTT.tif")
    parser.add_argument("--frames", default="", metavar="START:STOP",
                        help="CTC: score only these frames (e.g. the --frames given to predict)")
    parser.add_argument("--dataset", help="registered dataset name to score against")
    parser.add_argument("--gt-labels", help="folder of GT label images to score against")
    parser.add_argument("--pred-coco", help="COCO results json (RLE or polygon masks)")
    parser.add_argument("--pred-labels", help="folder of predicted label images (same file stems as the images)")
    parser.add_argument("--ignore-unmatched", action="store_true",
                        help="skip predictions naming no image of the dataset (with a warning) instead of refusing")
    parser.add_argument("--output-dir", default="", help="write evaluation reports and per_image.json here")
    parser.add_argument("--json", default="", help="write the results as JSON to this file")
    parser.add_argument("--max-dets", type=int, default=500, help="COCO maxDets (detections per image)")
    parser.add_argument("--coco-backend", default="faster_coco_eval", choices=["faster_coco_eval", "pycocotools"])
    parser.add_argument("--ctc-score-threshold", type=float, default=0.5,
                        help="instances below this score are left out of CTC label images")


def check_arguments(args: argparse.Namespace) -> None:
    """Refuse inconsistent options and unusable output paths before any scoring."""
    from deepcens.utils.atomic import check_output_folder

    if args.ctc_gt or args.ctc_res:
        if not (args.ctc_gt and args.ctc_res):
            raise DeepcensInputError(None, "--ctc-gt and --ctc-res go together")
    else:
        if args.frames:
            raise DeepcensInputError(None, "--frames applies to --ctc-gt/--ctc-res")
        if bool(args.dataset) == bool(args.gt_labels):
            raise DeepcensInputError(None, "give either --ctc-gt/--ctc-res, or exactly one of --dataset / --gt-labels")
        if bool(args.pred_coco) == bool(args.pred_labels):
            raise DeepcensInputError(None, "give exactly one of --pred-coco / --pred-labels")
        if args.pred_coco and not args.dataset:
            raise DeepcensInputError(None, "--pred-coco needs --dataset")
    if args.max_dets < 1:
        raise DeepcensInputError(None, f"--max-dets must be >= 1, got {args.max_dets}")
    if not 0.0 <= args.ctc_score_threshold <= 1.0:
        raise DeepcensInputError(None, f"--ctc-score-threshold must be in [0, 1], got {args.ctc_score_threshold}")
    if args.json:
        if os.path.isdir(args.json):
            raise DeepcensInputError(args.json, "--json names a folder; give a file name")
        check_output_folder(os.path.dirname(os.path.abspath(args.json)), "folder of --json")
    if args.output_dir:
        check_output_folder(args.output_dir, "--output-dir")


def run(args: argparse.Namespace) -> int:
    """Score and print; write ``--json`` / ``--output-dir`` reports."""
    check_arguments(args)
    results = run_ctc(args) if args.ctc_gt else run_instances(args)
    if args.json:
        from deepcens.evaluation.reports import clean_json
        from deepcens.utils.atomic import atomic_save_json

        atomic_save_json(args.json, clean_json(results))
    return 0
