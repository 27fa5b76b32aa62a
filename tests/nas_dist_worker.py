"""Two-process CPU run of a NAS U-Net config used by tests/test_nas_unet.py (a script, not collected).

    python tests/nas_dist_worker.py CONFIG OUT_DIR [KEY VALUE ...]

Trains ``CONFIG`` (with the overrides) under detectron2's ``launch`` in two CPU processes
(gloo) and writes ``OUT_DIR/nas_report.json``: per rank a digest of the final weights.
CTC data come from ``$DEEPCENS_CTC_ROOT``.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys

import torch
from detectron2.engine import launch
from detectron2.utils import comm


def worker(config: str, out_dir: str, opts: list[str]) -> None:
    torch.set_num_threads(1)
    import deepcens  # noqa: F401  (registrations)
    from deepcens.engine.setup import load_config
    from deepcens.engine.trainer import Trainer

    cfg = load_config(config, [*opts, "OUTPUT_DIR", out_dir])
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    model = trainer.model.module if hasattr(trainer.model, "module") else trainer.model
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().contiguous().numpy().tobytes())
    reports = comm.all_gather({"rank": comm.get_rank(), "digest": digest.hexdigest(),
                               "world_size": comm.get_world_size(), "iterations": trainer.iter})
    if comm.is_main_process():
        with open(os.path.join(out_dir, "nas_report.json"), "w") as handle:
            json.dump(reports, handle)
    from deepcens.engine.launch_utils import end_process_group

    end_process_group()


if __name__ == "__main__":
    launch(worker, 2, dist_url="auto", args=(sys.argv[1], sys.argv[2], sys.argv[3:]))
