"""The generalized U-Net of the XB-Net paper with switches for its ablations (Sec. 4.3, 4.4).

Baseline ("Base", Sec. 4.4.1): 5 stages of VGG blocks (Conv3-Norm-ReLU x2, 64 maps at the
first stage, doubling per stage up to 1024 at the bottleneck), 2x2 max pooling down, 2x2
up-convolution up, BatchNorm, no ASPP. One switch per paper variant:
``DEPTH`` 6 (Depth6), ``DOWNSAMPLE "conv"`` (Convstride: 3x3 stride-2 convs), ``ASPP True``
(ASPP at the bottleneck), ``UPSAMPLE "pixelshuffle"`` (Pixelshuffle), ``NORM "GN"``
(Groupnorm, 8 groups). ``ENCODER "resnet50"`` / ``"resnext50"`` / ``"xception"`` /
``"densenet201"`` / ``"resden"`` are the backbone variants of Sec. 4.3 (ResNets: torchvision
trunks, ``conv1`` at stride 1, bridges after ``conv1`` and each layer; the others in
:mod:`deepcens.modeling.dense.unet_encoders`).
"""
from __future__ import annotations

from typing import Sequence

import torch
from detectron2.config import CfgNode, configurable
from torch import nn

from deepcens.modeling.dense import DENSE_NETWORK_REGISTRY
from deepcens.modeling.dense.blocks import ASPP, conv_norm_act, make_norm
from deepcens.modeling.dense.unet_encoders import DenseNetEncoder, ResDenEncoder, XceptionEncoder

OTHER_ENCODERS = {"xception": XceptionEncoder, "densenet201": DenseNetEncoder, "resden": ResDenEncoder}


def vgg_block(in_channels: int, out_channels: int, norm: str, groups: int) -> nn.Sequential:
    """Two Conv3x3-Norm-ReLU units (the original U-Net block, with normalisation)."""
    return nn.Sequential(conv_norm_act(in_channels, out_channels, 3, norm, groups),
                         conv_norm_act(out_channels, out_channels, 3, norm, groups))


class VGGEncoder(nn.Module):
    """VGG encoder: returns the bridge maps (finest first) and the bottleneck map."""

    def __init__(self, in_channels: int, base_channels: int, depth: int, norm: str, groups: int, downsample: str):
        super().__init__()
        if downsample not in ("maxpool", "conv"):
            raise ValueError(f"MODEL.DENSE.UNET.DOWNSAMPLE must be maxpool or conv, got {downsample!r}")
        channels = [base_channels * 2 ** i for i in range(depth)]
        self.blocks = nn.ModuleList()
        self.downs = nn.ModuleList()
        previous = in_channels
        for i, c in enumerate(channels):
            self.blocks.append(vgg_block(previous, c, norm, groups))
            if i < depth - 1:
                self.downs.append(nn.MaxPool2d(2) if downsample == "maxpool"
                                  else conv_norm_act(c, c, 3, norm, groups, stride=2))
            previous = c
        self.skip_channels = channels[:-1]
        self.out_channels = channels[-1]

    def forward(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        skips = []
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i < len(self.downs):
                skips.append(x)
                x = self.downs[i](x)
        return skips, x


class ResNetEncoder(nn.Module):
    """torchvision ResNet-50 / ResNeXt-50 (32x4d) trunk as a U-Net encoder (randomly initialised)."""

    def __init__(self, name: str, in_channels: int, norm: str, groups: int):
        super().__init__()
        import torchvision

        builders = {"resnet50": torchvision.models.resnet50, "resnext50": torchvision.models.resnext50_32x4d}
        if name not in builders:
            raise ValueError(f"MODEL.DENSE.UNET.ENCODER must be vgg, resnet50 or resnext50, got {name!r}")
        trunk = builders[name](weights=None, norm_layer=lambda c: make_norm(norm, c, groups))
        trunk.conv1 = nn.Conv2d(in_channels, 64, 7, stride=1, padding=3, bias=False)  # paper: conv1 at stride 1
        self.stem = nn.Sequential(trunk.conv1, trunk.bn1, trunk.relu)
        self.pool = trunk.maxpool
        self.layers = nn.ModuleList([trunk.layer1, trunk.layer2, trunk.layer3, trunk.layer4])
        self.skip_channels = [64, 256, 512, 1024]
        self.out_channels = 2048

    def forward(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        x = self.stem(x)
        skips = [x]
        x = self.layers[0](self.pool(x))
        for layer in self.layers[1:]:
            skips.append(x)
            x = layer(x)
        return skips, x


@DENSE_NETWORK_REGISTRY.register()
class UNet(nn.Module):
    """Encoder + optional ASPP bottleneck + decoder of up-sampling and VGG blocks."""

    @classmethod
    def from_config(cls, cfg: CfgNode) -> dict:
        """The U-Net of ``cfg.MODEL.DENSE.UNET`` (defaults: the paper's Base variant)."""
        u = cfg.MODEL.DENSE.UNET
        return dict(
            in_channels=cfg.MODEL.DENSE.INPUT_CHANNELS, num_outputs=cfg.MODEL.DENSE.NUM_OUTPUTS,
            base_channels=u.BASE_CHANNELS, depth=u.DEPTH, norm=u.NORM, groups=u.GN_GROUPS,
            downsample=u.DOWNSAMPLE, upsample=u.UPSAMPLE, aspp=u.ASPP, aspp_dilations=tuple(u.ASPP_DILATIONS),
            encoder=u.ENCODER)

    @configurable
    def __init__(self, in_channels: int = 1, num_outputs: int = 3, base_channels: int = 64, depth: int = 5,
                 norm: str = "BN", groups: int = 8, downsample: str = "maxpool", upsample: str = "upconv",
                 aspp: bool = False, aspp_dilations: Sequence[int] = (6, 12, 18), encoder: str = "vgg"):
        super().__init__()
        if encoder == "vgg":
            self.encoder = VGGEncoder(in_channels, base_channels, depth, norm, groups, downsample)
            self.size_divisibility = 2 ** (depth - 1)
        elif encoder in ("resnet50", "resnext50"):
            self.encoder = ResNetEncoder(encoder, in_channels, norm, groups)
            self.size_divisibility = 16
        elif encoder in OTHER_ENCODERS:
            self.encoder = OTHER_ENCODERS[encoder](in_channels, norm=norm, groups=groups)
            self.size_divisibility = self.encoder.size_divisibility
        else:
            raise ValueError(f"MODEL.DENSE.UNET.ENCODER must be one of vgg, resnet50, resnext50, "
                             f"{', '.join(OTHER_ENCODERS)}; got {encoder!r}")
        if upsample not in ("upconv", "pixelshuffle"):
            raise ValueError(f"MODEL.DENSE.UNET.UPSAMPLE must be upconv or pixelshuffle, got {upsample!r}")
        c = self.encoder.out_channels
        self.bottleneck = ASPP(c, c, aspp_dilations, norm, groups) if aspp else nn.Identity()
        self.ups = nn.ModuleList()
        self.blocks = nn.ModuleList()
        for skip in reversed(self.encoder.skip_channels):
            if upsample == "upconv":
                self.ups.append(nn.ConvTranspose2d(c, skip, 2, stride=2))
                merged = 2 * skip
            else:
                self.ups.append(nn.PixelShuffle(2))
                merged = c // 4 + skip
            self.blocks.append(vgg_block(merged, skip, norm, groups))
            c = skip
        self.classifier = nn.Conv2d(c, num_outputs, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips, x = self.encoder(x)
        x = self.bottleneck(x)
        for up, block, skip in zip(self.ups, self.blocks, reversed(skips)):
            x = block(torch.cat([up(x), skip], dim=1))
        return self.classifier(x)
