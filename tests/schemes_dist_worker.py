"""Two-process CPU Acc training used by tests/test_schemes.py (run as a script, not collected).

    python tests/schemes_dist_worker.py DATA_DIR OUT_DIR

Registers two tiny label-image datasets found in DATA_DIR (``a/`` and ``b/``), trains a tiny
XB-Net with the deepcens Trainer under detectron2's ``launch`` (two CPU processes, gloo) with
``SOLVER.TRAIN_SCHEME Acc`` for 3 steps, and writes ``OUT_DIR/acc_report.json`` with, per
rank, the number of forward passes, optimizer steps and a digest of the final weights.
"""
from __future__ import annotations

import glob
import hashlib
import json
import os
import sys

import torch
from detectron2.engine import launch
from detectron2.utils import comm


def _dicts(folder: str) -> list[dict]:
    records = []
    for index, image in enumerate(sorted(glob.glob(os.path.join(folder, "img*.tif")))):
        records.append({"file_name": image, "label_file_name": image.replace("img", "lab"), "image_id": index,
                        "height": 20, "width": 20, "intensity_range": (0.0, 1000.0)})
    return records


def worker(data_dir: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    from detectron2.config import get_cfg
    from detectron2.data import DatasetCatalog, MetadataCatalog

    from deepcens.config import add_deepcens_config
    from deepcens.engine.trainer import Trainer

    for name in ("a", "b"):
        key = f"acc_test_{name}"
        if key not in DatasetCatalog.list():
            DatasetCatalog.register(key, lambda folder=os.path.join(data_dir, name): _dicts(folder))
            MetadataCatalog.get(key).set(thing_classes=["cell"], evaluator_type="cell")
    cfg = get_cfg()
    add_deepcens_config(cfg)
    cfg.merge_from_list([
        "MODEL.META_ARCHITECTURE", "DenseSegmentor", "MODEL.DEVICE", "cpu",
        "MODEL.DENSE.XBNET.BASE_CHANNELS", "4", "MODEL.DENSE.XBNET.NUM_STAGES", "2",
        "MODEL.DENSE.SIZE_DIVISIBILITY", "4", "INPUT.MAPPER", "DenseTargetMapper",
        "INPUT.DENSE.CROP_SIZE", "12", "INPUT.DENSE.CONTEXT_PAD", "2",
        "DATASETS.TRAIN", "('acc_test_a', 'acc_test_b')", "DATASETS.TEST", "()",
        "DATALOADER.NUM_WORKERS", "0", "SOLVER.IMS_PER_BATCH", "2", "SOLVER.MAX_ITER", "3",
        "SOLVER.TRAIN_SCHEME", "Acc", "SOLVER.OPTIMIZER", "AdamW", "SOLVER.BASE_LR", "0.001",
        "SOLVER.LR_SCHEDULER_NAME", "CosineWarmRestarts", "SOLVER.COSINE_RESTARTS", "(2,)",
        "SOLVER.WARMUP_ITERS", "0", "SOLVER.CHECKPOINT_PERIOD", "1000", "TEST.EVAL_PERIOD", "0",
        "OUTPUT_DIR", out_dir, "SEED", "7",
    ])
    trainer = Trainer(cfg)
    model = trainer.model.module if hasattr(trainer.model, "module") else trainer.model
    counts = {"forward": 0, "step": 0}
    model.register_forward_pre_hook(lambda *_: counts.__setitem__("forward", counts["forward"] + 1))
    optimizer = trainer._trainer.optimizer
    original_step = optimizer.step

    def counting_step(*args, **kwargs):
        counts["step"] += 1
        return original_step(*args, **kwargs)

    optimizer.step = counting_step
    trainer.resume_or_load(resume=False)
    trainer.train()
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().contiguous().numpy().tobytes())
    reports = comm.all_gather({"rank": comm.get_rank(), **counts, "digest": digest.hexdigest(),
                               "world_size": comm.get_world_size()})
    if comm.is_main_process():
        with open(os.path.join(out_dir, "acc_report.json"), "w") as handle:
            json.dump(reports, handle)
    from deepcens.engine.launch_utils import end_process_group

    end_process_group()


if __name__ == "__main__":
    launch(worker, 2, dist_url="auto", args=(sys.argv[1], sys.argv[2]))
