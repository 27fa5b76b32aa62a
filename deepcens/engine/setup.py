"""Config set-up shared by the tools: detectron2 defaults + deepcens keys + file + options."""
from __future__ import annotations

import logging
import os

import torch
from detectron2.config import CfgNode, get_cfg

from deepcens.config import add_deepcens_config
from deepcens.errors import DeepcensInputError

logger = logging.getLogger(__name__)


def load_config(config_file: str, opts: list[str] | None = None, freeze: bool = True) -> CfgNode:
    """Build a config from a yaml file (``_BASE_`` inheritance) and trailing ``KEY VALUE`` options.

    A config asking for CUDA on a machine without a GPU falls back to the CPU, with a warning.
    """
    if not os.path.isfile(config_file):
        raise DeepcensInputError(config_file, "config file not found")
    cfg = get_cfg()
    add_deepcens_config(cfg)
    try:
        cfg.merge_from_file(config_file)
        cfg.merge_from_list(list(opts or []))
    except (KeyError, ValueError, AssertionError) as exc:
        raise DeepcensInputError(config_file, f"invalid config: {exc}") from None
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        logger.warning("No CUDA device: running on the CPU (MODEL.DEVICE cpu)")
        cfg.MODEL.DEVICE = "cpu"
    if freeze:
        cfg.freeze()
    return cfg
