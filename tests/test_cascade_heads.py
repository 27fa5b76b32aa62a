"""Where the cascade's mask branch sits: first stage (detectron2), last stage (paper), every stage."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances, PolygonMasks
from detectron2.utils.events import EventStorage

import deepcens  # noqa: F401  (registrations)
from deepcens.engine.setup import load_config
from deepcens.modeling.cascade_heads import DeepcensCascadeROIHeads

CONFIG = str(Path(__file__).resolve().parents[1] / "configs" / "evican_cell_nucleus.yaml")
TINY = [
    "MODEL.DEVICE", "cpu", "MODEL.RESNEST.DEPTH", "0", "MODEL.RESNEST.NORM", "BN",
    "MODEL.RESNEST.STEM_WIDTH", "8", "MODEL.RESNEST.BOTTLENECK_WIDTH", "8", "MODEL.FPN.OUT_CHANNELS", "16",
    "MODEL.FPN.NORM", "", "MODEL.ROI_BOX_HEAD.NORM", "", "MODEL.ROI_MASK_HEAD.NORM", "",
    "MODEL.ROI_BOX_HEAD.FC_DIM", "32", "MODEL.ROI_BOX_HEAD.NUM_CONV", "1", "MODEL.ROI_BOX_HEAD.CONV_DIM", "16",
    "MODEL.ROI_MASK_HEAD.CONV_DIM", "16", "MODEL.ROI_MASK_HEAD.NUM_CONV", "1",
    "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "32", "MODEL.RPN.POST_NMS_TOPK_TRAIN", "64",
    "MODEL.RPN.PRE_NMS_TOPK_TRAIN", "256", "MODEL.ANCHOR_GENERATOR.FLAT_SIZES", "[8, 16, 32]",
]


def _batch() -> list[dict]:
    batch = []
    for seed in range(2):
        generator = torch.Generator().manual_seed(seed)
        instances = Instances((64, 64))
        boxes = torch.tensor([[8.0, 8.0, 30.0, 28.0], [34.0, 30.0, 60.0, 58.0]])
        instances.gt_boxes = Boxes(boxes)
        instances.gt_classes = torch.tensor([0, 1])
        instances.gt_masks = PolygonMasks([[[x0, y0, x1, y0, x1, y1, x0, y1]] for x0, y0, x1, y1 in boxes.tolist()])
        batch.append({"image": torch.rand(3, 64, 64, generator=generator) * 255, "height": 64, "width": 64,
                      "instances": instances})
    return batch


def _model(mode: str, *extra: str):
    cfg = load_config(CONFIG, [*TINY, "MODEL.ROI_MASK_HEAD.CASCADE_STAGES", mode, *extra])
    torch.manual_seed(0)
    return build_model(cfg)


def _train_two_iterations(model) -> list[dict[str, float]]:
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    history = []
    model.train()
    with EventStorage():
        for _ in range(2):
            losses = model(_batch())
            total = sum(losses.values())
            optimizer.zero_grad()
            total.backward()
            optimizer.step()
            history.append({k: float(v.detach()) for k, v in losses.items()})
    return history


@pytest.mark.parametrize("mode", ["first", "last", "all"])
def test_mask_head_modes_train_and_predict(mode):
    model = _model(mode)
    heads = model.roi_heads
    assert isinstance(heads, DeepcensCascadeROIHeads) and heads.mask_stage_mode == mode
    assert len(heads.stage_mask_heads) == (2 if mode == "all" else 0)
    history = _train_two_iterations(model)
    mask_keys = sorted(k for k in history[0] if k.startswith("loss_mask"))
    expected = ["loss_mask_stage0", "loss_mask_stage1", "loss_mask_stage2"] if mode == "all" else ["loss_mask"]
    assert mask_keys == expected
    assert all(torch.isfinite(torch.tensor(v)) for step in history for v in step.values())
    model.eval()
    with torch.no_grad():
        (output,) = model([{"image": torch.rand(3, 64, 64) * 255, "height": 64, "width": 64}])
    instances = output["instances"]
    assert instances.has("pred_masks") and len(instances.pred_masks) == len(instances)


def test_last_stage_mode_trains_on_last_stage_proposals(monkeypatch):
    """The single mask head sees the proposals matched at the last IoU (0.7), not stage 1's."""
    model = _model("last")
    seen = []
    original = type(model.roi_heads.mask_head).forward

    def spy(head, x, instances):
        seen.append([inst.proposal_boxes.tensor.clone() for inst in instances])
        return original(head, x, instances)

    monkeypatch.setattr(type(model.roi_heads.mask_head), "forward", spy)
    stage_sets = {}
    original_match = DeepcensCascadeROIHeads._match_and_label_boxes

    def record(self, proposals, stage, targets):
        result = original_match(self, proposals, stage, targets)
        stage_sets[stage] = [p.proposal_boxes.tensor.clone() for p in result]
        return result

    monkeypatch.setattr(DeepcensCascadeROIHeads, "_match_and_label_boxes", record)
    model.train()
    with EventStorage():
        model(_batch())
    (trained_on,) = seen
    for boxes, last_stage in zip(trained_on, stage_sets[2]):
        # foreground subset of the last stage's proposals
        assert all(any(torch.equal(b, c) for c in last_stage) for b in boxes)


def test_all_stages_averages_head_probabilities_and_loads_coco_keys():
    model = _model("all", "MODEL.ROI_MASK_HEAD.STAGE_LOSS_WEIGHTS", "(1.0, 0.5, 0.25)")
    assert model.roi_heads.stage_mask_loss_weights == (1.0, 0.5, 0.25)
    keys = set(model.state_dict())
    assert any(k.startswith("roi_heads.mask_head.") for k in keys)  # last stage keeps the COCO model's names
    assert any(k.startswith("roi_heads.stage_mask_heads.1.") for k in keys)
    with pytest.raises(ValueError, match="one weight per cascade stage"):
        _model("all", "MODEL.ROI_MASK_HEAD.STAGE_LOSS_WEIGHTS", "(1.0, 0.5)")
    with pytest.raises(ValueError, match="CASCADE_STAGES"):
        _model("middle")
