"""MONAI networks and loss for the 2D DiNTS paper's baselines (UNet, SegResNet) and DiceCE.

Every network is MONAI's own, wrapped by :class:`MonaiSlidingWindow`: in training it is the
plain network; in evaluation, inputs larger than ``MODEL.DENSE.MONAI.ROI_SIZE`` go through
MONAI's ``sliding_window_inference`` with that patch (the paper: "Both training and inference
used the same patch size", Sec. 3.2), which blends the windows' logits as the challenge
baseline does. The dense meta-architecture then applies softmax and the decoder.

``"dice_ce"`` in ``DENSE_LOSS_REGISTRY`` is MONAI's DiceCE loss (Table 2): ``DiceLoss``
(softmax, one-hot targets, background included, mean over batch and classes) plus
``CrossEntropyLoss``, weight 1 each, exactly ``monai.losses.DiceCELoss``; the two parts are
built separately only so that both skip ``MODEL.DENSE.IGNORE_VALUE`` pixels (padding, which
``DiceCELoss``'s constructor cannot be told about). Without ignored pixels the value equals
``DiceCELoss(to_onehot_y=True, softmax=True)``.
"""
from __future__ import annotations

import torch
from detectron2.config import CfgNode
from monai.inferers import sliding_window_inference
from monai.losses import DiceLoss
from monai.networks.nets import SegResNet, UNet
from torch import nn

from deepcens.modeling.dense import DENSE_NETWORK_REGISTRY
from deepcens.modeling.losses import DENSE_LOSS_REGISTRY


class MonaiSlidingWindow(nn.Module):
    """A MONAI network; MONAI sliding-window inference over ``roi_size`` patches in eval mode."""

    def __init__(self, network: nn.Module, roi_size: int, overlap: float, sw_batch_size: int,
                 size_divisibility: int):
        super().__init__()
        self.network = network
        self.roi_size = int(roi_size)
        self.overlap = float(overlap)
        self.sw_batch_size = int(sw_batch_size)
        self.size_divisibility = int(size_divisibility)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.training or self.roi_size <= 0 or max(images.shape[-2:]) <= self.roi_size:
            return self.network(images)
        return sliding_window_inference(images, (self.roi_size, self.roi_size), self.sw_batch_size,
                                        self.network, overlap=self.overlap, mode="constant")


def wrap_for_inference(cfg: CfgNode, network: nn.Module, size_divisibility: int) -> MonaiSlidingWindow:
    m = cfg.MODEL.DENSE.MONAI
    return MonaiSlidingWindow(network, m.ROI_SIZE, m.SW_OVERLAP, m.SW_BATCH_SIZE, size_divisibility)


@DENSE_NETWORK_REGISTRY.register()
def MonaiUNet(cfg: CfgNode) -> MonaiSlidingWindow:
    """MONAI ``UNet`` (residual units) with ``MODEL.DENSE.MONAI.UNET_*``."""
    m, d = cfg.MODEL.DENSE.MONAI, cfg.MODEL.DENSE
    strides = tuple(int(s) for s in m.UNET_STRIDES)
    network = UNet(spatial_dims=2, in_channels=int(d.INPUT_CHANNELS), out_channels=int(d.NUM_OUTPUTS),
                   channels=tuple(int(c) for c in m.UNET_CHANNELS), strides=strides,
                   num_res_units=int(m.UNET_NUM_RES_UNITS))
    divisibility = 1
    for stride in strides:
        divisibility *= stride
    return wrap_for_inference(cfg, network, divisibility)


@DENSE_NETWORK_REGISTRY.register()
def MonaiSegResNet(cfg: CfgNode) -> MonaiSlidingWindow:
    """MONAI ``SegResNet`` with ``MODEL.DENSE.MONAI.SEGRESNET_*`` (upsampling deconv /
    nontrainable / pixelshuffle)."""
    m, d = cfg.MODEL.DENSE.MONAI, cfg.MODEL.DENSE
    blocks_down = tuple(int(b) for b in m.SEGRESNET_BLOCKS_DOWN)
    network = SegResNet(spatial_dims=2, in_channels=int(d.INPUT_CHANNELS), out_channels=int(d.NUM_OUTPUTS),
                        init_filters=int(m.SEGRESNET_INIT_FILTERS), blocks_down=blocks_down,
                        upsample_mode=str(m.SEGRESNET_UPSAMPLE))
    return wrap_for_inference(cfg, network, 2 ** (len(blocks_down) - 1))


class DiceCE(nn.Module):
    """MONAI Dice + cross-entropy (see the module docstring); returns ``{"loss_dice_ce": ...}``."""

    def __init__(self, ignore_value: int = 255):
        super().__init__()
        self.ignore_value = int(ignore_value)
        self.dice = DiceLoss(to_onehot_y=True, softmax=True, ignore_index=self.ignore_value)
        self.cross_entropy = nn.CrossEntropyLoss(ignore_index=self.ignore_value)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        targets = targets.long()
        if not bool((targets != self.ignore_value).any()):
            return {"loss_dice_ce": logits.sum() * 0.0}
        loss = self.dice(logits, targets[:, None]) + self.cross_entropy(logits, targets)
        return {"loss_dice_ce": loss}


@DENSE_LOSS_REGISTRY.register()
def dice_ce(cfg: CfgNode) -> DiceCE:
    """MONAI DiceCE loss (the 2D DiNTS paper's Table 2)."""
    return DiceCE(cfg.MODEL.DENSE.IGNORE_VALUE)
