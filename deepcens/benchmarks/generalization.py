"""Cross-data-set generalisation: score one trained model on sequences it never saw.

Frames of the training sequence are nearly the same images as its validation frames, so a
model can look good there and fail on the next microscope. This benchmark predicts whole CTC
sequences with ``deepcens predict --ctc-format`` and scores each result folder against its
``_GT`` folder with the CTC measures (equal to py-ctcmetrics), adding the ratio of predicted
to reference objects per frame (over-segmentation shows there first)::

    deepcens benchmark generalization --config-file configs/xbnet/xbnet_sim_cpu.yaml \\
        --weights output/xbnet_sim_cpu/model_final.pth --ctc-root DIR \\
        --test Fluo-N2DH-SIM+/01:50:65 --test Fluo-N2DH-GOWT1/01 --test Fluo-C2DL-MSC/01

``--train`` trains the config first (``deepcens train``) and takes its ``model_final.pth``;
the rows of docs/benchmarks.md come from this command.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

import numpy as np

NAME = "generalization"
HELP = "score a trained model on whole CTC sequences it was not trained on (SEG, DET, objects per frame)"


def parse_test(text: str) -> tuple[str, int | None, int | None]:
    """``DATASET/SEQ[:START:STOP]`` -> (relative sequence folder, start, stop)."""
    parts = text.split(":")
    if len(parts) not in (1, 3) or not parts[0]:
        raise ValueError(f"--test {text!r} must be DATASET/SEQ or DATASET/SEQ:START:STOP")
    if len(parts) == 1:
        return parts[0], None, None
    return parts[0], int(parts[1]), int(parts[2])


def score_sequence(cfg, sequence_dir: str, output_dir: str, start: int | None = None, stop: int | None = None,
                   score_threshold: float = 0.5) -> dict:
    """Predict one CTC sequence into ``output_dir`` and score it against ``<sequence>_GT``."""
    from deepcens.evaluation.ctc_measures import evaluate_ctc_folders
    from deepcens.predict import predict

    frames = None if start is None else f"{start}:{stop}"
    began = time.perf_counter()
    predict(cfg, [sequence_dir], output_dir, ctc_format=True, frames=frames, score_threshold=score_threshold,
            progress=False)
    seconds = time.perf_counter() - began
    res_dirs = [os.path.join(root, d) for root, dirs, _ in os.walk(output_dir) for d in dirs if d.endswith("_RES")]
    if len(res_dirs) != 1:
        raise RuntimeError(f"expected one CTC result folder under {output_dir}, found {res_dirs}")
    chosen = None if start is None else range(start, stop)
    measures = evaluate_ctc_folders(sequence_dir.rstrip("/\\") + "_GT", res_dirs[0], chosen)
    ratios = [r["num_pred"] / r["num_ref_det"] for r in measures["per_frame"] if r.get("num_ref_det")]
    return {
        "SEG": measures["SEG"], "DET": measures["DET"], "OP_CSB": measures["OP_CSB"],
        "frames": len(measures["per_frame"]),
        "pred_per_ref": float(np.mean(ratios)) if ratios else float("nan"),
        "predict_seconds": round(seconds, 1),
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config-file", required=True, help="the model's config")
    parser.add_argument("--weights", default="", help="trained weights (model_final.pth); or --train")
    parser.add_argument("--train", action="store_true", help="train the config first (deepcens train)")
    parser.add_argument("--ctc-root", default="", help="folder holding the CTC data sets (default: the CTC root)")
    parser.add_argument("--test", action="append", default=[], metavar="DATASET/SEQ[:START:STOP]",
                        help="a test sequence relative to --ctc-root, optionally a frame range (repeatable)")
    parser.add_argument("--output", default="output/generalization", help="folder for the runs and predictions")
    parser.add_argument("--score-threshold", type=float, default=0.5, help="minimum instance score written")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE ... (after --)")


def run(args: argparse.Namespace) -> dict:
    from deepcens.data.ctc import default_ctc_root
    from deepcens.engine.setup import load_config
    from deepcens.errors import DeepcensInputError

    opts = [o for o in args.opts if o != "--"]
    ctc_root = args.ctc_root or default_ctc_root()
    tests = [parse_test(t) for t in args.test]
    if not tests:
        raise DeepcensInputError(None, "give at least one --test DATASET/SEQ")
    for folder, _, _ in tests:
        if not os.path.isdir(os.path.join(ctc_root, folder)):
            raise DeepcensInputError(os.path.join(ctc_root, folder), "test sequence folder not found")
    result: dict = {"config": args.config_file, "opts": opts}
    weights = args.weights
    if args.train:
        run_dir = os.path.join(args.output, "train")
        env = dict(os.environ, DEEPCENS_CTC_ROOT=ctc_root)
        began = time.perf_counter()
        subprocess.run([sys.executable, "-m", "deepcens.cli", "train", "--config-file", args.config_file,
                        "OUTPUT_DIR", run_dir, *opts], check=True, env=env)
        result["train_seconds"] = round(time.perf_counter() - began, 1)
        weights = os.path.join(run_dir, "model_final.pth")
    if not weights:
        raise DeepcensInputError(None, "give --weights or --train")
    cfg = load_config(args.config_file, [*opts, "MODEL.WEIGHTS", weights])
    result["weights"] = weights
    result["tests"] = {}
    for folder, start, stop in tests:
        name = folder if start is None else f"{folder}:{start}:{stop}"
        out = os.path.join(args.output, "predictions", folder.replace("/", "_") + ("" if start is None else f"_{start}_{stop}"))
        result["tests"][name] = score_sequence(cfg, os.path.join(ctc_root, folder), out, start, stop,
                                               args.score_threshold)
    return result
