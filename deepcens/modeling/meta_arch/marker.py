"""``MarkerSegmentor``: the dense meta-architecture for networks with a segmentation head and a
marker head (NAS U-Net), whose input may stack several frames (the mapper does the stacking).

Training batches come from :class:`~deepcens.data.pair_mapper.FramePairMapper` (``image``,
``target``, ``marker_target``, ``weight``); the loss is ``MODEL.DENSE.LOSS`` called with the
network's ``(segmentation logits, marker logits)`` and a dict of the padded targets.
At inference the decoder receives ``softmax(segmentation)`` stacked with ``sigmoid(markers)``
(``NUM_OUTPUTS + 1`` channels, markers last); padding, sliding windows and the decoder are
:class:`~deepcens.modeling.meta_arch.dense.DenseSegmentor`'s.
"""
from __future__ import annotations

import torch
from detectron2.modeling import META_ARCH_REGISTRY
from torch.nn import functional as F

from deepcens.modeling import marker_loss  # noqa: F401  (registers the segmentation_marker loss)
from deepcens.modeling.meta_arch.dense import DenseSegmentor


@META_ARCH_REGISTRY.register()
class MarkerSegmentor(DenseSegmentor):
    """Segmentation + marker heads behind the dense meta-architecture (see the module docstring)."""

    def network_probabilities(self, x: torch.Tensor) -> torch.Tensor:
        segmentation, markers = self.network(x)
        return torch.cat([F.softmax(segmentation, dim=1), torch.sigmoid(markers)], dim=1)

    def losses(self, batched_inputs: list[dict]) -> dict[str, torch.Tensor]:
        def stack(key: str, dtype: torch.dtype, value: float) -> torch.Tensor:
            return self.pad_batch(batched_inputs, [x[key].to(self.device, dtype) for x in batched_inputs], value)

        images = stack("image", torch.float32, 0.0)
        targets = {"segmentation": stack("target", torch.long, self.ignore_value),
                   "markers": stack("marker_target", torch.long, self.ignore_value),
                   "weights": stack("weight", torch.float32, 0.0)}
        return self.criterion(self.network(images), targets)
