"""ResNeSt (+ deformable convolution) trunk and its FPN, as detectron2 backbones.

The trunk composes the ``resnest`` package's split-attention ``Bottleneck`` (radix, cardinality,
deep stem, average-down shortcut, AVD) with detectron2's norm layers (``get_norm``) and freezing.
In stages marked by ``MODEL.RESNEST.DEFORM_ON_PER_STAGE`` the 3x3 grouped conv inside every
block's ``SplAtConv2d`` is replaced by a torchvision deformable conv (v1, or modulated v2) whose
offsets come from a zero-initialised conv, as DeepCeNS (ResNeSt-200 + DCN) does.

Module names follow detectron2 (``stem``, ``res2``..``res5``); inside a block they keep the
``resnest`` package names, so :func:`load_resnest_pretrained` maps an ImageNet state_dict by
renaming the prefixes only (``conv1``/``bn1`` -> ``stem.``, ``layerK`` -> ``res{K+1}``).
Builders (registered in detectron2's ``BACKBONE_REGISTRY``): ``build_resnest_backbone`` and
``build_resnest_fpn_backbone``.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Callable

import torch
from detectron2.config import CfgNode
from detectron2.layers import FrozenBatchNorm2d, ShapeSpec, get_norm
from detectron2.modeling.backbone import BACKBONE_REGISTRY, FPN, Backbone
from detectron2.modeling.backbone.fpn import LastLevelMaxPool
from detectron2.utils.file_io import PathManager
from resnest.torch.resnet import Bottleneck
from torch import nn

from deepcens.errors import DeepcensInputError
from deepcens.modeling.backbone.deform import SelfOffsetDeformConv2d
from deepcens.modeling.state_dict import read_state_dict

__all__ = [
    "ResNeStStem", "ResNeSt", "build_resnest_backbone", "build_resnest_fpn_backbone",
    "load_resnest_pretrained", "WeightLoadReport", "RESNEST_BLOCKS", "detectron2_resnest_key",
]

logger = logging.getLogger(__name__)

# depth -> blocks per stage (res2..res5), as resnest50/101/200/269; 0 is a tiny test trunk.
RESNEST_BLOCKS: dict[int, tuple[int, int, int, int]] = {
    0: (1, 1, 1, 1),
    50: (3, 4, 6, 3),
    101: (3, 4, 23, 3),
    200: (3, 24, 36, 3),
    269: (3, 30, 48, 8),
}
# deep-stem width per depth when MODEL.RESNEST.STEM_WIDTH is 0 (resnest: 32 for 50, else 64).
_AUTO_STEM_WIDTH = {0: 16, 50: 32, 101: 64, 200: 64, 269: 64}
# bottleneck "planes" of res2..res5 (outputs are 4x): resnest's 64..512; tiny trunk 16..128.
_PLANES = {"full": (64, 128, 256, 512), "tiny": (16, 32, 64, 128)}


class ResNeStStem(nn.Module):
    """ResNeSt stem: deep stem (3x3 s2, 3x3, 3x3 convs) or one 7x7 s2 conv, norm, ReLU, 3x3 s2 max-pool.

    Output stride 4; attribute names (``conv1``, ``bn1``) are those of the resnest package.
    """

    def __init__(self, in_channels: int, stem_width: int, deep_stem: bool, norm: str | Callable):
        super().__init__()
        self.stride = 4
        if deep_stem:
            self.out_channels = stem_width * 2
            self.conv1 = nn.Sequential(
                nn.Conv2d(in_channels, stem_width, 3, stride=2, padding=1, bias=False),
                get_norm(norm, stem_width),
                nn.ReLU(inplace=True),
                nn.Conv2d(stem_width, stem_width, 3, stride=1, padding=1, bias=False),
                get_norm(norm, stem_width),
                nn.ReLU(inplace=True),
                nn.Conv2d(stem_width, self.out_channels, 3, stride=1, padding=1, bias=False),
            )
        else:
            self.out_channels = 64
            self.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = get_norm(norm, self.out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.maxpool(self.relu(self.bn1(self.conv1(x))))


def _make_block_deformable(block: Bottleneck, modulated: bool, offset_groups: int) -> None:
    """Replace the 3x3 conv of a resnest Bottleneck (inside its SplAtConv2d when radix >= 1) by DCN."""
    if block.radix >= 1:
        block.conv2.conv = SelfOffsetDeformConv2d.from_conv(block.conv2.conv, modulated, offset_groups)
    else:
        block.conv2 = SelfOffsetDeformConv2d.from_conv(block.conv2, modulated, offset_groups)


def _freeze(module: nn.Module) -> nn.Module:
    """Stop gradients of ``module`` and turn its BatchNorms into FrozenBatchNorm2d (as detectron2)."""
    for p in module.parameters():
        p.requires_grad = False
    return FrozenBatchNorm2d.convert_frozen_batchnorm(module)


class ResNeSt(Backbone):
    """ResNeSt trunk (stem + res2..res5 of resnest ``Bottleneck`` blocks), optionally with DCN.

    Returns the features named in ``out_features`` (``stem`` stride 4, ``res2``..``res5``
    strides 4, 8, 16, 32; ``res_k`` has ``4 * planes_k`` channels).
    """

    def __init__(
        self,
        in_channels: int = 3,
        blocks_per_stage: tuple[int, ...] = (3, 24, 36, 3),
        planes: tuple[int, ...] = (64, 128, 256, 512),
        radix: int = 2,
        cardinality: int = 1,
        bottleneck_width: int = 64,
        stem_width: int = 64,
        deep_stem: bool = True,
        avg_down: bool = True,
        avd: bool = True,
        avd_first: bool = False,
        norm: str | Callable = "BN",
        out_features: tuple[str, ...] = ("res2", "res3", "res4", "res5"),
        deform_on_per_stage: tuple[bool, ...] = (False, False, False, False),
        deform_modulated: bool = True,
        deform_num_groups: int = 1,
        freeze_at: int = 0,
    ):
        super().__init__()
        if not (len(blocks_per_stage) == len(planes) == len(deform_on_per_stage) == 4):
            raise ValueError("blocks_per_stage, planes and deform_on_per_stage need 4 entries (res2..res5)")
        self.stem = ResNeStStem(in_channels, stem_width, deep_stem, norm)
        self._out_feature_strides = {"stem": self.stem.stride}
        self._out_feature_channels = {"stem": self.stem.out_channels}
        self.stage_names: list[str] = []

        def norm_layer(channels: int) -> nn.Module:
            return get_norm(norm, channels)

        inplanes, stride_so_far = self.stem.out_channels, self.stem.stride
        for idx, (n_blocks, width, deform) in enumerate(zip(blocks_per_stage, planes, deform_on_per_stage)):
            stride = 1 if idx == 0 else 2
            out_channels = width * Bottleneck.expansion
            stage = []
            for b in range(n_blocks):
                downsample = None
                if b == 0 and (stride != 1 or inplanes != out_channels):
                    downsample = self._shortcut(inplanes, out_channels, stride, avg_down, norm_layer)
                block = Bottleneck(
                    inplanes, width, stride if b == 0 else 1, downsample=downsample, radix=radix,
                    cardinality=cardinality, bottleneck_width=bottleneck_width, avd=avd,
                    avd_first=avd_first, dilation=1, is_first=(b == 0 and idx > 0), norm_layer=norm_layer,
                )
                if norm == "GN" and radix >= 1:
                    # GN(32) on the 1x1 attention vector has one value per group: it would
                    # normalise everything to zero; one group (a LayerNorm over channels) does not.
                    block.conv2.bn1 = nn.GroupNorm(1, block.conv2.bn1.num_channels)
                if deform:
                    _make_block_deformable(block, deform_modulated, deform_num_groups)
                stage.append(block)
                inplanes = out_channels
            name = f"res{idx + 2}"
            stride_so_far *= stride
            self.add_module(name, nn.Sequential(*stage))
            self.stage_names.append(name)
            self._out_feature_strides[name] = stride_so_far
            self._out_feature_channels[name] = out_channels

        unknown = [f for f in out_features if f not in self._out_feature_strides]
        if unknown:
            raise ValueError(f"unknown ResNeSt out_features {unknown}; choose from {list(self._out_feature_strides)}")
        self._out_features = list(out_features)
        self._avg_down = avg_down
        self._init_weights()
        self.freeze(freeze_at)
        # checkpoints of detectron2-ResNeSt (the ResNeSt authors' detectron2 port, whose COCO
        # Cascade R-CNN models DeepCeNS fine-tunes) load through MODEL.WEIGHTS unchanged
        self.register_load_state_dict_pre_hook(_rename_detectron2_resnest_keys)

    @staticmethod
    def _shortcut(inplanes: int, out_channels: int, stride: int, avg_down: bool,
                  norm_layer: Callable[[int], nn.Module]) -> nn.Sequential:
        """Projection shortcut; with ``avg_down`` average-pool then 1x1 conv (ResNet-D, as resnest)."""
        if avg_down:
            layers = [
                nn.AvgPool2d(kernel_size=stride, stride=stride, ceil_mode=True, count_include_pad=False),
                nn.Conv2d(inplanes, out_channels, kernel_size=1, stride=1, bias=False),
            ]
        else:
            layers = [nn.Conv2d(inplanes, out_channels, kernel_size=1, stride=stride, bias=False)]
        return nn.Sequential(*layers, norm_layer(out_channels))

    def _init_weights(self) -> None:
        """He (fan-out) init for convs, as resnest; DCN offset convs stay zero; norms weight 1, bias 0."""
        for name, m in self.named_modules():
            if name.endswith("conv_offset"):
                continue
            if isinstance(m, (nn.Conv2d, SelfOffsetDeformConv2d)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)) and m.weight is not None:
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def freeze(self, freeze_at: int = 0) -> "ResNeSt":
        """Freeze the stem (``freeze_at >= 1``) and res2..res_k (``freeze_at = k``), as detectron2's ResNet."""
        if freeze_at >= 1:
            self.stem = _freeze(self.stem)
        for idx, name in enumerate(self.stage_names, start=2):
            if freeze_at >= idx:
                setattr(self, name, _freeze(getattr(self, name)))
        return self

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """``x``: (N, C, H, W) -> {feature name: tensor} for the requested out_features."""
        if x.dim() != 4:
            raise ValueError(f"ResNeSt takes (N,C,H,W) inputs, got shape {tuple(x.shape)}")
        outputs = {}
        x = self.stem(x)
        if "stem" in self._out_features:
            outputs["stem"] = x
        for name in self.stage_names:
            x = getattr(self, name)(x)
            if name in self._out_features:
                outputs[name] = x
        return outputs


_D2_STEM = {"conv1_1.weight": "conv1.0.weight", "conv1_2.weight": "conv1.3.weight",
            "conv1_3.weight": "conv1.6.weight", "conv1_1.norm.": "conv1.1.", "conv1_2.norm.": "conv1.4.",
            "conv1_3.norm.": "bn1.", "conv1.norm.": "bn1."}


def detectron2_resnest_key(key: str, avg_down: bool = True) -> str:
    """Map a trunk key of detectron2-ResNeSt (``stem.conv1_1.norm.*``, ``res3.0.conv1.norm.*``,
    ``res3.0.shortcut.*``, ``res3.0.conv2_offset.*``) to this trunk's name; other keys unchanged."""
    head, _, rest = key.partition(".")
    if head == "stem":
        for old, new in _D2_STEM.items():
            if rest.startswith(old):
                return f"stem.{new}{rest[len(old):]}"
        return key
    if not (head.startswith("res") and head[3:].isdigit()):
        return key
    index, _, name = rest.partition(".")
    shortcut = ("downsample.1.", "downsample.2.") if avg_down else ("downsample.0.", "downsample.1.")
    renames = (("conv1.norm.", "bn1."), ("conv2.norm.", "bn2."), ("conv3.norm.", "bn3."),
               ("shortcut.norm.", shortcut[1]), ("shortcut.weight", shortcut[0] + "weight"),
               ("conv2_offset.", "conv2.conv.conv_offset."))
    for old, new in renames:
        if name.startswith(old):
            return f"{head}.{index}.{new}{name[len(old):]}"
    return key


def _rename_detectron2_resnest_keys(module: "ResNeSt", state_dict: dict, prefix: str, *args) -> None:
    """load_state_dict pre-hook: rename detectron2-ResNeSt trunk keys under ``prefix`` in place."""
    own = module.state_dict(keep_vars=True).keys()
    for key in [k for k in state_dict if k.startswith(prefix)]:
        local = key[len(prefix):]
        if local in own:
            continue
        new = detectron2_resnest_key(local, module._avg_down)
        if new == local:
            continue
        if new not in own and new.replace("conv2.conv.conv_offset.", "conv2.conv_offset.") in own:
            new = new.replace("conv2.conv.conv_offset.", "conv2.conv_offset.")  # radix 0 blocks
        if new in own and prefix + new not in state_dict:
            state_dict[prefix + new] = state_dict.pop(key)


def _stem_width(cfg: CfgNode) -> int:
    width = cfg.MODEL.RESNEST.STEM_WIDTH
    return width if width > 0 else _AUTO_STEM_WIDTH[cfg.MODEL.RESNEST.DEPTH]


@BACKBONE_REGISTRY.register()
def build_resnest_backbone(cfg: CfgNode, input_shape: ShapeSpec) -> ResNeSt:
    """ResNeSt(+DCN) trunk from ``MODEL.RESNEST.*``; loads ``MODEL.RESNEST.PRETRAINED`` if set."""
    r = cfg.MODEL.RESNEST
    if r.DEPTH not in RESNEST_BLOCKS:
        raise ValueError(f"MODEL.RESNEST.DEPTH={r.DEPTH}; choose from {sorted(RESNEST_BLOCKS)}")
    backbone = ResNeSt(
        in_channels=input_shape.channels,
        blocks_per_stage=RESNEST_BLOCKS[r.DEPTH],
        planes=_PLANES["tiny" if r.DEPTH == 0 else "full"],
        radix=r.RADIX,
        cardinality=r.CARDINALITY,
        bottleneck_width=r.BOTTLENECK_WIDTH,
        stem_width=_stem_width(cfg),
        deep_stem=r.DEEP_STEM,
        avg_down=r.AVG_DOWN,
        avd=r.AVD,
        avd_first=r.AVD_FIRST,
        norm=r.NORM,
        out_features=tuple(r.OUT_FEATURES),
        deform_on_per_stage=tuple(bool(v) for v in r.DEFORM_ON_PER_STAGE),
        deform_modulated=r.DEFORM_MODULATED,
        deform_num_groups=r.DEFORM_NUM_GROUPS,
        freeze_at=0,
    )
    if r.PRETRAINED:
        if cfg.INPUT.FORMAT != "RGB" or all(float(s) == 1.0 for s in cfg.MODEL.PIXEL_STD):
            logger.warning(
                "MODEL.RESNEST.PRETRAINED: resnest ImageNet weights expect RGB input normalised with "
                "ImageNet mean/std (INPUT.FORMAT=RGB, PIXEL_MEAN=[123.675,116.28,103.53], "
                "PIXEL_STD=[58.395,57.12,57.375]); got FORMAT=%s PIXEL_STD=%s",
                cfg.INPUT.FORMAT, list(cfg.MODEL.PIXEL_STD),
            )
        load_resnest_pretrained(backbone, r.PRETRAINED, allow_unsafe=cfg.RUN.ALLOW_UNSAFE_CHECKPOINTS)
    # freeze after loading so FrozenBN takes the pretrained statistics
    return backbone.freeze(r.FREEZE_AT)


@BACKBONE_REGISTRY.register()
def build_resnest_fpn_backbone(cfg: CfgNode, input_shape: ShapeSpec) -> FPN:
    """FPN (``MODEL.FPN.*``, P2..P6 with a max-pooled top level) on the ResNeSt(+DCN) trunk.

    An empty ``MODEL.FPN.IN_FEATURES`` (detectron2's default) means the trunk's OUT_FEATURES.
    """
    bottom_up = build_resnest_backbone(cfg, input_shape)
    return FPN(
        bottom_up=bottom_up,
        in_features=list(cfg.MODEL.FPN.IN_FEATURES) or list(bottom_up.output_shape()),
        out_channels=cfg.MODEL.FPN.OUT_CHANNELS,
        norm=cfg.MODEL.FPN.NORM,
        top_block=LastLevelMaxPool(),
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
    )


# ---- ImageNet weights of the resnest package ------------------------------------------------


@dataclass
class WeightLoadReport:
    """What :func:`load_resnest_pretrained` did with each key.

    ``missing`` (trunk keys the file lacks, other than DCN offsets) and ``unexpected`` (file keys
    with no place in the trunk) are the problems; ``expected_missing`` (DCN offset convs, new by
    design) and ``ignored`` (classifier ``fc``, BN counters a FrozenBN does not keep) are normal.
    """

    source: str
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    expected_missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when every trunk weight except the DCN offsets came from the file."""
        return not self.missing and not self.unexpected

    def summary(self) -> str:
        """One paragraph for the log."""
        def few(keys: list[str]) -> str:
            return ", ".join(keys[:8]) + (f", ... (+{len(keys) - 8})" if len(keys) > 8 else "")

        lines = [f"ResNeSt weights from {self.source}: {len(self.loaded)} tensors loaded, "
                 f"{len(self.expected_missing)} DCN offset tensors kept at zero init, "
                 f"{len(self.ignored)} ignored (classifier / BN counters)"]
        if self.missing:
            lines.append(f"  missing in file ({len(self.missing)}, left at random init): {few(self.missing)}")
        if self.unexpected:
            lines.append(f"  unexpected in file ({len(self.unexpected)}, not used): {few(self.unexpected)}")
        return "\n".join(lines)


def _trunk_of(backbone: nn.Module) -> ResNeSt:
    trunk = getattr(backbone, "bottom_up", backbone)
    if not isinstance(trunk, ResNeSt):
        raise TypeError(f"expected a ResNeSt trunk (or an FPN on one), got {type(backbone).__name__}")
    return trunk


def resnest_key_to_deepcens(key: str) -> str | None:
    """Map a resnest-package key to this trunk's key; None for the classifier (``fc.*``)."""
    if key.startswith("module."):
        key = key[len("module."):]
    head, _, rest = key.partition(".")
    if head in ("conv1", "bn1"):
        return f"stem.{key}"
    if head.startswith("layer") and head[5:].isdigit():
        return f"res{int(head[5:]) + 1}.{rest}"
    if head == "fc":
        return None
    return key  # not a resnest key: reported as unexpected unless the trunk has it


def _read_state_dict(path_or_url: str, allow_unsafe: bool) -> dict[str, torch.Tensor]:
    try:
        local = PathManager.get_local_path(path_or_url)
    except Exception as exc:  # iopath raises various errors for unreachable URLs
        raise DeepcensInputError(path_or_url, f"cannot fetch ResNeSt weights ({exc})") from exc
    if not os.path.isfile(local):
        raise DeepcensInputError(path_or_url, "ResNeSt weights file does not exist")
    return read_state_dict(local, "ResNeSt weights", allow_unsafe, name=path_or_url)


def load_resnest_pretrained(backbone: nn.Module, path_or_url: str, allow_unsafe: bool = False) -> WeightLoadReport:
    """Load a resnest-package ImageNet state_dict (``conv1.0.weight``, ``layer1.0.conv2.fc1...``).

    Works on a :class:`ResNeSt` or an FPN built on one. Local paths and URLs go through
    detectron2's PathManager. DCN offset convs are expected-missing (zero init). Raises
    :class:`DeepcensInputError` when the file is unreadable, no key matches, or a shape differs
    (the wrong depth/width); logs and returns a :class:`WeightLoadReport` otherwise.
    """
    trunk = _trunk_of(backbone)
    source = _read_state_dict(path_or_url, allow_unsafe)
    target = trunk.state_dict()
    frozen_prefixes = tuple(n + "." for n, m in trunk.named_modules() if isinstance(m, FrozenBatchNorm2d))
    report = WeightLoadReport(source=str(path_or_url))
    to_load = {}
    mismatched = []
    for key, value in source.items():
        new_key = resnest_key_to_deepcens(key)
        if new_key is None:
            report.ignored.append(key)
        elif new_key in target:
            if target[new_key].shape != value.shape:
                mismatched.append(f"{key} {tuple(value.shape)} vs {tuple(target[new_key].shape)}")
            else:
                to_load[new_key] = value
        elif key.endswith("num_batches_tracked") and new_key.startswith(frozen_prefixes):
            report.ignored.append(key)
        else:
            report.unexpected.append(key)
    if mismatched:
        raise DeepcensInputError(
            path_or_url, f"{len(mismatched)} tensors do not fit this ResNeSt (wrong DEPTH/STEM_WIDTH?), "
                         f"e.g. {mismatched[0]}")
    if not to_load:
        raise DeepcensInputError(path_or_url, "no key matches a ResNeSt trunk (not resnest ImageNet weights?)")
    trunk.load_state_dict(to_load, strict=False)
    report.loaded = sorted(to_load)
    for key in target:
        if key not in to_load:
            (report.expected_missing if ".conv_offset." in key else report.missing).append(key)
    (logger.info if report.ok else logger.warning)(report.summary())
    return report
