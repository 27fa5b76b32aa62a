"""Training / inference speed and peak memory: DeepCeNS vs stock detectron2 Cascade Mask R-CNN R50-FPN.

``tools/benchmark.py speed --device cuda --size 1024 --batch 2 --iters 20`` builds each model
from its config (DeepCeNS: ``configs/evican_cell_nucleus.yaml``, ResNeSt-200 + DCN, BN instead
of SyncBN in one process; stock: detectron2's ``Misc/cascade_mask_rcnn_R_50_FPN_3x.yaml`` with
the same number of classes), feeds synthetic images with ``--instances`` box-shaped objects,
and measures training images/s (steps of the training loop ``tools/train_net.py`` builds, i.e.
:func:`deepcens.engine.loops.build_train_loop` with ``SOLVER.AMP`` from ``--amp``, fed the same
batch, after ``--warmup`` untimed ones), inference ms per
image (eval mode, batch ``--batch``, under the loop's autocast) and peak memory (CUDA: max
allocated; CPU: peak RSS of a fresh process per model). CPU defaults are small (256 px, batch 2, 2 timed iterations).
"""
from __future__ import annotations

import argparse
import itertools
import multiprocessing
import os
import resource
from typing import Callable

import torch

NAME = "speed"
HELP = "train img/s, inference ms/img and peak memory: DeepCeNS (ResNeSt+DCN cascade) vs stock Cascade Mask R-CNN R50-FPN"

_STOCK_CONFIG = "Misc/cascade_mask_rcnn_R_50_FPN_3x.yaml"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``tools/benchmark.py speed``."""
    parser.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    parser.add_argument("--size", type=int, default=256, help="square image side in pixels")
    parser.add_argument("--batch", type=int, default=2, help="images per step (>= 2: BN in split attention)")
    parser.add_argument("--iters", type=int, default=2, help="timed training / inference steps")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps before timing")
    parser.add_argument("--instances", type=int, default=40, help="ground-truth objects per image")
    parser.add_argument("--models", nargs="+", default=["stock", "deepcens"], choices=["stock", "deepcens"])
    parser.add_argument("--deepcens-config", default="configs/evican_cell_nucleus.yaml")
    parser.add_argument("--amp", choices=["off", "bf16", "fp16"], default="off",
                        help="SOLVER.AMP of the training loop (fp16 needs CUDA; bf16 also runs on the CPU)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = leave torch's default)")
    parser.add_argument("--in-process", action="store_true",
                        help="measure in this process (CPU peak RSS then includes earlier models)")
    parser.add_argument("--opts", nargs="+", default=[],
                        help="KEY VALUE overrides for the DeepCeNS config, e.g. MODEL.RESNEST.DEPTH 50")


def _stock_cfg(num_classes: int):
    import detectron2
    from detectron2.config import get_cfg

    path = os.path.join(os.path.dirname(detectron2.__file__), "model_zoo", "configs", _STOCK_CONFIG)
    from deepcens.config import add_deepcens_config

    cfg = get_cfg()
    add_deepcens_config(cfg)  # SOLVER.TRAIN_SCHEME / SOLVER.AMP.PRECISION for the training loop
    cfg.merge_from_file(path)  # packaged yaml; avoids model_zoo (pkg_resources)
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = num_classes
    return cfg


def _deepcens_cfg(config_file: str, opts: list[str]):
    from deepcens.engine.setup import load_config

    cfg = load_config(config_file, opts, freeze=False)
    if cfg.MODEL.RESNEST.NORM in ("SyncBN", "naiveSyncBN"):
        cfg.MODEL.RESNEST.NORM = "BN"  # one process, no DDP: same cost model as BN
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.RESNEST.PRETRAINED = ""
    return cfg


def _synthetic_batch(n_images: int, size: int, n_instances: int, seed: int = 0) -> list[dict]:
    """Random uint8 images with ``n_instances`` random boxes (and box masks), classes 0/1."""
    from detectron2.structures import BitMasks, Boxes, Instances

    g = torch.Generator().manual_seed(seed)
    batch = []
    for _ in range(n_images):
        wh = torch.randint(max(4, size // 64), max(8, size // 6), (n_instances, 2), generator=g)
        xy = (torch.rand(n_instances, 2, generator=g) * (size - wh)).floor()
        boxes = torch.cat([xy, xy + wh], dim=1).float()
        masks = torch.zeros(n_instances, size, size, dtype=torch.bool)
        for i, (x0, y0, x1, y1) in enumerate(boxes.long().tolist()):
            masks[i, y0:y1, x0:x1] = True
        inst = Instances((size, size), gt_boxes=Boxes(boxes), gt_masks=BitMasks(masks),
                         gt_classes=torch.randint(0, 2, (n_instances,), generator=g))
        image = torch.randint(0, 256, (3, size, size), dtype=torch.uint8, generator=g)
        batch.append({"image": image, "instances": inst, "height": size, "width": size})
    return batch


def _peak_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def measure(spec: dict) -> dict:
    """Build one model from ``spec`` and time training steps and inference; returns the figures."""
    import deepcens  # noqa: F401  (registrations, also in spawned workers)
    from detectron2.modeling import build_model
    from detectron2.utils.events import EventStorage

    from deepcens.benchmarks.timing import time_calls
    from deepcens.engine.loops import build_train_loop

    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    cfg = _stock_cfg(2) if spec["model"] == "stock" else _deepcens_cfg(spec["config"], spec["opts"])
    cfg.MODEL.DEVICE = spec["device"]
    cfg.SOLVER.TRAIN_SCHEME = "Single"
    cfg.SOLVER.AMP.ENABLED = spec["amp"] != "off"
    cfg.SOLVER.AMP.PRECISION = "bfloat16" if spec["amp"] == "bf16" else "float16"
    torch.manual_seed(0)
    model = build_model(cfg)
    device = torch.device(cfg.MODEL.DEVICE)
    batch = _synthetic_batch(spec["batch"], spec["size"], spec["instances"])
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-5, momentum=0.9)
    # the loop training uses (SOLVER.AMP honoured there), fed the same batch at every step
    loop = build_train_loop(cfg, model, optimizer, lambda cfg, names: itertools.repeat(batch))

    def timed(step: Callable[[], None]) -> float:
        """Seconds for ``spec["iters"]`` calls of ``step`` after ``spec["warmup"]`` untimed ones
        (CUDA peak memory counted from the first timed call)."""
        return time_calls(step, spec["iters"], spec["warmup"], device, reset_peak_memory=True)[0]

    def train_step() -> None:
        loop.run_step()
        loop.iter += 1

    def inference_step() -> None:
        with loop.autocast():
            model(images)

    model.train()
    with EventStorage(0) as storage:
        loop.storage = storage
        loop.iter = 0
        train_s = timed(train_step)
        final_loss = storage.history("total_loss").latest()
    peak_train = _peak_gib(device)

    model.eval()
    images = [{"image": b["image"], "height": b["height"], "width": b["width"]} for b in batch]
    with torch.no_grad():
        infer_s = timed(inference_step)
    n_images = spec["iters"] * spec["batch"]
    return {
        "model": spec["model"],
        "backbone": cfg.MODEL.BACKBONE.NAME,
        "depth": cfg.MODEL.RESNEST.DEPTH if spec["model"] == "deepcens" else cfg.MODEL.RESNETS.DEPTH,
        "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
        "train_img_per_s": round(n_images / train_s, 3),
        "train_s_per_iter": round(train_s / spec["iters"], 3),
        "infer_ms_per_img": round(1000 * infer_s / n_images, 1),
        "peak_gib_train": round(peak_train, 2),
        "peak_gib_infer": round(_peak_gib(device), 2),
        "peak_kind": "cuda max allocated" if device.type == "cuda" else "process peak RSS",
        "final_loss": round(float(final_loss), 3),  # random init: only checks the step ran (finite)
    }


def run(args: argparse.Namespace) -> dict:
    """Measure every model in ``args.models``; each in a fresh spawned process unless ``--in-process``."""
    opts = list(args.opts or [])
    results = {"device": args.device, "size": args.size, "batch": args.batch, "iters": args.iters,
               "instances": args.instances, "amp": args.amp}
    if args.device.startswith("cuda"):
        results["device_name"] = torch.cuda.get_device_name(torch.device(args.device))
    for name in args.models:
        spec = {"model": name, "config": args.deepcens_config, "opts": opts, "device": args.device,
                "size": args.size, "batch": args.batch, "iters": args.iters, "warmup": args.warmup,
                "instances": args.instances, "amp": args.amp, "threads": args.threads}
        if args.in_process:
            results[name] = measure(spec)
        else:
            with multiprocessing.get_context("spawn").Pool(1) as pool:
                results[name] = pool.apply(measure, (spec,))
    return results
