"""Reliability hooks: exact resume state, non-finite loss stop, bad-input accounting.

- :class:`ResumeStateHook` puts random states and data positions into every checkpoint and
  restores them on ``--resume`` (see :mod:`deepcens.engine.resume`). It also keeps the
  training random stream independent of what other hooks do between steps (evaluation,
  validation loss draw random numbers), so a run evaluated every k iterations and a run
  resumed in the middle follow the same stream.
- :func:`nonfinite_loss_guard` turns detectron2's ``FloatingPointError`` (or a non-finite
  ``total_loss`` a custom loop logged) into :class:`NonFiniteLossError`, whose one-line
  message names the iteration and the last good checkpoint, and stops all further saves
  so that checkpoint stays the last one (``SOLVER.STOP_ON_NONFINITE_LOSS``).
- :class:`BadInputReportHook` logs, at the end of training, how many training inputs the
  ``skip`` policy of ``DATASETS.BAD_INPUT_POLICY`` left out.
"""
from __future__ import annotations

import contextlib
import logging
import math
import os
from typing import Any, Iterator

from detectron2.config import CfgNode
from detectron2.engine import hooks
from detectron2.utils import comm

from deepcens.engine.resume import capture_rng_state, find_resumable_loaders, restore_rng_state
from deepcens.utils.metrics_log import SafeJSONWriter

logger = logging.getLogger(__name__)


class NonFiniteLossError(FloatingPointError):
    """Training stopped because the loss became NaN or infinite."""


def last_checkpoint_path(trainer: Any) -> str | None:
    """The checkpoint ``last_checkpoint`` points to, or ``None``."""
    checkpointer = getattr(trainer, "checkpointer", None)
    if checkpointer is None or not checkpointer.has_checkpoint():
        return None
    return checkpointer.get_checkpoint_file()


def _nonfinite_message(trainer: Any, detail: str) -> str:
    last = last_checkpoint_path(trainer)
    where = f"last good checkpoint: {last}" if last else "no checkpoint was saved yet"
    return f"loss became NaN or infinite at iteration {trainer.iter} ({detail}); training stopped; {where}"


@contextlib.contextmanager
def nonfinite_loss_guard(trainer: Any) -> Iterator[None]:
    """Wrap one training step (``Trainer.run_step``).

    With ``SOLVER.STOP_ON_NONFINITE_LOSS`` a non-finite loss raises
    :class:`NonFiniteLossError` and marks the trainer so no checkpoint is written afterwards
    (model_final included). Without it, the step whose loss is non-finite is skipped (detectron2
    detects it before ``optimizer.step``) and counted; the count is logged at the end.
    """
    stop = bool(trainer.cfg.SOLVER.STOP_ON_NONFINITE_LOSS)
    try:
        yield
    except NonFiniteLossError:
        raise
    except FloatingPointError as error:
        detail = str(error).splitlines()[-1].strip() or "non-finite loss"
        if stop:
            trainer.stop_saving = True
            raise NonFiniteLossError(_nonfinite_message(trainer, detail)) from None
        trainer.skipped_nonfinite_steps = getattr(trainer, "skipped_nonfinite_steps", 0) + 1
        logger.warning(f"Non-finite loss at iteration {trainer.iter}: optimizer step skipped ({detail})")
        return
    latest = trainer.storage.latest().get("total_loss")
    if latest is not None and latest[1] == trainer.iter and not math.isfinite(float(latest[0])):
        if stop:  # a loop that logs its loss without detectron2's check; the step already ran
            trainer.stop_saving = True
            raise NonFiniteLossError(_nonfinite_message(trainer, f"total_loss = {latest[0]}"))
        logger.warning(f"Non-finite total_loss at iteration {trainer.iter}")


class ResumeStateHook(hooks.HookBase):
    """Save / restore random states and loader positions; isolate the training random stream.

    Register it first: its ``after_step`` snapshots the generators right after the step
    (before other hooks run), its ``before_step`` puts that snapshot back, so the states a
    checkpoint stores are exactly those the next step starts from.
    """

    def __init__(self, cfg: CfgNode):
        self._snapshot: dict | None = None
        self._rank_states: list[dict] | None = None
        self._loaded_rng: dict | None = None
        self._period = int(cfg.SOLVER.CHECKPOINT_PERIOD)
        self._metrics_file = os.path.join(cfg.OUTPUT_DIR, "metrics.json")

    def _loaders(self):
        loop = getattr(self.trainer, "_trainer", self.trainer)
        return find_resumable_loaders(loop)

    def _local_state(self) -> dict:
        return {"rng": self._snapshot, "loaders": [loader.state_dict() for loader in self._loaders()]}

    def before_train(self) -> None:
        loop = getattr(self.trainer, "_trainer", self.trainer)
        if self._loaded_rng is not None:
            if hasattr(loop, "start_iterators"):
                loop.start_iterators()  # create the iterators now: creating one may draw random numbers
            self._snapshot = self._loaded_rng
            self._loaded_rng = None
        if self.trainer.start_iter > 0:
            for hook in self.trainer._hooks:
                for writer in getattr(hook, "_writers", []):
                    if isinstance(writer, SafeJSONWriter):
                        writer.truncate_from(self.trainer.start_iter)

    def before_step(self) -> None:
        if self._snapshot is not None:
            restore_rng_state(self._snapshot)

    def after_step(self) -> None:
        self._snapshot = capture_rng_state()
        if comm.get_world_size() > 1:
            next_iter = self.trainer.iter + 1
            if (self._period > 0 and next_iter % self._period == 0) or next_iter >= self.trainer.max_iter:
                self._rank_states = comm.all_gather(self._local_state())

    def state_dict(self) -> dict:
        if self._snapshot is None:
            return {}
        if comm.get_world_size() > 1 and self._rank_states is not None:
            return {"ranks": self._rank_states}
        return {"ranks": [self._local_state()]}

    def load_state_dict(self, state: dict) -> None:
        ranks = state.get("ranks", [])
        if not ranks:
            return
        rank = comm.get_rank()
        if len(ranks) != comm.get_world_size():
            logger.warning(f"Checkpoint holds random states of {len(ranks)} processes, this run has "
                           f"{comm.get_world_size()}: data order and random states are not restored exactly")
        local = ranks[rank] if rank < len(ranks) else ranks[0]
        self._loaded_rng = local["rng"]
        loaders = self._loaders()
        if len(loaders) != len(local["loaders"]):
            logger.warning("Checkpoint holds positions of another number of training loaders: not restored")
            return
        for loader, loader_state in zip(loaders, local["loaders"]):
            loader.load_state_dict(loader_state)


class BadInputReportHook(hooks.HookBase):
    """At the end of training, log how many inputs the ``skip`` bad-input policy left out."""

    def after_train(self) -> None:
        from deepcens.data.mappers import bad_input_skip_count

        skipped = bad_input_skip_count()  # this process only: no collective after a possible crash
        if skipped:
            where = f" on rank {comm.get_rank()}" if comm.get_world_size() > 1 else ""
            logger.warning(f"{skipped} training inputs could not be read and were skipped{where} "
                           "(DATASETS.BAD_INPUT_POLICY skip); see the warnings above for the files")
        nonfinite = getattr(self.trainer, "skipped_nonfinite_steps", 0)
        if nonfinite:
            logger.warning(f"{nonfinite} optimizer steps were skipped because the loss was not finite")
