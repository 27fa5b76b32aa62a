"""Write the deterministic synthetic microscopy data (``deepcens synthetic --out DIR``).

Creates ``DIR/evican`` (EVICAN2-shaped COCO set: train / val / eval easy-medium-difficult,
polygons only, cells + nuclei, some background images, 8-bit PNG and 16-bit TIFF mixed) and
``DIR/ctc/Synthetic-Cells`` (a CTC time-lapse with SEG + TRA ground truth and a division).
The same seed and arguments give byte-identical files. Prints a JSON summary.
"""
from __future__ import annotations

import argparse
import json
import time

from deepcens.errors import DeepcensInputError


def _at_least(minimum: int):
    def parse(text: str) -> int:
        value = int(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value
    return parse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``synthetic`` options."""
    parser.add_argument("--out", default="datasets/synthetic",
                        help="output folder (datasets/synthetic is where the synthetic_evican datasets are registered)")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument("--images", type=_at_least(1), default=24,
                        help="number of train images; val and each eval difficulty get max(2, N // 3)")
    parser.add_argument("--size", type=_at_least(32), default=128, help="image side in pixels")
    parser.add_argument("--ctc-frames", type=int, default=12,
                        help="frames of the CTC time-lapse (0 = none, otherwise >= 2)")


def run(args: argparse.Namespace) -> int:
    """Generate the data and print the JSON summary."""
    from deepcens.data.synthetic import make_synthetic

    if args.ctc_frames < 0 or args.ctc_frames == 1:
        raise DeepcensInputError(None, f"--ctc-frames must be 0 or >= 2, got {args.ctc_frames}")
    others = max(2, args.images // 3)
    start = time.perf_counter()
    result = make_synthetic(args.out, seed=args.seed, num_train=args.images, num_val=others,
                            num_eval=others, size=args.size, ctc_frames=args.ctc_frames)
    summary = {
        "out": args.out,
        "seconds": round(time.perf_counter() - start, 2),
        "annotations": result["annotations"],
        "num_images": {split: len(paths) for split, paths in result["images"].items()},
        "num_annotations": result["num_annotations"],
    }
    if "ctc_sequence" in result:
        seq = result["ctc_sequence"]
        summary["ctc"] = {"root": result["ctc"], "num_tracks": seq["num_tracks"], "divisions": seq["divisions"]}
    print(json.dumps(summary, indent=2))
    return 0
