"""More U-Net encoders of the XB-Net paper's backbone study (Sec. 4.3): Xception, DenseNet-201, ResDen.

Each encoder returns its bridge maps (finest first, each exactly twice the size of the next)
and the bottleneck map, like :class:`deepcens.modeling.dense.vgg_unet.VGGEncoder`, and is
randomly initialised (the paper trains every variant from scratch, Sec. 4.3 "Random
initialization"). Decisions where the paper is silent are in ``docs/xbnet.md``:

- **Xception** (timm's ``legacy_xception``, Chollet 2017): the first "Conv 32" at stride 1
  (paper) with 'same' padding, as are the second conv, so bridges line up with the decoder;
  4 of the 8 middle-flow blocks (paper); bridges after the ReLU that follows each merge of the
  main and 1x1 branches: conv2 (64 maps, 1/1), block1 (128, 1/2), block2 (256, 1/4), the
  last middle block (728, 1/8); the exit flow (block12, conv3, conv4: 2048 maps at 1/16) is
  the bottleneck.
- **DenseNet-201** (torchvision): "Conv 7x7" at stride 1 (paper); bridges after conv0 and
  "within each transition layer before the 2x2 average pooling" (paper): 64, 128, 256, 896
  maps; dense block 4 + final norm (1920 maps at 1/16) is the bottleneck.
- **ResDen** (residual dense network, Zhang et al. 2018): per resolution stage one residual
  dense block of 5 Conv-Norm-ReLU units (4 growth units + a fusing unit) with growth = 1/8 of
  the stage's input maps (paper), then a stride-2 convolution down (paper); the bridge is the
  block's output at the stage's resolution (the paper's "after which" is ambiguous: a bridge
  after the stride-2 conv would sit at the next resolution). The block is XB-Net's own
  (Sec. 5.3, residual scale 0.2 as ``MODEL.DENSE.XBNET.RESIDUAL_SCALE``); stage widths 64..1024
  as the VGG baseline (not stated).

Normalisation follows ``MODEL.DENSE.UNET.NORM`` for all three (BatchNorm layers of the library
networks are swapped for the configured norm).
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from deepcens.modeling.dense.blocks import ResidualDenseBlock, conv_norm_act, make_norm


def replace_batchnorm(module: nn.Module, norm: str, groups: int) -> nn.Module:
    """Swap every ``BatchNorm2d`` in ``module`` for ``make_norm(norm, channels, groups)`` (in place)."""
    if norm == "BN":
        return module
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            setattr(module, name, make_norm(norm, child.num_features, groups))
        else:
            replace_batchnorm(child, norm, groups)
    return module


class XceptionEncoder(nn.Module):
    """Xception with 4 middle-flow blocks and a stride-1 first conv (XB-Net paper Sec. 4.3)."""

    MIDDLE_BLOCKS = 4  # paper: "we only used 4 blocks of the middle flow"

    def __init__(self, in_channels: int, norm: str = "BN", groups: int = 8):
        super().__init__()
        import timm

        net = timm.create_model("legacy_xception", pretrained=False, num_classes=0)
        net.conv1 = nn.Conv2d(in_channels, 32, 3, stride=1, padding=1, bias=False)  # paper: stride 1
        net.conv2.padding = (1, 1)
        self.stem = nn.Sequential(net.conv1, net.bn1, net.act1, net.conv2, net.bn2, net.act2)
        self.entry = nn.ModuleList([net.block1, net.block2, net.block3])
        self.middle = nn.Sequential(*[getattr(net, f"block{4 + i}") for i in range(self.MIDDLE_BLOCKS)])
        self.exit = nn.Sequential(net.block12, net.conv3, net.bn3, net.act3, net.conv4, net.bn4, net.act4)
        replace_batchnorm(self, norm, groups)
        self.skip_channels = [64, 128, 256, 728]
        self.out_channels = 2048
        self.size_divisibility = 16

    def forward(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        x = self.stem(x)
        skips = [x]
        for block in self.entry[:2]:
            x = block(x)
            skips.append(F.relu(x))  # a new tensor: the next block starts with an in-place ReLU
        x = self.middle(self.entry[2](x))
        skips.append(F.relu(x))
        return skips, self.exit(x)


class DenseNetEncoder(nn.Module):
    """torchvision DenseNet-201 with a stride-1 first conv, bridges inside the transitions."""

    def __init__(self, in_channels: int, norm: str = "BN", groups: int = 8):
        super().__init__()
        import torchvision

        features = torchvision.models.densenet201(weights=None).features
        features.conv0 = nn.Conv2d(in_channels, 64, 7, stride=1, padding=3, bias=False)  # paper: stride 1
        self.stem = nn.Sequential(features.conv0, features.norm0, features.relu0)
        self.pool = features.pool0
        self.blocks = nn.ModuleList([features.denseblock1, features.denseblock2, features.denseblock3,
                                     features.denseblock4])
        # a transition is norm-relu-conv-pool: the bridge is taken before its average pooling
        self.transitions = nn.ModuleList([
            nn.Sequential(t.norm, t.relu, t.conv) for t in (features.transition1, features.transition2,
                                                            features.transition3)])
        self.transition_pools = nn.ModuleList([features.transition1.pool, features.transition2.pool,
                                               features.transition3.pool])
        self.final = nn.Sequential(features.norm5, nn.ReLU(inplace=True))
        replace_batchnorm(self, norm, groups)
        self.skip_channels = [64, 128, 256, 896]
        self.out_channels = 1920
        self.size_divisibility = 16

    def forward(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        x = self.stem(x)
        skips = [x]
        x = self.pool(x)
        for block, transition, pool in zip(self.blocks, self.transitions, self.transition_pools):
            x = transition(block(x))
            skips.append(x)
            x = pool(x)
        return skips, self.final(self.blocks[-1](x))


class ResDenEncoder(nn.Module):
    """Residual-dense encoder: per stage a residual dense block (growth = maps / 8), then a stride-2 conv."""

    def __init__(self, in_channels: int, base_channels: int = 64, depth: int = 5, norm: str = "BN",
                 groups: int = 8, residual_scale: float = 0.2):
        super().__init__()
        channels = [base_channels * 2 ** i for i in range(depth)]
        self.entry = conv_norm_act(in_channels, channels[0], 3, norm, groups)
        self.blocks = nn.ModuleList(
            ResidualDenseBlock(c, growth=max(c // 8, 1), num_layers=4, norm=norm, groups=groups,
                               residual_scale=residual_scale)
            for c in channels)
        self.downs = nn.ModuleList(conv_norm_act(c, n, 3, norm, groups, stride=2)
                                   for c, n in zip(channels[:-1], channels[1:]))
        self.skip_channels = channels[:-1]
        self.out_channels = channels[-1]
        self.size_divisibility = 2 ** (depth - 1)

    def forward(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        x = self.entry(x)
        skips = []
        for block, down in zip(self.blocks[:-1], self.downs):
            x = block(x)
            skips.append(x)
            x = down(x)
        return skips, self.blocks[-1](x)
