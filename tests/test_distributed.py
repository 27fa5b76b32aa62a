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
