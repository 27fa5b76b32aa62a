"""Losses of dense (U-Net) methods, found by ``cfg.MODEL.DENSE.LOSS`` in :data:`DENSE_LOSS_REGISTRY`.

A loss builder is called as ``builder(cfg)`` and returns an ``nn.Module`` called as
``loss(logits (B, C, H, W), targets (B, H, W) long) -> dict[str, Tensor]`` (scalar losses
that the trainer sums); target pixels equal to ``MODEL.DENSE.IGNORE_VALUE`` (255) count nowhere.

``"xbnet"``: the XB-Net paper's training loss (Sec. 3.4, 4.2 "Lfcn"/"Prop"): class-weighted
cross-entropy (weights 1 / 10 / 5 for background / boundary / cell) plus, with equal weight,
the J-regularization loss of Guerrero-Pena et al. (ISBI 2020, the paper's ref. [11]), which
the authors' public code leaves at zero. ``"cross_entropy"``: the weighted cross-entropy alone.
"""
from __future__ import annotations

from typing import Sequence

import torch
from detectron2.config import CfgNode
from detectron2.utils.registry import Registry
from torch import nn
from torch.nn import functional as F

DENSE_LOSS_REGISTRY = Registry("DENSE_LOSS")
DENSE_LOSS_REGISTRY.__doc__ = "Dense losses: (cfg) -> module(logits, targets) -> dict of scalar losses."


def weighted_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor | None,
                           ignore_value: int = 255) -> torch.Tensor:
    """PyTorch's class-weighted cross-entropy (weighted mean over labelled pixels); 0 if none is labelled."""
    if not bool((targets != ignore_value).any()):
        return logits.sum() * 0.0
    return F.cross_entropy(logits, targets, weight=weights, ignore_index=ignore_value)


def j_statistics(probabilities: torch.Tensor, targets: torch.Tensor, ignore_value: int = 255
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Soft pairwise Youden's J statistics of a multi-class prediction.

    For classes i != j, with Omega_k the labelled pixels of class k (pooled over the batch)::

        J_ij = mean_{x in Omega_i} p_i(x) - mean_{x in Omega_j} p_i(x)

    i.e. the soft sensitivity of "is class i" on class-i pixels plus its soft specificity on
    class-j pixels, minus 1; J_ij lies in [-1, 1] and is 1 only when p_i separates the two
    classes perfectly. Returns ``(J, valid)``, both (C, C): ``valid[i, j]`` is True when
    i != j and both classes occur. Size-normalised means make the term blind to class
    frequencies, which is why it helps the rare boundary class.
    """
    num_classes = probabilities.shape[1]
    labelled = targets != ignore_value
    one_hot = F.one_hot(torch.where(labelled, targets, 0), num_classes).to(probabilities.dtype)
    one_hot = one_hot * labelled.unsqueeze(-1).to(probabilities.dtype)  # (B, H, W, C)
    counts = one_hot.sum(dim=(0, 1, 2))  # pixels per class
    # sums[j, i] = sum over class-j pixels of p_i
    sums = torch.einsum("bhwj,bihw->ji", one_hot, probabilities)
    means = sums / counts.clamp(min=1.0).unsqueeze(1)  # means[j, i] = mean p_i over Omega_j
    diagonal = torch.diagonal(means)  # mean p_i over Omega_i
    j_matrix = diagonal.unsqueeze(1) - means.t()  # J[i, j] = means[i, i] - means[j, i]
    present = counts > 0
    valid = present.unsqueeze(1) & present.unsqueeze(0) & ~torch.eye(num_classes, dtype=torch.bool,
                                                                     device=probabilities.device)
    return j_matrix, valid


def j_regularization(logits: torch.Tensor, targets: torch.Tensor, ignore_value: int = 255,
                     eps: float = 1e-6) -> torch.Tensor:
    """J-regularization loss: ``mean over class pairs of -log((1 + J_ij) / 2)``.

    The map ``(1 + J) / 2`` takes J from [-1, 1] to [0, 1] (a pairwise balanced accuracy), so
    the term is 0 for perfectly separated classes and grows without bound as the prediction
    confuses a pair. Pairs with an absent class are skipped; 0 when fewer than two classes occur.
    """
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()  # softmax statistics in fp32 under mixed precision
    probabilities = F.softmax(logits, dim=1)
    j_matrix, valid = j_statistics(probabilities, targets, ignore_value)
    if not bool(valid.any()):
        return logits.sum() * 0.0
    return -torch.log((1.0 + j_matrix[valid]) / 2.0 + eps).mean()


class XBNetLoss(nn.Module):
    """Class-weighted cross-entropy + ``jreg_weight`` x J-regularization (see the module docstring)."""

    def __init__(self, class_weights: Sequence[float] | None = (1.0, 10.0, 5.0), jreg_weight: float = 1.0,
                 ignore_value: int = 255):
        super().__init__()
        weights = None if not class_weights else torch.tensor([float(w) for w in class_weights])
        self.register_buffer("class_weights", weights, persistent=False)
        self.jreg_weight = float(jreg_weight)
        self.ignore_value = int(ignore_value)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.class_weights is not None and self.class_weights.numel() != logits.shape[1]:
            raise ValueError(f"MODEL.DENSE.CLASS_WEIGHTS has {self.class_weights.numel()} values "
                             f"for {logits.shape[1]} network outputs")
        targets = targets.long()
        losses = {"loss_ce": weighted_cross_entropy(logits, targets, self.class_weights, self.ignore_value)}
        if self.jreg_weight > 0:
            losses["loss_jreg"] = self.jreg_weight * j_regularization(logits, targets, self.ignore_value)
        return losses


@DENSE_LOSS_REGISTRY.register()
def xbnet(cfg: CfgNode) -> XBNetLoss:
    """Weighted cross-entropy + J-regularization (``MODEL.DENSE.CLASS_WEIGHTS`` / ``JREG_WEIGHT``)."""
    d = cfg.MODEL.DENSE
    return XBNetLoss(tuple(d.CLASS_WEIGHTS), d.JREG_WEIGHT, d.IGNORE_VALUE)


@DENSE_LOSS_REGISTRY.register()
def cross_entropy(cfg: CfgNode) -> XBNetLoss:
    """Weighted cross-entropy alone (the paper's Base / Wght settings)."""
    d = cfg.MODEL.DENSE
    return XBNetLoss(tuple(d.CLASS_WEIGHTS), 0.0, d.IGNORE_VALUE)


def soft_dice_loss(logits: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """Dice loss of Milletari et al. (V-Net) on sigmoid probabilities, pooled over the batch:
    ``1 - (2 sum(p t) + s) / (sum(p^2) + sum(t^2) + s)`` over the ``valid`` pixels."""
    probabilities = torch.sigmoid(logits.float()) * valid
    targets = targets.float() * valid
    intersection = (probabilities * targets).sum()
    denominator = (probabilities * probabilities).sum() + (targets * targets).sum()
    return 1.0 - (2.0 * intersection + smooth) / (denominator + smooth)


class EfficientCellSegLoss(nn.Module):
    """Dice loss on channel 0 (segmentation network) and, with ``focal``, the sigmoid focal loss of
    Lin et al. (torchvision) on channel 1 (centre-heatmap network), averaged over labelled pixels.

    Targets are ``(B, H, W)`` (foreground only) or ``(B, C, H, W)`` floats; ``ignore_value`` marks
    pixels that count nowhere.
    """

    def __init__(self, focal: bool, smooth: float = 1.0, alpha: float = 0.25, gamma: float = 2.0,
                 ignore_value: int = 255):
        super().__init__()
        self.focal, self.smooth, self.alpha, self.gamma = bool(focal), float(smooth), float(alpha), float(gamma)
        self.ignore_value = float(ignore_value)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        from torchvision.ops import sigmoid_focal_loss

        if targets.dim() == 3:
            targets = targets.unsqueeze(1)
        needed = 2 if self.focal else 1
        if logits.shape[1] < needed or targets.shape[1] < needed:
            raise ValueError(f"loss needs {needed} output / target channel(s), got {logits.shape[1]} / {targets.shape[1]}")
        targets = targets.to(logits.device, torch.float32)
        valid = targets != self.ignore_value
        losses = {"loss_dice": soft_dice_loss(logits[:, 0], targets[:, 0], valid[:, 0], self.smooth)}
        if self.focal:
            mask = valid[:, 1]
            if bool(mask.any()):
                focal = sigmoid_focal_loss(logits[:, 1].float()[mask], targets[:, 1][mask], self.alpha, self.gamma,
                                           reduction="mean")
            else:
                focal = logits.sum() * 0.0
            losses["loss_focal"] = focal
        return losses


@DENSE_LOSS_REGISTRY.register()
def dice(cfg: CfgNode) -> EfficientCellSegLoss:
    """EfficientCellSeg segmentation: Dice loss (``MODEL.DENSE.ECS.DICE_SMOOTH``)."""
    e = cfg.MODEL.DENSE.ECS
    return EfficientCellSegLoss(False, e.DICE_SMOOTH, ignore_value=cfg.MODEL.DENSE.IGNORE_VALUE)


@DENSE_LOSS_REGISTRY.register()
def dice_focal(cfg: CfgNode) -> EfficientCellSegLoss:
    """EfficientCellSeg segmentation + centre heatmap: Dice loss and focal loss (``FOCAL_ALPHA`` / ``GAMMA``)."""
    e = cfg.MODEL.DENSE.ECS
    return EfficientCellSegLoss(True, e.DICE_SMOOTH, e.FOCAL_ALPHA, e.FOCAL_GAMMA, cfg.MODEL.DENSE.IGNORE_VALUE)


def build_dense_loss(cfg: CfgNode) -> nn.Module:
    """The loss named by ``cfg.MODEL.DENSE.LOSS``."""
    return DENSE_LOSS_REGISTRY.get(cfg.MODEL.DENSE.LOSS)(cfg)
