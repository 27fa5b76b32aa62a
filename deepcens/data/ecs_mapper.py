"""``ContextSliceMapper``: a slice and its neighbours -> pseudocoloured three-channel input (+ target).

EfficientCellSeg (paper Sec. 2.2, 3.3) segments 3D stacks slice by slice; every slice enters
the network as the output of the input transform ``INPUT.ECS.TRANSFORM`` applied to the slice
and its neighbours z-1 / z+1 (for 2D time-lapse sequences: frames t-1 / t+1). The same
transform runs in training and prediction. Neighbours come from

* ``context_images`` = (previous, following) arrays in the record (the predictor passes the
  neighbouring pages of a stack or frames of a sequence; None where there is none);
* CTC dataset dicts: the neighbouring planes of the stack, or the neighbouring ``tTTT.tif``
  frames of a 2D sequence;
* nothing else: a single image has no neighbours (its masks are empty).

The slice and its neighbours are normalised as ``INPUT.DENSE.NORMALIZATION`` says (the
paper's min-max by default; ``frame_percentile`` maps each slice's 1st / 99.8th percentiles to
0 / 1 first). Training: ``INPUT.ECS.CACHE_SLICES`` keeps the transformed, rescaled slices (the
transform is deterministic). The slice (and target) rescaled by ``INPUT.ECS.SCALE`` (1 = kept; the reduced CPU
config only), a random square patch of ``INPUT.ECS.PATCH_SIZE`` (0 = the whole slice), resized
to ``MODEL.DENSE.ECS.NETWORK_SIZE`` (0 = kept), then the dense mapper's random flips and
90-degree rotations. Targets: ``int64 (H, W)`` for one-channel targets, ``float32 (C, H, W)``
for the foreground + centre-heatmap target (255 = ignore). At test time the whole
pseudocoloured slice (rescaled by ``SCALE``) is returned; the meta-architecture resizes and
patches it and brings its maps back to the record's height x width.
"""
from __future__ import annotations

import copy
from collections import OrderedDict

import cv2
import numpy as np
import torch
from detectron2.config import CfgNode

from deepcens.data.augment import percentile_normalize
from deepcens.data.dense_mapper import DenseTargetMapper
from deepcens.data.io import to_float_rgb
from deepcens.data.mappers import MAPPER_REGISTRY, read_record_image
from deepcens.data.pseudocolor import build_input_transform, ctc_context
from deepcens.errors import DeepcensInputError


@MAPPER_REGISTRY.register()
class ContextSliceMapper(DenseTargetMapper):
    """Dense mapper whose image is ``INPUT.ECS.TRANSFORM`` of the slice and its neighbours."""

    def __init__(self, cfg: CfgNode, is_train: bool = True):
        super().__init__(cfg, is_train)
        if self.channels != 3:
            raise ValueError(f"{cfg.INPUT.ECS.TRANSFORM} gives 3 channels, MODEL.DENSE.INPUT_CHANNELS is {self.channels}")
        self.transform = build_input_transform(cfg)
        self.needs_context = bool(getattr(self.transform, "needs_context", False))
        self.patch_size = int(cfg.INPUT.ECS.PATCH_SIZE)
        self.network_size = int(cfg.MODEL.DENSE.ECS.NETWORK_SIZE)
        self.scale = float(cfg.INPUT.ECS.SCALE)
        if self.scale <= 0:
            raise ValueError(f"INPUT.ECS.SCALE must be positive, got {self.scale}")
        self.context_pad = 0  # the network sees whole (resized) slices or patches, no padding ring
        self.cache_slices = int(cfg.INPUT.ECS.CACHE_SLICES) if is_train else 0
        self._cache: OrderedDict[tuple, tuple] = OrderedDict()

    def _normalise(self, grey: np.ndarray) -> np.ndarray:
        """``INPUT.DENSE.NORMALIZATION`` frame_percentile: the slice's percentiles -> [0, 1], clipped
        (so the transform's min-max leaves it as is); sequence_minmax: unchanged."""
        if self.normalization != "frame_percentile":
            return grey
        return np.clip(percentile_normalize(grey, *self.intensity_percentiles), 0.0, 1.0)

    def _grey(self, dataset_dict: dict, image: np.ndarray | None = None) -> np.ndarray:
        """(H, W) float32 slice, normalised like the dense mapper does (one channel)."""
        if image is None and "ctc_dataset" in dataset_dict:
            from deepcens.data.ctc import read_ctc_image

            return self._normalise(read_ctc_image(dataset_dict))
        raw = read_record_image(dataset_dict) if image is None else (image if image.ndim == 3 else image[:, :, None])
        if dataset_dict.get("intensity_range"):
            low, high = (float(v) for v in dataset_dict["intensity_range"])
            grey = (raw.astype(np.float32) - low) / max(high - low, 1e-6)
        else:
            grey = to_float_rgb(raw, self.intensity_mode, self.intensity_percentiles) / 255.0
        return self._normalise(grey.mean(axis=2) if grey.ndim == 3 else grey)

    def context(self, dataset_dict: dict) -> tuple[np.ndarray | None, np.ndarray | None]:
        """The (previous, following) neighbours of the record's slice, None where there is none."""
        if not self.needs_context:
            return None, None
        if "context_images" in dataset_dict:
            return tuple(None if n is None else self._grey(dataset_dict, np.asarray(n))
                         for n in dataset_dict["context_images"])  # type: ignore[return-value]
        if "ctc_dataset" in dataset_dict:
            return tuple(None if n is None else self._normalise(n)
                         for n in ctc_context(dataset_dict))  # type: ignore[return-value]
        return None, None

    def load_image(self, dataset_dict: dict) -> np.ndarray:
        """(H, W, 3) float32 in [0, 1]: the input transform of the slice and its neighbours."""
        current = self._grey(dataset_dict)
        if "height" in dataset_dict and tuple(current.shape) != (dataset_dict["height"], dataset_dict["width"]):
            raise DeepcensInputError(
                dataset_dict["file_name"], f"image size {current.shape[0]}x{current.shape[1]} differs from the "
                f"dataset record {dataset_dict['height']}x{dataset_dict['width']}")
        previous, following = self.context(dataset_dict)
        for neighbour in (previous, following):
            if neighbour is not None and neighbour.shape != current.shape:
                raise DeepcensInputError(dataset_dict["file_name"], f"neighbouring slice of size {neighbour.shape} "
                                         f"differs from the slice size {current.shape}")
        return self.transform(current, previous, following).astype(np.float32, copy=False)

    def _patch_and_resize(self, image: np.ndarray, target: np.ndarray,
                          rng: np.random.RandomState) -> tuple[np.ndarray, np.ndarray]:
        if self.patch_size > 0:
            size = self.patch_size
            pad_h, pad_w = max(size - image.shape[0], 0), max(size - image.shape[1], 0)
            if pad_h or pad_w:  # slice smaller than the patch: mirrored, target ignored there
                image = np.pad(image, ((0, pad_h), (0, pad_w), (0, 0)), mode="symmetric")
                pads = ((0, pad_h), (0, pad_w)) + (((0, 0),) if target.ndim == 3 else ())
                target = np.pad(target, pads, constant_values=self.ignore_value)
            top = int(rng.randint(0, image.shape[0] - size + 1))
            left = int(rng.randint(0, image.shape[1] - size + 1))
            image, target = image[top:top + size, left:left + size], target[top:top + size, left:left + size]
        if self.network_size > 0 and image.shape[:2] != (self.network_size, self.network_size):
            size = (self.network_size, self.network_size)
            image = cv2.resize(np.ascontiguousarray(image), size, interpolation=cv2.INTER_LINEAR)
            target = resize_target(target, size, self.ignore_value)
        return image, target

    def _scaled_slice(self, dataset_dict: dict) -> tuple[np.ndarray, np.ndarray | None, tuple[int, int]]:
        """(image, training target or None) rescaled by ``INPUT.ECS.SCALE``, and the slice's own
        height x width."""
        image = self.load_image(dataset_dict)
        shape = (int(image.shape[0]), int(image.shape[1]))
        size = (max(int(round(shape[1] * self.scale)), 1), max(int(round(shape[0] * self.scale)), 1))
        target = None
        if self.is_train:
            target = self.load_target(dataset_dict)
            if target.shape[:2] != image.shape[:2]:
                raise DeepcensInputError(dataset_dict.get("label_file_name") or dataset_dict["file_name"],
                                         f"target size {target.shape[:2]} differs from image size {image.shape[:2]}")
            if self.scale != 1.0:
                target = resize_target(target, size, self.ignore_value)
        if self.scale != 1.0:  # the meta-architecture resizes its maps back to height x width
            image = cv2.resize(image, size, interpolation=cv2.INTER_LINEAR)
        return image, target, shape

    def _cached_slice(self, dataset_dict: dict) -> tuple[np.ndarray, np.ndarray | None, tuple[int, int]]:
        """:meth:`_scaled_slice`, kept for the last ``INPUT.ECS.CACHE_SLICES`` slices read from files
        (training only: the transform is deterministic, and CLAHE of two full-size neighbours
        costs more than the network's step on a small patch). Cached arrays are read-only."""
        if self.cache_slices <= 0 or "image" in dataset_dict or "context_images" in dataset_dict:
            return self._scaled_slice(dataset_dict)
        key = (dataset_dict.get("file_name"), dataset_dict.get("slice"))
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        entry = self._scaled_slice(dataset_dict)
        for array in entry[:2]:
            if array is not None:
                array.flags.writeable = False
        self._cache[key] = entry
        if len(self._cache) > self.cache_slices:
            self._cache.popitem(last=False)
        return entry

    def __call__(self, dataset_dict: dict) -> dict:
        record = copy.deepcopy({k: v for k, v in dataset_dict.items()
                                if k not in ("annotations", "image", "context_images")})
        image, target, (height, width) = self._cached_slice(dataset_dict)
        record.setdefault("height", height)
        record.setdefault("width", width)
        if self.is_train:
            image, target = self._patch_and_resize(image, target, np.random)
            image, target = self.augment(image, target, 0)
            record["target"] = (torch.as_tensor(target.astype(np.int64)) if target.ndim == 2
                                else torch.as_tensor(np.ascontiguousarray(target.transpose(2, 0, 1)), dtype=torch.float32))
        record["image"] = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
        return record


def resize_target(target: np.ndarray, size: tuple[int, int], ignore_value: int = 255) -> np.ndarray:
    """Resize a target to ``size`` = (width, height): class maps by nearest neighbour, a heatmap
    channel (channel 1 of a ``(H, W, 2)`` target) bilinearly, ignored pixels kept ignored."""
    if target.ndim == 2:
        return cv2.resize(target, size, interpolation=cv2.INTER_NEAREST)
    ignore = cv2.resize((target[..., 0] == ignore_value).astype(np.uint8), size,
                        interpolation=cv2.INTER_NEAREST).astype(bool)
    channels = [cv2.resize(np.ascontiguousarray(target[..., 0]), size, interpolation=cv2.INTER_NEAREST)]
    for c in range(1, target.shape[2]):
        plane = np.where(target[..., c] == ignore_value, 0.0, target[..., c]).astype(np.float32)
        channels.append(cv2.resize(plane, size, interpolation=cv2.INTER_LINEAR))
    out = np.dstack(channels).astype(np.float32)
    out[ignore] = ignore_value
    return out
