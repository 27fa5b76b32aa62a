"""EfficientCellSeg (Wagner & Rohr, MIDL 2022): a truncated EfficientNet-B5 encoder and a light decoder.

Encoder (paper Sec. 2.1): torchvision's EfficientNet-B5 cut after the stem, the first five
high-level blocks and the initial (expansion) convolution of the sixth, i.e. after
``features.6.0.block.0``: 5,565,880 parameters, a 1056-channel map at stride 16 (24 x 24 for
the paper's 384 x 384 input). Four skip maps feed the decoder: the input itself, the first
depthwise activation of block 1 (stride 2), and the expansion activations of blocks 3 and 4
(strides 4 and 8) -- the layers the authors' public model taps.

Decoder: four up blocks, each bilinear 2x upsampling, concatenation of one skip map and two
Conv3x3 + BatchNorm + ReLU units with ``MODEL.DENSE.ECS.DECODER_CHANNELS`` filters
([64, 48, 32, 16]: 1.07 M parameters, 6.64 M in all; paper Table 1: 1.1 M / 6.7 M), then a
1x1 convolution to one logit. The model of the centre-marker recipe (paper Sec. 3.3, MDA231)
is two such networks side by side (``NUM_NETWORKS: 2``): channel 0 is the foreground logit
of the segmentation network, channel 1 the centre-heatmap logit of the second network.

ImageNet weights come only from a local file of torchvision's ``efficientnet_b5`` state dict
(``MODEL.DENSE.ECS.ENCODER_WEIGHTS``); nothing is downloaded. Inputs are three-channel images
in [0, 1] (pseudocoloured slices); the encoder normalises them with ImageNet mean / std.
"""
from __future__ import annotations

import logging
import os
from typing import Sequence

import torch
from detectron2.config import CfgNode
from torch import nn
from torch.nn import functional as F

from deepcens.errors import DeepcensInputError
from deepcens.modeling.dense import DENSE_NETWORK_REGISTRY
from deepcens.modeling.state_dict import read_state_dict

logger = logging.getLogger(__name__)

# torchvision node -> (name, stride) of the maps the decoder uses; the last one is the encoder output
ENCODER_NODES = {
    "features.1.0.block.0": "stride2",  # Keras block1a_activation (48 channels)
    "features.3.0.block.0": "stride4",  # block3a_expand_activation (240)
    "features.4.0.block.0": "stride8",  # block4a_expand_activation (384)
    "features.6.0.block.0": "stride16",  # block6a_expand_activation (1056): the encoder output
}
SKIP_CHANNELS = (3, 48, 240, 384)  # input, stride 2, 4, 8
ENCODER_CHANNELS = 1056
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def read_encoder_state_dict(path: str) -> dict[str, torch.Tensor]:
    """A torchvision ``efficientnet_b5`` state dict from a local file (weights only; a
    ``{"state_dict": ...}`` / ``{"model": ...}`` wrapper is unwrapped)."""
    if not os.path.isfile(path):
        raise DeepcensInputError(path, "EfficientNet-B5 weights file not found (MODEL.DENSE.ECS.ENCODER_WEIGHTS)")
    return read_state_dict(path, "EfficientNet-B5 weights")


class EfficientNetB5Encoder(nn.Module):
    """Truncated EfficientNet-B5; returns ``[input, stride2, stride4, stride8]`` skips and the stride-16 map."""

    def __init__(self):
        super().__init__()
        from torchvision.models import efficientnet_b5
        from torchvision.models.feature_extraction import create_feature_extractor

        self.body = create_feature_extractor(efficientnet_b5(weights=None), dict(ENCODER_NODES))
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def load_imagenet(self, path: str) -> int:
        """Load the encoder's tensors from a torchvision EfficientNet-B5 state dict file; returns
        how many were loaded. Every encoder tensor must be present with its shape."""
        source = read_encoder_state_dict(path)
        target = self.body.state_dict()
        missing = [k for k in target if k not in source]
        wrong = [f"{k} {tuple(source[k].shape)} vs {tuple(v.shape)}" for k, v in target.items()
                 if k in source and source[k].shape != v.shape]
        if missing or wrong:
            detail = (f"{len(missing)} encoder tensors missing (e.g. {missing[0]})" if missing
                      else f"{len(wrong)} tensors of the wrong shape (e.g. {wrong[0]})")
            raise DeepcensInputError(path, f"not a torchvision efficientnet_b5 state dict: {detail}")
        self.body.load_state_dict({k: source[k] for k in target})
        logger.info("Loaded %d EfficientNet-B5 encoder tensors from %s", len(target), path)
        return len(target)

    def forward(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        maps = self.body((x - self.mean) / self.std)
        return [x, maps["stride2"], maps["stride4"], maps["stride8"]], maps["stride16"]


class UpBlock(nn.Sequential):
    """Two Conv3x3 + BatchNorm + ReLU units (convolutions with bias, as the authors' Keras layers)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, padding=1), nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1), nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True),
        )


class EfficientCellSegNet(nn.Module):
    """One EfficientCellSeg network: encoder, four up blocks, a 1x1 conv to ``num_outputs`` logits."""

    def __init__(self, decoder_channels: Sequence[int] = (64, 48, 32, 16), num_outputs: int = 1):
        super().__init__()
        if len(decoder_channels) != 4:
            raise ValueError(f"MODEL.DENSE.ECS.DECODER_CHANNELS needs 4 values (one per up block), got {list(decoder_channels)}")
        self.encoder = EfficientNetB5Encoder()
        blocks = []
        previous = ENCODER_CHANNELS
        for skip, width in zip(reversed(SKIP_CHANNELS), decoder_channels):
            blocks.append(UpBlock(previous + skip, int(width)))
            previous = int(width)
        self.decoder = nn.ModuleList(blocks)
        self.predictor = nn.Conv2d(previous, num_outputs, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips, y = self.encoder(x)
        for block, skip in zip(self.decoder, reversed(skips)):
            y = F.interpolate(y, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            y = block(torch.cat([y, skip], dim=1))
        return self.predictor(y)


class EfficientCellSegModel(nn.Module):
    """``num_networks`` EfficientCellSeg networks whose one-channel logits are concatenated
    (1: segmentation; 2: segmentation + centre heatmap, the paper's MDA231 pair).

    ``output_activation = "sigmoid"`` tells the meta-architecture that each channel is an
    independent binary map.
    """

    output_activation = "sigmoid"
    size_divisibility = 16

    def __init__(self, decoder_channels: Sequence[int] = (64, 48, 32, 16), num_networks: int = 1):
        super().__init__()
        if num_networks not in (1, 2):
            raise ValueError(f"MODEL.DENSE.ECS.NUM_NETWORKS must be 1 or 2, got {num_networks}")
        self.networks = nn.ModuleList(EfficientCellSegNet(decoder_channels) for _ in range(num_networks))

    def load_imagenet(self, path: str) -> None:
        for network in self.networks:
            network.encoder.load_imagenet(path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([network(x) for network in self.networks], dim=1)


def count_parameters(module: nn.Module) -> int:
    """Number of parameters (trainable or not) of a module."""
    return int(sum(p.numel() for p in module.parameters()))


def set_bn_momentum(module: nn.Module, momentum: float) -> int:
    """Set the running-statistics momentum of every BatchNorm layer of ``module``; returns how
    many layers. torchvision's EfficientNet-B5 uses 0.01 (Keras' 0.99), which leaves the
    running statistics near their initial values after a few hundred iterations."""
    if not 0.0 < momentum <= 1.0:
        raise ValueError(f"MODEL.DENSE.ECS.BN_MOMENTUM must be in (0, 1], got {momentum}")
    layers = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for layer in layers:
        layer.momentum = momentum
    return len(layers)


@DENSE_NETWORK_REGISTRY.register()
def EfficientCellSeg(cfg: CfgNode) -> EfficientCellSegModel:  # noqa: N802  (registry name)
    """EfficientCellSeg from ``MODEL.DENSE.ECS.*`` (3 input channels, one output per network)."""
    e = cfg.MODEL.DENSE.ECS
    if int(cfg.MODEL.DENSE.INPUT_CHANNELS) != 3:
        raise ValueError(f"EfficientCellSeg takes 3 input channels, MODEL.DENSE.INPUT_CHANNELS is {cfg.MODEL.DENSE.INPUT_CHANNELS}")
    if int(cfg.MODEL.DENSE.NUM_OUTPUTS) != int(e.NUM_NETWORKS):
        raise ValueError(f"MODEL.DENSE.NUM_OUTPUTS ({cfg.MODEL.DENSE.NUM_OUTPUTS}) must equal "
                         f"MODEL.DENSE.ECS.NUM_NETWORKS ({e.NUM_NETWORKS}): one channel per network")
    model = EfficientCellSegModel(tuple(e.DECODER_CHANNELS), int(e.NUM_NETWORKS))
    if float(e.BN_MOMENTUM) > 0:
        set_bn_momentum(model, float(e.BN_MOMENTUM))
    if e.ENCODER_WEIGHTS:
        model.load_imagenet(e.ENCODER_WEIGHTS)
    return model
