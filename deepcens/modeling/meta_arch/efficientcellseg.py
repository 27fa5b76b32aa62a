"""``EfficientCellSegSegmentor``: the dense meta-architecture for sigmoid networks applied slice-wise.

What it adds to :class:`DenseSegmentor` (paper Sec. 2.1, 3.3):

- training: float targets ``(C, H, W)`` (foreground + centre heatmap) as well as one-channel
  class targets; both padded with the ignore value;
- inference: every slice (or each of ``MODEL.DENSE.ECS.PATCHES`` overlapping square patches
  of it -- six for TRIC) is resized to ``NETWORK_SIZE`` x ``NETWORK_SIZE``, run through the
  network, and its sigmoid maps are resized back; patches are blended with a smooth window;
- volumes: :meth:`predict_volume` runs the slices of a 3D stack, re-stacks their maps to
  ``(C, Z, H, W)`` and decodes them into 3D objects (3D watershed / components).
"""
from __future__ import annotations

import math

import torch
from detectron2.config import CfgNode
from detectron2.modeling import META_ARCH_REGISTRY
from torch.nn import functional as F

from deepcens.modeling.meta_arch.dense import DenseSegmentor, _pad_to, _round_up
from deepcens.postprocess.tiling import blend_window, tile_starts


def patch_layout(height: int, width: int, rows: int, cols: int) -> tuple[int, list[int], list[int]]:
    """Side and evenly spread start offsets of a ``rows`` x ``cols`` grid of equal square patches
    covering a ``height`` x ``width`` slice (TRIC, 1745 x 2440 in 2 x 3: side 873, rows 0 / 872,
    columns 0 / 784 / 1567)."""
    side = min(max(math.ceil(height / rows), math.ceil(width / cols)), height, width)
    return side, _spread(height, side, rows), _spread(width, side, cols)


def _spread(length: int, side: int, count: int) -> list[int]:
    if count == 1 or length <= side:
        return [0]
    return [int(round(i * (length - side) / (count - 1))) for i in range(count)]


@META_ARCH_REGISTRY.register()
class EfficientCellSegSegmentor(DenseSegmentor):
    """Dense meta-architecture for EfficientCellSeg (see the module docstring)."""

    def __init__(self, cfg: CfgNode):
        super().__init__(cfg)
        e = cfg.MODEL.DENSE.ECS
        self.network_size = int(e.NETWORK_SIZE)
        self.patches = tuple(int(v) for v in e.PATCHES)
        if len(self.patches) != 2 or min(self.patches) < 1:
            raise ValueError(f"MODEL.DENSE.ECS.PATCHES must be (rows, cols) >= 1, got {list(e.PATCHES)}")
        self.volume_decoding = bool(e.VOLUME_DECODING)

    # ---- training ----------------------------------------------------------------------------
    def losses(self, batched_inputs: list[dict]) -> dict[str, torch.Tensor]:
        images = self.pad_batch(batched_inputs, [x["image"].to(self.device, torch.float32) for x in batched_inputs])
        targets = [x["target"].to(self.device, torch.float32) for x in batched_inputs]
        targets = self.pad_batch(batched_inputs, [t if t.dim() == 3 else t[None] for t in targets], self.ignore_value)
        return self.criterion(self.network(images), targets)

    # ---- inference ---------------------------------------------------------------------------
    def _maps(self, x: torch.Tensor) -> torch.Tensor:
        """Sigmoid maps ``(C, h, w)`` of one ``(1, 3, h, w)`` slice or patch, at its own size."""
        height, width = x.shape[-2:]
        if self.network_size > 0:
            resized = F.interpolate(x, size=(self.network_size, self.network_size), mode="bilinear",
                                    align_corners=False)
            maps = torch.sigmoid(self.network(resized))
            return F.interpolate(maps, size=(height, width), mode="bilinear", align_corners=False)[0]
        padded = _pad_to(x, _round_up(height, self.size_divisibility), _round_up(width, self.size_divisibility),
                         "reflect")
        return torch.sigmoid(self.network(padded))[0, :, :height, :width]

    def _starts(self, height: int, width: int) -> tuple[int, list[int], list[int]] | None:
        """Patch side and start offsets, or None for a whole-slice pass."""
        if self.patches != (1, 1):
            return patch_layout(height, width, *self.patches)
        if self.sliding_window > 0 and max(height, width) > self.sliding_window:
            side = min(self.sliding_window, height, width)
            stride = max(int(side * (1.0 - self.sliding_overlap)), 1)
            return side, tile_starts(height, side, stride), tile_starts(width, side, stride)
        return None

    def predict_probabilities(self, image: torch.Tensor) -> torch.Tensor:
        """Sigmoid maps ``(NUM_OUTPUTS, H, W)`` of one ``(3, H, W)`` slice of any size."""
        x = image.to(self.device, torch.float32)[None]
        height, width = x.shape[-2:]
        layout = self._starts(height, width)
        if layout is None:
            return self._maps(x)
        side, rows, cols = layout
        window = blend_window(side, max(self.sliding_overlap, 0.125), x.device)
        weight2d = window[:, None] * window[None, :]
        total = None
        weights = torch.zeros((height, width), device=x.device)
        for top in rows:
            for left in cols:
                maps = self._maps(x[..., top:top + side, left:left + side])
                if total is None:
                    total = torch.zeros((maps.shape[0], height, width), device=x.device)
                total[:, top:top + side, left:left + side] += maps * weight2d
                weights[top:top + side, left:left + side] += weight2d
        return total / weights
