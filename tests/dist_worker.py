"""Two-process CPU training used by tests/test_distributed.py (run as a script, not collected).

    python tests/dist_worker.py OUT_DIR [KEY VALUE ...]

Trains the demo config for a few iterations under detectron2's ``launch`` with two CPU
processes and writes ``OUT_DIR/dist_report.json`` with, per rank, the local (un-averaged)
losses of every step, the averaged ``total_loss`` rank 0 logged, and a digest of the final
weights.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys

import torch
from detectron2.engine import launch
from detectron2.utils import comm

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO_CONFIG = os.path.join(REPO, "configs", "demo", "synthetic_cell_nucleus.yaml")


def weights_digest(model: torch.nn.Module) -> str:
    """Digest of the trainable parameters (BN running statistics stay per rank, as in detectron2)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.named_parameters()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def worker(out_dir: str, opts: list[str]) -> None:
    torch.set_num_threads(1)
    from deepcens.engine.launch_utils import end_process_group
    from deepcens.engine.setup import load_config, prepare_datasets
    from deepcens.engine.trainer import Trainer

    cfg = load_config(DEMO_CONFIG, ["OUTPUT_DIR", out_dir, *opts])
    prepare_datasets(cfg)
    trainer = Trainer(cfg)
    local_losses: list[dict[str, float]] = []
    loop = trainer._trainer
    original_write = loop._write_metrics

    def recording_write(loss_dict, data_time, *args, **kwargs):
        local_losses.append({key: float(value.detach()) for key, value in loss_dict.items()})
        return original_write(loss_dict, data_time, *args, **kwargs)

    loop._write_metrics = recording_write
    trainer.resume_or_load(resume=False)
    trainer.train()
    logged = []
    if comm.is_main_process():
        logged = [value for value, _ in trainer.storage.history("total_loss").values()]
    model = trainer.model.module if hasattr(trainer.model, "module") else trainer.model
    reports = comm.all_gather({"rank": comm.get_rank(), "local_losses": local_losses,
                               "digest": weights_digest(model)})
    if comm.is_main_process():
        with open(os.path.join(out_dir, "dist_report.json"), "w") as handle:
            json.dump({"ranks": reports, "logged_total_loss": logged,
                       "world_size": comm.get_world_size()}, handle)
    end_process_group()


if __name__ == "__main__":
    launch(worker, 2, dist_url="auto", args=(sys.argv[1], sys.argv[2:]))
