"""Learning-rate schedules: detectron2's, plus the ones deepcens methods need.

``SOLVER.LR_SCHEDULER_NAME "CosineWarmRestarts"``: cosine annealing with warm restarts
(SGDR, Loshchilov & Hutter), as XB-Net trains: from ``SOLVER.BASE_LR`` down to
``SOLVER.BASE_LR_END`` within each segment, restarting at the iterations
``SOLVER.COSINE_RESTARTS`` (the paper: 1e-4 -> 1e-6, restarts at epochs 100, 300, 700 of
1500). Built from fvcore ``CosineParamScheduler`` segments in a ``CompositeParamScheduler``,
wrapped in detectron2's warm-up like its own schedules (``SOLVER.WARMUP_ITERS`` 0 = none).
"""
from __future__ import annotations

from typing import Sequence

import torch
from detectron2.config import CfgNode
from detectron2.solver import LRMultiplier, WarmupParamScheduler
from detectron2.solver import build_lr_scheduler as build_detectron2_lr_scheduler
from fvcore.common.param_scheduler import CompositeParamScheduler, CosineParamScheduler, ParamScheduler


def cosine_warm_restarts(restarts: Sequence[int], max_iter: int, end_value: float) -> ParamScheduler:
    """LR multiplier over ``max_iter`` iterations: cosine from 1 to ``end_value`` in each segment
    between consecutive restart iterations (restarts outside ``(0, max_iter)`` are dropped)."""
    if max_iter <= 0:
        raise ValueError(f"SOLVER.MAX_ITER must be positive, got {max_iter}")
    if not 0.0 <= end_value <= 1.0:
        raise ValueError(f"SOLVER.BASE_LR_END / BASE_LR must be in [0, 1], got {end_value}")
    bounds = [0] + sorted({int(r) for r in restarts if 0 < int(r) < max_iter}) + [max_iter]
    lengths = [(b - a) / max_iter for a, b in zip(bounds[:-1], bounds[1:])]
    if len(lengths) == 1:
        return CosineParamScheduler(1.0, end_value)
    lengths[-1] = 1.0 - sum(lengths[:-1])  # exact sum of 1 for fvcore's check
    return CompositeParamScheduler(
        [CosineParamScheduler(1.0, end_value) for _ in lengths], lengths, ["rescaled"] * len(lengths))


def build_lr_scheduler(cfg: CfgNode, optimizer: torch.optim.Optimizer):
    """The scheduler named by ``cfg.SOLVER.LR_SCHEDULER_NAME``."""
    if cfg.SOLVER.LR_SCHEDULER_NAME == "ReduceLROnPlateau":
        from deepcens.engine.plateau import build_plateau_scheduler

        return build_plateau_scheduler(cfg, optimizer)
    if cfg.SOLVER.LR_SCHEDULER_NAME != "CosineWarmRestarts":
        return build_detectron2_lr_scheduler(cfg, optimizer)
    max_iter = cfg.SOLVER.MAX_ITER
    sched = cosine_warm_restarts(cfg.SOLVER.COSINE_RESTARTS, max_iter, cfg.SOLVER.BASE_LR_END / cfg.SOLVER.BASE_LR)
    if cfg.SOLVER.WARMUP_ITERS > 0:
        sched = WarmupParamScheduler(sched, cfg.SOLVER.WARMUP_FACTOR, min(cfg.SOLVER.WARMUP_ITERS / max_iter, 1.0),
                                     cfg.SOLVER.WARMUP_METHOD, cfg.SOLVER.RESCALE_INTERVAL)
    return LRMultiplier(optimizer, multiplier=sched, max_iter=max_iter)
