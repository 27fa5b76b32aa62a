"""Loss of segmentation + marker networks (NAS U-Net), registered in ``DENSE_LOSS_REGISTRY``."""
from __future__ import annotations

import torch
from detectron2.config import CfgNode
from torch import nn
from torch.nn import functional as F

from deepcens.modeling.losses import DENSE_LOSS_REGISTRY


class SegmentationMarkerLoss(nn.Module):
    """NAS U-Net loss (Zhu & Meijering 2021, Sec. 3.1): U-Net weighted cross-entropy on the
    segmentation (per-pixel weights from the mapper's ``weight`` map, mean over labelled pixels)
    plus ``marker_weight`` x binary cross-entropy on the markers; ignored pixels count nowhere.
    Called as ``loss((segmentation logits, marker logits), {"segmentation", "markers", "weights"})``."""

    def __init__(self, marker_weight: float = 1.0, ignore_value: int = 255):
        super().__init__()
        self.marker_weight = float(marker_weight)
        self.ignore_value = int(ignore_value)

    def forward(self, outputs: tuple[torch.Tensor, torch.Tensor], targets: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        segmentation_logits, marker_logits = outputs
        classes, markers, weights = targets["segmentation"], targets["markers"], targets["weights"]
        labelled = classes != self.ignore_value
        pixel_ce = F.cross_entropy(segmentation_logits.float(), torch.where(labelled, classes, 0), reduction="none")
        loss_seg = (pixel_ce * weights * labelled).sum() / labelled.sum().clamp(min=1)
        marked = markers != self.ignore_value
        pixel_bce = F.binary_cross_entropy_with_logits(marker_logits[:, 0].float(), (markers == 1).float(), reduction="none")
        loss_marker = (pixel_bce * marked).sum() / marked.sum().clamp(min=1)
        return {"loss_seg": loss_seg, "loss_marker": self.marker_weight * loss_marker}


@DENSE_LOSS_REGISTRY.register()
def segmentation_marker(cfg: CfgNode) -> SegmentationMarkerLoss:
    """Weighted cross-entropy + marker BCE (``MODEL.NAS.MARKER_LOSS_WEIGHT``), for ``MarkerSegmentor``."""
    return SegmentationMarkerLoss(cfg.MODEL.NAS.MARKER_LOSS_WEIGHT, cfg.MODEL.DENSE.IGNORE_VALUE)
