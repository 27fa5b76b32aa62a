"""Instance masks at scale: cropped masks against the dense ``N x H x W`` path.

``tools/benchmark.py instances [--cases 1024:100,2048:1000,8192:16000] [--object-size 20]``

For each case a synthetic field (``SIZE`` x ``SIZE``, ``COUNT`` ellipses of about
``--object-size`` pixels across on a jittered grid) is the ground truth; the prediction moves
every object by up to 2 pixels, drops 5% and adds 5% false objects. Each case runs in its own
process and times, with the peak resident memory above the two label images
(``/proc/self/status`` VmHWM, reset through ``/proc/self/clear_refs`` before each stage):

- ``round_trip``: predicted label image -> ``Instances`` -> label image;
- ``coco``: GT RLEs, predicted COCO results and segm AP (faster-coco-eval, maxDets = 2 x COUNT);
- ``ctc``: SEG / DET of the rendered label image against the GT.

The dense path (every mask a full-size bool plane, as the conversions worked before cropped
masks) runs the same stages where its masks fit ``--dense-limit-gb``.
``--save-fields DIR`` also writes the largest case's ``gt/field.tif`` and ``pred/field.tif``
for timing ``tools/evaluate.py --gt-labels DIR/gt --pred-labels DIR/pred``.
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import time

import numpy as np

NAME = "instances"
HELP = "label image -> Instances -> label image, COCO and CTC scoring: cropped vs dense masks (time, peak memory)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cases", default="1024:100,2048:1000,8192:16000",
                        help="comma-separated SIZE:COUNT fields (square, COUNT objects)")
    parser.add_argument("--object-size", type=int, default=20, help="object diameter in pixels")
    parser.add_argument("--dense-limit-gb", type=float, default=3.0,
                        help="run the dense path only where COUNT x SIZE^2 bytes of masks stay below this")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dense-field", default="", metavar="SIZE:COUNT",
                        help="also time a dense method on a SIZE x SIZE field: sliding-window probabilities of a "
                        "small random-weight XB-Net (512-pixel tiles), then the tertiary decoder on the "
                        "background / boundary / cell map of a GT field of COUNT objects")
    parser.add_argument("--save-fields", default="", metavar="DIR",
                        help="write the last case's GT and predicted label images as DIR/{gt,pred}/field.tif")


def synthetic_field(size: int, count: int, object_size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(GT, prediction) label images of ``count`` ellipses in a ``size`` x ``size`` field."""
    rng = np.random.default_rng(seed)
    per_row = int(np.ceil(np.sqrt(count)))
    pitch = size / per_row
    if pitch < object_size + 4:
        raise ValueError(f"{count} objects of {object_size} px do not fit a {size}x{size} field")
    dtype = np.uint16 if count * 1.1 < np.iinfo(np.uint16).max else np.uint32
    gt = np.zeros((size, size), dtype=dtype)
    pred = np.zeros((size, size), dtype=dtype)
    radius = object_size / 2.0
    slack = pitch - object_size - 4
    next_pred = 1
    for index in range(count):
        row, col = divmod(index, per_row)
        a, b = radius * rng.uniform(0.7, 1.0, 2)
        y = int(row * pitch + 2 + radius + rng.uniform(0, slack))
        x = int(col * pitch + 2 + radius + rng.uniform(0, slack))
        half = int(np.ceil(radius))
        yy, xx = np.mgrid[-half:half + 1, -half:half + 1]
        shape = (yy / a) ** 2 + (xx / b) ** 2 <= 1.0
        gt[y - half:y + half + 1, x - half:x + half + 1][shape] = index + 1
        if rng.random() < 0.05:
            continue  # missed object
        dy, dx = rng.integers(-2, 3, 2)
        pred[y + dy - half:y + dy + half + 1, x + dx - half:x + dx + half + 1][shape] = next_pred
        next_pred += 1
    for _ in range(int(0.05 * count)):  # false objects in the gaps between grid cells
        y, x = (rng.integers(0, per_row, 2) * pitch).astype(int)
        pred[y:y + 3, x:x + 3] = next_pred
        next_pred += 1
    return gt, pred


# ---- the dense path (full-size masks), kept as the reference the cropped masks replace ---------
def _dense_to_masks(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ids = np.unique(labels)
    ids = ids[ids > 0]
    return labels[None] == ids[:, None, None], np.ones(len(ids), dtype=np.float32)


def _dense_to_label_image(masks: np.ndarray, scores: np.ndarray) -> np.ndarray:
    labels = np.zeros(masks.shape[1:], dtype=np.uint16 if len(masks) < 65535 else np.uint32)
    order = np.argsort(-scores, kind="stable")
    masks = masks[order]
    covered = masks.any(0)
    labels[covered] = masks.argmax(0)[covered] + 1
    return labels


def _dense_rles(masks: np.ndarray) -> list[dict]:
    import pycocotools.mask as mask_util

    return [mask_util.encode(np.asfortranarray(m.astype(np.uint8))) for m in masks]


# ---- measuring ---------------------------------------------------------------------------------
def _status_kib(key: str) -> int:
    with open("/proc/self/status", encoding="ascii") as handle:
        for line in handle:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


class _Stage:
    """Wall time, CPU time (the machine may be shared) and peak resident memory (MiB above the
    start of the stage) of a block."""

    def __enter__(self) -> "_Stage":
        with open("/proc/self/clear_refs", "w", encoding="ascii") as handle:
            handle.write("5")  # resets VmHWM to the current resident size
        self.base = _status_kib("VmRSS")
        self.start, self.cpu_start = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc) -> None:
        self.seconds = round(time.perf_counter() - self.start, 3)
        self.cpu_seconds = round(time.process_time() - self.cpu_start, 3)
        self.peak_mib = round((_status_kib("VmHWM") - self.base) / 1024, 1)


def _coco_segm_ap(gt: np.ndarray, gt_rles: list[dict], dt: list[dict], max_dets: int) -> float:
    from deepcens.evaluation.coco import build_coco_dict, evaluate_coco

    import pycocotools.mask as mask_util

    annotations = [{"category_id": 0, "bbox": mask_util.toBbox(r).tolist(), "segmentation": r,
                    "area": float(mask_util.area(r)), "iscrowd": 0} for r in gt_rles]
    coco_gt = build_coco_dict([{"id": 1, "height": gt.shape[0], "width": gt.shape[1]}], [annotations], ["cell"])
    return round(evaluate_coco(coco_gt, dt, "segm", max_dets, ["cell"])["AP"], 3)


def _run_case(path: str, size: int, count: int, object_size: int, seed: int, dense: bool, queue) -> None:
    """One case in a fresh process: every stage of the cropped and (optionally) the dense path."""
    import torch

    torch.set_num_threads(1)
    from deepcens.evaluation.ctc_measures import frame_counts
    from deepcens.postprocess.instances import instances_to_coco_results, instances_to_label_image, label_image_to_instances
    from deepcens.structures.masks import CroppedMasks

    gt, pred = synthetic_field(size, count, object_size, seed)
    result: dict = {"size": size, "objects": count, "images_mib": round((gt.nbytes + pred.nbytes) / 2**20, 1)}
    max_dets = 2 * count
    with _Stage() as stage:
        instances = label_image_to_instances(pred)
        rendered = instances_to_label_image(instances)
    result["cropped"] = {"round_trip_s": stage.seconds, "round_trip_cpu_s": stage.cpu_seconds,
                         "round_trip_mib": stage.peak_mib}
    with _Stage() as stage:
        gt_rles = CroppedMasks.from_label_image(gt)[0].to_rles()
        dt = [dict(e, category_id=1) for e in instances_to_coco_results(instances, 1)]
        ap = _coco_segm_ap(gt, gt_rles, dt, max_dets)
    result["cropped"].update(coco_s=stage.seconds, coco_cpu_s=stage.cpu_seconds, coco_mib=stage.peak_mib, segm_AP=ap)
    with _Stage() as stage:
        counts, _ = frame_counts(rendered, gt)
    result["cropped"].update(ctc_s=stage.seconds, ctc_cpu_s=stage.cpu_seconds, ctc_mib=stage.peak_mib,
                             SEG=round(counts.seg(), 4),
                             DET=round(counts.det(), 4))
    del instances, dt, gt_rles
    if dense:
        with _Stage() as stage:
            masks, scores = _dense_to_masks(pred)
            dense_rendered = _dense_to_label_image(masks, scores)
        result["dense"] = {"round_trip_s": stage.seconds, "round_trip_cpu_s": stage.cpu_seconds,
                           "round_trip_mib": stage.peak_mib,
                           "same_label_image": bool((dense_rendered == rendered).all())}
        with _Stage() as stage:
            gt_masks, _ = _dense_to_masks(gt)
            gt_rles = _dense_rles(gt_masks)
            del gt_masks
            boxes = CroppedMasks.from_label_image(pred)[0].boxes  # pred_boxes, as Instances carry them
            dt = [{"image_id": 1, "category_id": 1, "score": 1.0, "segmentation": dict(r, counts=r["counts"].decode()),
                   "bbox": [float(x0), float(y0), float(x1 - x0), float(y1 - y0)]}
                  for r, (x0, y0, x1, y1) in zip(_dense_rles(masks), boxes)]
            ap = _coco_segm_ap(gt, gt_rles, dt, max_dets)
        result["dense"].update(coco_s=stage.seconds, coco_cpu_s=stage.cpu_seconds, coco_mib=stage.peak_mib, segm_AP=ap)
        del masks
        with _Stage() as stage:
            counts, _ = frame_counts(dense_rendered, gt)
        result["dense"].update(ctc_s=stage.seconds, ctc_cpu_s=stage.cpu_seconds, ctc_mib=stage.peak_mib,
                               SEG=round(counts.seg(), 4),
                               DET=round(counts.det(), 4))
    if path:
        from deepcens.data.io import write_label_tiff

        for name, labels in (("gt", gt), ("pred", pred)):
            write_label_tiff(os.path.join(path, name, "field.tif"), labels)
    queue.put(result)


def _run_dense_field(size: int, count: int, object_size: int, seed: int, queue) -> None:
    """Sliding-window probabilities and tertiary decoding of one large field (peak memory above
    the image, respectively above the probability map the decoder receives)."""
    import torch
    from detectron2.config import get_cfg
    from scipy import ndimage

    from deepcens.config import add_deepcens_config
    from deepcens.modeling.meta_arch.dense import DenseSegmentor
    from deepcens.postprocess.decoders import decode_tertiary
    from deepcens.postprocess.instances import instances_to_label_image

    torch.set_num_threads(1)
    cfg = get_cfg()
    add_deepcens_config(cfg)
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.DENSE.XBNET.BASE_CHANNELS = 8
    cfg.MODEL.DENSE.XBNET.NUM_STAGES = 2
    cfg.MODEL.DENSE.SLIDING_WINDOW = 512
    model = DenseSegmentor(cfg).eval()
    gt, _ = synthetic_field(size, count, object_size, seed)
    image = torch.from_numpy((gt > 0).astype(np.float32) * 0.8 + 0.1)[None]
    result: dict = {"size": size, "objects": count, "image_mib": round(image.numel() * 4 / 2**20, 1)}
    with torch.no_grad(), _Stage() as stage:
        probabilities = model.predict_probabilities(image)
    result["sliding_window"] = {"s": stage.seconds, "cpu_s": stage.cpu_seconds, "peak_mib": stage.peak_mib,
                                "probabilities_mib": round(probabilities.numel() * 4 / 2**20, 1)}
    del probabilities, image
    edge = (ndimage.grey_dilation(gt, size=3) != ndimage.grey_erosion(gt, size=3)) & (gt > 0)
    target = np.where(gt > 0, 2, 0).astype(np.int64)
    target[edge] = 1
    one_hot = np.zeros((3, size, size), dtype=np.float32)
    for channel in range(3):
        one_hot[channel][target == channel] = 1.0
    del target, edge
    with _Stage() as stage:
        instances = decode_tertiary(torch.from_numpy(one_hot))
        labels = instances_to_label_image(instances)
    result["decode_to_label_image"] = {"s": stage.seconds, "cpu_s": stage.cpu_seconds, "peak_mib": stage.peak_mib,
                                       "objects": int(labels.max())}
    queue.put(result)


def run(args: argparse.Namespace) -> list[dict]:
    cases = []
    for entry in str(args.cases).split(","):
        size, _, count = entry.partition(":")
        cases.append((int(size), int(count)))
    context = multiprocessing.get_context("spawn")
    results = []
    for number, (size, count) in enumerate(cases):
        dense = count * size * size / 2**30 <= args.dense_limit_gb
        save = args.save_fields if number == len(cases) - 1 else ""
        queue = context.Queue()
        process = context.Process(target=_run_case,
                                  args=(save, size, count, args.object_size, args.seed, dense, queue))
        process.start()
        result = queue.get()
        process.join()
        if not dense:
            result["dense"] = f"not run: {count * size * size / 2**30:.0f} GiB of masks"
        results.append(result)
        print(result, flush=True)
    if args.dense_field:
        size, _, count = str(args.dense_field).partition(":")
        size, count = int(size), int(count or 1000)
        queue = context.Queue()
        process = context.Process(target=_run_dense_field, args=(size, count, args.object_size, args.seed, queue))
        process.start()
        results.append({"dense_field": queue.get()})
        process.join()
        print(results[-1], flush=True)
    return results
