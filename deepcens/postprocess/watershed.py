"""Marker-controlled watershed: cell probability + seed markers -> instances.

:func:`marker_watershed` is the reusable core (any method with a foreground and a marker or
centre map can call it); the ``"marker_watershed"`` decoder applies it to the probability
stack of a dense network (NAS U-Net: segmentation softmax, marker sigmoid last) and returns
detectron2 ``Instances`` through :func:`~deepcens.postprocess.instances.label_image_to_instances`,
each scored by its mean cell probability.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch
from detectron2.config import CfgNode
from detectron2.structures import Instances
from scipy import ndimage
from skimage import morphology
from skimage.segmentation import watershed

from deepcens.postprocess.decoders import DECODER_REGISTRY
from deepcens.postprocess.instances import label_image_to_instances


def marker_watershed(probability: np.ndarray, seeds: np.ndarray, foreground: np.ndarray, min_seed_size: int = 0,
                     min_object_size: int = 0, keep_unseeded: bool = True) -> np.ndarray:
    """int32 label image: watershed of ``-probability`` from the seed components, inside ``foreground``.

    ``seeds`` is a boolean seed mask or an integer label image of seeds; seeds outside the
    foreground are cut to it, seed components smaller than ``min_seed_size`` pixels dropped.
    Foreground components that hold no seed become one instance each (``keep_unseeded``),
    else stay background. Objects smaller than ``min_object_size`` pixels are removed and the
    result numbered 1..n.
    """
    probability = np.asarray(probability, dtype=np.float32)
    foreground = np.asarray(foreground, dtype=bool)
    if probability.shape != foreground.shape or np.shape(seeds) != foreground.shape:
        raise ValueError(f"shapes differ: probability {probability.shape}, seeds {np.shape(seeds)}, "
                         f"foreground {foreground.shape}")
    seeds = np.asarray(seeds)
    if seeds.dtype == bool:
        seed_labels = ndimage.label(seeds & foreground)[0]
    else:
        seed_labels = np.where(foreground, seeds, 0).astype(np.int32)
    if min_seed_size > 1 and seed_labels.any():
        seed_labels = morphology.remove_small_objects(seed_labels, min_size=min_seed_size)
    labels = watershed(-probability, markers=seed_labels, mask=foreground).astype(np.int32)
    if keep_unseeded:
        orphans, count = ndimage.label(foreground & (labels == 0))
        if count:
            labels = np.where(orphans > 0, orphans + labels.max(), labels)
    if min_object_size > 1 and labels.any():
        labels = morphology.remove_small_objects(labels, min_size=min_object_size)
    values, inverse = np.unique(labels, return_inverse=True)  # renumber 1..n
    return (inverse.reshape(labels.shape) + (0 if values[0] == 0 else 1)).astype(np.int32)

def decode_marker_watershed(probabilities: np.ndarray | torch.Tensor, foreground_channels: Sequence[int] = (1,),
                            marker_channel: int = -1, foreground_threshold: float = 0.5,
                            marker_threshold: float = 0.5, min_seed_size: int = 0, min_object_size: int = 0,
                            keep_unseeded: bool = True, min_score: float = 0.0) -> Instances:
    """``Instances`` (class 0, score = mean cell probability) from a ``(C, H, W)`` probability stack;
    objects scoring below ``min_score`` are dropped (faint background structures)."""
    if isinstance(probabilities, torch.Tensor):
        probabilities = probabilities.detach().float().cpu().numpy()
    probabilities = np.asarray(probabilities)
    if probabilities.ndim != 3:
        raise ValueError(f"expected probabilities of shape (C, H, W), got {probabilities.shape}")
    cell = probabilities[list(foreground_channels)].sum(axis=0)
    markers = probabilities[marker_channel]
    labels = marker_watershed(cell, markers > marker_threshold, cell > foreground_threshold, min_seed_size,
                              min_object_size, keep_unseeded)
    ids = np.arange(1, int(labels.max()) + 1)
    scores = ndimage.mean(cell, labels, ids) if len(ids) else np.zeros(0)
    instances = label_image_to_instances(labels, scores=np.asarray(scores, dtype=np.float32))
    return instances[instances.scores >= min_score] if min_score > 0 else instances


@DECODER_REGISTRY.register()
def marker_watershed_decoder(cfg: CfgNode) -> Callable[[torch.Tensor, str | None], Instances]:
    """Marker watershed with ``MODEL.DENSE.WATERSHED.*``, ``MODEL.DENSE.MIN_OBJECT_SIZE`` and
    ``MODEL.DENSE.MIN_SCORE``."""
    w = cfg.MODEL.DENSE.WATERSHED
    settings = dict(foreground_channels=tuple(int(c) for c in w.FOREGROUND_CHANNELS), marker_channel=int(w.MARKER_CHANNEL),
                    foreground_threshold=float(w.FOREGROUND_THRESHOLD), marker_threshold=float(w.MARKER_THRESHOLD),
                    min_seed_size=int(w.MIN_SEED_SIZE), min_object_size=int(cfg.MODEL.DENSE.MIN_OBJECT_SIZE),
                    keep_unseeded=bool(w.KEEP_UNSEEDED), min_score=float(cfg.MODEL.DENSE.MIN_SCORE))

    def decode(probabilities: torch.Tensor, dataset_name: str | None = None) -> Instances:
        return decode_marker_watershed(probabilities, **settings)

    return decode
