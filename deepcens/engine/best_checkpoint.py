"""Which checkpoint is kept as ``model_best.pth``: a criterion over the validation history.

``SOLVER.BEST_CHECKPOINT_CRITERION``:

- ``metric``: the best value of ``SOLVER.BEST_CHECKPOINT_METRIC`` (``BEST_CHECKPOINT_MODE``
  max or min), as detectron2's ``BestCheckpointer``;
- ``loss``: the lowest validation loss (``val_total_loss``, logged by the validation-loss hook);
- ``metric_then_loss``: the DeepCeNS paper's rule ("the lowest validation loss and higher
  validation average precision"): a checkpoint replaces the kept one when its metric is better
  by more than ``BEST_CHECKPOINT_TOLERANCE``, or when its metric is within that tolerance of the
  kept one's and its validation loss is lower.

``SOLVER.BEST_CHECKPOINT_AGGREGATE`` says how the metric is read when several validation sets
are evaluated: ``single`` reads the key as given; ``mean_over_datasets`` averages
``<dataset>/<metric>`` over ``DATASETS.VAL`` (the XB-Net paper selects its universal model by
the mean over data sets, so that a large data set does not outweigh the others, Sec. 5.4).
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Mapping, Sequence

from detectron2.config import CfgNode
from detectron2.engine.hooks import BestCheckpointer

logger = logging.getLogger(__name__)

CRITERIA = ("metric", "loss", "metric_then_loss")
AGGREGATES = ("single", "mean_over_datasets")
VAL_LOSS_KEY = "val_total_loss"


@dataclass(frozen=True)
class Candidate:
    """One evaluated checkpoint: its iteration, selection metric and validation loss."""

    iteration: int
    metric: float | None
    loss: float | None


class CheckpointCriterion:
    """Decides whether a newly evaluated checkpoint beats the kept one (see the module docstring)."""

    def __init__(self, criterion: str = "metric", metric: str = "", mode: str = "max", tolerance: float = 0.0,
                 aggregate: str = "single", val_datasets: Sequence[str] = ()):
        if criterion not in CRITERIA:
            raise ValueError(f"SOLVER.BEST_CHECKPOINT_CRITERION must be one of {CRITERIA}, got {criterion!r}")
        if aggregate not in AGGREGATES:
            raise ValueError(f"SOLVER.BEST_CHECKPOINT_AGGREGATE must be one of {AGGREGATES}, got {aggregate!r}")
        if mode not in ("max", "min"):
            raise ValueError(f"SOLVER.BEST_CHECKPOINT_MODE must be max or min, got {mode!r}")
        if criterion != "loss" and not metric:
            raise ValueError(f"SOLVER.BEST_CHECKPOINT_CRITERION {criterion} needs SOLVER.BEST_CHECKPOINT_METRIC")
        if tolerance < 0:
            raise ValueError(f"SOLVER.BEST_CHECKPOINT_TOLERANCE must be >= 0, got {tolerance}")
        self.criterion, self.metric, self.mode = criterion, metric, mode
        self.tolerance, self.aggregate = float(tolerance), aggregate
        self.val_datasets = tuple(val_datasets)

    @classmethod
    def from_config(cls, cfg: CfgNode) -> "CheckpointCriterion":
        s = cfg.SOLVER
        return cls(s.BEST_CHECKPOINT_CRITERION, s.BEST_CHECKPOINT_METRIC, s.BEST_CHECKPOINT_MODE,
                   s.BEST_CHECKPOINT_TOLERANCE, s.BEST_CHECKPOINT_AGGREGATE, tuple(cfg.DATASETS.VAL))

    @property
    def description(self) -> str:
        if self.criterion == "loss":
            return VAL_LOSS_KEY
        metric = f"mean over datasets of {self.metric}" if self.aggregate == "mean_over_datasets" else self.metric
        return metric + (f" (ties within {self.tolerance:g}: lower {VAL_LOSS_KEY})"
                         if self.criterion == "metric_then_loss" else "")

    def metric_value(self, scalars: Mapping[str, float]) -> float | None:
        """The selection metric from flattened evaluation scalars (``None`` when absent or not finite)."""
        if self.aggregate == "single" or len(self.val_datasets) <= 1:
            keys = [self.metric]
            if self.metric not in scalars and len(self.val_datasets) == 1:
                keys = [f"{self.val_datasets[0]}/{self.metric}"]
        else:
            keys = [f"{name}/{self.metric}" for name in self.val_datasets]
        values = [scalars.get(key) for key in keys]
        if any(v is None or not math.isfinite(float(v)) for v in values):
            return None
        return float(sum(values) / len(values))

    def candidate(self, iteration: int, scalars: Mapping[str, float]) -> Candidate:
        loss = scalars.get(VAL_LOSS_KEY)
        loss = float(loss) if loss is not None and math.isfinite(float(loss)) else None
        metric = None if self.criterion == "loss" else self.metric_value(scalars)
        return Candidate(iteration, metric, loss)

    def usable(self, candidate: Candidate) -> bool:
        if self.criterion == "metric":
            return candidate.metric is not None
        if self.criterion == "loss":
            return candidate.loss is not None
        return candidate.metric is not None and candidate.loss is not None

    def better(self, candidate: Candidate, best: Candidate | None) -> bool:
        """Whether ``candidate`` replaces ``best`` (``None``: nothing kept yet)."""
        if not self.usable(candidate):
            return False
        if best is None:
            return True
        if self.criterion == "loss":
            return candidate.loss < best.loss
        sign = 1.0 if self.mode == "max" else -1.0
        gain = sign * (candidate.metric - best.metric)
        if self.criterion == "metric":
            return gain > 0
        return gain > self.tolerance or (gain >= -self.tolerance and candidate.loss < best.loss)

    def select(self, history: Sequence[tuple[int, Mapping[str, float]]]) -> Candidate | None:
        """The checkpoint kept after a whole history of ``(iteration, scalars)`` evaluations."""
        best = None
        for iteration, scalars in history:
            candidate = self.candidate(iteration, scalars)
            if self.better(candidate, best):
                best = candidate
        return best


class CriterionBestCheckpointer(BestCheckpointer):
    """detectron2's ``BestCheckpointer`` (same periods, same file) deciding by a :class:`CheckpointCriterion`."""

    def __init__(self, eval_period: int, checkpointer, criterion: CheckpointCriterion,
                 file_prefix: str = "model_best"):
        super().__init__(eval_period, checkpointer, criterion.description, mode="max", file_prefix=file_prefix)
        self.criterion = criterion
        self.best: Candidate | None = None

    def _best_checking(self) -> None:
        latest = self.trainer.storage.latest()
        iteration = self.trainer.iter
        scalars = {key: value for key, (value, _) in latest.items()}
        candidate = self.criterion.candidate(iteration, scalars)
        if not self.criterion.usable(candidate):
            logger.warning(f"Best checkpoint: {self.criterion.description} was not computed at iteration "
                           f"{iteration + 1}; nothing saved")
            return
        if self.criterion.better(candidate, self.best):
            self._checkpointer.save(self._file_prefix, iteration=iteration)
            logger.info(f"Saved {self._file_prefix} at iteration {iteration + 1}: metric {candidate.metric}, "
                        f"validation loss {candidate.loss} ({self.criterion.description})")
            self.best = candidate
            self.best_metric, self.best_iter = candidate.metric, iteration
