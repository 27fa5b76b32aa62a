"""``PluginMiniUNet``: a small U-Net (two 3x3 convs + GroupNorm per level, bilinear upsampling)."""
from __future__ import annotations

import torch
from detectron2.config import CfgNode
from torch import nn
from torch.nn import functional as F

from deepcens.modeling.dense import DENSE_NETWORK_REGISTRY


def _double_conv(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.GroupNorm(min(8, cout), cout), nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.GroupNorm(min(8, cout), cout), nn.ReLU(inplace=True))


@DENSE_NETWORK_REGISTRY.register()
class PluginMiniUNet(nn.Module):
    """(B, INPUT_CHANNELS, H, W) -> (B, NUM_OUTPUTS, H, W) logits; H and W divisible by 2**LEVELS.

    Built from a config, as every entry of deepcens' DENSE_NETWORK_REGISTRY: ``PluginMiniUNet(cfg)``.
    """

    def __init__(self, cfg: CfgNode):
        super().__init__()
        in_channels, num_outputs = cfg.MODEL.DENSE.INPUT_CHANNELS, cfg.MODEL.DENSE.NUM_OUTPUTS
        width, levels = cfg.MODEL.PLUGIN.WIDTH, cfg.MODEL.PLUGIN.LEVELS
        widths = [width * 2 ** i for i in range(levels + 1)]
        self.size_divisibility = 2 ** levels  # read by deepcens' DenseSegmentor
        self.down = nn.ModuleList([_double_conv(in_channels, widths[0])] +
                                  [_double_conv(widths[i], widths[i + 1]) for i in range(levels)])
        self.up = nn.ModuleList([_double_conv(widths[i + 1] + widths[i], widths[i]) for i in reversed(range(levels))])
        self.head = nn.Conv2d(widths[0], num_outputs, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for index, block in enumerate(self.down):
            x = block(x if index == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        for block, skip in zip(self.up, reversed(skips[:-1])):
            x = block(torch.cat([F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False), skip], 1))
        return self.head(x)

