"""Reduce-on-plateau learning rate driven by the event storage (``LR_SCHEDULER_NAME "ReduceLROnPlateau"``).

detectron2's LR hook calls ``scheduler.step()`` after every iteration without a metric. This
scheduler looks the metric up itself: when ``SOLVER.PLATEAU.METRIC`` (default
``val_total_loss``, written by the validation-loss hook every ``SOLVER.VAL_LOSS_PERIOD``
iterations) has a value newer than the last one used, torch's ``ReduceLROnPlateau`` steps on
it; when that metric is never written (no validation set), it steps every
``SOLVER.PLATEAU.PERIOD`` iterations on the median training ``total_loss`` of that window.
Patience therefore counts metric updates (validation passes or periods), like Keras' epochs.
"""
from __future__ import annotations

import torch
from detectron2.config import CfgNode
from detectron2.utils.events import get_event_storage


class StoragePlateauScheduler(torch.optim.lr_scheduler.ReduceLROnPlateau):
    """``ReduceLROnPlateau`` whose metric comes from detectron2's event storage (module docstring)."""

    def __init__(self, optimizer: torch.optim.Optimizer, metric: str = "val_total_loss", period: int = 100,
                 factor: float = 0.1, patience: int = 10, threshold: float = 1e-4, min_lr: float = 0.0):
        super().__init__(optimizer, mode="min", factor=factor, patience=patience, threshold=threshold,
                         threshold_mode="abs", min_lr=min_lr)
        self.metric, self.period = str(metric), max(int(period), 1)
        self.calls, self.metric_iter = 0, -1

    def step(self, metrics=None, epoch=None) -> None:  # noqa: D102  (see the class docstring)
        if metrics is not None:
            super().step(metrics)
            return
        self.calls += 1
        try:
            storage = get_event_storage()
        except AssertionError:  # outside a training loop: nothing to read
            return
        latest = storage.latest()
        if self.metric in latest:
            value, iteration = latest[self.metric]
            if iteration > self.metric_iter:
                self.metric_iter = iteration
                super().step(float(value))
        elif self.calls % self.period == 0 and "total_loss" in storage.histories():
            super().step(float(storage.history("total_loss").median(self.period)))


def build_plateau_scheduler(cfg: CfgNode, optimizer: torch.optim.Optimizer) -> StoragePlateauScheduler:
    """The scheduler of ``SOLVER.PLATEAU.*``."""
    p = cfg.SOLVER.PLATEAU
    return StoragePlateauScheduler(optimizer, p.METRIC, p.PERIOD, p.FACTOR, p.PATIENCE, p.THRESHOLD, p.MIN_LR)
