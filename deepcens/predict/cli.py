"""Run a trained model over microscopy images and write label images (``deepcens predict``).

    deepcens predict --config-file CFG --input PATH [--input PATH ...] --output DIR [options] [KEY VALUE ...]

Each ``--input`` is one image file (8/16-bit, float, 1-4 channels), folder, glob pattern,
multi-page TIFF stack or Cell Tracking Challenge sequence folder (``tTTT.tif`` frames); repeat
the flag for several. Everything after the options is ``KEY VALUE`` config overrides (``--``
may separate them). Outputs under ``--output``:

- ``labels/<name>.tif``: uint16 label image of the input's height x width (0 background,
  1 = highest score; stacks give one multi-page TIFF, sequences ``labels/<seq>/tTTT.tif``),
  with ``<name>.classes.json`` (label -> class) for multi-class models;
- ``<seq>_RES/maskTTT.tif`` + ``res_track.txt`` with ``--ctc-format`` (labels unique over the
  sequence, every object its own one-frame track);
- ``overlays/...png`` with ``--overlays``; ``coco_results.json`` with ``--coco-json``;
- ``summary.csv``: one row per image; ``predict_run.json``: the run's state and files.

The run never writes over an input or a file it did not create, locks the folder against a
second run, and marks itself incomplete if stopped. All files are written atomically.
"""
from __future__ import annotations

import argparse
import os
import re

from deepcens.engine.weights import ALLOW_OPTION
from deepcens.errors import DeepcensInputError

PARSE_INTERMIXED = True  # overrides may come before or after the options
CONFIG_KEY = re.compile(r"^[A-Z][A-Z0-9_]*(\.[A-Z0-9_]+)+$")
DEVICE = re.compile(r"cpu|cuda(:\d+)?")


def _device(text: str) -> str:
    if not DEVICE.fullmatch(text):
        raise argparse.ArgumentTypeError(f"{text!r} is not cpu, cuda or cuda:N")
    return text


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``predict`` options (shared by tools/predict.py and ``deepcens predict``)."""
    parser.add_argument("--config-file", required=True, metavar="FILE", help="model config (yaml)")
    parser.add_argument("--input", required=True, action="append", metavar="PATH",
                        help="an image file, folder, glob pattern, TIFF stack or CTC sequence folder; repeatable")
    parser.add_argument("--output", required=True, metavar="DIR", help="output folder")
    parser.add_argument("--batch-size", type=int, default=1, help="images per model call")
    parser.add_argument("--device", default=None, type=_device, help="cpu, cuda or cuda:N (default: MODEL.DEVICE)")
    parser.add_argument("--score-threshold", type=float, default=0.5,
                        help="minimum score in [0, 1] for label images, overlays and the CSV (the COCO json keeps all)")
    parser.add_argument("--overlays", action="store_true", help="write overlay PNGs (contours by class, scores)")
    parser.add_argument("--coco-json", action="store_true", help="write COCO-style results (coco_results.json)")
    parser.add_argument("--ctc-format", action="store_true",
                        help="write sequences and stacks as CTC results (<seq>_RES/maskTTT.tif + res_track.txt)")
    parser.add_argument("--frames", default="", metavar="START:STOP",
                        help="only these frame numbers / stack pages (python slice, e.g. 0:3)")
    parser.add_argument("--tile-size", type=int, default=0,
                        help="sliding-window tile side (>= 64) for images larger than it (0 = whole images)")
    parser.add_argument("--tile-overlap", type=float, default=0.25, help="overlap between tiles (fraction, <= 0.75)")
    parser.add_argument("--class-names", default="", help="comma-separated class names for overlays and the CSV")
    parser.add_argument("--dataset", default="", help="registered dataset whose metadata (class names, decoder "
                        "settings) applies")
    parser.add_argument("--skip-bad", action="store_true",
                        help="skip unreadable images (listed at the end and in predict_run.json) instead of stopping")
    parser.add_argument(ALLOW_OPTION, action="store_true",
                        help="run although the weights leave model parameters random (no or mismatching checkpoint)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("opts", nargs="*", default=[], metavar="KEY VALUE",
                        help="config overrides, e.g. MODEL.WEIGHTS output/model_final.pth (after -- if a value "
                        "starts with -)")


def config_options(opts: list[str] | None) -> list[str]:
    """The trailing ``KEY VALUE`` overrides, checked: a stray path means a missing ``--input``."""
    opts = list(opts or [])
    if opts and opts[0] == "--":
        opts = opts[1:]
    for key in opts[::2]:
        if not CONFIG_KEY.match(key):
            hint = " (give each input with its own --input)" if os.path.exists(key) else ""
            raise DeepcensInputError(None, f"{key!r} is not a config KEY (KEY VALUE overrides follow the options){hint}")
    if len(opts) % 2:
        raise DeepcensInputError(None, f"config override {opts[-1]} has no value")
    return opts


def run_predict(args: argparse.Namespace) -> dict:
    """Load the config (with the overrides) and predict; returns :func:`predict`'s summary."""
    import deepcens  # noqa: F401  (registrations)
    from deepcens.engine.setup import load_config
    from deepcens.predict.runner import predict

    opts = config_options(args.opts)
    if args.device:
        opts += ["MODEL.DEVICE", args.device]
    cfg = load_config(args.config_file, opts)
    return predict(cfg, args.input, args.output, batch_size=args.batch_size, score_threshold=args.score_threshold,
                   overlays=args.overlays, coco_json=args.coco_json, ctc_format=args.ctc_format,
                   frames=args.frames or None, tile_size=args.tile_size, tile_overlap=args.tile_overlap,
                   class_names=args.class_names, dataset_name=args.dataset or None,
                   progress=False if args.no_progress else None, allow_random_weights=args.allow_random_weights,
                   skip_bad=args.skip_bad)


def run(args: argparse.Namespace) -> int:
    """Predict and print one summary line (and the skipped inputs); returns the exit status."""
    import sys

    result = run_predict(args)
    note = " (random weights)" if result["random_weights"] else ""
    for problem in result["skipped"]:
        print(f"skipped: {problem}", file=sys.stderr)
    skipped = f", {len(result['skipped'])} unreadable input(s) skipped" if result["skipped"] else ""
    print(f"{result['images']} images, {result['instances']} instances{note}{skipped}; outputs in "
          f"{os.path.abspath(result['output_dir'])}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``tools/predict.py``: exit 0 on success, 2 with a one-line error on bad input, 130 on Ctrl-C."""
    from deepcens.cli import run_command

    return run_command("predict", list(argv) if argv is not None else __import__("sys").argv[1:])
