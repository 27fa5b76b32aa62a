"""Keep known third-party noise off the console.

Every ``deepcens`` tool starts by importing this package, and importing torch / detectron2 /
resnest prints deprecation notes a user can do nothing about (``torch.jit.script`` is
deprecated, ``No CUDA runtime is found, using CUDA_HOME``, the ``torch.meshgrid`` indexing
note, the ``is_fx_tracing`` note). :func:`quiet_third_party_noise` hides exactly those
messages, by message text and logger name, so any other warning still shows. It runs once,
first thing in ``deepcens/__init__.py``, before those libraries are imported.
"""
from __future__ import annotations

import logging
import warnings

# (category, start of the message) of Python warnings raised inside third-party code
_WARNINGS = (
    (FutureWarning, r"`torch\.jit\.script` is deprecated"),
    (UserWarning, r"torch\.meshgrid: in an upcoming release, it will be required to pass the indexing argument"),
)
# torch modules that log notes through ``logging`` (torch's own glog-style console handler)
_QUIET_LOGGERS = ("torch.utils.cpp_extension", "torch.fx._symbolic_trace")


def quiet_third_party_noise() -> None:
    """Install the warning filters and logger levels above (idempotent)."""
    for category, message in _WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)
    for name in _QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
