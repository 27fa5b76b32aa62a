"""XB-Net (XpressBio Net): the generalized U-Net of Guo et al. used at the 6th Cell Tracking Challenge.

Architecture (paper Sec. 5.3, Fig. 8):
- entry flow: Conv-GN-ReLU-Conv-GN-ReLU at full resolution, ``BASE_CHANNELS`` (32) maps;
- encoder stage (C -> 2C): residual dense block on C maps (growth C/4), then a stride-2 3x3
  Conv-GN-ReLU doubling the channels;
- bottleneck: ASPP (1x1, dilations 6/12/18, image pooling) with a skip connection;
- decoder stage (2C -> C): pixel shuffle (2C -> C/2 maps at twice the resolution)-GN-ReLU,
  concatenated with the 1x1 Conv-GN-ReLU bridge (C -> C/2) of the encoder map at that
  resolution, then a residual dense block on C maps;
- a 1x1 classifier to ``NUM_OUTPUTS`` (background / boundary / cell) logits.
GroupNorm with 8 groups everywhere. Inputs must be multiples of 2**NUM_STAGES.
"""
from __future__ import annotations

from typing import Sequence

import torch
from detectron2.config import CfgNode, configurable
from torch import nn

from deepcens.modeling.dense import DENSE_NETWORK_REGISTRY
from deepcens.modeling.dense.blocks import ASPP, ResidualDenseBlock, conv_norm_act, make_norm


@DENSE_NETWORK_REGISTRY.register()
class XBNet(nn.Module):
    """XB-Net; see the module docstring. Default arguments give the paper's network."""

    @classmethod
    def from_config(cls, cfg: CfgNode) -> dict:
        """XB-Net from ``cfg.MODEL.DENSE`` and ``cfg.MODEL.DENSE.XBNET``."""
        x = cfg.MODEL.DENSE.XBNET
        return dict(
            in_channels=cfg.MODEL.DENSE.INPUT_CHANNELS, num_outputs=cfg.MODEL.DENSE.NUM_OUTPUTS,
            base_channels=x.BASE_CHANNELS, num_stages=x.NUM_STAGES, norm=x.NORM, groups=x.GN_GROUPS,
            entry_kernel=x.ENTRY_KERNEL, dense_layers=x.DENSE_LAYERS, residual_scale=x.RESIDUAL_SCALE,
            aspp_dilations=tuple(x.ASPP_DILATIONS), aspp=x.ASPP, aspp_pool_norm=x.ASPP_POOL_NORM)

    @configurable
    def __init__(self, in_channels: int = 1, num_outputs: int = 3, base_channels: int = 32, num_stages: int = 4,
                 norm: str = "GN", groups: int = 8, entry_kernel: int = 7, dense_layers: int = 4,
                 residual_scale: float = 0.2, aspp_dilations: Sequence[int] = (6, 12, 18), aspp: bool = True,
                 aspp_pool_norm: bool = False):
        super().__init__()
        self.size_divisibility = 2 ** num_stages
        c = base_channels
        self.entry = nn.Sequential(
            conv_norm_act(in_channels, c, entry_kernel, norm, groups),
            conv_norm_act(c, c, 3, norm, groups),
        )
        self.encoder = nn.ModuleList()
        for _ in range(num_stages):
            self.encoder.append(nn.Sequential(
                ResidualDenseBlock(c, c // 4, dense_layers, norm, groups, residual_scale),
                conv_norm_act(c, 2 * c, 3, norm, groups, stride=2),
            ))
            c *= 2
        self.bottleneck = ASPP(c, c, aspp_dilations, norm, groups, aspp_pool_norm) if aspp else nn.Identity()
        self.up = nn.ModuleList()
        self.bridges = nn.ModuleList()
        self.decoder = nn.ModuleList()
        for _ in range(num_stages):
            out = c // 2
            self.up.append(nn.Sequential(nn.PixelShuffle(2), make_norm(norm, c // 4, groups), nn.ReLU(inplace=True)))
            self.bridges.append(conv_norm_act(out, out // 2, 1, norm, groups))
            self.decoder.append(ResidualDenseBlock(out, out // 4, dense_layers, norm, groups, residual_scale))
            c = out
        self.classifier = nn.Conv2d(c, num_outputs, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.entry(x)
        skips = [x]
        for stage in self.encoder:
            x = stage(x)
            skips.append(x)
        skips.pop()  # the deepest map feeds the bottleneck, not a bridge
        x = self.bottleneck(x)
        for up, bridge, block, skip in zip(self.up, self.bridges, self.decoder, reversed(skips)):
            x = block(torch.cat([up(x), bridge(skip)], dim=1))
        return self.classifier(x)
