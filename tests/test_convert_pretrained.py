"""convert_pretrained: ResNeSt ImageNet and detectron2-ResNeSt (COCO) key layouts, made here
from a tiny DeepCeNS model, become MODEL.WEIGHTS checkpoints with an honest key report."""
from __future__ import annotations

import argparse
import hashlib
import os
import re

import pytest
import torch
from detectron2.modeling import build_model

from deepcens.engine.checkpoint import DeepcensCheckpointer
from deepcens.engine.setup import load_config
from deepcens.errors import DeepcensInputError
from deepcens.modeling.pretrained import add_arguments, convert_pretrained, run

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["MODEL.DEVICE", "cpu", "MODEL.RESNEST.DEPTH", "0", "MODEL.RESNEST.STEM_WIDTH", "16",
        "MODEL.RESNEST.BOTTLENECK_WIDTH", "16", "MODEL.RESNEST.DEFORM_NUM_GROUPS", "1", "MODEL.FPN.OUT_CHANNELS", "16",
        "MODEL.ROI_BOX_HEAD.CONV_DIM", "8", "MODEL.ROI_BOX_HEAD.FC_DIM", "16", "MODEL.ROI_MASK_HEAD.CONV_DIM", "8",
        "MODEL.ROI_MASK_HEAD.NUM_CONV", "1"]
TRUNK = "backbone.bottom_up."


def tiny_cfg():
    return load_config(os.path.join(REPO, "configs", "evican_cell.yaml"), TINY)


@pytest.fixture(scope="module")
def source_model():
    torch.manual_seed(3)
    model = build_model(tiny_cfg())
    with torch.no_grad():
        for tensor in model.state_dict().values():
            if tensor.is_floating_point():
                tensor.normal_()
    return model


def to_resnest_imagenet(key: str) -> str:
    """Trunk key -> resnest package name (stem.conv1.* -> conv1.*, res2.* -> layer1.*)."""
    local = key[len(TRUNK):]
    if local.startswith("stem."):
        return local[len("stem."):]
    match = re.match(r"res(\d)\.(.*)", local)
    return f"layer{int(match.group(1)) - 1}.{match.group(2)}"


def to_detectron2_resnest(key: str) -> str:
    """Trunk key -> detectron2-ResNeSt name (the inverse of the trunk's load pre-hook)."""
    if not key.startswith(TRUNK):
        return key
    local = key[len(TRUNK):]
    for pattern, repl in (
        (r"stem\.conv1\.0\.weight", "stem.conv1_1.weight"), (r"stem\.conv1\.1\.", "stem.conv1_1.norm."),
        (r"stem\.conv1\.3\.weight", "stem.conv1_2.weight"), (r"stem\.conv1\.4\.", "stem.conv1_2.norm."),
        (r"stem\.conv1\.6\.weight", "stem.conv1_3.weight"), (r"stem\.bn1\.", "stem.conv1_3.norm."),
        (r"(res\d\.\d+)\.bn1\.", r"\1.conv1.norm."), (r"(res\d\.\d+)\.bn3\.", r"\1.conv3.norm."),
        (r"(res\d\.\d+)\.downsample\.1\.weight", r"\1.shortcut.weight"),
        (r"(res\d\.\d+)\.downsample\.2\.", r"\1.shortcut.norm."),
        (r"(res\d\.\d+)\.conv2\.conv\.conv_offset\.", r"\1.conv2_offset."),
    ):
        new, count = re.subn("^" + pattern, repl, local)
        if count:
            return TRUNK + new
    return key


def _load(path: str):
    torch.manual_seed(11)
    model = build_model(tiny_cfg())
    DeepcensCheckpointer(model).load(path)
    return model.state_dict()


def test_resnest_imagenet_checkpoint_fills_the_trunk(tmp_path, source_model):
    state = {to_resnest_imagenet(k): v for k, v in source_model.state_dict().items()
             if k.startswith(TRUNK) and ".conv_offset." not in k}
    state["fc.weight"], state["fc.bias"] = torch.zeros(1000, 128 * 4), torch.zeros(1000)
    assert "layer1.0.conv2.fc1.weight" in state and "conv1.0.weight" in state
    source = tmp_path / "resnest_tiny.pth"
    torch.save(state, source)
    report = convert_pretrained(tiny_cfg(), str(source), str(tmp_path / "out.pth"))
    assert report.layout == "resnest"
    assert len(report.matched) == len(state) - 2 and sorted(report.ignored) == ["fc.bias", "fc.weight"]
    assert report.expected_missing and all(".conv_offset." in k for k in report.expected_missing)
    assert not report.unexpected and not report.shape_mismatched
    assert not any(k.startswith(TRUNK) for k in report.missing) and any(k.startswith("roi_heads.") for k in report.missing)
    loaded = _load(str(tmp_path / "out.pth"))
    for key in report.matched:
        assert torch.equal(loaded[key], source_model.state_dict()[key]), key


def test_detectron2_coco_checkpoint_keeps_all_but_class_and_anchor_layers(tmp_path, source_model):
    state = {to_detectron2_resnest(k): v for k, v in source_model.state_dict().items()}
    assert f"{TRUNK}stem.conv1_3.norm.running_var" in state and f"{TRUNK}res3.0.conv2_offset.weight" in state
    cls_key = "roi_heads.box_predictor.0.cls_score.weight"
    state[cls_key] = torch.zeros(81, state[cls_key].shape[1])  # COCO's 80 classes + background
    state["roi_heads.mask_head.predictor.weight"] = torch.zeros(80, *state["roi_heads.mask_head.predictor.weight"].shape[1:])
    state["some.extra.tensor"] = torch.zeros(3)
    source = tmp_path / "coco_tiny.pth"
    torch.save({"model": state, "__author__": "test"}, source)
    report = convert_pretrained(tiny_cfg(), str(source), str(tmp_path / "out.pth"))
    assert report.layout == "detectron2"
    assert [m.split()[0] for m in report.shape_mismatched] == [cls_key, "roi_heads.mask_head.predictor.weight"]
    assert report.unexpected == ["some.extra.tensor"]
    assert report.missing == []  # the mismatched layers are listed once, as mismatched
    assert len(report.matched) == len(source_model.state_dict()) - 2
    loaded = _load(str(tmp_path / "out.pth"))
    for key in report.matched:
        assert torch.equal(loaded[key], source_model.state_dict()[key]), key
    assert "shape mismatched: 2" in report.summary() and "unexpected:       1" in report.summary()


def test_hash_in_the_file_name_is_checked_and_bad_files_exit_2(tmp_path, source_model, capsys):
    state = {to_resnest_imagenet(k): v for k, v in source_model.state_dict().items() if k.startswith(TRUNK)}
    plain = tmp_path / "plain.pth"
    torch.save(state, plain)
    digest = hashlib.sha256(plain.read_bytes()).hexdigest()
    good, bad = tmp_path / f"resnest_tiny-{digest[:8]}.pth", tmp_path / "resnest_tiny-00000000.pth"
    good.write_bytes(plain.read_bytes())
    bad.write_bytes(plain.read_bytes())
    assert "verified" in convert_pretrained(tiny_cfg(), str(good), str(tmp_path / "o.pth")).hash_check
    with pytest.raises(DeepcensInputError, match="does not match"):
        convert_pretrained(tiny_cfg(), str(bad), str(tmp_path / "o.pth"))
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    (tmp_path / "junk.pth").write_bytes(b"junk")
    args = parser.parse_args(["--config-file", os.path.join(REPO, "configs", "evican_cell.yaml"),
                              "--source", str(tmp_path / "junk.pth"), "--output", str(tmp_path / "x.pth"), *TINY])
    assert run(args) == 2
    assert capsys.readouterr().err.startswith("error: ")
    assert not os.path.exists(tmp_path / "x.pth")
