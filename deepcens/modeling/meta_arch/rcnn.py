"""``CompactMaskRCNN``: detectron2's ``GeneralizedRCNN`` whose masks come out as box crops.

Stock inference pastes every 28x28 mask prediction into a full image
(``detector_postprocess`` -> ``ROIMasks.to_bitmasks``), N x H x W bytes per image. Here the
raw outputs (``do_postprocess=False``) go through the same ``detector_postprocess`` (box
scaling, clipping, empty-box removal), but the mask probabilities travel as
:class:`BoxPastedROIMasks`, whose ``to_bitmasks`` pastes each mask into its own box only
(detectron2's own per-box CPU paste, thresholded at ``TEST.MASK_THRESHOLD``) and returns
:class:`deepcens.structures.CroppedMasks`. The pixels are the ones detectron2's dense CPU
paste gives; training is untouched.
"""
from __future__ import annotations

import numpy as np
import torch
from detectron2.config import configurable
from detectron2.layers.mask_ops import _do_paste_mask
from detectron2.modeling import META_ARCH_REGISTRY, GeneralizedRCNN
from detectron2.modeling.postprocessing import detector_postprocess
from detectron2.structures import Boxes, Instances, ROIMasks

from deepcens.structures.masks import CroppedMasks


def paste_masks_into_boxes(masks: torch.Tensor, boxes: torch.Tensor, image_size: tuple[int, int],
                           threshold: float = 0.5) -> CroppedMasks:
    """Paste ``(N, M, M)`` mask probabilities into their XYXY ``boxes`` of an image, box by box.

    Each mask is resampled into the region of its box (widened by one pixel, clipped to the
    image), as ``detectron2.layers.paste_masks_in_image`` does per mask on the CPU, and kept
    where it is ``>= threshold``.
    """
    height, width = int(image_size[0]), int(image_size[1])
    masks = masks.detach().to("cpu", torch.float32)
    boxes = boxes.detach().to("cpu", torch.float32)
    crops, regions = [], []
    for index in range(len(masks)):
        pasted, (rows, cols) = _do_paste_mask(masks[index:index + 1, None], boxes[index:index + 1],
                                              height, width, skip_empty=True)
        crops.append((pasted[0] >= threshold).numpy())
        regions.append((int(cols.start), int(rows.start), int(cols.stop), int(rows.stop)))
    return CroppedMasks(crops, np.asarray(regions, dtype=np.int64).reshape(-1, 4), (height, width))


class _PastedMasks:
    """What ``detector_postprocess`` reads from ``to_bitmasks``: the pasted masks in ``tensor``."""

    def __init__(self, masks: CroppedMasks):
        self.tensor = masks


class BoxPastedROIMasks(ROIMasks):
    """``ROIMasks`` that paste into their boxes only (see the module docstring)."""

    def to(self, device: torch.device) -> "BoxPastedROIMasks":
        return BoxPastedROIMasks(self.tensor.to(device))

    def __getitem__(self, item) -> "BoxPastedROIMasks":
        return BoxPastedROIMasks(super().__getitem__(item).tensor)

    def to_bitmasks(self, boxes: Boxes, height, width, threshold: float = 0.5) -> _PastedMasks:
        return _PastedMasks(paste_masks_into_boxes(self.tensor, boxes.tensor, (int(height), int(width)), threshold))


def compact_detector_postprocess(results: Instances, height: int, width: int, mask_threshold: float = 0.5) -> Instances:
    """detectron2's ``detector_postprocess`` with masks pasted into :class:`CroppedMasks`."""
    if results.has("pred_masks") and not isinstance(results.pred_masks, ROIMasks):
        results.pred_masks = BoxPastedROIMasks(results.pred_masks[:, 0, :, :])
    return detector_postprocess(results, height, width, mask_threshold)


@META_ARCH_REGISTRY.register()
class CompactMaskRCNN(GeneralizedRCNN):
    """``GeneralizedRCNN`` returning cropped masks (``MODEL.META_ARCHITECTURE: CompactMaskRCNN``)."""

    @configurable
    def __init__(self, *, mask_threshold: float = 0.5, **kwargs):
        super().__init__(**kwargs)
        self.mask_threshold = float(mask_threshold)

    @classmethod
    def from_config(cls, cfg) -> dict:
        args = super().from_config(cfg)
        args["mask_threshold"] = cfg.TEST.MASK_THRESHOLD
        return args

    def inference(self, batched_inputs: list[dict], detected_instances: list[Instances] | None = None,
                  do_postprocess: bool = True):
        results = super().inference(batched_inputs, detected_instances, do_postprocess=False)
        if not do_postprocess:
            return results
        return [{"instances": compact_detector_postprocess(
                    result, inputs.get("height", result.image_size[0]), inputs.get("width", result.image_size[1]),
                    self.mask_threshold)}
                for result, inputs in zip(results, batched_inputs)]
