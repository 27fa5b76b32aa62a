"""Building blocks shared by the U-Net variants: normalisation, conv units, ASPP, up/down layers."""
from __future__ import annotations

import math
from typing import Sequence

import torch
from detectron2.layers import get_norm
from torch import nn
from torch.nn import functional as F


def make_norm(kind: str, channels: int, groups: int = 8) -> nn.Module:
    """A normalisation layer: ``GN`` with ``groups`` groups (the paper uses 8; reduced to
    gcd(groups, channels) for narrow layers of small test networks), else detectron2's
    :func:`get_norm` (``BN``, ``SyncBN``, ``naiveSyncBN``, ...); ``""`` = identity."""
    if kind == "GN":
        return nn.GroupNorm(math.gcd(int(groups), int(channels)), channels)
    if not kind:
        return nn.Identity()
    return get_norm(kind, channels)


def conv_norm_act(in_channels: int, out_channels: int, kernel_size: int = 3, norm: str = "GN",
                  groups: int = 8, stride: int = 1, dilation: int = 1, act: bool = True) -> nn.Sequential:
    """Conv (no bias: a norm follows) - Norm - ReLU, 'same' padding."""
    padding = dilation * (kernel_size - 1) // 2
    layers: list[nn.Module] = [
        nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding,
                  dilation=dilation, bias=not norm),
        make_norm(norm, out_channels, groups),
    ]
    if act:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling with a skip connection (XB-Net's bottleneck, Fig. 8f).

    Pathways: a 1x1 conv, one 3x3 conv per dilation rate, and image-level pooling; each gives
    ``in_channels // 2`` maps. Their concatenation is fused by a 1x1 conv + norm, added to a
    (1x1-projected if needed) skip of the input, then ReLU. ``pool_norm`` adds a norm after the
    pooled 1x1 conv, as the XB-Net authors' code (GN there; BatchNorm on a 1x1 map needs batch > 1).
    """

    def __init__(self, in_channels: int, out_channels: int, dilations: Sequence[int] = (6, 12, 18),
                 norm: str = "GN", groups: int = 8, pool_norm: bool = False):
        super().__init__()
        mid = in_channels // 2
        self.paths = nn.ModuleList([conv_norm_act(in_channels, mid, 1, norm, groups)])
        for rate in dilations:
            self.paths.append(conv_norm_act(in_channels, mid, 3, norm, groups, dilation=int(rate)))
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(in_channels, mid, 1, bias=False),
                                  make_norm(norm, mid, groups) if pool_norm else nn.Identity(),
                                  nn.ReLU(inplace=True))
        self.fuse = conv_norm_act(mid * (len(dilations) + 2), out_channels, 1, norm, groups, act=False)
        self.skip = (nn.Identity() if in_channels == out_channels
                     else conv_norm_act(in_channels, out_channels, 1, norm, groups, act=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outputs = [path(x) for path in self.paths]
        outputs.append(self.pool(x).expand(-1, -1, x.shape[-2], x.shape[-1]))
        return F.relu(self.fuse(torch.cat(outputs, dim=1)) + self.skip(x))


class ResidualDenseBlock(nn.Module):
    """Residual dense block (ResDen, Zhang et al. 2018) as XB-Net uses it.

    ``num_layers`` Conv-Norm-ReLU units, each seeing the concatenation of the input and all
    earlier units' outputs and adding ``growth`` maps; a final 3x3 Conv-Norm fuses everything
    back to ``channels``; the result, scaled by ``residual_scale``, is added to the input.
    """

    def __init__(self, channels: int, growth: int, num_layers: int = 4, norm: str = "GN", groups: int = 8,
                 residual_scale: float = 0.2):
        super().__init__()
        self.units = nn.ModuleList(
            conv_norm_act(channels + i * growth, growth, 3, norm, groups) for i in range(num_layers))
        self.fuse = conv_norm_act(channels + num_layers * growth, channels, 3, norm, groups, act=False)
        self.residual_scale = residual_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [x]
        for unit in self.units:
            features.append(unit(torch.cat(features, dim=1)))
        return F.relu(x + self.residual_scale * self.fuse(torch.cat(features, dim=1)))


def num_parameters(module: nn.Module) -> int:
    """Trainable parameter count."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
