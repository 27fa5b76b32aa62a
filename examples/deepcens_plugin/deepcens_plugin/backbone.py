"""``build_plugin_fpn_backbone``: a plain stride-2 conv trunk (res2..res5) under detectron2's FPN."""
from __future__ import annotations

import torch
from detectron2.config import CfgNode
from detectron2.layers import ShapeSpec
from detectron2.modeling.backbone import BACKBONE_REGISTRY, FPN, Backbone
from detectron2.modeling.backbone.fpn import LastLevelMaxPool
from torch import nn


class PlainTrunk(Backbone):
    """Stem (stride 4) then three stride-2 stages: res2 (4), res3 (8), res4 (16), res5 (32)."""

    def __init__(self, in_channels: int, width: int):
        super().__init__()
        widths = [width, width * 2, width * 4, width * 8]
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, stride=2, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
                                  nn.Conv2d(width, width, 3, stride=2, padding=1), nn.BatchNorm2d(width), nn.ReLU())
        self.stages = nn.ModuleList()
        for index, cout in enumerate(widths):
            stride = 1 if index == 0 else 2
            cin = widths[max(index - 1, 0)]
            self.stages.append(nn.Sequential(nn.Conv2d(cin, cout, 3, stride=stride, padding=1), nn.BatchNorm2d(cout), nn.ReLU()))
        self._out_features = ["res2", "res3", "res4", "res5"]
        self._out_feature_channels = dict(zip(self._out_features, widths))
        self._out_feature_strides = dict(zip(self._out_features, (4, 8, 16, 32)))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.stem(x)
        outputs = {}
        for name, stage in zip(self._out_features, self.stages):
            x = stage(x)
            outputs[name] = x
        return outputs


@BACKBONE_REGISTRY.register()
def build_plugin_fpn_backbone(cfg: CfgNode, input_shape: ShapeSpec) -> FPN:
    """The plain trunk (``MODEL.PLUGIN.WIDTH``) with an FPN of ``MODEL.FPN.*`` (P2..P6)."""
    trunk = PlainTrunk(input_shape.channels, cfg.MODEL.PLUGIN.WIDTH)
    return FPN(bottom_up=trunk, in_features=list(cfg.MODEL.FPN.IN_FEATURES) or trunk._out_features,
               out_channels=cfg.MODEL.FPN.OUT_CHANNELS, norm=cfg.MODEL.FPN.NORM, top_block=LastLevelMaxPool(),
               fuse_type=cfg.MODEL.FPN.FUSE_TYPE)
