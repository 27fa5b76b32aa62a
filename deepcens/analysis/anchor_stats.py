"""Instance sizes of a dataset vs. the anchors of a config: which objects can the RPN reach?

    deepcens anchors --json datasets/EVICAN/annotations/instances_train2019.json --out out/anchors
    deepcens anchors --dataset evican_train_nucleus --config-file configs/evican_nucleus.yaml --out out/anchors

(``tools/anchor_stats.py`` takes the same arguments.) Writes to ``--out``: ``sizes_<class>.png``
(histogram of sqrt(box area) per class with the anchor sizes drawn in), ``anchor_stats.json``
and ``anchor_stats.md``. For every anchor set (each ``--config-file``, the DeepCeNS paper's cell
and nucleus lists with both ``FLAT_SIZES_MAPPING`` choices, detectron2's default) it reports
the share of ground-truth boxes that *no* anchor reaches at IoU >= 0.5 (and >= 0.7, the RPN's
foreground threshold), computed exactly over the anchor grid by
:func:`deepcens.modeling.anchors.best_anchor_iou`. Boxes are measured in the network's input
frame (``--resize`` or the config's ``INPUT.RESIZE_EXACT``; DeepCeNS resizes to 1024x1024),
since anchors live there. Suggested sizes are quantiles of sqrt(box area) per class.
See docs/anchors.md.
"""
from __future__ import annotations

import argparse
import io
import os
import re

import numpy as np
import torch

from deepcens.errors import DeepcensInputError
from deepcens.modeling.anchors import anchor_level_sizes, best_anchor_iou
from deepcens.utils.atomic import atomic_save_bytes, atomic_save_json, atomic_write

PAPER_CELL = [2, 6, 17, 31, 64, 127, 256, 512, 1024]  # DeepCeNS VI-A / VI-C
PAPER_NUCLEUS = [2, 6, 8, 12, 17, 24, 31, 64, 127, 256]  # DeepCeNS VI-B
PAPER_RATIOS = [0.25, 0.5, 1.0, 2.0, 4.0]  # DeepCeNS VI
QUANTILES = (1, 5, 25, 50, 75, 95, 99)


def load_json_boxes(json_file: str) -> tuple[list[dict], list[str]]:
    """Per-image ``{"height", "width", "boxes" (N,4 XYXY), "classes" (N,)}`` from a COCO json.

    ``bbox`` is used when present, else derived from the polygon / RLE ``segmentation``
    (EVICAN2 files carry polygons only).
    """
    from deepcens.data.evican import check_segmentation
    from deepcens.data.io import read_json

    data = read_json(json_file)
    if not isinstance(data, dict) or not all(isinstance(data.get(k), list) for k in ("images", "annotations", "categories")):
        raise DeepcensInputError(json_file, "not a COCO instances json (needs lists 'images', 'annotations', 'categories')")
    try:
        categories = sorted(data["categories"], key=lambda c: c["id"])
        class_index = {c["id"]: i for i, c in enumerate(categories)}
        names = [str(c["name"]) for c in categories]
        images = {im["id"]: {"height": int(im["height"]), "width": int(im["width"]), "boxes": [], "classes": []}
                  for im in data["images"]}
    except (KeyError, TypeError, ValueError) as exc:
        raise DeepcensInputError(json_file, f"category or image entry without id/name/height/width ({exc})") from None
    for ann in data["annotations"]:
        label = f"annotation {ann.get('id', '?')}" if isinstance(ann, dict) else "annotation"
        if not isinstance(ann, dict) or ann.get("image_id") not in images:
            raise DeepcensInputError(json_file, f"{label} names a missing image")
        if ann.get("category_id") not in class_index:
            raise DeepcensInputError(json_file, f"{label} has unknown category_id {ann.get('category_id')!r}")
        image = images[ann["image_id"]]
        if isinstance(ann.get("bbox"), list) and len(ann["bbox"]) == 4:
            x, y, w, h = (float(v) for v in ann["bbox"])
        elif "segmentation" in ann:
            checked = check_segmentation(ann["segmentation"], image["height"], image["width"])
            if isinstance(checked, str):
                raise DeepcensInputError(json_file, f"{label}: {checked}")
            x, y, w, h = checked[1]
        else:
            raise DeepcensInputError(json_file, f"{label} has neither bbox nor segmentation")
        image["boxes"].append([x, y, x + w, y + h])
        image["classes"].append(class_index[ann["category_id"]])
    return list(images.values()), names


def load_dataset_boxes(dataset_name: str) -> tuple[list[dict], list[str]]:
    """The same per-image records from a registered detectron2 dataset (R-CNN or label-image dicts)."""
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.structures import BoxMode

    from deepcens.data.io import read_label
    from deepcens.postprocess.instances import label_boxes

    if dataset_name not in DatasetCatalog.list():
        raise DeepcensInputError(None, f"dataset '{dataset_name}' is not registered")
    names = list(MetadataCatalog.get(dataset_name).get("thing_classes", ["object"]))
    images = []
    for record in DatasetCatalog.get(dataset_name):
        boxes, classes = [], []
        if "annotations" in record:
            for ann in record["annotations"]:
                boxes.append(BoxMode.convert(list(ann["bbox"]), ann["bbox_mode"], BoxMode.XYXY_ABS))
                classes.append(int(ann["category_id"]))
        elif record.get("label_file_name"):
            labels = read_label(record["label_file_name"], (record["height"], record["width"]))
            _, label_box = label_boxes(labels)
            boxes, classes = label_box.tolist(), [0] * len(label_box)
        images.append({"height": int(record["height"]), "width": int(record["width"]), "boxes": boxes, "classes": classes})
    return images, names


def anchor_generator_for(cfg):
    """The RPN anchor generator a config builds, over its RPN input levels (strides from ``pN`` names)."""
    from detectron2.layers import ShapeSpec
    from detectron2.modeling.anchor_generator import build_anchor_generator

    strides = []
    for name in cfg.MODEL.RPN.IN_FEATURES:
        match = re.search(r"(\d+)$", name)
        if not match:
            raise ValueError(f"cannot infer the stride of RPN feature {name!r}")
        strides.append(2 ** int(match.group(1)))
    return build_anchor_generator(cfg, [ShapeSpec(channels=1, stride=s) for s in strides])


def _anchor_cfg(sizes=None, ratios=None, flat=None, mapping="all_levels"):
    from detectron2.config import get_cfg

    from deepcens.config import add_deepcens_config

    cfg = get_cfg()
    add_deepcens_config(cfg)
    cfg.MODEL.RPN.IN_FEATURES = ["p2", "p3", "p4", "p5", "p6"]
    if flat is not None:
        cfg.MODEL.ANCHOR_GENERATOR.NAME = "FlatSizesAnchorGenerator"
        cfg.MODEL.ANCHOR_GENERATOR.FLAT_SIZES = list(flat)
        cfg.MODEL.ANCHOR_GENERATOR.FLAT_SIZES_MAPPING = mapping
    if sizes is not None:
        cfg.MODEL.ANCHOR_GENERATOR.SIZES = sizes
    if ratios is not None:
        cfg.MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS = [list(ratios)]
    return cfg


def anchor_sets(config_files: list[str], opts: list[str]) -> dict:
    """Name -> (anchor generator, input size or None) for the configs and the reference sets."""
    from deepcens.engine.setup import load_config

    result = {}
    for path in config_files:
        cfg = load_config(path, opts)
        resize = tuple(int(v) for v in cfg.INPUT.RESIZE_EXACT) or None
        result[os.path.splitext(os.path.basename(path))[0]] = (anchor_generator_for(cfg), resize)
    for name, flat in (("paper_cell", PAPER_CELL), ("paper_nucleus", PAPER_NUCLEUS)):
        for mapping, suffix in (("all_levels", ""), ("split", "_split")):
            generator = anchor_generator_for(_anchor_cfg(flat=flat, ratios=PAPER_RATIOS, mapping=mapping))
            result[name + suffix] = (generator, None)
    result["detectron2_default"] = (anchor_generator_for(
        _anchor_cfg(sizes=[[32], [64], [128], [256], [512]], ratios=[0.5, 1.0, 2.0])), None)
    return result


def rescale(images: list[dict], resize: tuple[int, int] | None) -> list[dict]:
    """Boxes and image sizes in the network's input frame (``resize`` = (H, W), None = original)."""
    out = []
    for image in images:
        boxes = np.asarray(image["boxes"], dtype=np.float64).reshape(-1, 4)
        height, width = image["height"], image["width"]
        if resize:
            sy, sx = resize[0] / height, resize[1] / width
            boxes = boxes * np.array([sx, sy, sx, sy])
            height, width = resize
        out.append({"height": height, "width": width, "boxes": boxes,
                    "classes": np.asarray(image["classes"], dtype=np.int64)})
    return out


def suggest_sizes(sqrt_areas: np.ndarray, count: int) -> list[int]:
    """``count`` anchor sizes at evenly spaced quantiles of sqrt(box area) (rounded, distinct)."""
    if not len(sqrt_areas):
        return []
    levels = (np.arange(count) + 0.5) / count
    return sorted({max(1, int(round(v))) for v in np.quantile(sqrt_areas, levels)})


def compute_stats(images: list[dict], names: list[str], generators: dict, num_sizes: int) -> dict:
    """Size statistics per class and, per anchor set, the share of boxes no anchor reaches."""
    boxes = np.concatenate([im["boxes"] for im in images]) if images else np.zeros((0, 4))
    classes = np.concatenate([im["classes"] for im in images]) if images else np.zeros(0, np.int64)
    sqrt_area = np.sqrt(np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None))
    stats: dict = {"num_images": len(images), "num_instances": int(len(boxes)), "classes": {}, "anchor_sets": {}}
    for index, name in enumerate(names):
        values = sqrt_area[classes == index]
        stats["classes"][name] = {
            "count": int(len(values)),
            "sqrt_area_quantiles": {f"p{q}": round(float(np.percentile(values, q)), 2) for q in QUANTILES} if len(values) else {},
            "suggested_sizes": suggest_sizes(values, num_sizes),
        }
    stats["suggested_sizes_all"] = suggest_sizes(sqrt_area, num_sizes)
    area_ranges = {"small": (0, 32 ** 2), "medium": (32 ** 2, 96 ** 2), "large": (96 ** 2, float("inf"))}  # COCO
    for set_name, generator in generators.items():
        best = [best_anchor_iou(torch.as_tensor(im["boxes"]), (im["height"], im["width"]), generator).numpy()
                for im in images]
        best = np.concatenate(best) if best else np.zeros(0)

        def shares(mask: np.ndarray) -> dict:
            chosen = best[mask]
            if not len(chosen):
                return {"count": 0}
            return {"count": int(len(chosen)), "unreachable_iou50": round(float((chosen < 0.5).mean()), 4),
                    "unreachable_iou70": round(float((chosen < 0.7).mean()), 4),
                    "median_best_iou": round(float(np.median(chosen)), 4)}

        entry = shares(np.ones(len(best), bool))
        entry["sizes_per_level"] = anchor_level_sizes(generator)
        entry["anchors_per_location"] = list(generator.num_anchors)
        entry["per_class"] = {name: shares(classes == i) for i, name in enumerate(names)}
        entry["per_area"] = {key: shares((sqrt_area ** 2 >= lo) & (sqrt_area ** 2 < hi)) for key, (lo, hi) in area_ranges.items()}
        stats["anchor_sets"][set_name] = entry
    return stats


def plot_histograms(images: list[dict], names: list[str], stats: dict, out_dir: str) -> list[str]:
    """One PNG per class: log-binned histogram of sqrt(box area) with each anchor set's sizes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    boxes = np.concatenate([im["boxes"] for im in images]) if images else np.zeros((0, 4))
    classes = np.concatenate([im["classes"] for im in images]) if images else np.zeros(0, np.int64)
    sqrt_area = np.sqrt(np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None))
    written = []
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for index, name in enumerate(names):
        values = sqrt_area[(classes == index) & (sqrt_area > 0)]
        sets = list(stats["anchor_sets"].items())
        figure, (axis, strip) = plt.subplots(
            2, 1, figsize=(7, 4 + 0.25 * len(sets)), sharex=True,
            gridspec_kw={"height_ratios": [4, 0.3 * len(sets) + 0.2]})
        bins = np.logspace(0, np.log10(max(2048, values.max() if len(values) else 2)), 50)
        axis.hist(values, bins=bins, color="0.6")
        axis.set_xscale("log")
        axis.set_ylabel("instances")
        axis.set_title(f"{name}: {len(values)} instances; anchor sizes of each set below")
        for row, (set_name, entry) in enumerate(sets):  # one row of anchor-size ticks per set
            sizes = sorted({s for lvl in entry["sizes_per_level"] for s in lvl})
            strip.plot(sizes, [row] * len(sizes), "|", markersize=12, markeredgewidth=2,
                       color=colours[row % len(colours)])
        strip.set_yticks(range(len(sets)), [n for n, _ in sets], fontsize=7)
        strip.set_ylim(-0.7, len(sets) - 0.3)
        strip.invert_yaxis()
        strip.set_xlabel("sqrt(box area) in the input frame [px]")
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
        plt.close(figure)
        path = os.path.join(out_dir, f"sizes_{re.sub(r'[^A-Za-z0-9_.-]+', '_', name)}.png")
        atomic_save_bytes(path, buffer.getvalue())
        written.append(path)
    return written


def markdown_table(stats: dict) -> str:
    """The anchor-set and per-class tables of ``stats`` as markdown."""
    lines = [f"Input frame: {stats['input_frame']}; {stats['num_images']} images, {stats['num_instances']} instances.", "",
             "| anchor set | sizes per level | anchors/loc | no anchor IoU>=0.5 | no anchor IoU>=0.7 | median best IoU | per class (IoU>=0.5 missed) |",
             "|---|---|---|---|---|---|---|"]
    for name, e in stats["anchor_sets"].items():
        per_class = ", ".join(f"{c}: {v.get('unreachable_iou50', '-')}" for c, v in e["per_class"].items())
        levels = e["sizes_per_level"]
        sizes = f"all levels: {levels[0]}" if all(lvl == levels[0] for lvl in levels) else str(levels)
        lines.append(f"| {name} | {sizes} | {e['anchors_per_location'][0]} | {e.get('unreachable_iou50', '-')} "
                     f"| {e.get('unreachable_iou70', '-')} | {e.get('median_best_iou', '-')} | {per_class} |")
    lines += ["", "| class | instances | sqrt(area) p1 / p50 / p99 | suggested sizes |", "|---|---|---|---|"]
    for name, c in stats["classes"].items():
        q = c["sqrt_area_quantiles"]
        lines.append(f"| {name} | {c['count']} | {q.get('p1', '-')} / {q.get('p50', '-')} / {q.get('p99', '-')} | {c['suggested_sizes']} |")
    return "\n".join(lines) + "\n"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``deepcens anchors`` / ``tools/anchor_stats.py``."""
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--json", help="COCO instances json (bbox or polygon/RLE segmentation)")
    source.add_argument("--dataset", help="registered detectron2 dataset name, e.g. evican_train_cell")
    parser.add_argument("--config-file", action="append", default=[], help="config whose anchors to check (repeatable)")
    parser.add_argument("--resize", type=int, nargs=2, metavar=("H", "W"), default=None,
                        help="input frame (default: the first config's INPUT.RESIZE_EXACT, else original size)")
    parser.add_argument("--num-sizes", type=int, default=9, help="how many anchor sizes to suggest per class")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("opts", nargs=argparse.REMAINDER, default=[], help="KEY VALUE config overrides")


def run(args: argparse.Namespace) -> int:
    """Compute the statistics, write the histograms, ``anchor_stats.json`` / ``.md``; print the table."""
    import deepcens  # noqa: F401  (registers datasets and the anchor generator)

    generators = anchor_sets(args.config_file, args.opts)
    resize = tuple(args.resize) if args.resize else next((r for _, r in generators.values() if r), None)
    images, names = load_json_boxes(args.json) if args.json else load_dataset_boxes(args.dataset)
    images = rescale(images, resize)
    stats = compute_stats(images, names, {k: g for k, (g, _) in generators.items()}, args.num_sizes)
    stats["input_frame"] = f"resized to {resize[0]}x{resize[1]}" if resize else "original image size"
    stats["source"] = args.json or args.dataset
    os.makedirs(args.out, exist_ok=True)
    stats["histograms"] = plot_histograms(images, names, stats, args.out)
    atomic_save_json(os.path.join(args.out, "anchor_stats.json"), stats)
    table = markdown_table(stats)
    with atomic_write(os.path.join(args.out, "anchor_stats.md"), "w", encoding="utf-8") as handle:
        handle.write(table)
    print(table)
    return 0
