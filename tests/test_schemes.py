"""Universal-training schemes (Mix / Seq / Fix / Shu / Cho / Acc) and the warm-restart cosine LR."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from detectron2.config import get_cfg
from torch import nn

import deepcens  # noqa: F401  (registrations)
from deepcens.config import add_deepcens_config
from deepcens.engine.loops import TRAIN_LOOP_REGISTRY, build_train_loop
from deepcens.engine.schedules import build_lr_scheduler, cosine_warm_restarts
from deepcens.engine.schemes import Mix, MultiDatasetLoop

REPO = Path(__file__).resolve().parents[1]


class QuadModel(nn.Module):
    """loss = sum over the batch of (w . x - y)^2; gradients are easy to compute by hand."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.tensor([1.0, -2.0]))

    def forward(self, batch):
        x, y = batch
        return {"loss_sq": ((x @ self.w - y) ** 2).sum()}


def constant_loader(x, y):
    while True:
        yield (x, y)


DATA = [(torch.tensor([[1.0, 2.0]]), torch.tensor([1.0])),
        (torch.tensor([[0.5, -1.0], [2.0, 0.0]]), torch.tensor([0.0, 3.0])),
        (torch.tensor([[3.0, 1.0]]), torch.tensor([-1.0]))]


def hand_gradient(w, x, y):
    return 2 * ((x @ w - y)[:, None] * x).sum(0)


def _trainer(scheme, max_iter=12, lr=0.0):
    model = QuadModel()
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    loaders = [constant_loader(x, y) for x, y in DATA]
    return TRAIN_LOOP_REGISTRY.get(scheme)(model, loaders, optimizer, max_iter, seed=3), model, optimizer


def test_all_schemes_registered():
    assert {"Single", "Mix", "Seq", "Fix", "Shu", "Cho", "Acc"} <= set(TRAIN_LOOP_REGISTRY._obj_map)


def test_dataset_orders_of_the_schemes():
    fix, _, _ = _trainer("Fix")
    assert [fix.schedule(i) for i in range(6)] == [[0], [1], [2], [0], [1], [2]]
    seq, _, _ = _trainer("Seq", max_iter=12)
    assert [seq.schedule(i)[0] for i in range(12)] == [0] * 4 + [1] * 4 + [2] * 4
    shu, _, _ = _trainer("Shu")
    blocks = [[shu.schedule(i)[0] for i in range(b * 3, b * 3 + 3)] for b in range(8)]
    assert all(sorted(block) == [0, 1, 2] for block in blocks)  # every dataset once per round
    assert len({tuple(b) for b in blocks}) > 1  # reshuffled between rounds
    again, _, _ = _trainer("Shu")
    assert [again.schedule(i) for i in range(24)] == [shu.schedule(i) for i in range(24)]  # seeded
    cho, _, _ = _trainer("Cho")
    picks = [cho.schedule(i)[0] for i in range(300)]
    assert set(picks) == {0, 1, 2} and abs(np.bincount(picks).min() - 100) < 40
    acc, _, _ = _trainer("Acc")
    assert acc.schedule(5) == [0, 1, 2]


def test_acc_takes_one_step_with_the_summed_gradient():
    trainer, model, optimizer = _trainer("Acc", lr=0.1)
    steps = []
    original = optimizer.step

    def counting_step(*args, **kwargs):
        steps.append(model.w.grad.clone())
        return original(*args, **kwargs)

    optimizer.step = counting_step
    w0 = model.w.detach().clone()
    expected = sum(hand_gradient(w0, x, y) for x, y in DATA)
    trainer.train(0, 1)
    assert len(steps) == 1  # three minibatches, one optimizer step
    assert torch.allclose(steps[0], expected)
    assert torch.allclose(model.w.detach(), w0 - 0.1 * expected)


def test_fix_takes_one_step_per_minibatch():
    trainer, model, optimizer = _trainer("Fix", lr=0.1)
    w = model.w.detach().clone()
    for x, y in DATA:
        w = w - 0.1 * hand_gradient(w, x, y)
    trainer.train(0, 3)
    assert torch.allclose(model.w.detach(), w, atol=1e-6)


def test_loop_builders_build_one_loader_per_dataset():
    cfg = get_cfg()
    add_deepcens_config(cfg)
    cfg.DATASETS.TRAIN = ("a", "b")
    requested = []

    def build_loader(cfg, names):
        requested.append(list(names))
        return constant_loader(*DATA[0])

    model = QuadModel()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    cfg.SOLVER.TRAIN_SCHEME = "Acc"
    loop = build_train_loop(cfg, model, optimizer, build_loader)
    assert isinstance(loop, MultiDatasetLoop) and type(loop).__name__ == "Acc"
    assert requested == [["a"], ["b"]]
    requested.clear()
    cfg.SOLVER.TRAIN_SCHEME = "Mix"
    loop = build_train_loop(cfg, model, optimizer, build_loader)
    assert type(loop) is Mix and requested == [["a", "b"]]


def test_cosine_warm_restarts_schedule():
    cfg = get_cfg()
    add_deepcens_config(cfg)
    cfg.SOLVER.LR_SCHEDULER_NAME = "CosineWarmRestarts"
    cfg.SOLVER.BASE_LR, cfg.SOLVER.BASE_LR_END = 1e-4, 1e-6
    cfg.SOLVER.MAX_ITER, cfg.SOLVER.WARMUP_ITERS = 1500, 0
    cfg.SOLVER.COSINE_RESTARTS = (100, 300, 700)
    optimizer = torch.optim.AdamW(QuadModel().parameters(), lr=1e-4)
    scheduler = build_lr_scheduler(cfg, optimizer)
    lrs = []
    for _ in range(1500):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    for restart in (0, 100, 300, 700):
        assert lrs[restart] == pytest.approx(1e-4)
    for end in (99, 299, 699, 1499):
        assert lrs[end] == pytest.approx(1e-6, rel=0.05)  # discrete last step of the cosine
    assert lrs[50] == pytest.approx((1e-4 + 1e-6) / 2, rel=0.02)  # middle of the first cosine
    assert lrs[500] == pytest.approx((1e-4 + 1e-6) / 2, rel=0.02)  # middle of [300, 700)
    plain = cosine_warm_restarts((), 10, 0.0)
    assert plain(0.0) == pytest.approx(1.0) and plain(0.5) == pytest.approx(0.5)


def test_acc_under_two_cpu_processes(tmp_path):
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        folder = tmp_path / "data" / name
        folder.mkdir(parents=True)
        for i in range(2):
            labels = np.zeros((20, 20), np.uint16)
            top, left = rng.integers(0, 10, 2)
            labels[top:top + 8, left:left + 8] = 1
            tifffile.imwrite(folder / f"img{i}.tif", (labels * 900 + 50).astype(np.uint16))
            tifffile.imwrite(folder / f"lab{i}.tif", labels)
    out = tmp_path / "run"
    out.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, str(REPO / "tests" / "schemes_dist_worker.py"),
                             str(tmp_path / "data"), str(out)], env=env, cwd=str(REPO),
                            capture_output=True, text=True, timeout=110)
    assert result.returncode == 0, result.stderr[-3000:]
    reports = json.loads((out / "acc_report.json").read_text())
    assert len(reports) == 2 and reports[0]["world_size"] == 2
    for report in reports:
        assert report["step"] == 3  # 3 iterations = 3 optimizer steps ...
        assert report["forward"] == 6  # ... of 2 minibatches each (one per dataset)
    assert reports[0]["digest"] == reports[1]["digest"]  # gradients were all-reduced
