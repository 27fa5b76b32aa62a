"""Evaluation reports: paper-style tables as JSON, Markdown and CSV (written atomically).

* instance table (DeepCeNS paper Tables I-III): one row per dataset / EVICAN difficulty level,
  Det. (bbox) and Seg. (segm) columns mAP, mAP50, mAP75, mAPs, mAPm, mAPl and AP per class
  (COCO AP in percent);
* CTC table (NAS paper Table 2): OP_CSB, SEG, DET (0..1) per dataset, CTC dataset and sequence,
  plus PESEG (EfficientCellSeg paper Table 3) and the parameter count when the model is known;
* F1 table (2D DiNTS paper Tables 4-5): instance F1 at IoU 0.5, precision, recall and
  foreground Dice per dataset.
"""
from __future__ import annotations

import csv
import io
import math
import os
import re
from typing import Any, Mapping

from deepcens.utils.atomic import atomic_save_json, atomic_write

COCO_COLUMNS = [("AP", "mAP"), ("AP50", "mAP50"), ("AP75", "mAP75"), ("APs", "mAPs"), ("APm", "mAPm"), ("APl", "mAPl")]
CTC_COLUMNS = ["OP_CSB", "SEG", "DET"]
DIFFICULTY_ORDER = {"easy": 0, "medium": 1, "difficult": 2}
_TASKS = ("bbox", "segm", "ctc", "F1")
F1_COLUMNS = ["F1", "precision", "recall", "Dice"]


def clean_json(value: Any) -> Any:
    """Replace NaN / inf with None (strict JSON) and numpy scalars with Python numbers."""
    if isinstance(value, Mapping):
        return {str(k): clean_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean_json(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def normalize_results(results: Mapping, dataset_name: str | None = None) -> dict[str, dict]:
    """``{dataset: {"bbox"|"segm"|"ctc": {...}}}``; a single dataset's results (what
    ``DefaultTrainer.test`` returns for one dataset) is wrapped as ``{dataset_name: ...}``
    (``"dataset"`` when no name is given)."""
    if results and all(key in _TASKS for key in results):
        return {dataset_name or "dataset": dict(results)}
    return {str(name): dict(value) for name, value in results.items()}


def dataset_difficulty(name: str) -> str | None:
    """EVICAN difficulty of a registered dataset (metadata ``difficulty`` or its name)."""
    try:
        from detectron2.data import MetadataCatalog

        if name in MetadataCatalog.list():
            difficulty = MetadataCatalog.get(name).get("difficulty", None)
            if difficulty:
                return str(difficulty)
    except ImportError:  # pragma: no cover - detectron2 is a hard dependency
        pass
    found = re.search(r"_eval_(easy|medium|difficult)(_|$)", name)
    return found.group(1) if found else None


def _class_names(results: dict[str, dict]) -> list[str]:
    names: list[str] = []
    for value in results.values():
        for task in ("bbox", "segm"):
            for key in value.get(task, {}):
                if key.startswith("AP-") and key[3:] not in names:
                    names.append(key[3:])
    return names


def instance_table(results: Mapping) -> tuple[list[str], list[list]]:
    """Header and rows of the Det./Seg. COCO table (rows per dataset, difficulty-ordered)."""
    results = normalize_results(results)
    classes = _class_names(results)
    metric_columns = [label for _, label in COCO_COLUMNS] + [f"AP-{c}" for c in classes]
    header = ["dataset", "difficulty"] + [f"Det. {m}" for m in metric_columns] + [f"Seg. {m}" for m in metric_columns]
    rows = []
    names = [n for n, v in results.items() if "bbox" in v or "segm" in v]
    position = {n: i for i, n in enumerate(names)}
    names.sort(key=lambda n: (DIFFICULTY_ORDER.get(dataset_difficulty(n) or "", 3), position[n]))
    for name in names:
        value = results[name]
        row: list = [name, dataset_difficulty(name) or ""]
        for task in ("bbox", "segm"):
            task_result = value.get(task, {})
            row += [task_result.get(key, math.nan) for key, _ in COCO_COLUMNS]
            row += [task_result.get(f"AP-{c}", math.nan) for c in classes]
        rows.append(row)
    return header, rows


def add_parameter_efficiency(results: Mapping, num_parameters: int, dataset_name: str | None = None) -> dict[str, dict]:
    """Normalised results with PESEG = SEG / N * 1e6 (EfficientCellSeg paper, Sec. 3.3; N = model
    parameters) beside every SEG of the CTC results, and ``num_parameters`` in each CTC dict."""
    results = normalize_results(results, dataset_name)
    if num_parameters <= 0:
        raise ValueError(f"num_parameters must be positive, got {num_parameters}")
    out = {}
    for name, value in results.items():
        value = dict(value)
        if value.get("ctc"):
            ctc = dict(value["ctc"])
            for key in [k for k in ctc if k == "SEG" or k.startswith("SEG-")]:
                ctc["PE" + key] = ctc[key] / num_parameters * 1e6
            ctc["num_parameters"] = int(num_parameters)
            value["ctc"] = ctc
        out[name] = value
    return out


def ctc_table(results: Mapping) -> tuple[list[str], list[list]]:
    """Header and rows of the OP_CSB / SEG / DET (+ PESEG, parameters when known) table: each
    dataset, then its CTC datasets (``dataset > ctc_dataset``) and sequences
    (``dataset > ctc_dataset/sequence``)."""
    results = normalize_results(results)
    columns = list(CTC_COLUMNS)
    if any("PESEG" in (value.get("ctc") or {}) for value in results.values()):
        columns.append("PESEG")
    header = ["dataset"] + columns + (["parameters"] if "PESEG" in columns else [])
    rows = []
    for name, value in results.items():
        ctc = value.get("ctc")
        if not ctc:
            continue
        extra = [ctc.get("num_parameters", "")] if "PESEG" in columns else []
        rows.append([name] + [ctc.get(k, math.nan) for k in columns] + extra)
        groups = sorted({key.split("-", 1)[1] for key in ctc if key.startswith("SEG-")})
        for group in groups:
            rows.append([f"{name} > {group}"] + [ctc.get(f"{k}-{group}", math.nan) for k in columns] + extra)
    return header, rows


def f1_table(results: Mapping) -> tuple[list[str], list[list]]:
    """Header and rows of the instance F1 / Dice table (one row per dataset with an ``F1`` task)."""
    results = normalize_results(results)
    rows = [[name] + [value["F1"].get(k, math.nan) for k in F1_COLUMNS]
            for name, value in results.items() if value.get("F1")]
    return ["dataset"] + F1_COLUMNS, rows


def _fmt(value: Any, digits: int) -> str:
    if isinstance(value, float):
        return "–" if not math.isfinite(value) else f"{value:.{digits}f}"
    return str(value)


def _markdown(header: list[str], rows: list[list], digits: int) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_fmt(v, digits) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _plain(header: list[str], rows: list[list], digits: int) -> str:
    cells = [header] + [[_fmt(v, digits) for v in row] for row in rows]
    widths = [max(len(str(r[i])) for r in cells) for i in range(len(header))]
    return "\n".join("  ".join(str(c).rjust(w) if i else str(c).ljust(w) for i, (c, w) in enumerate(zip(r, widths)))
                     for r in cells)


def format_summary_table(results: Mapping, dataset_name: str | None = None) -> str:
    """Both tables as plain fixed-width text for the console (``dataset_name`` names a
    single dataset's results, see :func:`normalize_results`)."""
    results = normalize_results(results, dataset_name)
    parts = []
    header, rows = instance_table(results)
    if rows:
        parts.append("COCO AP (%), Det. = bbox, Seg. = segm\n" + _plain(header, rows, 2))
    header, rows = ctc_table(results)
    if rows:
        parts.append("CTC measures\n" + _plain(header, rows, 4))
    header, rows = f1_table(results)
    if rows:
        parts.append("Instance F1 (IoU 0.5) and foreground Dice\n" + _plain(header, rows, 4))
    return "\n\n".join(parts) if parts else "(no results)"


def _csv_text(header: list[str], rows: list[list]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    for row in rows:
        writer.writerow(["" if isinstance(v, float) and not math.isfinite(v) else v for v in row])
    return buffer.getvalue()


def write_reports(results: Mapping, output_dir: str | os.PathLike, dataset_name: str | None = None,
                  num_parameters: int | None = None) -> dict[str, str]:
    """Write ``evaluation.json``, ``evaluation.md``, ``evaluation_instance.csv`` and
    ``evaluation_ctc.csv`` into ``output_dir`` atomically; returns {kind: path}.
    ``dataset_name`` names the dataset when ``results`` is a single dataset's dict;
    ``num_parameters`` (the model's) adds PESEG to the CTC results and the table."""
    output_dir = os.fspath(output_dir)
    os.makedirs(output_dir, exist_ok=True)
    normalized = normalize_results(results, dataset_name)
    if num_parameters:
        normalized = add_parameter_efficiency(normalized, num_parameters)
    inst_header, inst_rows = instance_table(normalized)
    ctc_header, ctc_rows = ctc_table(normalized)
    paths = {
        "json": os.path.join(output_dir, "evaluation.json"),
        "markdown": os.path.join(output_dir, "evaluation.md"),
        "instance_csv": os.path.join(output_dir, "evaluation_instance.csv"),
        "ctc_csv": os.path.join(output_dir, "evaluation_ctc.csv"),
    }
    atomic_save_json(paths["json"], clean_json({
        "results": normalized,
        "difficulty": {name: dataset_difficulty(name) for name in normalized},
        "num_parameters": num_parameters,
        "tables": {
            "instance": {"header": inst_header, "rows": inst_rows},
            "ctc": {"header": ctc_header, "rows": ctc_rows},
        },
    }))
    markdown = ["# Evaluation", ""]
    if inst_rows:
        markdown += ["## COCO AP (%) — Det. (bbox) and Seg. (segm), maxDets = TEST.DETECTIONS_PER_IMAGE", "",
                     _markdown(inst_header, inst_rows, 2), ""]
    if ctc_rows:
        markdown += ["## Cell Tracking Challenge measures (OP_CSB = (SEG + DET) / 2"
                     + (", PESEG = SEG / parameters x 1e6)" if num_parameters else ")"), "",
                     _markdown(ctc_header, ctc_rows, 4), ""]
    f1_header, f1_rows = f1_table(normalized)
    if f1_rows:
        markdown += ["## Instance F1 at IoU 0.5 (mean over images) and foreground Dice", "",
                     _markdown(f1_header, f1_rows, 4), ""]
    if not inst_rows and not ctc_rows and not f1_rows:
        markdown += ["(no results)", ""]
    with atomic_write(paths["markdown"], "w", encoding="utf-8") as handle:
        handle.write("\n".join(markdown))
    for key, header, rows in (("instance_csv", inst_header, inst_rows), ("ctc_csv", ctc_header, ctc_rows)):
        with atomic_write(paths[key], "w", encoding="utf-8", newline="") as handle:
            handle.write(_csv_text(header, rows))
    return paths


def write_per_image(path: str | os.PathLike, dataset_name: str, class_names: list[str], images: list[dict]) -> None:
    """``per_image.json`` (format documented in docs/evaluation.md)."""
    atomic_save_json(path, clean_json({
        "format": "deepcens-per-image-v1",
        "dataset": dataset_name,
        "class_names": class_names,
        "higher_is_better": ["segm_ap_proxy", "SEG", "DET"],
        "images": images,
    }))


def write_predictions_json(path: str | os.PathLike, entries: list[dict]) -> None:
    """COCO results list (RLE masks), as ``tools/evaluate.py --pred-coco`` reads it back."""
    atomic_save_json(path, clean_json(entries), indent=None)
