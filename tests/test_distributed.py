"""Two CPU processes under detectron2's ``launch`` (gloo): same weights, rank-averaged loss."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO

TINY_DEMO = [
    "DATASETS.SYNTHETIC.IMAGES", "[6, 2, 2]", "DATASETS.SYNTHETIC.SIZE", "64",
    "INPUT.RESIZE_EXACT", "[64, 64]", "SOLVER.IMS_PER_BATCH", "4", "SOLVER.MAX_ITER", "3",
    "SOLVER.WARMUP_ITERS", "1", "SOLVER.CHECKPOINT_PERIOD", "100", "TEST.EVAL_PERIOD", "0",
]


@pytest.fixture(scope="module")
def two_process_report(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("dist")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    command = [sys.executable, str(REPO / "tests" / "dist_worker.py"), str(out / "run"),
               "DATASETS.ROOT", str(out / "datasets"), *TINY_DEMO]
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads((out / "run" / "dist_report.json").read_text())


def test_two_cpu_processes_end_with_identical_weights(two_process_report):
    ranks = two_process_report["ranks"]
    assert two_process_report["world_size"] == 2 and len(ranks) == 2
    assert ranks[0]["digest"] == ranks[1]["digest"]


def test_logged_loss_is_the_mean_over_both_ranks(two_process_report):
    ranks = sorted(two_process_report["ranks"], key=lambda report: report["rank"])
    steps = len(two_process_report["logged_total_loss"])
    assert steps == 3
    local_totals = np.array([[sum(step.values()) for step in report["local_losses"]] for report in ranks])
    assert local_totals.shape == (2, steps)
    # the ranks saw different images, so their losses differ; rank 0 logs their mean
    assert not np.allclose(local_totals[0], local_totals[1])
    np.testing.assert_allclose(two_process_report["logged_total_loss"], local_totals.mean(axis=0), rtol=1e-5)


PAPER_CONFIG_ON_SYNTHETIC = [
    "DATASETS.AUTO_SYNTHETIC", "True", "DATASETS.SYNTHETIC.IMAGES", "[4, 2, 2]", "DATASETS.SYNTHETIC.SIZE", "64",
    "DATASETS.TRAIN", "('synthetic_evican_train_cell_nucleus',)",
    "DATASETS.VAL", "('synthetic_evican_val_cell_nucleus',)",
    "DATASETS.TEST", "('synthetic_evican_eval_easy_cell_nucleus',)",
    "MODEL.RESNEST.DEPTH", "0", "MODEL.FPN.OUT_CHANNELS", "32", "MODEL.ROI_BOX_HEAD.CONV_DIM", "32",
    "MODEL.ROI_BOX_HEAD.FC_DIM", "64", "MODEL.ROI_MASK_HEAD.CONV_DIM", "32", "MODEL.ROI_MASK_HEAD.NUM_CONV", "2",
    "MODEL.RPN.POST_NMS_TOPK_TRAIN", "100", "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "32",
    "INPUT.RESIZE_EXACT", "[64, 64]", "DATALOADER.NUM_WORKERS", "0",
    "SOLVER.IMS_PER_BATCH", "4", "SOLVER.MAX_ITER", "2", "SOLVER.WARMUP_ITERS", "1", "SOLVER.STEPS", "(1,)",
    "SOLVER.VAL_LOSS_PERIOD", "2", "TEST.EVAL_PERIOD", "2", "SOLVER.CHECKPOINT_PERIOD", "100",
    "RUN.OUTPUT_OVERLAYS", "1", "RUN.CONSOLE", "progress",
]


def test_reference_command_runs_with_two_cpu_processes(tmp_path):
    """``train_net.py --config-file configs/evican_cell_nucleus.yaml --num-gpus N`` end to end,
    on synthetic EVICAN-shaped data with size overrides (SyncBN becomes naiveSyncBN on CPU)."""
    out = tmp_path / "run"
    command = [sys.executable, "tools/train_net.py", "--config-file", "configs/evican_cell_nucleus.yaml",
               "--num-gpus", "2", "--dist-url", "auto", "DATASETS.ROOT", str(tmp_path / "datasets"),
               "OUTPUT_DIR", str(out), *PAPER_CONFIG_ON_SYNTHETIC]
    result = subprocess.run(command, cwd=REPO, env=dict(os.environ, OMP_NUM_THREADS="1"),
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "segm" in result.stdout or "Seg." in result.stdout  # the closing summary table
    for name in ("model_final.pth", "last_checkpoint", "metrics.json", "evaluation.json", "evaluation.md"):
        assert (out / name).is_file(), name
    metrics = [json.loads(line) for line in (out / "metrics.json").read_text().splitlines() if line.strip()]
    assert any("val_total_loss" in record for record in metrics)  # periodic validation loss
    assert any(key.endswith("segm/AP") for record in metrics for key in record)  # periodic validation AP
    assert (out / "model_best.pth").is_file()  # best checkpoint by validation segm AP
    assert list((out / "overlays").glob("*.png"))


def test_bad_config_path_is_a_one_line_error(tmp_path):
    result = subprocess.run([sys.executable, "tools/train_net.py", "--config-file", str(tmp_path / "missing.yaml")],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "missing.yaml" in result.stderr and "Traceback" not in result.stderr
