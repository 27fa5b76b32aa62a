"""Cascade Mask R-CNN heads with a choice of where the mask branch sits (``ROI_MASK_HEAD.CASCADE_STAGES``).

Cascade R-CNN (Cai & Vasconcelos) names three strategies for the mask branch: one head at the
first stage, one head at the last stage, or one head per stage. detectron2's
``CascadeROIHeads`` trains its single mask head on the first stage's sampled proposals (IoU
0.5) and applies it to the final boxes. :class:`DeepcensCascadeROIHeads` keeps everything of
detectron2's class and only changes which proposals train the mask head(s):

- ``first``: detectron2's behaviour (stage-1 proposals);
- ``last``: one mask head trained on the last stage's proposals (refined twice, matched at the
  last IoU threshold) and applied to the final boxes; its weights keep detectron2's key names,
  so a COCO cascade checkpoint loads into it;
- ``all``: one mask head per stage, each trained on its stage's proposals (losses
  ``loss_mask_stage{k}`` weighted by ``STAGE_LOSS_WEIGHTS``); at inference every head runs on the
  final boxes and their mask probabilities are averaged. The last stage's head is ``mask_head``
  (COCO keys), earlier ones are ``stage_mask_heads``.
"""
from __future__ import annotations

import torch
from detectron2.config import CfgNode, configurable
from detectron2.modeling.roi_heads import ROI_HEADS_REGISTRY, CascadeROIHeads
from detectron2.modeling.roi_heads.mask_head import mask_rcnn_inference
from detectron2.modeling.roi_heads.roi_heads import select_foreground_proposals
from detectron2.structures import Instances, pairwise_iou
from torch import nn

MASK_STAGE_MODES = ("first", "last", "all")


@ROI_HEADS_REGISTRY.register()
class DeepcensCascadeROIHeads(CascadeROIHeads):
    """detectron2's ``CascadeROIHeads`` with the mask branch at the first, last or every stage."""

    @configurable
    def __init__(self, *, mask_stage_mode: str = "first", stage_mask_heads: list[nn.Module] | None = None,
                 stage_mask_loss_weights: tuple[float, ...] = (), **kwargs):
        super().__init__(**kwargs)
        if mask_stage_mode not in MASK_STAGE_MODES:
            raise ValueError(f"MODEL.ROI_MASK_HEAD.CASCADE_STAGES must be one of {MASK_STAGE_MODES}, "
                             f"got {mask_stage_mode!r}")
        self.mask_stage_mode = mask_stage_mode
        self.stage_mask_heads = nn.ModuleList(stage_mask_heads or [])
        weights = tuple(float(w) for w in stage_mask_loss_weights) or (1.0,) * self.num_cascade_stages
        if mask_stage_mode == "all" and len(weights) != self.num_cascade_stages:
            raise ValueError(f"MODEL.ROI_MASK_HEAD.STAGE_LOSS_WEIGHTS needs one weight per cascade stage "
                             f"({self.num_cascade_stages}), got {list(weights)}")
        self.stage_mask_loss_weights = weights
        self._stage_proposals: dict[int, list[Instances]] = {}

    @classmethod
    def from_config(cls, cfg: CfgNode, input_shape) -> dict:
        ret = super().from_config(cfg, input_shape)
        mode = cfg.MODEL.ROI_MASK_HEAD.CASCADE_STAGES
        ret["mask_stage_mode"] = mode
        ret["stage_mask_loss_weights"] = tuple(cfg.MODEL.ROI_MASK_HEAD.STAGE_LOSS_WEIGHTS)
        if mode == "all" and cfg.MODEL.MASK_ON:
            stages = len(cfg.MODEL.ROI_BOX_CASCADE_HEAD.IOUS)
            ret["stage_mask_heads"] = [cls._init_mask_head(cfg, input_shape)["mask_head"] for _ in range(stages - 1)]
        return ret

    def forward(self, images, features, proposals, targets=None):
        self._stage_proposals = {}
        try:
            return super().forward(images, features, proposals, targets)
        finally:
            self._stage_proposals = {}

    @torch.no_grad()
    def _match_and_label_boxes(self, proposals, stage, targets):
        """detectron2's stage matching, plus the matched ``gt_masks`` a later-stage mask head trains on."""
        proposals = super()._match_and_label_boxes(proposals, stage, targets)
        if self.mask_on and self.mask_stage_mode != "first":
            for proposals_per_image, targets_per_image in zip(proposals, targets):
                if len(targets_per_image) == 0 or not targets_per_image.has("gt_masks"):
                    continue
                quality = pairwise_iou(targets_per_image.gt_boxes, proposals_per_image.proposal_boxes)
                matched_idxs, _ = self.proposal_matchers[stage](quality)  # the same match as above
                proposals_per_image.gt_masks = targets_per_image.gt_masks[matched_idxs]
            self._stage_proposals[stage] = proposals
        return proposals

    def _forward_mask(self, features: dict[str, torch.Tensor], instances: list[Instances]):
        if not self.mask_on or self.mask_stage_mode == "first":
            return super()._forward_mask(features, instances)
        if self.mask_stage_mode == "last":
            if self.training:
                instances = self._stage_proposals.get(self.num_cascade_stages - 1, instances)
            return super()._forward_mask(features, instances)
        return self._forward_mask_all_stages(features, instances)

    def _pooled(self, features: dict[str, torch.Tensor], boxes) -> torch.Tensor:
        if self.mask_pooler is None:
            raise ValueError("MODEL.ROI_MASK_HEAD.CASCADE_STAGES 'all' needs a mask pooler (POOLER_TYPE)")
        return self.mask_pooler([features[f] for f in self.mask_in_features], boxes)

    def _forward_mask_all_stages(self, features: dict[str, torch.Tensor], instances: list[Instances]):
        heads = [*self.stage_mask_heads, self.mask_head]
        if self.training:
            stage_instances = {0: instances, **self._stage_proposals}
            losses = {}
            for stage, (head, weight) in enumerate(zip(heads, self.stage_mask_loss_weights)):
                foreground, _ = select_foreground_proposals(stage_instances[stage], self.num_classes)
                pooled = self._pooled(features, [x.proposal_boxes for x in foreground])
                loss = head(pooled, foreground)["loss_mask"]
                losses[f"loss_mask_stage{stage}"] = loss * weight
            return losses
        pooled = self._pooled(features, [x.pred_boxes for x in instances])
        probabilities = torch.stack([head.layers(pooled).sigmoid() for head in heads]).mean(0)
        mask_rcnn_inference(torch.logit(probabilities.clamp(1e-6, 1 - 1e-6)), instances)
        return instances
