"""Reading a weights file into a plain state dict: the one reader the trunk and encoder loaders share."""
from __future__ import annotations

import torch

from deepcens.errors import DeepcensInputError


def read_state_dict(path: str, what: str, allow_unsafe: bool = False, name: str | None = None) -> dict[str, torch.Tensor]:
    """The ``{key: tensor}`` dict saved in the local file ``path``.

    A ``{"state_dict": ...}`` / ``{"model": ...}`` wrapper is unwrapped. Only tensors are read
    (``torch.load(weights_only=True)``) unless ``allow_unsafe``. Errors name ``name`` (default
    ``path``; e.g. the URL the file came from) and ``what`` the file should hold.
    """
    name = name or path
    try:
        obj = torch.load(path, map_location="cpu", weights_only=not allow_unsafe)
    except Exception as exc:
        raise DeepcensInputError(name, f"cannot read {what} ({type(exc).__name__}: {exc})") from exc
    for wrapper in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise DeepcensInputError(name, "not a state dict of tensors")
    return obj
