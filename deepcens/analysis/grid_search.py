"""Grid-search the tertiary decoder's thresholds on a validation split (XB-Net Section 5.5).

The paper picks the small-object and small-hole area thresholds per dataset "by a coarse grid
search ... using the official evaluation tools". This runs a trained dense model once over a
registered dataset, keeps its softmax scores (the meta-architecture's ``output_probabilities``),
decodes them with the decoder function directly them with every combination of
``--min-sizes`` x ``--max-holes`` x ``--grow`` and scores each with the CTC measures of
``deepcens.evaluation.ctc_measures`` (SEG over the labelled reference objects, DET on the TRA
markers when the dicts have them). It prints the table and the best setting as the config
line to use::

    deepcens grid-search --config-file configs/xbnet/xbnet_sim_cpu.yaml \\
        --dataset ctc_sim_val --min-sizes 0,20,50,100 --max-holes 0,20,50 \\
        --json output/grid.json MODEL.WEIGHTS output/model_final.pth
    -> MODEL.DENSE.POSTPROCESS_PER_DATASET [["Fluo-N2DH-SIM+", 50, 20]]
"""
from __future__ import annotations

import argparse
import itertools
import logging
import math
import os
import time
from typing import Iterable, Sequence

import numpy as np
import torch

from deepcens.errors import DeepcensInputError
from deepcens.utils.atomic import atomic_save_json, check_output_folder

logger = logging.getLogger("deepcens.grid_search")


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 0:
        raise argparse.ArgumentTypeError(f"expected non-negative integers, got {text!r}")
    return values


def reference_labels(dataset_dict: dict) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(SEG reference, TRA markers) of one dataset dict; either may be None."""
    if "ctc_dataset" in dataset_dict:
        from deepcens.data import ctc

        return ctc.read_ctc_labels(dataset_dict), ctc.read_ctc_markers(dataset_dict)
    from deepcens.data.io import read_label

    shape = (dataset_dict["height"], dataset_dict["width"])
    seg = read_label(dataset_dict["label_file_name"], shape) if dataset_dict.get("label_file_name") else None
    markers = read_label(dataset_dict["tra_file_name"], shape) if dataset_dict.get("tra_file_name") else None
    return seg, markers


def grid_search(
    probabilities: Sequence[np.ndarray],
    references: Sequence[tuple[np.ndarray | None, np.ndarray | None]],
    min_sizes: Iterable[int],
    max_holes: Iterable[int],
    grows: Iterable[int] = (0,),
    metric: str = "auto",
) -> dict:
    """Score every (min_size, max_hole, grow) setting; returns ``{"metric", "rows", "best"}``.

    ``probabilities``: per image ``(3, H, W)`` tertiary scores; ``references``: per image
    (SEG labels or None, TRA markers or None). ``metric``: SEG | DET | OP_CSB | auto (OP_CSB
    when every image has both references available for DET and SEG, else SEG).
    """
    from deepcens.evaluation.ctc_measures import frame_counts, sum_counts
    from deepcens.postprocess.decoders import tertiary_labels

    if len(probabilities) != len(references) or not len(probabilities):
        raise ValueError("need one reference per probability map (and at least one image)")
    if metric == "auto":
        metric = "OP_CSB" if any(m is not None for _, m in references) else "SEG"
    if metric not in ("SEG", "DET", "OP_CSB"):
        raise ValueError(f"metric must be SEG, DET, OP_CSB or auto, got {metric!r}")
    rows = []
    for min_size, max_hole, grow in itertools.product(min_sizes, max_holes, grows):
        counts = []
        for scores, (seg, markers) in zip(probabilities, references):
            labels = tertiary_labels(scores, min_size, max_hole, grow)
            counts.append(frame_counts(labels, seg, markers)[0])
        measures = sum_counts(counts).measures()
        rows.append({"min_size": int(min_size), "max_hole": int(max_hole), "grow": int(grow),
                     **{k: measures[k] for k in ("SEG", "DET", "OP_CSB")}})
    scored = [r for r in rows if not math.isnan(r[metric])]
    if not scored:
        raise ValueError(f"no reference objects to compute {metric}")
    best = max(scored, key=lambda r: (r[metric], -r["min_size"], -r["max_hole"], -r["grow"]))
    return {"metric": metric, "rows": rows, "best": best}


def predict_probabilities(cfg, dataset_name: str) -> tuple[list[np.ndarray], list[dict]]:
    """Run the dense model of ``cfg`` over ``dataset_name``; keep every image's scores.

    The meta-architecture must expose ``output_probabilities(mapped_input)`` (softmax scores at
    the original image size, what its decoder receives), as ``DenseSegmentor`` does. Scores
    are kept as float16 to bound memory.
    """
    from detectron2.data import DatasetCatalog, build_detection_test_loader
    from detectron2.modeling import build_model

    from deepcens.data.mappers import build_mapper
    from deepcens.engine.weights import load_inference_weights

    model = build_model(cfg)
    if not callable(getattr(model, "output_probabilities", None)):
        raise DeepcensInputError(None, f"MODEL.META_ARCHITECTURE {cfg.MODEL.META_ARCHITECTURE} gives no per-pixel "
                                 "probabilities (output_probabilities): the grid search needs a dense model")
    load_inference_weights(model, cfg.MODEL.WEIGHTS, allow_unsafe=cfg.RUN.ALLOW_UNSAFE_CHECKPOINTS)
    model.eval()
    dicts = DatasetCatalog.get(dataset_name)
    loader = build_detection_test_loader(cfg, dataset_name, mapper=build_mapper(cfg, False))
    recorded: list[np.ndarray] = []
    with torch.no_grad():
        for batch in loader:
            for item in batch:
                recorded.append(model.output_probabilities(item).float().cpu().numpy().astype(np.float16))
    if len(recorded) != len(dicts):
        raise RuntimeError(f"model scored {len(recorded)} images, dataset has {len(dicts)}")
    return recorded, dicts


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``grid-search`` options."""
    parser.add_argument("--config-file", required=True, help="dense-model config (yaml)")
    parser.add_argument("--dataset", required=True, help="registered validation dataset, e.g. ctc_sim_val")
    parser.add_argument("--min-sizes", type=_int_list, default=[0, 10, 20, 50, 100], help="comma-separated areas")
    parser.add_argument("--max-holes", type=_int_list, default=[0, 10, 20, 50, 100], help="comma-separated areas")
    parser.add_argument("--grow", type=_int_list, default=[0], help="comma-separated GROW_INTO_BOUNDARY values")
    parser.add_argument("--metric", default="auto", choices=["auto", "SEG", "DET", "OP_CSB"])
    parser.add_argument("--json", default="", help="write the table and best setting to this JSON file")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides, e.g. MODEL.WEIGHTS path")


def run(args: argparse.Namespace) -> int:
    """Predict once, score every setting, print the table and the best config line."""
    from detectron2.data import MetadataCatalog

    from deepcens.engine.setup import load_config

    import deepcens  # noqa: F401  (registrations)

    cfg = load_config(args.config_file, args.opts)
    if args.json:
        if os.path.isdir(args.json):
            raise DeepcensInputError(args.json, "--json names a folder; give a file name")
        check_output_folder(os.path.dirname(os.path.abspath(args.json)), "folder of --json")
    start = time.perf_counter()
    probabilities, dicts = predict_probabilities(cfg, args.dataset)
    inference_s = time.perf_counter() - start
    references = [reference_labels(d) for d in dicts]
    start = time.perf_counter()
    result = grid_search([p.astype(np.float32) for p in probabilities], references,
                         args.min_sizes, args.max_holes, args.grow, args.metric)
    search_s = time.perf_counter() - start
    key = MetadataCatalog.get(args.dataset).get("ctc_dataset", None) or args.dataset
    best = result["best"]
    result.update({
        "dataset": args.dataset, "images": len(dicts), "inference_s": inference_s, "search_s": search_s,
        "config": {"MODEL.DENSE.POSTPROCESS_PER_DATASET": [[key, best["min_size"], best["max_hole"]]],
                   "MODEL.DENSE.GROW_INTO_BOUNDARY": best["grow"]},
    })
    print(f"{'min_size':>8} {'max_hole':>8} {'grow':>4} {'SEG':>7} {'DET':>7} {'OP_CSB':>7}")
    for row in result["rows"]:
        print(f"{row['min_size']:>8} {row['max_hole']:>8} {row['grow']:>4} "
              + " ".join(f"{row[k]:7.4f}" for k in ("SEG", "DET", "OP_CSB")))
    print(f"best by {result['metric']}: MODEL.DENSE.POSTPROCESS_PER_DATASET "
          f"\"[['{key}', {best['min_size']}, {best['max_hole']}]]\" MODEL.DENSE.GROW_INTO_BOUNDARY {best['grow']}")
    if args.json:
        atomic_save_json(args.json, result)
    return 0

