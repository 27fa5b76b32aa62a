"""Basic operations (BOs) of the NAS U-Net search space (Zhu & Meijering 2021, Sec. 2.1.2, Table 1).

Four BO sets, named as in the paper:

- ``T`` (temporal): a convolutional LSTM unrolled over the frame pair;
- ``D`` (down, halve the resolution): max / average pooling (2x2), and stride-2 3x3 conv,
  atrous conv, depthwise-separable conv and squeeze-and-excitation conv;
- ``U`` (up, double the resolution): stride-2 3x3 transposed conv, atrous transposed conv,
  depthwise-separable transposed conv and squeeze-and-excitation transposed conv;
- ``N`` (normal): none, identity, and 3x3 conv, atrous conv, shuffle (group) conv,
  depthwise-separable conv and squeeze-and-excitation conv.

Every BO maps ``channels`` maps to ``channels`` maps (16 in the paper) and is followed by
GroupNorm + ReLU (the paper's identity is GroupNorm + ReLU alone; ``none`` outputs zeros).
The squeeze-and-excitation BOs follow the NAS-U-Net "cweight" operation: channel gates from
global average pooling (two 1x1 layers, ReLU, sigmoid) multiply the input, then the conv.
Values the paper leaves open (dilation, SE reduction, shuffle groups, GN groups) come from
:class:`OpSettings`; see docs/nas_unet.md.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

BO_SETS: dict[str, tuple[str, ...]] = {
    "T": ("clstm",),
    "D": ("max_pool", "avg_pool", "down_conv", "down_atrous_conv", "down_dep_conv", "down_se"),
    "U": ("up_conv", "up_atrous_conv", "up_dep_conv", "up_se"),
    "N": ("none", "identity", "conv", "atrous_conv", "shuffle_conv", "dep_conv", "se"),
}
BO_SET_NAMES = {"T": "temporal", "D": "down", "U": "up", "N": "normal"}


@dataclass(frozen=True)
class OpSettings:
    """Sizes every BO shares (paper: 16 channels; the rest is not stated there)."""

    channels: int = 16
    gn_groups: int = 8
    dilation: int = 2
    se_reduction: int = 4
    shuffle_groups: int = 4


def group_norm(channels: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(int(groups), int(channels)), channels)


class _Post(nn.Module):
    """An operation followed by GroupNorm + ReLU."""

    def __init__(self, op: nn.Module, settings: OpSettings):
        super().__init__()
        self.op = op
        self.norm = group_norm(settings.channels, settings.gn_groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.norm(self.op(x)))


class Zero(nn.Module):
    """The ``none`` BO: no path (zeros of the input's shape)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mul(0.0)


class SqueezeExcite(nn.Module):
    """Channel gates from global average pooling (Hu et al. 2018) multiplying the input."""

    def __init__(self, channels: int, reduction: int):
        super().__init__()
        hidden = max(channels // max(int(reduction), 1), 1)
        self.squeeze = nn.Conv2d(channels, hidden, 1)
        self.excite = nn.Conv2d(hidden, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gates = torch.sigmoid(self.excite(F.relu(self.squeeze(F.adaptive_avg_pool2d(x, 1)))))
        return x * gates


class ChannelShuffle(nn.Module):
    def __init__(self, groups: int):
        super().__init__()
        self.groups = int(groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        return x.view(b, self.groups, c // self.groups, h, w).transpose(1, 2).reshape(b, c, h, w)


def _conv(c: int, stride: int = 1, dilation: int = 1, groups: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c, c, 3, stride=stride, padding=dilation, dilation=dilation, groups=groups, bias=False)


def _up(c: int, dilation: int = 1, groups: int = 1) -> nn.ConvTranspose2d:
    # output = 2 * input for a 3x3 kernel at any dilation: padding = dilation, output_padding = 1
    return nn.ConvTranspose2d(c, c, 3, stride=2, padding=dilation, output_padding=1, dilation=dilation,
                              groups=groups, bias=False)


def make_bo(name: str, settings: OpSettings) -> nn.Module:
    """The BO ``name`` (one of :data:`BO_SETS`) for ``settings.channels`` maps, GN + ReLU included."""
    c, d = settings.channels, settings.dilation
    if name == "clstm":
        return ConvLSTM(settings)
    if name == "none":
        return Zero()
    if name == "identity":
        return _Post(nn.Identity(), settings)
    ops: dict[str, callable] = {
        "max_pool": lambda: nn.MaxPool2d(2, 2),
        "avg_pool": lambda: nn.AvgPool2d(2, 2),
        "down_conv": lambda: _conv(c, stride=2),
        "down_atrous_conv": lambda: _conv(c, stride=2, dilation=d),
        "down_dep_conv": lambda: nn.Sequential(_conv(c, stride=2, groups=c), nn.Conv2d(c, c, 1, bias=False)),
        "down_se": lambda: nn.Sequential(SqueezeExcite(c, settings.se_reduction), _conv(c, stride=2)),
        "up_conv": lambda: _up(c),
        "up_atrous_conv": lambda: _up(c, dilation=d),
        "up_dep_conv": lambda: nn.Sequential(_up(c, groups=c), nn.Conv2d(c, c, 1, bias=False)),
        "up_se": lambda: nn.Sequential(SqueezeExcite(c, settings.se_reduction), _up(c)),
        "conv": lambda: _conv(c),
        "atrous_conv": lambda: _conv(c, dilation=d),
        "shuffle_conv": lambda: nn.Sequential(_conv(c, groups=settings.shuffle_groups),
                                              ChannelShuffle(settings.shuffle_groups)),
        "dep_conv": lambda: nn.Sequential(_conv(c, groups=c), nn.Conv2d(c, c, 1, bias=False)),
        "se": lambda: nn.Sequential(SqueezeExcite(c, settings.se_reduction), _conv(c)),
    }
    if name not in ops:
        raise KeyError(f"unknown basic operation {name!r}")
    return _Post(ops[name](), settings)


class ConvLSTM(nn.Module):
    """Convolutional LSTM (3x3 gates) unrolled over the time steps stacked in the batch.

    Input ``(steps * B, C, H, W)`` with the steps in order (oldest first); the state starts at
    zero and is carried over the steps; returns the hidden state of every step, same layout,
    after GroupNorm + ReLU.
    """

    def __init__(self, settings: OpSettings):
        super().__init__()
        c = settings.channels
        self.gates = nn.Conv2d(2 * c, 4 * c, 3, padding=1)
        self.norm = group_norm(c, settings.gn_groups)

    def forward(self, x: torch.Tensor, steps: int) -> torch.Tensor:
        sequence = x.reshape(steps, x.shape[0] // steps, *x.shape[1:])
        hidden = torch.zeros_like(sequence[0])
        cell = torch.zeros_like(sequence[0])
        outputs = []
        for step in range(steps):
            i, f, g, o = self.gates(torch.cat([sequence[step], hidden], dim=1)).chunk(4, dim=1)
            cell = torch.sigmoid(f) * cell + torch.sigmoid(i) * torch.tanh(g)
            hidden = torch.sigmoid(o) * torch.tanh(cell)
            outputs.append(hidden)
        return F.relu(self.norm(torch.cat(outputs, dim=0)))


class FactorizedReduce(nn.Module):
    """Halve the resolution of a block input with two offset stride-2 1x1 convs (as DARTS does
    for the pre-previous cell input), then GroupNorm: brings the pre-previous input to the
    previous one's size."""

    def __init__(self, in_channels: int, out_channels: int, gn_groups: int):
        super().__init__()
        half = out_channels // 2
        self.conv_a = nn.Conv2d(in_channels, half, 1, stride=2, bias=False)
        self.conv_b = nn.Conv2d(in_channels, out_channels - half, 1, stride=2, bias=False)
        self.norm = group_norm(out_channels, gn_groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(x)
        shifted = F.pad(x[:, :, 1:, 1:], (0, 1, 0, 1))
        return self.norm(torch.cat([self.conv_a(x), self.conv_b(shifted)], dim=1))


class Preprocess(nn.Module):
    """ReLU - 1x1 conv - GroupNorm: a block input to ``out_channels`` maps (DARTS' cell preprocessing)."""

    def __init__(self, in_channels: int, out_channels: int, gn_groups: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.norm = group_norm(out_channels, gn_groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv(F.relu(x)))
