"""A console progress bar for training when ``cfg.RUN.CONSOLE == "progress"``."""
from __future__ import annotations

from detectron2.engine import HookBase
from detectron2.utils import comm
from tqdm import tqdm


class ProgressBarHook(HookBase):
    """One tqdm bar over the training iterations, showing the (rank-averaged) total loss."""

    def __init__(self, max_iter: int):
        self._max_iter = max_iter
        self._bar: tqdm | None = None

    def before_train(self) -> None:
        if comm.is_main_process():
            self._bar = tqdm(total=self._max_iter, initial=self.trainer.start_iter, desc="training",
                             unit="it", dynamic_ncols=True)

    def after_step(self) -> None:
        if self._bar is None:
            return
        self._bar.update(1)
        history = self.trainer.storage.histories().get("total_loss")
        if history is not None and len(history.values()):
            self._bar.set_postfix(loss=f"{history.median(20):.3f}")

    def after_train(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
