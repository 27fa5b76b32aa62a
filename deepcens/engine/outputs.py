"""What a run leaves behind after evaluation: report tables, overlay PNGs, a console summary.

Shared by ``tools/train_net.py`` for every method; the reports come from
:mod:`deepcens.evaluation` and the drawings from :mod:`deepcens.visualize`.
"""
from __future__ import annotations

import logging
import os
from typing import Mapping

import numpy as np
import torch
from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.utils import comm

from deepcens.data.mappers import build_mapper

logger = logging.getLogger(__name__)


def write_overlays(cfg: CfgNode, model: torch.nn.Module, dataset_name: str, output_dir: str,
                   count: int, score_threshold: float = 0.5) -> list[str]:
    """Predict the first ``count`` images of ``dataset_name`` and write overlay PNGs of the
    instances scoring at least ``score_threshold``."""
    from deepcens.data.io import read_image, to_float_rgb
    from deepcens.visualize import draw_instances, upscale_for_display, write_overlay

    if count <= 0:
        return []
    mapper = build_mapper(cfg, is_train=False)
    class_names = list(MetadataCatalog.get(dataset_name).get("thing_classes", []))
    written = []
    model_was_training = model.training
    model.eval()
    try:
        for record in DatasetCatalog.get(dataset_name)[:count]:
            with torch.no_grad():
                instances = model([mapper(record)])[0]["instances"].to("cpu")
            image = to_float_rgb(read_image(record["file_name"]), cfg.INPUT.INTENSITY_MODE,
                                 tuple(cfg.INPUT.INTENSITY_PERCENTILES))
            instances = instances[instances.scores >= score_threshold]
            display, instances = upscale_for_display(np.clip(image, 0, 255).astype(np.uint8), instances)
            drawing = draw_instances(display, instances, class_names)
            stem = os.path.splitext(os.path.basename(record["file_name"]))[0]
            path = os.path.join(output_dir, "overlays", f"{dataset_name}_{stem}.png")
            write_overlay(path, drawing)
            written.append(path)
    finally:
        model.train(model_was_training)
    return written


def finish_run(cfg: CfgNode, model: torch.nn.Module, results: Mapping) -> str:
    """Write reports and overlays into ``cfg.OUTPUT_DIR`` and return the console summary table."""
    from deepcens.evaluation import format_summary_table, write_reports
    from deepcens.evaluation.reports import add_parameter_efficiency

    if not comm.is_main_process() or not results:
        return ""
    # with one test set DefaultTrainer.test returns its metrics unnested: name the row
    single_name = cfg.DATASETS.TEST[0] if len(cfg.DATASETS.TEST) == 1 else None
    num_parameters = sum(p.numel() for p in model.parameters())  # for PESEG
    write_reports(results, cfg.OUTPUT_DIR, dataset_name=single_name, num_parameters=num_parameters)
    if cfg.OUTPUT_OVERLAYS > 0 and len(cfg.DATASETS.TEST):
        model = model.module if hasattr(model, "module") else model
        paths = write_overlays(cfg, model, cfg.DATASETS.TEST[0], cfg.OUTPUT_DIR, cfg.OUTPUT_OVERLAYS)
        logger.info(f"Wrote {len(paths)} overlay PNGs under {os.path.join(cfg.OUTPUT_DIR, 'overlays')}")
    return format_summary_table(add_parameter_efficiency(results, num_parameters, single_name))
