"""A tiny Mask R-CNN training used by the reliability tests (imported, or run as a script).

    python tests/reliability_tiny.py OUT_DIR [--resume] [KEY VALUE ...]

The data set (six 64x64 images with two to four bright blobs, polygon annotations) is made
in ``OUT_DIR/../tiny_data`` and registered as ``reliability_tiny_train``. The trunk is a
ResNet-18 FPN with BN and small heads, so one CPU iteration takes a fraction of a second.
Run as a script it trains (optionally resuming) and writes ``OUT_DIR/run_report.json``
with the per-iteration ``total_loss`` of this process and a digest of the final weights.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys

import cv2
import numpy as np
import torch

TRAIN_NAME = "reliability_tiny_train"
SIZE = 64

TINY_OPTS = [
    "MODEL.META_ARCHITECTURE", "GeneralizedRCNN", "MODEL.DEVICE", "cpu", "MODEL.MASK_ON", "True",
    "MODEL.WEIGHTS", "",
    "MODEL.BACKBONE.NAME", "build_resnet_fpn_backbone", "MODEL.BACKBONE.FREEZE_AT", "0",
    "MODEL.RESNETS.DEPTH", "18", "MODEL.RESNETS.RES2_OUT_CHANNELS", "64", "MODEL.RESNETS.NORM", "BN",
    "MODEL.RESNETS.STEM_OUT_CHANNELS", "32", "MODEL.RESNETS.OUT_FEATURES", "['res2', 'res3', 'res4', 'res5']",
    "MODEL.FPN.IN_FEATURES", "['res2', 'res3', 'res4', 'res5']", "MODEL.FPN.OUT_CHANNELS", "32",
    "MODEL.ANCHOR_GENERATOR.SIZES", "[[8], [16], [32], [64], [128]]",
    "MODEL.RPN.IN_FEATURES", "['p2', 'p3', 'p4', 'p5', 'p6']",
    "MODEL.RPN.BATCH_SIZE_PER_IMAGE", "32", "MODEL.RPN.PRE_NMS_TOPK_TRAIN", "200",
    "MODEL.RPN.POST_NMS_TOPK_TRAIN", "50", "MODEL.RPN.PRE_NMS_TOPK_TEST", "200", "MODEL.RPN.POST_NMS_TOPK_TEST", "50",
    "MODEL.ROI_HEADS.NAME", "StandardROIHeads", "MODEL.ROI_HEADS.IN_FEATURES", "['p2', 'p3', 'p4', 'p5']", "MODEL.ROI_HEADS.NUM_CLASSES", "1",
    "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "16",
    "MODEL.ROI_BOX_HEAD.NAME", "FastRCNNConvFCHead", "MODEL.ROI_BOX_HEAD.NUM_FC", "1", "MODEL.ROI_BOX_HEAD.FC_DIM", "32",
    "MODEL.ROI_MASK_HEAD.NUM_CONV", "1", "MODEL.ROI_MASK_HEAD.CONV_DIM", "16",
    "INPUT.RESIZE_EXACT", f"[{SIZE}, {SIZE}]", "INPUT.FORMAT", "RGB", "INPUT.RANDOM_FLIP", "horizontal",
    "DATASETS.TRAIN", f"('{TRAIN_NAME}',)", "DATASETS.TEST", "()",
    "DATALOADER.NUM_WORKERS", "0",
    "SOLVER.IMS_PER_BATCH", "2", "SOLVER.BASE_LR", "0.01", "SOLVER.WARMUP_ITERS", "2",
    "SOLVER.STEPS", "(5,)", "SOLVER.MAX_ITER", "8", "SOLVER.CHECKPOINT_PERIOD", "4",
    "TEST.EVAL_PERIOD", "0", "SEED", "7",
]


def make_tiny_dataset(folder: str, count: int = 6) -> list[dict]:
    """Write ``count`` PNG images with blobs and return detectron2 dataset dicts (polygons)."""
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(0)
    dicts = []
    for index in range(count):
        image = rng.integers(0, 30, (SIZE, SIZE), dtype=np.uint8)
        annotations = []
        for _ in range(int(rng.integers(2, 5))):
            cx, cy = (int(v) for v in rng.integers(12, SIZE - 12, 2))
            rx, ry = (int(v) for v in rng.integers(4, 10, 2))
            mask = np.zeros((SIZE, SIZE), np.uint8)
            cv2.ellipse(mask, (cx, cy), (rx, ry), 0, 0, 360, 1, -1)
            image[mask > 0] = 200
            contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
            polygon = contours[0].reshape(-1).astype(float).tolist()
            x, y, w, h = cv2.boundingRect(mask)
            annotations.append({"bbox": [x, y, w, h], "bbox_mode": 1, "segmentation": [polygon],
                                "category_id": 0, "iscrowd": 0})
        path = os.path.join(folder, f"img_{index}.png")
        if not os.path.isfile(path):
            cv2.imwrite(path, image)
        dicts.append({"file_name": path, "image_id": index, "height": SIZE, "width": SIZE,
                      "annotations": annotations})
    return dicts


def register_tiny(folder: str) -> None:
    """(Re-)register ``reliability_tiny_train`` with the images in ``folder``."""
    from detectron2.data import DatasetCatalog, MetadataCatalog

    dicts = make_tiny_dataset(folder)
    if TRAIN_NAME in DatasetCatalog.list():
        DatasetCatalog.remove(TRAIN_NAME)
        MetadataCatalog.remove(TRAIN_NAME)
    DatasetCatalog.register(TRAIN_NAME, lambda: [dict(d) for d in dicts])
    MetadataCatalog.get(TRAIN_NAME).set(thing_classes=["cell"], evaluator_type="cell")


def tiny_cfg(out_dir: str, opts: list[str] = ()):
    """The tiny config (deepcens keys included) writing to ``out_dir``."""
    from detectron2.config import get_cfg

    from deepcens.config import add_deepcens_config

    cfg = get_cfg()
    add_deepcens_config(cfg)
    cfg.merge_from_list([*TINY_OPTS, "OUTPUT_DIR", out_dir, *opts])
    return cfg


def weights_digest(model: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def loss_recorder():
    """A hook recording this process's ``total_loss`` per iteration (in ``.losses``)."""
    from detectron2.engine import HookBase

    class LossRecorder(HookBase):
        def __init__(self):
            self.losses: dict[int, float] = {}

        def after_step(self):
            value, iteration = self.trainer.storage.latest()["total_loss"]
            self.losses[int(iteration)] = float(value)

    return LossRecorder()


def train(out_dir: str, resume: bool, opts: list[str], stop_after: int | None = None,
          keep_trainer: bool = False) -> dict:
    """Train the tiny model; returns ``{"losses": {iter: loss}, "digest": ..., "start_iter": ...}``.

    ``stop_after`` ends the run after that many iterations (with a final checkpoint) while the
    schedule still follows ``SOLVER.MAX_ITER``, as a run that was stopped would.
    ``keep_trainer`` adds the trainer under ``"trainer"``.
    """
    register_tiny(os.path.join(os.path.dirname(os.path.abspath(out_dir)), "tiny_data"))
    return train_cfg(tiny_cfg(out_dir, opts), resume, stop_after, keep_trainer)


def train_cfg(cfg, resume: bool, stop_after: int | None = None, keep_trainer: bool = False) -> dict:
    """:func:`train` for any config (datasets registered by the caller)."""
    from detectron2.utils.env import seed_all_rng

    from deepcens.engine.trainer import Trainer

    torch.set_num_threads(1)
    seed_all_rng(cfg.SEED)
    trainer = Trainer(cfg)
    recorder = loss_recorder()
    trainer.register_hooks([recorder])
    trainer.resume_or_load(resume=resume)
    start_iter = trainer.start_iter
    if stop_after is not None:
        trainer.max_iter = stop_after
    trainer.train()
    report = {"losses": recorder.losses, "digest": weights_digest(trainer.model), "start_iter": start_iter}
    if keep_trainer:
        report["trainer"] = trainer
    return report


def pause_in_save(checkpoint_name: str, seconds: float) -> None:
    """Make this process sleep ``seconds`` inside the save of ``checkpoint_name`` (``model_0000003``):
    the data is in the temporary file, the rename to ``NAME.pth`` has not happened, and
    ``deepcens-test: sleeping in save of NAME`` was printed to stderr, so a test can kill it mid-save."""
    import time

    original_replace = os.replace

    def pause_then_replace(source, destination, *args, **kwargs):
        if os.path.basename(os.fspath(destination)) == f"{checkpoint_name}.pth":
            print(f"deepcens-test: sleeping in save of {checkpoint_name}", file=sys.stderr, flush=True)
            time.sleep(seconds)
        return original_replace(source, destination, *args, **kwargs)

    os.replace = pause_then_replace


if __name__ == "__main__":
    arguments = sys.argv[1:]
    resume_flag = "--resume" in arguments
    arguments = [a for a in arguments if a != "--resume"]
    if arguments and arguments[0] == "--pause-in-save":  # --pause-in-save NAME:SECONDS
        target, _, pause_seconds = arguments[1].rpartition(":")
        pause_in_save(target, float(pause_seconds))
        arguments = arguments[2:]
    report = train(arguments[0], resume_flag, arguments[1:])
    with open(os.path.join(arguments[0], "run_report.json"), "w") as handle:
        json.dump(report, handle)
