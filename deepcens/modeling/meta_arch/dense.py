"""``DenseSegmentor``: one detectron2 meta-architecture for every dense-prediction (U-Net) method.

It puts a network from ``DENSE_NETWORK_REGISTRY`` behind detectron2's model interface, so
``tools/train_net.py``, ``launch``/DDP, checkpoints, the evaluator and prediction writing
work unchanged for XB-Net and the other U-Nets:

- training: inputs from ``DenseTargetMapper`` (``image`` in [0, 1], ``target`` with 255 =
  ignore) are padded to a common size divisible by ``MODEL.DENSE.SIZE_DIVISIBILITY`` (target
  padding ignored); returns the loss dict of ``MODEL.DENSE.LOSS``;
- inference: each image of any size is reflection-padded by ``INFERENCE_CONTEXT_PAD`` and to
  the size divisibility, run whole or (``MODEL.DENSE.SLIDING_WINDOW`` > 0) by overlapping
  tiles whose softmax probabilities are blended with a smooth window, cropped back to the
  original size, and handed to the decoder of ``MODEL.DENSE.DECODER``; returns
  ``[{"instances": Instances}]``.
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np

import torch
from detectron2.config import CfgNode
from detectron2.modeling import META_ARCH_REGISTRY
from detectron2.structures import Instances
from torch import nn
from torch.nn import functional as F

from deepcens.modeling.dense import build_dense_network
from deepcens.modeling.losses import build_dense_loss
from deepcens.postprocess.tiling import blend_tiled_probabilities


def _pad_to(x: torch.Tensor, height: int, width: int, mode: str, value: float = 0.0) -> torch.Tensor:
    """Pad the last two dims at bottom/right to (height, width); reflect falls back to replicate."""
    pad_h, pad_w = height - x.shape[-2], width - x.shape[-1]
    if pad_h == 0 and pad_w == 0:
        return x
    if mode == "constant":
        return F.pad(x, (0, pad_w, 0, pad_h), value=value)
    if mode == "reflect" and (pad_h >= x.shape[-2] or pad_w >= x.shape[-1]):
        mode = "replicate"
    return F.pad(x, (0, pad_w, 0, pad_h), mode=mode)


def _round_up(value: int, divisor: int) -> int:
    return int(math.ceil(value / divisor) * divisor)


@META_ARCH_REGISTRY.register()
class DenseSegmentor(nn.Module):
    """Dense-prediction meta-architecture (see the module docstring)."""

    def __init__(self, cfg: CfgNode):
        super().__init__()
        from deepcens.postprocess.decoders import build_decoder  # imported when the model is built

        d = cfg.MODEL.DENSE
        self.network = build_dense_network(cfg)
        self.criterion = build_dense_loss(cfg)
        self.decoder: Callable[[torch.Tensor, str | None], Instances] = build_decoder(cfg)
        self.size_divisibility = max(int(d.SIZE_DIVISIBILITY), int(getattr(self.network, "size_divisibility", 1)))
        self.sliding_window = int(d.SLIDING_WINDOW)
        self.sliding_overlap = float(d.SLIDING_OVERLAP)
        if not 0.0 <= self.sliding_overlap < 1.0:
            raise ValueError(f"MODEL.DENSE.SLIDING_OVERLAP must be in [0, 1), got {self.sliding_overlap}")
        self.context_pad = int(d.INFERENCE_CONTEXT_PAD)
        self.ignore_value = int(d.IGNORE_VALUE)
        self.volume_decoding = bool(d.VOLUME_DECODING)  # 3D stacks: decode re-stacked slices into 3D objects
        self.register_buffer("_device_anchor", torch.zeros(0), persistent=False)
        self.to(torch.device(cfg.MODEL.DEVICE))

    @property
    def device(self) -> torch.device:
        return self._device_anchor.device

    def forward(self, batched_inputs: list[dict]):
        if self.training:
            return self.losses(batched_inputs)
        return self.inference(batched_inputs)

    # ---- training ----------------------------------------------------------------------------
    def pad_batch(self, batched_inputs: list[dict], tensors: list[torch.Tensor], value: float = 0.0) -> torch.Tensor:
        """``tensors`` (one per input) padded with ``value`` at bottom / right to the batch's largest
        ``image`` rounded up to ``size_divisibility``, and stacked."""
        height = _round_up(max(x["image"].shape[-2] for x in batched_inputs), self.size_divisibility)
        width = _round_up(max(x["image"].shape[-1] for x in batched_inputs), self.size_divisibility)
        return torch.stack([_pad_to(t, height, width, "constant", value) for t in tensors])

    def losses(self, batched_inputs: list[dict]) -> dict[str, torch.Tensor]:
        """Loss dict for a batch of mapped training inputs (``image`` + ``target``)."""
        images = self.pad_batch(batched_inputs, [x["image"].to(self.device, torch.float32) for x in batched_inputs])
        targets = self.pad_batch(batched_inputs, [x["target"].to(self.device, torch.long) for x in batched_inputs],
                                 self.ignore_value)
        return self.criterion(self.network(images), targets)

    # ---- inference ---------------------------------------------------------------------------
    def predict_probabilities(self, image: torch.Tensor) -> torch.Tensor:
        """Softmax probabilities ``(NUM_OUTPUTS, H, W)`` of one ``(C, H, W)`` image of any size."""
        height, width = image.shape[-2:]
        x = image.to(self.device, torch.float32)[None]
        p = self.context_pad
        if p > 0:
            x = F.pad(x, (p, p, p, p), mode="reflect" if min(height, width) > p else "replicate")
        tile = _round_up(self.sliding_window, self.size_divisibility) if self.sliding_window > 0 else 0
        if tile and (x.shape[-2] > tile or x.shape[-1] > tile):
            probabilities = self._sliding_window(x, tile)
        else:
            padded = _pad_to(x, _round_up(x.shape[-2], self.size_divisibility),
                             _round_up(x.shape[-1], self.size_divisibility), "reflect")
            probabilities = self.network_probabilities(padded)[0]
        return probabilities[:, p:p + height, p:p + width]

    def network_probabilities(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, NUM_OUTPUTS, H, W)`` probabilities of the network on a padded batch; the hook for
        networks with several heads (override to map their outputs to the decoder's channels)."""
        return F.softmax(self.network(x), dim=1)

    def _sliding_window(self, x: torch.Tensor, tile: int) -> torch.Tensor:
        """Blend softmax probabilities of overlapping ``tile`` x ``tile`` windows over ``x`` (1, C, H, W)."""
        x = _pad_to(x, max(x.shape[-2], tile), max(x.shape[-1], tile), "reflect")
        return blend_tiled_probabilities(x, tile, self.sliding_overlap,
                                         lambda window: self.network_probabilities(window)[0])

    def output_probabilities(self, item: dict) -> torch.Tensor:
        """Softmax probabilities ``(NUM_OUTPUTS, height, width)`` of one mapped input, at the size
        ``height`` x ``width`` of the input dict: what the decoder receives. Callers that decode
        themselves (the decoder grid search) use this instead of :meth:`inference`."""
        probabilities = self.predict_probabilities(item["image"])
        out_h, out_w = int(item.get("height", probabilities.shape[-2])), int(item.get("width", probabilities.shape[-1]))
        if (out_h, out_w) != tuple(probabilities.shape[-2:]):
            probabilities = F.interpolate(probabilities[None], size=(out_h, out_w), mode="bilinear",
                                          align_corners=False)[0]
        return probabilities

    @torch.no_grad()
    def predict_volume(self, slices: list[dict]) -> np.ndarray:
        """int32 label volume ``(Z, H, W)`` of a stack given as mapped slice inputs (in z order):
        slice-wise probability maps re-stacked and decoded in 3D by the decoder's ``labels``
        (``volume_decoding``: 3D objects, as XB-Net and EfficientCellSeg do), or slice by slice
        with ids made unique over the stack."""
        if not hasattr(self.decoder, "labels"):
            raise ValueError(f"the decoder {type(self.decoder).__name__} cannot label volumes (no labels())")
        maps = []
        for item in slices:
            maps.append(self.output_probabilities(item).cpu())
        if not maps:
            raise ValueError("predict_volume needs at least one slice")
        if self.volume_decoding:
            return self.decoder.labels(torch.stack(maps, dim=1))
        volume = [self.decoder.labels(m) for m in maps]
        offset, out = 0, []
        for labels in volume:  # unique ids over the stack
            out.append(np.where(labels > 0, labels + offset, 0).astype(np.int32))
            offset += int(labels.max())
        return np.stack(out)

    def inference(self, batched_inputs: list[dict]) -> list[dict]:
        """``[{"instances": Instances}]``, one per input, in the size ``height`` x ``width`` of the input dict."""
        results = []
        for item in batched_inputs:
            probabilities = self.output_probabilities(item)
            dataset_name = item.get("dataset_name") or item.get("ctc_dataset")
            instances = self.decoder(probabilities, dataset_name)
            results.append({"instances": instances.to(self.device) if hasattr(instances, "to") else instances})
        return results
