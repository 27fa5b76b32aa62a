"""Config set-up shared by the tools: detectron2 defaults + deepcens keys + file + options."""
from __future__ import annotations

import logging
import os
import re

import torch
import yaml
from detectron2.config import CfgNode, get_cfg

from deepcens.config import add_deepcens_config
from deepcens.errors import DeepcensInputError

logger = logging.getLogger(__name__)

DEVICE = re.compile(r"cpu|cuda(:\d+)?")


def load_config(config_file: str, opts: list[str] | None = None, freeze: bool = True) -> CfgNode:
    """Build a config from a yaml file (``_BASE_`` inheritance) and trailing ``KEY VALUE`` options.

    A config asking for CUDA on a machine without a GPU falls back to the CPU, with a warning.
    """
    if not os.path.isfile(config_file):
        raise DeepcensInputError(config_file, "config file not found")
    cfg = get_cfg()
    add_deepcens_config(cfg)
    check_config_file(config_file)
    try:
        cfg.merge_from_file(config_file)
    except (KeyError, ValueError, AssertionError, OSError, TypeError, AttributeError, yaml.YAMLError) as exc:
        raise DeepcensInputError(config_file, "invalid config: " + " ".join(str(exc).split())) from None
    try:
        cfg.merge_from_list(list(opts or []))
    except (KeyError, ValueError, AssertionError) as exc:
        raise DeepcensInputError(config_file, "invalid option: " + " ".join(str(exc).split())) from None
    if not DEVICE.fullmatch(cfg.MODEL.DEVICE):
        raise DeepcensInputError(config_file, f"MODEL.DEVICE {cfg.MODEL.DEVICE!r} is not cpu, cuda or cuda:N")
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        logger.warning("No CUDA device: running on the CPU (MODEL.DEVICE cpu)")
        cfg.MODEL.DEVICE = "cpu"
    if freeze:
        cfg.freeze()
    return cfg


def check_config_file(path: str) -> None:
    """One-line errors for YAML files detectron2 would fail on with a traceback: syntax
    errors, empty files, a non-mapping, and ``_BASE_`` files that do not exist."""
    try:
        with open(path, encoding="utf-8") as handle:
            content = yaml.safe_load(handle)
    except yaml.YAMLError as exc:
        raise DeepcensInputError(path, "YAML syntax error: " + " ".join(str(exc).split())) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DeepcensInputError(path, f"cannot read config ({exc})") from None
    if content is None:
        raise DeepcensInputError(path, "config file is empty")
    if not isinstance(content, dict):
        raise DeepcensInputError(path, "config must be a YAML mapping of KEY: value")
    base = content.get("_BASE_")
    if base is not None:
        base_path = base if os.path.isabs(str(base)) else os.path.join(os.path.dirname(path), str(base))
        if "://" not in str(base) and not os.path.isfile(base_path):
            raise DeepcensInputError(path, f"_BASE_ {base!r} not found ({base_path})")
        check_config_file(base_path)


def prepare_datasets(cfg: CfgNode) -> None:
    """Register the datasets under ``cfg.DATASETS.ROOT``; make the synthetic set on first use.

    Generation runs on the main process only (other ranks wait), so ``launch`` with several
    processes writes the files once.
    """
    from detectron2.utils import comm

    from deepcens.data import ctc, evican
    from deepcens.data.user_datasets import register_user_datasets_from_cfg

    root = cfg.DATASETS.ROOT
    synthetic_root = os.path.join(root, "synthetic")
    if cfg.DATASETS.AUTO_SYNTHETIC:
        marker = os.path.join(synthetic_root, "evican", "annotations", "instances_train2019.json")
        if comm.is_main_process() and not os.path.isfile(marker):
            from deepcens.data.synthetic import make_synthetic

            num_train, num_val, num_eval = cfg.DATASETS.SYNTHETIC.IMAGES
            logger.warning(f"Generating the synthetic cell data set under {synthetic_root} (first use)")
            make_synthetic(synthetic_root, seed=cfg.DATASETS.SYNTHETIC.SEED, num_train=num_train,
                           num_val=num_val, num_eval=num_eval, size=cfg.DATASETS.SYNTHETIC.SIZE)
        comm.synchronize()
    evican.register_evican_from_cfg(cfg)
    ctc.register_ctc_configuration_from_cfg(cfg)
    register_user_datasets_from_cfg(cfg)  # DATASETS.FOLDERS / DATASETS.COCO
    from deepcens.data.cellseg import register_cellseg_from_cfg

    register_cellseg_from_cfg(cfg)


def quiet_console() -> None:
    """Keep only warnings on the console (the full log stays in ``OUTPUT_DIR/log.txt``), except
    detectron2's inference progress lines, so that long evaluations still show progress."""
    import sys

    for name in ("detectron2", "fvcore", "deepcens", "d2"):
        for handler in logging.getLogger(name).handlers:
            if isinstance(handler, logging.StreamHandler) and getattr(handler, "stream", None) in (
                    sys.stdout, sys.stderr):
                handler.setLevel(logging.WARNING)
    inference_logger = logging.getLogger("detectron2.evaluation.evaluator")
    if not any(getattr(handler, "_deepcens_progress", False) for handler in inference_logger.handlers):
        progress = logging.StreamHandler(sys.stdout)
        progress.setLevel(logging.INFO)
        progress.setFormatter(logging.Formatter("[evaluation] %(message)s"))
        progress._deepcens_progress = True
        inference_logger.addHandler(progress)
