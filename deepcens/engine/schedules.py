"""Learning-rate schedules: detectron2's, plus the ones deepcens methods need."""
from __future__ import annotations

import torch
from detectron2.config import CfgNode
from detectron2.solver import build_lr_scheduler as build_detectron2_lr_scheduler


def build_lr_scheduler(cfg: CfgNode, optimizer: torch.optim.Optimizer):
    """The scheduler named by ``cfg.SOLVER.LR_SCHEDULER_NAME``."""
    return build_detectron2_lr_scheduler(cfg, optimizer)
