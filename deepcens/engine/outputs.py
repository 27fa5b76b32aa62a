"""What a run leaves behind after evaluation: report tables, overlay PNGs, a console summary.

Overlays are drawn from the predictions the evaluator saved, so no model runs twice.
Shared by ``deepcens train`` for every method; the reports come from
:mod:`deepcens.evaluation` and the drawings from :mod:`deepcens.visualize`.
"""
from __future__ import annotations

import logging
import os
from typing import Mapping

import numpy as np
from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.utils import comm

logger = logging.getLogger(__name__)


def write_overlays(cfg: CfgNode, dataset_name: str, output_dir: str, count: int,
                   score_threshold: float = 0.5) -> list[str]:
    """Overlay PNGs of the first ``count`` images of ``dataset_name``, drawn from the predictions
    the evaluator saved (``inference/<dataset>/coco_instances_results.json``), not from a
    second model run; instances scoring at least ``score_threshold`` are drawn."""
    from deepcens.data.io import read_image, to_float_rgb
    from deepcens.evaluation.offline import instances_from_coco
    from deepcens.visualize import draw_instances, upscale_for_display, write_overlay

    results_file = os.path.join(output_dir, "inference", dataset_name, "coco_instances_results.json")
    if count <= 0:
        return []
    if not os.path.isfile(results_file):
        logger.warning(f"No saved predictions at {results_file}: no overlays")
        return []
    metadata = MetadataCatalog.get(dataset_name)
    class_names = list(metadata.get("thing_classes", []))
    records = DatasetCatalog.get(dataset_name)[:count]
    predictions = instances_from_coco(results_file, records, metadata.get("thing_dataset_id_to_contiguous_id", None),
                                      ignore_unknown_images=True)
    written = []
    for record in records:
        instances = predictions[record["image_id"]]
        image = to_float_rgb(read_image(record["file_name"]), cfg.INPUT.INTENSITY_MODE,
                             tuple(cfg.INPUT.INTENSITY_PERCENTILES))
        instances = instances[instances.scores >= score_threshold]
        display, instances = upscale_for_display(np.clip(image, 0, 255).astype(np.uint8), instances)
        drawing = draw_instances(display, instances, class_names)
        stem = os.path.splitext(os.path.basename(record["file_name"]))[0]
        path = os.path.join(output_dir, "overlays", f"{dataset_name}_{stem}.png")
        write_overlay(path, drawing)
        written.append(path)
    return written


def finish_run(cfg: CfgNode, results: Mapping) -> str:
    """Write reports and overlays into ``cfg.OUTPUT_DIR`` and return the console summary table."""
    from deepcens.evaluation import format_summary_table, write_reports

    if not comm.is_main_process() or not results:
        return ""
    # with one test set DefaultTrainer.test returns its metrics unnested: name the row
    single_name = cfg.DATASETS.TEST[0] if len(cfg.DATASETS.TEST) == 1 else None
    write_reports(results, cfg.OUTPUT_DIR, dataset_name=single_name)
    if cfg.RUN.OUTPUT_OVERLAYS > 0 and len(cfg.DATASETS.TEST):
        paths = write_overlays(cfg, cfg.DATASETS.TEST[0], cfg.OUTPUT_DIR, cfg.RUN.OUTPUT_OVERLAYS)
        logger.info(f"Wrote {len(paths)} overlay PNGs under {os.path.join(cfg.OUTPUT_DIR, 'overlays')}")
    return format_summary_table(results, dataset_name=single_name)
