"""Schedules stated in epochs (XB-Net paper Table 3), turned into iterations from the training data.

The XB-Net paper counts training in epochs: for individual training one epoch is every
minibatch of the data set once (``number of samples // batch``), for universal training it is
20 minibatches from each data set. ``SOLVER.EPOCHS`` > 0 sets ``SOLVER.MAX_ITER`` from the
registered training data when a run starts, and with it ``SOLVER.RESTART_EPOCHS`` (cosine
restarts) and ``TEST.EVAL_PERIOD_EPOCHS``; configs for data that is not shipped (3D CTC sets)
state the paper's epochs instead of iteration counts that depend on the data.
"""
from __future__ import annotations

import logging

from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog

logger = logging.getLogger(__name__)

UNIVERSAL_MINIBATCHES_PER_DATASET = 20  # paper Table 3: one universal epoch = 20 minibatches of each data set


def iterations_per_epoch(cfg: CfgNode) -> int:
    """Training iterations in one epoch of ``cfg`` (see the module docstring).

    Individual training (one training set, or the ``Single`` loop over concatenated sets):
    samples // ``IMS_PER_BATCH``. Universal schemes over N sets: 20 x N minibatches, i.e. 20 x N
    iterations, or 20 steps for ``Acc`` (each of its steps draws one minibatch from every set).
    """
    names = list(cfg.DATASETS.TRAIN)
    scheme = cfg.SOLVER.TRAIN_SCHEME
    if len(names) > 1 and scheme != "Single":
        return UNIVERSAL_MINIBATCHES_PER_DATASET * (1 if scheme == "Acc" else len(names))
    samples = sum(len(DatasetCatalog.get(name)) for name in names)
    per_epoch = samples // int(cfg.SOLVER.IMS_PER_BATCH)
    if per_epoch < 1:
        raise ValueError(f"SOLVER.EPOCHS: {samples} training samples in {names} make no full batch of "
                         f"{cfg.SOLVER.IMS_PER_BATCH}")
    return per_epoch


def apply_epoch_schedule(cfg: CfgNode) -> CfgNode:
    """A frozen copy of ``cfg`` with ``MAX_ITER``, ``COSINE_RESTARTS`` and ``EVAL_PERIOD`` set from
    the epoch keys (``cfg`` itself when ``SOLVER.EPOCHS`` is 0)."""
    epochs = int(cfg.SOLVER.EPOCHS)
    if epochs <= 0:
        return cfg
    per_epoch = iterations_per_epoch(cfg)
    cfg = cfg.clone()
    cfg.defrost()
    cfg.SOLVER.MAX_ITER = epochs * per_epoch
    cfg.SOLVER.COSINE_RESTARTS = tuple(int(e) * per_epoch for e in cfg.SOLVER.RESTART_EPOCHS)
    if int(cfg.TEST.EVAL_PERIOD_EPOCHS) > 0:
        cfg.TEST.EVAL_PERIOD = int(cfg.TEST.EVAL_PERIOD_EPOCHS) * per_epoch
    cfg.freeze()
    logger.info(f"{epochs} epochs of {per_epoch} iterations: SOLVER.MAX_ITER {cfg.SOLVER.MAX_ITER}, "
                f"COSINE_RESTARTS {tuple(cfg.SOLVER.COSINE_RESTARTS)}, TEST.EVAL_PERIOD {cfg.TEST.EVAL_PERIOD}")
    return cfg
