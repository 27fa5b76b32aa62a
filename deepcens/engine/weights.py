"""Loading trained weights for inference, refusing checkpoints that do not fit the model.

A checkpoint whose keys match nothing, or whose tensors have other shapes, would otherwise
load "successfully" and leave random parameters: prediction and evaluation then report
plausible numbers from a random model. :func:`load_inference_weights` loads through the
project's checkpointer and refuses such a file, listing the parameters left uninitialised,
unless the caller explicitly allows random parameters. :func:`check_torch_file` tells a
file that is not a torch checkpoint at all from one that needs unsafe unpickling.
"""
from __future__ import annotations

import logging
import os
from typing import Sequence

import torch

from deepcens.engine.checkpoint import DeepcensCheckpointer
from deepcens.errors import DeepcensInputError

logger = logging.getLogger(__name__)

_ZIP_MAGIC = b"PK\x03\x04"  # torch.save's default (zip) format
_PICKLE_PROTOCOL = 0x80  # legacy torch.save and detectron2 .pkl files start with a pickle PROTO opcode
ALLOW_OPTION = "--allow-random-weights"


def check_torch_file(path: str) -> None:
    """Raise ``DeepcensInputError`` unless ``path`` starts like a torch / pickle checkpoint."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(4)
    except OSError as exc:
        raise DeepcensInputError(path, f"cannot open checkpoint ({exc.strerror or exc})") from None
    if not head:
        raise DeepcensInputError(path, "empty file: not a torch checkpoint")
    if head != _ZIP_MAGIC and head[0] != _PICKLE_PROTOCOL:
        raise DeepcensInputError(path, "not a torch checkpoint (neither a torch.save zip nor a pickle)")


def _describe(names: Sequence[str], limit: int = 8) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def load_inference_weights(model: torch.nn.Module, weights: str, *, allow_unsafe: bool = False,
                           allow_random: bool = False, option: str = ALLOW_OPTION) -> list[str]:
    """Load ``weights`` into ``model`` for inference; return the parameters left uninitialised.

    Empty ``weights``, missing parameters or shape mismatches raise ``DeepcensInputError``
    (naming ``option``, the switch that allows them) unless ``allow_random``; then they are
    logged as a warning and inference runs with those parameters random.
    """
    parameters = [name for name, _ in model.named_parameters()]
    if not weights:
        if not allow_random:
            raise DeepcensInputError(None, f"no weights given (MODEL.WEIGHTS is empty): every parameter would be "
                                     f"random; give MODEL.WEIGHTS, or {option} to run a random model")
        logger.warning("MODEL.WEIGHTS is empty: running with randomly initialised weights")
        return parameters
    if "://" not in weights:
        if not os.path.isfile(weights):
            raise DeepcensInputError(weights, "MODEL.WEIGHTS file not found")
        check_torch_file(weights)
    checkpointer = _RecordingCheckpointer(model, allow_unsafe=allow_unsafe)
    checkpointer.load(weights)
    incompatible = checkpointer.incompatible
    missing = sorted(set(incompatible.missing_keys if incompatible else []) & set(parameters))
    wrong_shape = sorted(key for key, *_ in (incompatible.incorrect_shapes if incompatible else []))
    uninitialised = sorted(set(missing) | (set(wrong_shape) & set(parameters)))
    if uninitialised:
        problem = (f"checkpoint leaves {len(uninitialised)} of {len(parameters)} model parameters uninitialised "
                   f"({_describe(uninitialised)})")
        if wrong_shape:
            problem += f"; shapes differ for {_describe(wrong_shape, 4)}"
        if not allow_random:
            raise DeepcensInputError(weights, f"{problem}: wrong model or config? ({option} runs anyway)")
        logger.warning(f"{weights}: {problem}; running with those parameters random ({option})")
    return uninitialised


class _RecordingCheckpointer(DeepcensCheckpointer):
    """Keeps what ``_load_model`` found incompatible (fvcore only logs it)."""

    incompatible = None

    def _load_model(self, checkpoint):
        self.incompatible = super()._load_model(checkpoint)
        return self.incompatible
