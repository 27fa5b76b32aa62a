"""ResNeSt(+DCN) trunk and FPN: structure, DCN placement, freezing, gradients, weight loading."""
from __future__ import annotations

import pytest
import resnest.torch as resnest_zoo
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.layers import FrozenBatchNorm2d, ShapeSpec
from detectron2.modeling import build_backbone
from torch import nn

from deepcens.config import add_deepcens_config
from deepcens.errors import DeepcensInputError
from deepcens.modeling.backbone.deform import SelfOffsetDeformConv2d
from deepcens.modeling.backbone.resnest import (
    ResNeSt,
    build_resnest_backbone,
    build_resnest_fpn_backbone,
    load_resnest_pretrained,
)


def _cfg(depth: int = 0, deform=(False, True, True, True), modulated: bool = True, **resnest):
    cfg = get_cfg()
    add_deepcens_config(cfg)
    cfg.MODEL.BACKBONE.NAME = "build_resnest_fpn_backbone"
    cfg.MODEL.RESNEST.DEPTH = depth
    cfg.MODEL.RESNEST.DEFORM_ON_PER_STAGE = list(deform)
    cfg.MODEL.RESNEST.DEFORM_MODULATED = modulated
    for key, value in resnest.items():
        cfg.MODEL.RESNEST[key] = value
    return cfg


def _trunk(cfg) -> ResNeSt:
    torch.manual_seed(0)
    return build_resnest_backbone(cfg, ShapeSpec(channels=3))


def _split_attention_convs(stage: nn.Sequential) -> list[nn.Module]:
    return [block.conv2.conv for block in stage]


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_depth200_without_dcn_has_resnest200_parameter_count():
    ours = _trunk(_cfg(depth=200, deform=(False,) * 4))
    reference = resnest_zoo.resnest200(pretrained=False)
    assert _count(ours) == _count(reference) - _count(reference.fc)
    assert [len(getattr(ours, f"res{i}")) for i in range(2, 6)] == [3, 24, 36, 3]
    assert ours.stem.conv1[0].out_channels == 64  # resnest200 stem width


def test_tiny_trunk_outputs_names_strides_channels():
    trunk = _trunk(_cfg(depth=0, OUT_FEATURES=["stem", "res2", "res3", "res4", "res5"]))
    shapes = trunk.output_shape()
    assert {k: v.stride for k, v in shapes.items()} == {"stem": 4, "res2": 4, "res3": 8, "res4": 16, "res5": 32}
    assert {k: v.channels for k, v in shapes.items()} == {"stem": 32, "res2": 64, "res3": 128, "res4": 256, "res5": 512}
    x = torch.randn(2, 3, 64, 96)
    out = trunk(x)
    assert set(out) == set(shapes)
    for name, feature in out.items():
        assert feature.shape == (2, shapes[name].channels, 64 // shapes[name].stride, 96 // shapes[name].stride)
        assert torch.isfinite(feature).all()


def test_depth50_channels_and_stem_width():
    shapes = _trunk(_cfg(depth=50, deform=(False,) * 4)).output_shape()
    assert {k: (v.channels, v.stride) for k, v in shapes.items()} == {
        "res2": (256, 4), "res3": (512, 8), "res4": (1024, 16), "res5": (2048, 32)}


def test_fpn_registered_and_outputs_p2_to_p6():
    cfg = _cfg(depth=0)
    cfg.MODEL.FPN.IN_FEATURES = ["res2", "res3", "res4", "res5"]
    cfg.MODEL.FPN.OUT_CHANNELS = 32
    torch.manual_seed(0)
    fpn = build_backbone(cfg)  # through detectron2's BACKBONE_REGISTRY
    assert isinstance(fpn.bottom_up, ResNeSt)
    assert fpn.size_divisibility == 32
    out = fpn(torch.randn(2, 3, 64, 64))
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "p2": (2, 32, 16, 16), "p3": (2, 32, 8, 8), "p4": (2, 32, 4, 4), "p5": (2, 32, 2, 2), "p6": (2, 32, 1, 1)}
    assert {k: v.stride for k, v in fpn.output_shape().items()} == {"p2": 4, "p3": 8, "p4": 16, "p5": 32, "p6": 64}


@pytest.mark.parametrize("modulated", [True, False])
def test_dcn_placement_per_stage(modulated):
    trunk = _trunk(_cfg(depth=50, deform=(False, True, True, True), modulated=modulated))
    assert all(type(c) is nn.Conv2d for c in _split_attention_convs(trunk.res2))
    for name, n_blocks in (("res3", 4), ("res4", 6), ("res5", 3)):
        convs = _split_attention_convs(getattr(trunk, name))
        assert len(convs) == n_blocks
        for conv in convs:
            assert isinstance(conv, SelfOffsetDeformConv2d)
            assert conv.modulated is modulated
            assert conv.conv_offset.out_channels == 9 * (3 if modulated else 2)
            assert conv.groups == 2  # radix 2 x cardinality 1, as the plain split-attention conv
    # no other conv in the trunk became deformable
    n_dcn = sum(isinstance(m, SelfOffsetDeformConv2d) for m in trunk.modules())
    assert n_dcn == 4 + 6 + 3


def test_dcn_on_res2_when_asked():
    trunk = _trunk(_cfg(depth=0, deform=(True, False, False, True)))
    kinds = [isinstance(getattr(trunk, f"res{i}")[0].conv2.conv, SelfOffsetDeformConv2d) for i in range(2, 6)]
    assert kinds == [True, False, False, True]


def test_zero_init_dcn_matches_plain_conv():
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 16, 3, padding=1, groups=2, bias=False)
    x = torch.randn(2, 8, 9, 11)
    v1 = SelfOffsetDeformConv2d.from_conv(conv, modulated=False)
    v2 = SelfOffsetDeformConv2d.from_conv(conv, modulated=True, offset_groups=2)
    torch.testing.assert_close(v1(x), conv(x), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(v2(x), 0.5 * conv(x), atol=1e-5, rtol=1e-5)  # sigmoid(0) mask
    strided = nn.Conv2d(8, 8, 3, stride=2, padding=1, bias=True)
    torch.testing.assert_close(SelfOffsetDeformConv2d.from_conv(strided, modulated=False)(x), strided(x),
                               atol=1e-5, rtol=1e-5)


def test_gradient_flows_through_dcn_offsets():
    trunk = _trunk(_cfg(depth=0, deform=(False, True, True, True)))
    x = torch.randn(2, 3, 64, 64)
    out = trunk(x)
    sum(f.square().mean() for f in out.values()).backward()
    dcns = [m for m in trunk.modules() if isinstance(m, SelfOffsetDeformConv2d)]
    assert len(dcns) == 3
    for dcn in dcns:
        assert dcn.conv_offset.weight.grad is not None
        assert dcn.conv_offset.weight.grad.abs().sum() > 0  # offsets and mask learn
        assert dcn.weight.grad.abs().sum() > 0


def test_offsets_change_the_output():
    trunk = _trunk(_cfg(depth=0)).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        before = trunk(x)["res5"].clone()
        for m in trunk.modules():
            if isinstance(m, SelfOffsetDeformConv2d):
                m.conv_offset.bias.fill_(0.7)
        after = trunk(x)["res5"]
    assert not torch.allclose(before, after)


def test_freeze_at():
    trunk = _trunk(_cfg(depth=0, FREEZE_AT=2))
    for module in (trunk.stem, trunk.res2):
        assert all(not p.requires_grad for p in module.parameters())
        assert not any(isinstance(m, nn.BatchNorm2d) for m in module.modules())
        assert any(isinstance(m, FrozenBatchNorm2d) for m in module.modules())
    for module in (trunk.res3, trunk.res4, trunk.res5):
        assert all(p.requires_grad for p in module.parameters())
        assert any(isinstance(m, nn.BatchNorm2d) for m in module.modules())
    stem_only = _trunk(_cfg(depth=0, FREEZE_AT=1))
    assert all(not p.requires_grad for p in stem_only.stem.parameters())
    assert all(p.requires_grad for p in stem_only.res2.parameters())
    assert all(p.requires_grad for p in _trunk(_cfg(depth=0)).parameters())


def test_group_norm_trunk_runs_batch_one():
    cfg = _cfg(depth=0, NORM="GN", STEM_WIDTH=32, BOTTLENECK_WIDTH=128)  # GN(32) needs >= 32 channels
    out = _trunk(cfg)(torch.randn(1, 3, 32, 32))
    assert out["res5"].shape == (1, 512, 1, 1)


def test_load_resnest50_state_dict(tmp_path):
    torch.manual_seed(1)
    reference = resnest_zoo.resnest50(pretrained=False)
    path = tmp_path / "resnest50.pth"
    torch.save(reference.state_dict(), path)

    trunk = _trunk(_cfg(depth=50))  # default DCN on res3-res5
    report = load_resnest_pretrained(trunk, str(path))
    assert report.ok and report.missing == [] and report.unexpected == []
    assert sorted(report.ignored) == ["fc.bias", "fc.weight"]
    assert report.expected_missing and all(".conv_offset." in k for k in report.expected_missing)
    assert len(report.expected_missing) == 2 * 13  # weight + bias of 13 offset convs
    ours = trunk.state_dict()
    ref = reference.state_dict()
    assert torch.equal(ours["stem.conv1.0.weight"], ref["conv1.0.weight"])
    assert torch.equal(ours["res2.0.conv2.fc1.weight"], ref["layer1.0.conv2.fc1.weight"])
    assert torch.equal(ours["res4.5.conv2.conv.weight"], ref["layer3.5.conv2.conv.weight"])  # DCN weight
    for key in ref:
        if not key.startswith("fc."):
            new = "stem." + key if key.startswith(("conv1", "bn1")) else f"res{int(key[5]) + 1}{key[6:]}"
            assert torch.equal(ours[new], ref[key]), key


def test_loaded_trunk_without_dcn_computes_resnest_features(tmp_path):
    torch.manual_seed(2)
    reference = resnest_zoo.resnest50(pretrained=False).eval()
    path = tmp_path / "w.pth"
    torch.save({"state_dict": reference.state_dict()}, path)  # wrapped checkpoints are unwrapped
    cfg = _cfg(depth=50, deform=(False,) * 4)
    cfg.MODEL.RESNEST.PRETRAINED = str(path)  # used by the builder
    trunk = _trunk(cfg).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        y = reference.maxpool(reference.relu(reference.bn1(reference.conv1(x))))
        y = reference.layer4(reference.layer3(reference.layer2(reference.layer1(y))))
        torch.testing.assert_close(trunk(x)["res5"], y)


def test_pretrained_then_frozen_bn_keeps_statistics(tmp_path):
    reference = resnest_zoo.resnest50(pretrained=False)
    with torch.no_grad():
        reference.bn1.running_mean.uniform_()
    path = tmp_path / "w.pth"
    torch.save(reference.state_dict(), path)
    cfg = _cfg(depth=50, deform=(False,) * 4, FREEZE_AT=2, PRETRAINED=str(path))
    trunk = _trunk(cfg)
    assert isinstance(trunk.stem.bn1, FrozenBatchNorm2d)
    assert torch.equal(trunk.stem.bn1.running_mean, reference.bn1.running_mean)


def test_pretrained_bad_inputs(tmp_path):
    trunk = _trunk(_cfg(depth=0))
    with pytest.raises(DeepcensInputError, match="does not exist"):
        load_resnest_pretrained(trunk, str(tmp_path / "none.pth"))
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(DeepcensInputError, match="cannot read"):
        load_resnest_pretrained(trunk, str(garbage))
    unrelated = tmp_path / "unrelated.pth"
    torch.save({"foo.weight": torch.zeros(3)}, unrelated)
    with pytest.raises(DeepcensInputError, match="no key matches"):
        load_resnest_pretrained(trunk, str(unrelated))
    wrong_depth = tmp_path / "r50.pth"
    torch.save(resnest_zoo.resnest50(pretrained=False).state_dict(), wrong_depth)
    with pytest.raises(DeepcensInputError, match="do not fit"):
        load_resnest_pretrained(trunk, str(wrong_depth))


def test_partial_file_reports_missing(tmp_path):
    trunk = _trunk(_cfg(depth=0, deform=(False,) * 4))
    state = {("conv1." + k[len("stem.conv1."):]): v for k, v in trunk.state_dict().items()
             if k.startswith("stem.conv1.")}
    state["layer9.extra"] = torch.zeros(1)
    path = tmp_path / "partial.pth"
    torch.save(state, path)
    report = load_resnest_pretrained(build_resnest_fpn_backbone(_cfg(depth=0), ShapeSpec(channels=3)), str(path))
    assert not report.ok
    assert report.unexpected == ["layer9.extra"]
    assert "res5.0.conv3.weight" in report.missing
    assert "res5.0.conv2.conv.conv_offset.weight" in report.expected_missing
    assert "missing in file" in report.summary()


def test_detectron2_checkpointer_roundtrip(tmp_path):
    cfg = _cfg(depth=0)
    torch.manual_seed(3)
    fpn = build_backbone(cfg)
    with torch.no_grad():
        for m in fpn.modules():
            if isinstance(m, SelfOffsetDeformConv2d):
                m.conv_offset.weight.normal_()
    DetectionCheckpointer(fpn, save_dir=str(tmp_path)).save("model")
    torch.manual_seed(4)
    other = build_backbone(cfg)
    DetectionCheckpointer(other).load(str(tmp_path / "model.pth"))
    for (k, a), (_, b) in zip(fpn.state_dict().items(), other.state_dict().items()):
        assert torch.equal(a, b), k


def test_unknown_depth_rejected():
    with pytest.raises(ValueError, match="DEPTH"):
        _trunk(_cfg(depth=34))


def test_group_norm_attention_path_is_not_degenerate():
    trunk = _trunk(_cfg(depth=0, NORM="GN", STEM_WIDTH=32, BOTTLENECK_WIDTH=128))
    attention_norm = trunk.res2[0].conv2.bn1
    assert isinstance(attention_norm, nn.GroupNorm) and attention_norm.num_groups == 1
    assert trunk.res2[0].conv2.bn0.num_groups == 32  # the feature-map norms keep GN(32)


def _to_detectron2_resnest_names(key: str) -> str:
    """This trunk's key in the naming of detectron2-ResNeSt checkpoints (the inverse mapping)."""
    import re

    for pattern, repl in (
        (r"stem\.conv1\.0\.weight", "stem.conv1_1.weight"), (r"stem\.conv1\.1\.", "stem.conv1_1.norm."),
        (r"stem\.conv1\.3\.weight", "stem.conv1_2.weight"), (r"stem\.conv1\.4\.", "stem.conv1_2.norm."),
        (r"stem\.conv1\.6\.weight", "stem.conv1_3.weight"), (r"stem\.bn1\.", "stem.conv1_3.norm."),
        (r"(res\d\.\d+)\.bn1\.", r"\1.conv1.norm."), (r"(res\d\.\d+)\.bn3\.", r"\1.conv3.norm."),
        (r"(res\d\.\d+)\.downsample\.1\.weight", r"\1.shortcut.weight"),
        (r"(res\d\.\d+)\.downsample\.2\.", r"\1.shortcut.norm."),
        (r"(res\d\.\d+)\.conv2\.conv\.conv_offset\.", r"\1.conv2_offset."),
    ):
        new, n = re.subn("^" + pattern, repl, key)
        if n:
            return new
    return key


def test_detectron2_resnest_checkpoint_loads_through_model_weights(tmp_path):
    cfg = _cfg(depth=0)
    torch.manual_seed(5)
    source = build_backbone(cfg)
    with torch.no_grad():
        for p in source.parameters():
            p.normal_()
    renamed = {("bottom_up." + _to_detectron2_resnest_names(k[len("bottom_up."):]) if k.startswith("bottom_up.") else k): v
               for k, v in source.state_dict().items()}
    assert "bottom_up.stem.conv1_3.norm.running_var" in renamed
    assert "bottom_up.res3.0.conv2_offset.weight" in renamed
    assert "bottom_up.res3.0.shortcut.norm.weight" in renamed
    torch.save({"model": renamed}, tmp_path / "d2_resnest.pth")
    torch.manual_seed(6)
    target = build_backbone(cfg)
    DetectionCheckpointer(target).load(str(tmp_path / "d2_resnest.pth"))
    for key, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], value), key
    # strict loading of the renamed dict works too: every old key found its place
    fresh = build_backbone(cfg)
    fresh.load_state_dict(dict(renamed), strict=True)
