"""Backbones: ResNeSt (+ deformable convolution) trunk and its FPN (``build_resnest_backbone``,
``build_resnest_fpn_backbone`` in detectron2's BACKBONE_REGISTRY)."""
from deepcens.modeling.backbone.resnest import (  # noqa: F401  (registrations)
    ResNeSt,
    WeightLoadReport,
    build_resnest_backbone,
    build_resnest_fpn_backbone,
    load_resnest_pretrained,
)
