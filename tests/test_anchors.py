"""FlatSizesAnchorGenerator: the paper's flat anchor lists on p2..p6, equal anchors per location."""
from __future__ import annotations

import math

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from detectron2.modeling.anchor_generator import DefaultAnchorGenerator, build_anchor_generator
from detectron2.modeling.proposal_generator import build_proposal_generator
from hypothesis import given, settings
from hypothesis import strategies as st

import deepcens  # noqa: F401  (registers FlatSizesAnchorGenerator)
from deepcens import add_deepcens_config
from deepcens.modeling.anchors import FlatSizesAnchorGenerator, anchor_level_sizes, flat_sizes_to_levels

CELL_SIZES = [2, 6, 17, 31, 64, 127, 256, 512, 1024]  # DeepCeNS VI-A (also VI-C)
NUCLEUS_SIZES = [2, 6, 8, 12, 17, 24, 31, 64, 127, 256]  # DeepCeNS VI-B
RATIOS = [0.25, 0.5, 1.0, 2.0, 4.0]  # DeepCeNS VI
FPN_SHAPES = [ShapeSpec(channels=16, stride=s) for s in (4, 8, 16, 32, 64)]  # p2..p6


def _cfg(flat_sizes, mapping="all_levels"):
    cfg = get_cfg()
    add_deepcens_config(cfg)
    cfg.MODEL.ANCHOR_GENERATOR.NAME = "FlatSizesAnchorGenerator"
    cfg.MODEL.ANCHOR_GENERATOR.FLAT_SIZES = list(flat_sizes)
    cfg.MODEL.ANCHOR_GENERATOR.FLAT_SIZES_MAPPING = mapping
    cfg.MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS = [RATIOS]
    cfg.MODEL.RPN.IN_FEATURES = ["p2", "p3", "p4", "p5", "p6"]
    return cfg


def test_paper_lists_map_onto_five_levels():
    assert flat_sizes_to_levels(CELL_SIZES, 5) == [CELL_SIZES] * 5  # all_levels (default)
    assert flat_sizes_to_levels(list(reversed(NUCLEUS_SIZES)), 5) == [NUCLEUS_SIZES] * 5
    split = [[2, 6], [17, 31], [64, 127], [256, 512], [512, 1024]]
    assert flat_sizes_to_levels(CELL_SIZES, 5, "split") == split
    assert flat_sizes_to_levels(NUCLEUS_SIZES, 5, "split") == [[2, 6], [8, 12], [17, 24], [31, 64], [127, 256]]
    assert flat_sizes_to_levels([32, 64, 128, 256, 512], 5, "split") == [[32], [64], [128], [256], [512]]
    assert flat_sizes_to_levels([1024, 2, 17, 6], 2, "split") == [[2, 6], [17, 1024]]  # sorted first
    with pytest.raises(ValueError, match="FLAT_SIZES_MAPPING"):
        flat_sizes_to_levels(CELL_SIZES, 5, "spread")


@given(st.lists(st.integers(1, 4096), min_size=1, max_size=25, unique=True), st.integers(1, 7),
       st.sampled_from(["all_levels", "split"]))
@settings(max_examples=200, deadline=None)
def test_mapping_keeps_every_size_with_equal_counts(sizes, num_levels, mapping):
    levels = flat_sizes_to_levels(sizes, num_levels, mapping)
    assert len(levels) == num_levels
    assert len({len(level) for level in levels}) == 1
    expected = len(sizes) if mapping == "all_levels" else math.ceil(len(sizes) / num_levels)
    assert len(levels[0]) == expected
    assert {s for level in levels for s in level} == {float(s) for s in sizes}
    for finer, coarser in zip(levels, levels[1:]):  # finer levels never get larger sizes
        assert finer == sorted(finer)
        assert finer[0] <= coarser[0] and finer[-1] <= coarser[-1]


@pytest.mark.parametrize("bad", [[], [0, 4], [4, -1], [4, 4], [float("nan")]])
def test_bad_size_lists_are_rejected(bad):
    with pytest.raises(ValueError):
        flat_sizes_to_levels(bad, 5)


@pytest.mark.parametrize("mapping", ["all_levels", "split"])
@pytest.mark.parametrize("sizes", [CELL_SIZES, NUCLEUS_SIZES])
def test_generated_anchors_cover_exactly_the_paper_sizes_and_ratios(sizes, mapping):
    generator = build_anchor_generator(_cfg(sizes, mapping), FPN_SHAPES)
    assert isinstance(generator, FlatSizesAnchorGenerator)
    per_location = (len(sizes) if mapping == "all_levels" else 2) * len(RATIOS)
    assert generator.num_anchors == [per_location] * 5  # same anchors/location at every level
    features = [torch.zeros(1, 1, 1024 // s.stride, 1024 // s.stride) for s in FPN_SHAPES]  # 1024x1024 input
    anchors = generator(features)
    assert len(anchors) == 5
    all_boxes = torch.cat([a.tensor for a in anchors])
    widths = all_boxes[:, 2] - all_boxes[:, 0]
    heights = all_boxes[:, 3] - all_boxes[:, 1]
    got_sizes = {round(float(v), 2) for v in (widths * heights).sqrt().unique()}
    got_ratios = {round(float(v), 3) for v in (heights / widths).unique()}
    assert got_sizes == {float(s) for s in sizes}
    assert got_ratios == set(RATIOS)
    for level, (shape, boxes) in enumerate(zip(FPN_SHAPES, anchors)):
        assert len(boxes) == (1024 // shape.stride) ** 2 * per_location
    assert anchor_level_sizes(generator) == flat_sizes_to_levels(sizes, 5, mapping)


def test_empty_flat_sizes_behaves_like_default_generator():
    cfg = _cfg([])
    cfg.MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS = [[0.5, 1.0, 2.0]]
    ours = build_anchor_generator(cfg, FPN_SHAPES)
    cfg.MODEL.ANCHOR_GENERATOR.NAME = "DefaultAnchorGenerator"
    default = build_anchor_generator(cfg, FPN_SHAPES)
    assert type(default) is DefaultAnchorGenerator
    features = [torch.zeros(1, 1, 64 // s.stride, 64 // s.stride) for s in FPN_SHAPES]
    for a, b in zip(ours(features), default(features)):
        assert torch.equal(a.tensor, b.tensor)


@pytest.mark.parametrize("mapping", ["all_levels", "split"])
@pytest.mark.parametrize("sizes", [CELL_SIZES, NUCLEUS_SIZES])
def test_rpn_builds_and_runs_with_flat_sizes(sizes, mapping):
    cfg = _cfg(sizes, mapping)
    rpn = build_proposal_generator(cfg, dict(zip(cfg.MODEL.RPN.IN_FEATURES, FPN_SHAPES)))
    per_location = (len(sizes) if mapping == "all_levels" else 2) * len(RATIOS)
    assert rpn.rpn_head.objectness_logits.out_channels == per_location
    rpn.eval()
    from detectron2.structures import ImageList

    images = ImageList(torch.zeros(1, 3, 64, 64), [(64, 64)])
    features = {f"p{i + 2}": torch.randn(1, 16, 64 // s.stride, 64 // s.stride)
                for i, s in enumerate(FPN_SHAPES)}
    with torch.no_grad():
        proposals, _ = rpn(images, features)
    assert len(proposals) == 1 and len(proposals[0]) > 0


# ---- best_anchor_iou and deepcens.analysis.anchor_stats ------------------------------------------------

def _generators():
    default = _cfg([])
    default.MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS = [[0.5, 1.0, 2.0]]
    return [build_anchor_generator(_cfg(NUCLEUS_SIZES), FPN_SHAPES),
            build_anchor_generator(_cfg(CELL_SIZES, "split"), FPN_SHAPES), build_anchor_generator(default, FPN_SHAPES)]


@pytest.mark.parametrize("generator", _generators(), ids=["paper_nucleus", "paper_cell_split", "default"])
def test_best_anchor_iou_equals_brute_force_over_the_grid(generator):
    from detectron2.structures import Boxes, pairwise_iou

    from deepcens.modeling.anchors import best_anchor_iou

    torch.manual_seed(0)
    height, width = 70, 90  # padded to 96x96 as FPN's size divisibility does
    xy = torch.rand(40, 2) * torch.tensor([width, height])
    wh = torch.rand(40, 2) * 40 + 1
    boxes = torch.cat([xy, xy + wh], dim=1)
    features = [torch.zeros(1, 1, -(-96 // s.stride), -(-96 // s.stride)) for s in FPN_SHAPES]
    anchors = Boxes.cat(generator(features))
    brute = pairwise_iou(Boxes(boxes), anchors).max(dim=1).values
    assert torch.allclose(best_anchor_iou(boxes, (height, width), generator), brute, atol=1e-6)


def _anchor_stats(argv: list[str]) -> int:
    """``deepcens anchors`` / ``tools/anchor_stats.py`` with ``argv``: parse, run, exit status."""
    import argparse

    from deepcens.analysis import anchor_stats
    from deepcens.errors import exit_2_on_input_error

    parser = argparse.ArgumentParser()
    anchor_stats.add_arguments(parser)
    return exit_2_on_input_error(anchor_stats.run)(parser.parse_args(argv))


def test_anchor_stats_on_polygon_json(tmp_path):
    import json
    from pathlib import Path

    def square(x0, y0, side):
        return [[x0, y0, x0 + side, y0, x0 + side, y0 + side, x0, y0 + side]]

    data = {"images": [{"id": 1, "file_name": "a.png", "height": 256, "width": 256}],
            "categories": [{"id": 1, "name": "Cell"}, {"id": 2, "name": "Nucleus"}],
            "annotations": [  # polygons only, as EVICAN2: a 6 px nucleus on the grid, a 30 px cell
                {"id": 1, "image_id": 1, "category_id": 2, "segmentation": square(17, 17, 6)},
                {"id": 2, "image_id": 1, "category_id": 1, "segmentation": square(100, 100, 30)}]}
    json_file = tmp_path / "instances.json"
    json_file.write_text(json.dumps(data))
    config = Path(__file__).resolve().parents[1] / "configs" / "evican_nucleus.yaml"
    out = tmp_path / "out"
    assert _anchor_stats(["--json", str(json_file), "--config-file", str(config), "--resize", "256", "256",
                      "--out", str(out)]) == 0
    stats = json.loads((out / "anchor_stats.json").read_text())
    sets = stats["anchor_sets"]
    assert sets["detectron2_default"]["unreachable_iou50"] == 0.5  # the 6 px nucleus is missed
    assert sets["detectron2_default"]["per_class"]["Nucleus"]["unreachable_iou50"] == 1.0
    assert sets["paper_nucleus"]["unreachable_iou50"] == 0.0
    assert sets["evican_nucleus"]["sizes_per_level"] == [NUCLEUS_SIZES] * 5
    assert sets["paper_nucleus_split"]["sizes_per_level"] == [[2, 6], [8, 12], [17, 24], [31, 64], [127, 256]]
    assert stats["classes"]["Nucleus"]["count"] == 1 and stats["classes"]["Cell"]["suggested_sizes"] == [30]
    assert (out / "sizes_Cell.png").read_bytes()[:4] == b"\x89PNG" and (out / "anchor_stats.md").is_file()


def test_anchor_stats_reports_bad_json(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text('{"images": [], "annotations": [{"id": 3, "image_id": 9, "category_id": 1}], "categories": []}')
    assert _anchor_stats(["--json", str(bad), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and str(bad) in err and "missing image" in err
