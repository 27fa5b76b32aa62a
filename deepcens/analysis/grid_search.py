"""Grid-search the tertiary decoder's thresholds on a validation split (XB-Net Section 5.5).

The paper picks the small-object and small-hole area thresholds per dataset "by a coarse grid
search ... using the official evaluation tools". This runs a trained dense model once over a
registered dataset, keeps its softmax scores (the meta-architecture's ``output_probabilities``),
decodes them with the decoder function directly for every combination of
``--min-sizes`` x ``--max-holes`` x ``--grow`` x ``--min-scores`` (``MODEL.DENSE.MIN_SCORE``)
and scores each with the CTC measures of ``deepcens.evaluation.ctc_measures`` (SEG over the
labelled reference objects, DET on the TRA markers when the dicts have them). It prints the
table and the best setting as the config line to use::

    deepcens grid-search --config-file configs/xbnet/xbnet_sim_cpu.yaml \\
        --dataset ctc_sim_val --min-sizes 0,20,50,100 --max-holes 0,20,50 \\
        --json output/grid.json MODEL.WEIGHTS output/model_final.pth
    -> MODEL.DENSE.POSTPROCESS_PER_DATASET [["Fluo-N2DH-SIM+", 50, 20]]

With ``--dataset`` repeated it picks one global setting, the best mean over the data sets
(:func:`grid_search_datasets`): thresholds for data the model has not seen.
"""
from __future__ import annotations

import argparse
import itertools
import logging
import math
import os
import re
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


def _float_list(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if not values or min(values) < 0 or max(values) > 1:
        raise argparse.ArgumentTypeError(f"expected scores in [0, 1], got {text!r}")
    return values


def _resolve_metric(metric: str, has_markers: bool) -> str:
    if metric == "auto":
        metric = "OP_CSB" if has_markers else "SEG"
    if metric not in ("SEG", "DET", "OP_CSB"):
        raise ValueError(f"metric must be SEG, DET, OP_CSB or auto, got {metric!r}")
    return metric


_REQUIREMENT = re.compile(r"^(?P<dataset>.+):(?P<key>SEG|DET|OP_CSB|pred_per_ref)(?P<op>>=|<=)(?P<value>[0-9.]+)$")


def parse_requirement(text: str) -> tuple[str, str, str, float]:
    """``DATASET:KEY>=VALUE`` or ``DATASET:KEY<=VALUE`` (KEY: SEG, DET, OP_CSB, pred_per_ref)."""
    match = _REQUIREMENT.match(text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"expected DATASET:KEY>=VALUE or DATASET:KEY<=VALUE with KEY one of "
                                         f"SEG, DET, OP_CSB, pred_per_ref, got {text!r}")
    try:
        value = float(match["value"])
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: {match['value']!r} is not a number") from None
    return match["dataset"], match["key"], match["op"], value


def _meets(row: dict, requirements: Sequence[tuple[str, str, str, float]], single: str | None) -> bool:
    for dataset, key, op, value in requirements:
        measures = row if single is not None else row["datasets"][dataset]
        measured = measures[key]
        if math.isnan(measured) or (measured < value if op == ">=" else measured > value):
            return False
    return True


def _best(rows: list[dict], metric: str, requirements: Sequence[tuple[str, str, str, float]] = (),
          single: str | None = None) -> dict:
    scored = [r for r in rows if not math.isnan(r[metric])]
    if not scored:
        raise ValueError(f"no reference objects to compute {metric}")
    eligible = [r for r in scored if _meets(r, requirements, single)]
    if not eligible:
        wanted = ", ".join(f"{d}:{k}{op}{v}" for d, k, op, v in requirements)
        raise ValueError(f"no setting of the grid meets {wanted}")
    # ties go to the mildest setting (smallest thresholds)
    return max(eligible, key=lambda r: (r[metric], -r["min_size"], -r["max_hole"], -r["grow"], -r["min_score"]))


def _check_requirements(requirements, names: Sequence[str]) -> None:
    for dataset, *_ in requirements:
        if dataset not in names:
            raise ValueError(f"requirement on {dataset!r}, which is not one of the searched data sets {list(names)}")


def grid_search(
    probabilities: Sequence[np.ndarray],
    references: Sequence[tuple[np.ndarray | None, np.ndarray | None]],
    min_sizes: Iterable[int],
    max_holes: Iterable[int],
    grows: Iterable[int] = (0,),
    metric: str = "auto",
    min_scores: Iterable[float] = (0.0,),
    requirements: Sequence[tuple[str, str, str, float]] = (),
    name: str = "dataset",
) -> dict:
    """Score every (min_size, max_hole, grow, min_score) setting; returns ``{"metric", "rows", "best"}``.

    ``probabilities``: per image ``(3, H, W)`` tertiary scores; ``references``: per image
    (SEG labels or None, TRA markers or None). ``min_scores``: the decoder's
    ``MODEL.DENSE.MIN_SCORE`` (objects whose mean cell probability is lower are dropped).
    ``metric``: SEG | DET | OP_CSB | auto (OP_CSB when some image has TRA markers, else SEG).
    Each row also has ``pred_per_ref``: the mean over frames of predicted / reference objects.
    ``requirements``: ``(name, key, ">=" | "<=", value)`` floors / ceilings (:func:`parse_requirement`)
    a setting must meet to be chosen, ``name`` being this data set's name.
    """
    from deepcens.data.targets import CELL
    from deepcens.evaluation.ctc_measures import frame_counts, sum_counts
    from deepcens.postprocess.decoders import drop_low_score_objects, object_scores, tertiary_labels

    if len(probabilities) != len(references) or not len(probabilities):
        raise ValueError("need one reference per probability map (and at least one image)")
    metric = _resolve_metric(metric, any(m is not None for _, m in references))
    min_scores = [float(v) for v in min_scores]
    rows = []
    for min_size, max_hole, grow in itertools.product(min_sizes, max_holes, grows):
        counts: dict[float, list] = {score: [] for score in min_scores}
        ratios: dict[float, list] = {score: [] for score in min_scores}
        for scores, (seg, markers) in zip(probabilities, references):
            scores = np.asarray(scores, dtype=np.float32)
            labels = tertiary_labels(scores, min_size, max_hole, grow)
            per_object = object_scores(labels, scores[CELL])
            for min_score in min_scores:
                frame, record = frame_counts(drop_low_score_objects(labels, per_object, min_score), seg, markers)
                counts[min_score].append(frame)
                if record.get("num_ref_det"):
                    ratios[min_score].append(record["num_pred"] / record["num_ref_det"])
        for min_score in min_scores:
            measures = sum_counts(counts[min_score]).measures()
            rows.append({"min_size": int(min_size), "max_hole": int(max_hole), "grow": int(grow),
                         "min_score": min_score, **{k: measures[k] for k in ("SEG", "DET", "OP_CSB")},
                         "pred_per_ref": float(np.mean(ratios[min_score])) if ratios[min_score] else float("nan")})
    _check_requirements(requirements, [name])
    return {"metric": metric, "rows": rows, "best": _best(rows, metric, requirements, name)}


def grid_search_datasets(
    per_dataset: dict[str, tuple[Sequence[np.ndarray], Sequence[tuple[np.ndarray | None, np.ndarray | None]]]],
    min_sizes: Iterable[int],
    max_holes: Iterable[int],
    grows: Iterable[int] = (0,),
    metric: str = "auto",
    min_scores: Iterable[float] = (0.0,),
    requirements: Sequence[tuple[str, str, str, float]] = (),
) -> dict:
    """One setting for several validation sets: the one with the best mean ``metric`` over them.

    ``per_dataset``: name -> (probabilities, references) as for :func:`grid_search`. Each
    data set counts once whatever its number of images (a set with many frames must not
    decide alone). Rows carry the mean (``SEG``, ``DET``, ``OP_CSB``, ``pred_per_ref``) and
    the per-set measures under ``datasets``. ``requirements``: per-set floors / ceilings a
    setting must meet to be chosen (e.g. keep one set's SEG >= 0.80), see :func:`parse_requirement`.
    """
    if not per_dataset:
        raise ValueError("need at least one data set")
    _check_requirements(requirements, list(per_dataset))
    has_markers = all(any(m is not None for _, m in refs) for _, refs in per_dataset.values())
    metric = _resolve_metric(metric, has_markers)
    min_sizes, max_holes, grows, min_scores = list(min_sizes), list(max_holes), list(grows), list(min_scores)
    results = {name: grid_search(probabilities, references, min_sizes, max_holes, grows, metric, min_scores)
               for name, (probabilities, references) in per_dataset.items()}
    rows = []
    for index, first in enumerate(next(iter(results.values()))["rows"]):
        per_set = {name: {k: result["rows"][index][k] for k in ("SEG", "DET", "OP_CSB", "pred_per_ref")}
                   for name, result in results.items()}
        row = {k: first[k] for k in ("min_size", "max_hole", "grow", "min_score")}
        for key in ("SEG", "DET", "OP_CSB", "pred_per_ref"):
            row[key] = float(np.mean([measures[key] for measures in per_set.values()]))  # nan if any set lacks it
        row["datasets"] = per_set
        rows.append(row)
    return {"metric": metric, "rows": rows, "best": _best(rows, metric, requirements)}


def load_dense_model(cfg) -> torch.nn.Module:
    """The model of ``cfg`` with ``MODEL.WEIGHTS``, in eval mode; refused unless it exposes
    ``output_probabilities(mapped_input)`` (softmax scores at the original image size, what its
    decoder receives), as ``DenseSegmentor`` does."""
    from detectron2.modeling import build_model

    from deepcens.engine.weights import load_inference_weights

    model = build_model(cfg)
    if not callable(getattr(model, "output_probabilities", None)):
        raise DeepcensInputError(None, f"MODEL.META_ARCHITECTURE {cfg.MODEL.META_ARCHITECTURE} gives no per-pixel "
                                 "probabilities (output_probabilities): the grid search needs a dense model")
    load_inference_weights(model, cfg.MODEL.WEIGHTS, allow_unsafe=cfg.RUN.ALLOW_UNSAFE_CHECKPOINTS)
    return model.eval()


def predict_probabilities(cfg, dataset_name: str,
                          model: torch.nn.Module | None = None) -> tuple[list[np.ndarray], list[dict]]:
    """Run the dense model of ``cfg`` (or ``model``, from :func:`load_dense_model`) over
    ``dataset_name``; keep every image's scores, as float16 to bound memory."""
    from detectron2.data import DatasetCatalog, build_detection_test_loader

    from deepcens.data.mappers import build_mapper

    model = model if model is not None else load_dense_model(cfg)
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
    parser.add_argument("--dataset", required=True, action="append",
                        help="registered validation dataset, e.g. ctc_sim_val; repeat it to pick one setting "
                             "for several data sets (best mean of the metric over them)")
    parser.add_argument("--min-sizes", type=_int_list, default=[0, 10, 20, 50, 100], help="comma-separated areas")
    parser.add_argument("--max-holes", type=_int_list, default=[0, 10, 20, 50, 100], help="comma-separated areas")
    parser.add_argument("--grow", type=_int_list, default=[0], help="comma-separated GROW_INTO_BOUNDARY values")
    parser.add_argument("--min-scores", type=_float_list, default=None,
                        help="comma-separated MIN_SCORE values (default: the config's MODEL.DENSE.MIN_SCORE)")
    parser.add_argument("--metric", default="auto", choices=["auto", "SEG", "DET", "OP_CSB"])
    parser.add_argument("--require", type=parse_requirement, action="append", default=[],
                        metavar="DATASET:KEY>=VALUE",
                        help="only settings meeting this on that data set may win, e.g. ctc_sim_val:SEG>=0.80 "
                             "or ctc_gowt1_split_train:pred_per_ref<=1.3 (repeatable)")
    parser.add_argument("--json", default="", help="write the table and best setting to this JSON file")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides, e.g. MODEL.WEIGHTS path")


def _config_lines(best: dict, key: str | None) -> dict:
    """The config values of the best setting: per data set ``key``, or the global defaults (key None)."""
    if key is None:
        config = {"MODEL.DENSE.MIN_OBJECT_SIZE": best["min_size"], "MODEL.DENSE.MAX_HOLE_SIZE": best["max_hole"]}
    else:
        config = {"MODEL.DENSE.POSTPROCESS_PER_DATASET": [[key, best["min_size"], best["max_hole"]]]}
    config.update({"MODEL.DENSE.GROW_INTO_BOUNDARY": best["grow"], "MODEL.DENSE.MIN_SCORE": best["min_score"]})
    return config


def run(args: argparse.Namespace) -> int:
    """Predict once per data set, score every setting, print the table and the best config line."""
    from detectron2.data import MetadataCatalog

    from deepcens.engine.setup import load_config

    import deepcens  # noqa: F401  (registrations)

    cfg = load_config(args.config_file, args.opts)
    if args.json:
        if os.path.isdir(args.json):
            raise DeepcensInputError(args.json, "--json names a folder; give a file name")
        check_output_folder(os.path.dirname(os.path.abspath(args.json)), "folder of --json")
    names = list(dict.fromkeys(args.dataset))
    try:
        _check_requirements(args.require, names)
    except ValueError as error:
        raise DeepcensInputError(None, f"--require: {error}") from None
    min_scores = args.min_scores if args.min_scores is not None else [float(cfg.MODEL.DENSE.MIN_SCORE)]
    start = time.perf_counter()
    per_dataset, images = {}, {}
    model = load_dense_model(cfg)  # once for every data set
    for name in names:
        probabilities, dicts = predict_probabilities(cfg, name, model)
        per_dataset[name] = (probabilities, [reference_labels(d) for d in dicts])
        images[name] = len(dicts)
    inference_s = time.perf_counter() - start
    start = time.perf_counter()
    if len(names) == 1:
        probabilities, references = per_dataset[names[0]]
        result = grid_search(probabilities, references, args.min_sizes, args.max_holes, args.grow, args.metric,
                             min_scores, args.require, names[0])
        key = MetadataCatalog.get(names[0]).get("ctc_dataset", None) or names[0]
    else:
        result = grid_search_datasets(per_dataset, args.min_sizes, args.max_holes, args.grow, args.metric,
                                      min_scores, args.require)
        key = None
    search_s = time.perf_counter() - start
    best = result["best"]
    result.update({"dataset": names[0] if len(names) == 1 else names, "images": sum(images.values()),
                   "images_per_dataset": images, "inference_s": inference_s, "search_s": search_s,
                   "config": _config_lines(best, key)})
    columns = ("SEG", "DET", "OP_CSB", "pred_per_ref")
    print(f"{'min_size':>8} {'max_hole':>8} {'grow':>4} {'min_score':>9} " + " ".join(f"{c:>12}" for c in columns)
          + ("   (means over " + ", ".join(names) + ")" if key is None else ""))
    for row in result["rows"]:
        print(f"{row['min_size']:>8} {row['max_hole']:>8} {row['grow']:>4} {row['min_score']:>9.2f} "
              + " ".join(f"{row[c]:12.4f}" for c in columns))
    print(f"best by {result['metric']}: " + " ".join(
        f"{k} \"{v}\"" if isinstance(v, list) else f"{k} {v}" for k, v in result["config"].items()))
    if args.json:
        atomic_save_json(args.json, result)
    return 0
