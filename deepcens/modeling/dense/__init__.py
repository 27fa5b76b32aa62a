"""Dense-prediction networks (U-Nets) found by ``cfg.MODEL.DENSE.NETWORK``.

An entry of :data:`DENSE_NETWORK_REGISTRY` (a module class with detectron2's ``@configurable``
``from_config(cfg)``, registered by class name) is called as ``entry(cfg)`` and returns an
``nn.Module`` mapping images ``(B, MODEL.DENSE.INPUT_CHANNELS, H, W)`` to logits
``(B, MODEL.DENSE.NUM_OUTPUTS, H, W)`` (H, W multiples of ``MODEL.DENSE.SIZE_DIVISIBILITY``).
The dense meta-architecture (:mod:`deepcens.modeling.meta_arch.dense`) wraps any of them.
"""
from __future__ import annotations

import torch
from detectron2.config import CfgNode
from detectron2.utils.registry import Registry

DENSE_NETWORK_REGISTRY = Registry("DENSE_NETWORK")
DENSE_NETWORK_REGISTRY.__doc__ = "Dense networks: (cfg) -> nn.Module, (B,Cin,H,W) -> (B,NUM_OUTPUTS,H,W) logits."


def build_dense_network(cfg: CfgNode) -> torch.nn.Module:
    """The network named by ``cfg.MODEL.DENSE.NETWORK``."""
    return DENSE_NETWORK_REGISTRY.get(cfg.MODEL.DENSE.NETWORK)(cfg)


from deepcens.modeling.dense import xbnet, vgg_unet, nas_unet  # noqa: E402,F401  (registrations)
from deepcens.modeling.dense import efficientcellseg  # noqa: E402,F401  (registration)
from deepcens.modeling.dense import monai_nets, dints  # noqa: E402,F401  (MONAI baselines, 2D DiNTS)
