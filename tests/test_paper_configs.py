"""The DeepCeNS paper configs: yaml values equal the paper's, and the models build (tiny, CPU)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances, PolygonMasks
from detectron2.utils.events import EventStorage

import deepcens  # noqa: F401  (registrations)
from deepcens.engine.setup import load_config
from deepcens.modeling.anchors import FlatSizesAnchorGenerator, anchor_level_sizes

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
CELL_SIZES = [2, 6, 17, 31, 64, 127, 256, 512, 1024]  # paper VI-A, VI-C
NUCLEUS_SIZES = [2, 6, 8, 12, 17, 24, 31, 64, 127, 256]  # paper VI-B
SETTINGS = {  # config -> (anchor sizes, classes, dataset setting)
    "evican_cell.yaml": (CELL_SIZES, 1, "cell"),
    "evican_nucleus.yaml": (NUCLEUS_SIZES, 1, "nucleus"),
    "evican_cell_nucleus.yaml": (CELL_SIZES, 2, "cell_nucleus"),
}
TINY = [  # small CPU model; everything the test checks stays as in the yaml
    "MODEL.DEVICE", "cpu", "MODEL.RESNEST.DEPTH", "0", "MODEL.RESNEST.NORM", "BN",
    "MODEL.RESNEST.STEM_WIDTH", "8", "MODEL.RESNEST.BOTTLENECK_WIDTH", "8", "MODEL.FPN.OUT_CHANNELS", "16",
    "MODEL.FPN.NORM", "", "MODEL.ROI_BOX_HEAD.NORM", "", "MODEL.ROI_MASK_HEAD.NORM", "",  # SyncBN refuses CPU
    "MODEL.ROI_BOX_HEAD.FC_DIM", "32", "MODEL.ROI_BOX_HEAD.NUM_CONV", "1", "MODEL.ROI_BOX_HEAD.CONV_DIM", "16",
    "MODEL.ROI_MASK_HEAD.CONV_DIM", "16", "MODEL.ROI_MASK_HEAD.NUM_CONV", "1",
    "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "32", "MODEL.RPN.POST_NMS_TOPK_TRAIN", "64",
    "MODEL.RPN.PRE_NMS_TOPK_TRAIN", "256",
]


@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_yaml_values_are_the_papers(name):
    sizes, classes, setting = SETTINGS[name]
    cfg = load_config(str(CONFIGS / name))
    m = cfg.MODEL
    assert m.META_ARCHITECTURE == "GeneralizedRCNN" and m.MASK_ON
    assert m.BACKBONE.NAME == "build_resnest_fpn_backbone"
    assert m.RESNEST.DEPTH == 200 and m.RESNEST.NORM == "SyncBN"
    assert list(m.RESNEST.DEFORM_ON_PER_STAGE) == [False, True, True, True]  # DCN in res3-res5
    assert m.FPN.NORM == m.ROI_BOX_HEAD.NORM == m.ROI_MASK_HEAD.NORM == "SyncBN"  # as the COCO model
    assert (m.ROI_BOX_HEAD.NUM_CONV, m.ROI_BOX_HEAD.NUM_FC, m.ROI_MASK_HEAD.NUM_CONV) == (4, 1, 8)
    assert m.ANCHOR_GENERATOR.NAME == "FlatSizesAnchorGenerator"
    assert list(m.ANCHOR_GENERATOR.FLAT_SIZES) == sizes and m.ANCHOR_GENERATOR.FLAT_SIZES_MAPPING == "all_levels"
    assert [list(r) for r in m.ANCHOR_GENERATOR.ASPECT_RATIOS] == [[0.25, 0.5, 1.0, 2.0, 4.0]]
    assert list(m.RPN.IOU_THRESHOLDS) == [0.3, 0.7] and m.RPN.POST_NMS_TOPK_TRAIN == 2000
    assert m.ROI_HEADS.NAME == "DeepcensCascadeROIHeads" and m.ROI_HEADS.NUM_CLASSES == classes
    assert m.ROI_MASK_HEAD.CASCADE_STAGES == "last"  # paper III-C: mask head at the final stage
    assert list(m.ROI_BOX_CASCADE_HEAD.IOUS) == [0.5, 0.6, 0.7]
    assert list(m.PIXEL_MEAN) == [114.83] * 3 and list(m.PIXEL_STD) == [15.455] * 3
    s = cfg.SOLVER
    assert (s.OPTIMIZER, s.BASE_LR, s.MOMENTUM) == ("SGD", 0.02, 0.9)
    assert (s.WARMUP_METHOD, s.WARMUP_FACTOR, s.WARMUP_ITERS) == ("linear", 0.001, 1000)
    assert tuple(s.STEPS) == (5000, 5500) and s.GAMMA == 0.1 and s.MAX_ITER > 5500
    assert s.BEST_CHECKPOINT_METRIC == "segm/AP" and s.VAL_LOSS_PERIOD > 0 and cfg.TEST.EVAL_PERIOD > 0
    assert tuple(cfg.INPUT.RESIZE_EXACT) == (1024, 1024) and cfg.INPUT.RANDOM_FLIP == "horizontal"
    assert not cfg.INPUT.RANDOM_FLIP_VERTICAL
    assert cfg.DATASETS.TRAIN == (f"evican_train_{setting}",) and cfg.DATASETS.VAL == (f"evican_val_{setting}",)
    assert cfg.DATASETS.TEST == tuple(f"evican_eval_{d}_{setting}" for d in ("easy", "medium", "difficult"))
    assert cfg.TEST.DETECTIONS_PER_IMAGE == 100


def _batch(num_classes: int) -> list[dict]:
    batch = []
    for seed in range(2):  # BatchNorm in split attention needs batch >= 2
        generator = torch.Generator().manual_seed(seed)
        instances = Instances((64, 64))
        boxes = torch.tensor([[8.0, 8.0, 30.0, 28.0], [34.0, 30.0, 60.0, 58.0]])
        instances.gt_boxes = Boxes(boxes)
        instances.gt_classes = torch.tensor([0, num_classes - 1])
        instances.gt_masks = PolygonMasks([[[x0, y0, x1, y0, x1, y1, x0, y1]] for x0, y0, x1, y1 in boxes.tolist()])
        batch.append({"image": torch.rand(3, 64, 64, generator=generator) * 255, "height": 64, "width": 64,
                      "instances": instances})
    return batch


@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_paper_model_builds_with_three_stages_and_paper_anchors(name):
    sizes, classes, _ = SETTINGS[name]
    cfg = load_config(str(CONFIGS / name), TINY)
    torch.manual_seed(0)
    model = build_model(cfg)
    heads = model.roi_heads
    assert heads.num_cascade_stages == 3
    assert [m.thresholds[1] for m in heads.proposal_matchers] == [0.5, 0.6, 0.7]
    assert heads.mask_on and heads.box_predictor[-1].num_classes == classes
    anchors = model.proposal_generator.anchor_generator
    assert isinstance(anchors, FlatSizesAnchorGenerator)
    assert anchors.num_anchors == [len(sizes) * 5] * 5  # every size x 5 ratios on each of p2..p6
    assert anchor_level_sizes(anchors) == [[float(s) for s in sizes]] * 5
    assert model.proposal_generator.anchor_matcher.thresholds[1:-1] == [0.3, 0.7]
    with EventStorage():  # one training forward on 64x64 images: every loss is finite
        losses = model(_batch(classes))
    assert {"loss_rpn_cls", "loss_mask", "loss_cls_stage2", "loss_box_reg_stage2"} <= set(losses)
    assert all(torch.isfinite(v) for v in losses.values())
    model.eval()
    with torch.no_grad():
        (output,) = model([{"image": torch.rand(3, 64, 64) * 255, "height": 96, "width": 80}])
    assert output["instances"].image_size == (96, 80)  # predictions in the original image size


def test_baseline_is_plain_mask_rcnn_with_default_anchors():
    cfg = load_config(str(CONFIGS / "evican_mask_rcnn_baseline.yaml"),
                      ["MODEL.DEVICE", "cpu", "MODEL.RESNETS.DEPTH", "18", "MODEL.RESNETS.RES2_OUT_CHANNELS", "64",
                       "MODEL.RESNETS.NORM", "BN", "MODEL.FPN.OUT_CHANNELS", "16"])
    assert cfg.MODEL.ROI_HEADS.NAME == "StandardROIHeads" and cfg.MODEL.FPN.NORM == ""
    assert (cfg.MODEL.ROI_BOX_HEAD.NUM_CONV, cfg.MODEL.ROI_BOX_HEAD.NUM_FC, cfg.MODEL.ROI_MASK_HEAD.NUM_CONV) == (0, 2, 4)
    assert [list(s) for s in cfg.MODEL.ANCHOR_GENERATOR.SIZES] == [[32], [64], [128], [256], [512]]
    # same data, schedule and input as DeepCeNS setting 3: only the model differs
    deepcens_cfg = load_config(str(CONFIGS / "evican_cell_nucleus.yaml"))
    for key in ("DATASETS", "SOLVER", "INPUT"):
        assert cfg[key] == deepcens_cfg[key]
    assert cfg.MODEL.PIXEL_MEAN == deepcens_cfg.MODEL.PIXEL_MEAN
    model = build_model(cfg)
    assert model.proposal_generator.anchor_generator.num_anchors == [3] * 5
    assert type(model.roi_heads).__name__ == "StandardROIHeads"
