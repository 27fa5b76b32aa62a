"""Every key deepcens adds to detectron2's config has a default and a one-line comment."""
from __future__ import annotations

import re
from pathlib import Path

from detectron2.config import CfgNode, get_cfg

import deepcens
from deepcens import add_deepcens_config

CONFIG_SOURCE = Path(deepcens.__file__).with_name("config.py")


def _leaf_keys(node: CfgNode, prefix: str = "") -> set[str]:
    keys = set()
    for key, value in node.items():
        path = f"{prefix}{key}"
        if isinstance(value, CfgNode):
            keys |= _leaf_keys(value, path + ".")
        else:
            keys.add(path)
    return keys


def _added_keys() -> set[str]:
    base = get_cfg()
    extended = get_cfg()
    add_deepcens_config(extended)
    return _leaf_keys(extended) - _leaf_keys(base)


def test_deepcens_adds_keys_with_defaults():
    added = _added_keys()
    for key in ("MODEL.RESNEST.DEPTH", "MODEL.ANCHOR_GENERATOR.FLAT_SIZES", "TEST.CTC_METRICS",
                "SOLVER.TRAIN_SCHEME", "DATASETS.BAD_INPUT_POLICY", "MODEL.DENSE.NETWORK"):
        assert key in added


def test_every_added_key_has_a_comment():
    source = CONFIG_SOURCE.read_text()
    assigned = {}
    for line in source.splitlines():
        match = re.match(r"\s*cfg\.([A-Z0-9_.]+)\s*=\s*(.+)$", line)
        if match:
            assigned[match.group(1)] = match.group(2)
    missing_comment = [key for key in _added_keys()
                       if key not in assigned or "#" not in assigned[key]]
    assert not missing_comment, f"keys without a one-line comment in config.py: {missing_comment}"


def test_add_deepcens_config_is_idempotent_on_values():
    cfg = get_cfg()
    add_deepcens_config(cfg)
    assert cfg.TEST.DETECTIONS_PER_IMAGE > 100  # cell images hold hundreds of objects
    assert cfg.MODEL.RESNEST.DEFORM_ON_PER_STAGE == [False, True, True, True]
