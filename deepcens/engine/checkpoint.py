"""Checkpoints written atomically and loaded safely.

detectron2's checkpointer writes ``model_XXXX.pth`` and ``last_checkpoint`` in place, so a
crash while saving leaves a truncated file that ``--resume`` then trips over. Here both are
written to a temporary file in the same folder and renamed. Files load with
``torch.load(weights_only=True)``; a file that needs arbitrary unpickling is refused unless
``RUN.ALLOW_UNSAFE_CHECKPOINTS`` is set.
"""
from __future__ import annotations

import os
import pickle
from typing import Any

import torch
from detectron2.checkpoint import DetectionCheckpointer

from deepcens.errors import DeepcensInputError
from deepcens.utils.atomic import atomic_write


class DeepcensCheckpointer(DetectionCheckpointer):
    """A ``DetectionCheckpointer`` with atomic saves and weights-only loading."""

    def __init__(self, model, save_dir: str = "", *, allow_unsafe: bool = False, **kwargs: Any):
        super().__init__(model, save_dir, **kwargs)
        self.allow_unsafe = allow_unsafe

    def save(self, name: str, **kwargs: Any) -> None:
        if not self.save_dir or not self.save_to_disk:
            return
        trainer = self.checkpointables.get("trainer")
        if trainer is not None and getattr(trainer, "stop_saving", False):
            # training stopped on a non-finite loss: keep the last good checkpoint as the last one
            self.logger.warning(f"Not saving {name}: training stopped on a non-finite loss")
            return
        data = {"model": self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(kwargs)
        basename = f"{name}.pth"
        save_file = os.path.join(self.save_dir, basename)
        self.logger.info(f"Saving checkpoint to {save_file}")
        with atomic_write(save_file, "wb") as handle:
            torch.save(data, handle)
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        with atomic_write(os.path.join(self.save_dir, "last_checkpoint"), "w") as handle:
            handle.write(last_filename_basename)

    def _torch_load(self, filename: str) -> Any:
        from deepcens.engine.weights import check_torch_file

        check_torch_file(filename)  # random bytes are "not a torch checkpoint", not an unpickling question
        try:
            return torch.load(filename, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            if not self.allow_unsafe:
                raise DeepcensInputError(
                    filename,
                    "checkpoint needs arbitrary unpickling, which can run code; load it only if you "
                    "trust it, with RUN.ALLOW_UNSAFE_CHECKPOINTS True "
                    f"({str(exc).splitlines()[0]})") from None
            self.logger.warning(f"Loading {filename} with full unpickling (RUN.ALLOW_UNSAFE_CHECKPOINTS)")
            return torch.load(filename, map_location="cpu", weights_only=False)
        except (RuntimeError, EOFError, OSError) as exc:
            raise DeepcensInputError(filename, f"cannot read checkpoint ({exc})") from None

    def _load_file(self, filename: str) -> dict:
        if filename.endswith((".pkl", ".pyth")) and not self.allow_unsafe:
            raise DeepcensInputError(
                filename, "pickle checkpoints (.pkl/.pyth) need arbitrary unpickling; convert to a "
                ".pth state_dict or set RUN.ALLOW_UNSAFE_CHECKPOINTS True if you trust the file")
        return super()._load_file(filename)
