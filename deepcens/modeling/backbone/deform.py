"""Deformable convolution (DCN v1 and modulated v2) on ``torchvision.ops.deform_conv2d``.

detectron2's own ``DeformConv`` needs the compiled ``detectron2._C``, which does not load
here, so the ResNeSt trunk uses torchvision's kernel instead. :class:`SelfOffsetDeformConv2d`
predicts its own offsets (and, for v2, a sigmoid modulation mask) with a zero-initialised
convolution, so at initialisation it samples the regular grid: a v1 layer then equals the
plain convolution it replaces. Its ``weight`` has the same name and shape as the replaced
``nn.Conv2d`` weight, so ImageNet weights of the plain trunk load into it unchanged.
"""
from __future__ import annotations

import torch
from torch import nn
from torchvision.ops import DeformConv2d


class SelfOffsetDeformConv2d(DeformConv2d):
    """A (grouped) deformable conv whose offsets/mask come from a zero-initialised conv on its input.

    Parameters: ``weight`` (and ``bias``) as ``nn.Conv2d``; ``conv_offset`` predicts
    ``offset_groups * K * (3 if modulated else 2)`` channels (K = kernel area): the first
    ``2 * offset_groups * K`` are (dy, dx) offsets, the rest pass through a sigmoid as the
    DCN v2 modulation mask.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] = 0,
        dilation: int | tuple[int, int] = 1,
        groups: int = 1,
        bias: bool = False,
        modulated: bool = True,
        offset_groups: int = 1,
    ):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias)
        if in_channels % offset_groups != 0:
            raise ValueError(f"in_channels {in_channels} not divisible by offset_groups {offset_groups}")
        self.modulated = modulated
        self.offset_groups = offset_groups
        area = self.kernel_size[0] * self.kernel_size[1]
        self.conv_offset = nn.Conv2d(
            in_channels, offset_groups * area * (3 if modulated else 2), self.kernel_size,
            stride=self.stride, padding=self.padding, dilation=self.dilation, bias=True,
        )
        nn.init.zeros_(self.conv_offset.weight)
        nn.init.zeros_(self.conv_offset.bias)

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, modulated: bool = True, offset_groups: int = 1) -> "SelfOffsetDeformConv2d":
        """A deformable twin of ``conv``: same geometry, groups and (copied) weights."""
        if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise ValueError("only numeric zero padding convolutions can be made deformable")
        layer = cls(
            conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
            conv.dilation, conv.groups, conv.bias is not None, modulated, offset_groups,
        )
        with torch.no_grad():
            layer.weight.copy_(conv.weight)
            if conv.bias is not None:
                layer.bias.copy_(conv.bias)
        return layer.to(device=conv.weight.device, dtype=conv.weight.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        """Deformable convolution of ``x`` with offsets (and mask) predicted from ``x``."""
        out = self.conv_offset(x)
        mask = None
        if self.modulated:
            n_offset = 2 * self.offset_groups * self.kernel_size[0] * self.kernel_size[1]
            offset, mask = out[:, :n_offset], torch.sigmoid(out[:, n_offset:])
        else:
            offset = out
        device_type = x.device.type
        if torch.is_autocast_enabled(device_type):
            # torchvision's CPU kernel has no bfloat16 (and its CUDA autocast casts to float32
            # too): under SOLVER.AMP the deformable convolution itself runs in float32
            with torch.autocast(device_type, enabled=False):
                return super().forward(x.float(), offset.float(), None if mask is None else mask.float())
        return super().forward(x, offset, mask)

    def __repr__(self) -> str:
        return super().__repr__()[:-1] + f", modulated={self.modulated}, offset_groups={self.offset_groups})"
