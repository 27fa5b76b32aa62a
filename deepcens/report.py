"""The visual evaluation report (``deepcens report``; training curves are :mod:`deepcens.plots`).

:func:`build_report` turns an evaluated run folder (``evaluation.json`` / ``evaluation.md``
  from :func:`deepcens.evaluation.write_reports`, and per dataset
  ``inference/<dataset>/per_image.json`` + ``coco_instances_results.json`` from the
  ``CellEvaluator``) into ``report.html`` and ``report.md``: the metric tables, then per dataset
  (EVICAN difficulty order) a grid of image | ground truth | prediction panels, best and worst
  images first (the paper's Figs. 3 and 4). Predictions are read back from the saved results,
  so no model runs.
"""
from __future__ import annotations

import argparse
import html
import io
import logging
import math
import os
from typing import Sequence

import numpy as np

from deepcens.data.io import read_json
from deepcens.errors import DeepcensInputError
from deepcens.utils.atomic import atomic_save_bytes, atomic_write

logger = logging.getLogger(__name__)

SCORE_KEYS = ("segm_ap_proxy", "SEG", "DET")  # per-image ranking, first one present wins
DIFFICULTY_ORDER = {"easy": 0, "medium": 1, "difficult": 2}


# ---- evaluation -> visual report ---------------------------------------------------------------
def image_score(entry: dict) -> float | None:
    """The per-image ranking score: ``segm_ap_proxy``, else ``SEG``, else ``DET`` (None if none)."""
    for key in SCORE_KEYS:
        value = entry.get(key)
        if isinstance(value, (int, float)) and math.isfinite(value):
            return float(value)
    return None


def best_and_worst(images: Sequence[dict], count: int) -> tuple[list[dict], list[dict]]:
    """The ``count`` best and ``count`` worst scored images (disjoint; unscored images left out)."""
    scored = sorted((e for e in images if image_score(e) is not None), key=lambda e: -image_score(e))
    best = scored[:count]
    worst = [e for e in reversed(scored) if e not in best][:count]
    return best, worst


def _ground_truth_instances(record: dict, class_count: int):
    """GT of a dataset dict (polygon/RLE annotations or a label image) as ``Instances``."""
    import torch
    from detectron2.structures import Boxes, Instances, polygons_to_bitmask
    from pycocotools import mask as mask_util

    from deepcens.data.io import read_label
    from deepcens.postprocess.instances import label_image_to_instances

    height, width = int(record["height"]), int(record["width"])
    if "annotations" in record:
        masks, classes = [], []
        for ann in record["annotations"]:
            segm = ann.get("segmentation")
            if isinstance(segm, list):
                masks.append(polygons_to_bitmask(segm, height, width))
            elif isinstance(segm, dict):
                rle = segm if not isinstance(segm.get("counts"), list) else mask_util.frPyObjects(segm, height, width)
                masks.append(mask_util.decode(rle).astype(bool))
            else:
                continue
            classes.append(int(ann.get("category_id", 0)))
        result = Instances((height, width))
        stacked = np.stack(masks) if masks else np.zeros((0, height, width), dtype=bool)
        result.pred_masks = torch.from_numpy(stacked)
        result.pred_boxes = Boxes(torch.zeros((len(masks), 4)))
        result.pred_classes = torch.tensor(classes, dtype=torch.int64)
        return result
    if record.get("label_file_name"):
        return label_image_to_instances(read_label(record["label_file_name"], (height, width)))
    return None


def _prediction_instances(entries: Sequence[dict], height: int, width: int, dataset_to_contiguous: dict | None):
    """COCO result entries of one image -> ``Instances`` (masks from RLE, dataset ids -> contiguous)."""
    import torch
    from detectron2.structures import Boxes, BoxMode, Instances
    from pycocotools import mask as mask_util

    masks, boxes, scores, classes = [], [], [], []
    for entry in entries:
        segm = entry.get("segmentation")
        if not isinstance(segm, dict):
            continue
        rle = dict(segm)
        if isinstance(rle.get("counts"), str):
            rle["counts"] = rle["counts"].encode("ascii")
        masks.append(mask_util.decode(rle).astype(bool))
        boxes.append(BoxMode.convert(list(entry.get("bbox", [0, 0, 0, 0])), BoxMode.XYWH_ABS, BoxMode.XYXY_ABS))
        scores.append(float(entry.get("score", 1.0)))
        category = int(entry.get("category_id", 0))
        classes.append(dataset_to_contiguous.get(category, category) if dataset_to_contiguous else category)
    result = Instances((height, width))
    result.pred_masks = torch.from_numpy(np.stack(masks) if masks else np.zeros((0, height, width), dtype=bool))
    result.pred_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
    result.scores = torch.tensor(scores, dtype=torch.float32)
    result.pred_classes = torch.tensor(classes, dtype=torch.int64)
    return result


def _dataset_folders(eval_dir: str) -> list[tuple[str, str]]:
    """(dataset name, folder) for every ``per_image.json`` under ``eval_dir`` (or ``eval_dir/inference``)."""
    found = []
    for root, _, files in os.walk(eval_dir):
        if "per_image.json" in files:
            found.append(root)
    datasets = []
    for folder in found:
        data = read_json(os.path.join(folder, "per_image.json"))
        if not isinstance(data, dict) or "images" not in data:
            raise DeepcensInputError(os.path.join(folder, "per_image.json"), "not a deepcens per-image file")
        datasets.append((str(data.get("dataset") or os.path.basename(folder)), folder))

    def order(item: tuple[str, str]) -> tuple:
        from deepcens.evaluation.reports import dataset_difficulty

        return (DIFFICULTY_ORDER.get(dataset_difficulty(item[0]) or "", 9), item[0])
    return sorted(datasets, key=order)


def _html_table(header: Sequence[str], rows: Sequence[Sequence], digits: int) -> str:
    def cell(value) -> str:
        if isinstance(value, float):
            return "" if not math.isfinite(value) else f"{value:.{digits}f}"
        return html.escape("" if value is None else str(value))
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def build_report(eval_dir: str, report_dir: str | None = None, count: int = 3,
                 intensity_percentiles: tuple[float, float] = (0.5, 99.8)) -> dict:
    """Write ``report.html`` / ``report.md`` and panel PNGs for an evaluated run folder.

    Datasets must be registered (the tool registers the config's) for the ground-truth panel;
    without their dicts, the prediction panel is drawn alone from ``file_name``.
    Returns {"html", "markdown", "panels": [paths], "datasets": [names]}.
    """
    from detectron2.data import DatasetCatalog, MetadataCatalog

    from deepcens.data.io import read_image
    from deepcens.visualize import draw_instances, encode_png, side_by_side, to_display_uint8

    if not os.path.isdir(eval_dir):
        raise DeepcensInputError(eval_dir, "evaluation folder not found")
    report_dir = report_dir or os.path.join(eval_dir, "report")
    evaluation_path = os.path.join(eval_dir, "evaluation.json")
    evaluation = read_json(evaluation_path) if os.path.isfile(evaluation_path) else None
    datasets = _dataset_folders(eval_dir)
    if evaluation is None and not datasets:
        raise DeepcensInputError(eval_dir, "holds neither evaluation.json nor any per_image.json")

    html_parts = ["<!doctype html><html><head><meta charset='utf-8'><title>deepcens evaluation report</title>",
                  "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin:1em 0}"
                  "td,th{border:1px solid #bbb;padding:2px 6px;text-align:right}th{background:#eee}"
                  "img{max-width:100%;border:1px solid #888}figure{margin:1em 0}</style></head><body>",
                  f"<h1>Evaluation report</h1><p>{html.escape(os.path.abspath(eval_dir))}</p>"]
    markdown = ["# Evaluation report", "", f"`{os.path.abspath(eval_dir)}`", ""]
    if evaluation is not None:
        tables = evaluation.get("tables", {})
        for key, title, digits in (("instance", "COCO AP (%): Det. (bbox) and Seg. (segm)", 2),
                                   ("ctc", "Cell Tracking Challenge measures", 4)):
            table = tables.get(key) or {}
            if table.get("rows"):
                html_parts.append(f"<h2>{html.escape(title)}</h2>" + _html_table(table["header"], table["rows"], digits))
        md_path = os.path.join(eval_dir, "evaluation.md")
        if os.path.isfile(md_path):
            with open(md_path, encoding="utf-8") as handle:
                text = handle.read().strip().splitlines()
            markdown += [line.replace("# ", "## ", 1) if line.startswith("# ") else line for line in text] + [""]

    panels: list[str] = []
    for dataset, folder in datasets:
        per_image = read_json(os.path.join(folder, "per_image.json"))
        class_names = list(per_image.get("class_names") or [])
        predictions_path = os.path.join(folder, "coco_instances_results.json")
        predictions = read_json(predictions_path) if os.path.isfile(predictions_path) else []
        by_image: dict[str, list[dict]] = {}
        for entry in predictions:
            by_image.setdefault(str(entry.get("image_id")), []).append(entry)
        records = {}
        mapping = None
        if dataset in DatasetCatalog.list():
            records = {str(r["image_id"]): r for r in DatasetCatalog.get(dataset)}
            mapping = MetadataCatalog.get(dataset).get("thing_dataset_id_to_contiguous_id", None)
        else:
            logger.warning(f"dataset {dataset} is not registered: report shows predictions without ground truth")
        best, worst = best_and_worst(per_image["images"], count)
        score_name = next((k for k in SCORE_KEYS if any(image_score({k: e.get(k)}) is not None
                                                        for e in per_image["images"])), "score")
        html_parts.append(f"<h2>{html.escape(dataset)}</h2>")
        markdown += [f"## {dataset}", ""]
        if not best:
            html_parts.append("<p>(no scored image)</p>")
            markdown += ["(no scored image)", ""]
        for title, chosen in (("best", best), ("worst", worst)):
            if not chosen:
                continue
            html_parts.append(f"<h3>{title} images by {html.escape(score_name)}</h3>")
            markdown += [f"### {title} images by {score_name}", ""]
            for rank, entry in enumerate(chosen, 1):
                image_id = str(entry["image_id"])
                file_name = entry.get("file_name") or records.get(image_id, {}).get("file_name")
                if not file_name:
                    continue
                raw = read_image(file_name)
                display = to_display_uint8(raw, intensity_percentiles)
                height, width = display.shape[:2]
                predicted = _prediction_instances(by_image.get(image_id, []), height, width, mapping)
                images = [display]
                titles = ["image"]
                record = records.get(image_id)
                truth = _ground_truth_instances(record, len(class_names)) if record is not None else None
                if truth is not None:
                    images.append(draw_instances(display, truth, class_names, show_scores=False))
                    titles.append(f"ground truth ({len(truth)})")
                images.append(draw_instances(display, predicted, class_names))
                titles.append(f"prediction ({len(predicted)})")
                panel = side_by_side(images, titles)
                stem = os.path.splitext(os.path.basename(file_name))[0]
                name = f"{_safe(dataset)}_{title}{rank}_{_safe(stem)}.png"
                path = os.path.join(report_dir, "panels", name)
                atomic_save_bytes(path, encode_png(panel))
                panels.append(path)
                caption = (f"{title} {rank}: {os.path.basename(file_name)}, {score_name} = {image_score(entry):.3f}, "
                           f"GT {entry.get('num_gt')}, predicted {entry.get('num_pred')}")
                html_parts.append(f"<figure><img src='panels/{html.escape(name)}'>"
                                  f"<figcaption>{html.escape(caption)}</figcaption></figure>")
                markdown += [f"![{caption}](panels/{name})", "", caption, ""]
    html_parts.append("</body></html>")
    html_path = os.path.join(report_dir, "report.html")
    markdown_path = os.path.join(report_dir, "report.md")
    with atomic_write(html_path, "w", encoding="utf-8") as handle:
        handle.write("\n".join(html_parts))
    with atomic_write(markdown_path, "w", encoding="utf-8") as handle:
        handle.write("\n".join(markdown) + "\n")
    return {"html": html_path, "markdown": markdown_path, "panels": panels, "datasets": [d for d, _ in datasets]}


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)


PARSE_INTERMIXED = True  # options may follow the KEY VALUE overrides


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``report`` options."""
    parser.add_argument("eval_dir", help="run output folder (evaluation.json, inference/<dataset>/per_image.json)")
    parser.add_argument("--config-file", default="", help="the run's config: registers its datasets for the GT panels")
    parser.add_argument("--output", default="", help="report folder (default EVAL_DIR/report)")
    parser.add_argument("--count", type=int, default=3, help="best and worst images shown per dataset")
    parser.add_argument("opts", nargs="*", default=[], help="config overrides KEY VALUE ...")


def run(args: argparse.Namespace) -> int:
    """Build the report and print the path of report.html."""
    import deepcens  # noqa: F401  (dataset registrations)

    if args.config_file:
        from deepcens.data.evican import register_evican_from_cfg
        from deepcens.engine.setup import load_config

        register_evican_from_cfg(load_config(args.config_file, args.opts))
    result = build_report(args.eval_dir, args.output or None, args.count)
    print(result["html"])
    return 0
