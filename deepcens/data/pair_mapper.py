"""``FramePairMapper``: a frame and its predecessor -> one pair input (+ segmentation, marker and
weight targets) for temporal dense methods such as NAS U-Net.

The previous frame of a record is, in this order: a preloaded ``previous_image`` array, else
the file ``t(T-1)`` beside a CTC-named ``tT.tif`` (``file_name``; the same digits), else the
frame itself (the first frame of a sequence pairs with itself). So training dicts of the CTC
datasets, the evaluator's test loader and ``tools/predict.py`` over a sequence folder all feed
the true previous frame without extra keys. Both frames are normalised alike (the record's
``intensity_range``) and stacked oldest first: ``image`` has ``FRAMES * INPUT_CHANNELS``
channels.

Training (paper Sec. 3.1): targets from the frame t labels, computed once per record and
process (``MODEL.DENSE.TARGET`` classes with 255 = ignore for unlabelled cells of sparse GT,
the U-Net weight map, markers); then a random square crop, flips, 90-degree rotations,
random reversal of the pair, random affine and elastic deformation (``INPUT.NAS``), the
appearance augmentation of ``INPUT.DENSE.AUGMENT`` (one draw for both frames) and the
context padding of ``INPUT.DENSE.CONTEXT_PAD`` (targets ignored there).
"""
from __future__ import annotations

import copy
import functools
import os
import re

import cv2
import numpy as np
import torch
from detectron2.config import CfgNode

from deepcens.data.dense_mapper import DenseTargetMapper
from deepcens.data.mappers import MAPPER_REGISTRY
from deepcens.data.nas_targets import marker_target, unet_weight_map
from deepcens.data.targets import IGNORE_VALUE
from deepcens.errors import DeepcensInputError

_CTC_FRAME = re.compile(r"^t(\d+)(\.tiff?)$", re.IGNORECASE)


def previous_frame_record(dataset_dict: dict) -> dict:
    """The record of the frame before ``dataset_dict`` (itself when there is none)."""
    previous_image = dataset_dict.get("previous_image")
    if isinstance(previous_image, np.ndarray):
        return {**dataset_dict, "image": previous_image}
    path = str(dataset_dict.get("file_name", ""))
    match = _CTC_FRAME.match(os.path.basename(path))
    if match and int(match.group(1)) > 0:
        digits, suffix = match.group(1), match.group(2)
        candidate = os.path.join(os.path.dirname(path), f"t{int(digits) - 1:0{len(digits)}d}{suffix}")
        if os.path.isfile(candidate):
            record = {k: v for k, v in dataset_dict.items() if k != "image"}
            record["file_name"] = candidate
            return record
    return dataset_dict


def _random_warp_maps(size: tuple[int, int], rng: np.random.RandomState, rotation: float, scale: tuple[float, float],
                      shear: float, alpha: float, sigma: float, affine: bool, elastic: bool) -> tuple[np.ndarray, np.ndarray]:
    """cv2.remap maps of a random affine transform (about the centre) plus a smooth displacement field."""
    height, width = size
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    cy, cx = (height - 1) / 2.0, (width - 1) / 2.0
    map_x, map_y = xs, ys
    if affine:
        angle = np.deg2rad(rng.uniform(-rotation, rotation))
        factor = rng.uniform(*scale)
        sh = rng.uniform(-shear, shear)
        cos, sin = np.cos(angle) / factor, np.sin(angle) / factor
        dx, dy = xs - cx, ys - cy
        map_x = (cos * dx - sin * dy + sh * dy + cx).astype(np.float32)
        map_y = (sin * dx + cos * dy + cy).astype(np.float32)
    if elastic:
        for grid in (map_x, map_y):
            field = cv2.GaussianBlur(rng.uniform(-1, 1, size).astype(np.float32), (0, 0), sigma)
            peak = float(np.abs(field).max()) or 1.0
            grid += field * (alpha / peak)
    return map_x, map_y


@MAPPER_REGISTRY.register()
class FramePairMapper(DenseTargetMapper):
    """See the module docstring. Output keys: ``image`` (float32 ``(FRAMES * C, H, W)``), and in
    training ``target`` (int64 classes, 255 ignore), ``marker_target`` (int64 0/1/255) and
    ``weight`` (float32 U-Net weights), plus the record's own keys."""

    def __init__(self, cfg: CfgNode, is_train: bool = True):
        super().__init__(cfg, is_train)
        n, a = cfg.MODEL.NAS, cfg.INPUT.NAS
        self.frames = int(n.FRAMES)
        if self.frames != 2:
            raise ValueError(f"FramePairMapper pairs two frames, MODEL.NAS.FRAMES is {self.frames}")
        self.w0, self.sigma, self.class_balance = float(n.BORDER_WEIGHT_W0), float(n.BORDER_WEIGHT_SIGMA), bool(n.CLASS_BALANCE)
        self.marker_source, self.marker_erosion = str(n.MARKER_SOURCE), int(n.MARKER_EROSION)
        if self.marker_source not in ("erosion", "tra"):
            raise ValueError(f"MODEL.NAS.MARKER_SOURCE must be erosion or tra, got {self.marker_source!r}")
        self.reverse = bool(a.REVERSE_PAIR)
        self.affine_prob, self.elastic_prob = float(a.AFFINE_PROB), float(a.ELASTIC_PROB)
        self.warp = dict(rotation=float(a.AFFINE_ROTATION), scale=tuple(float(v) for v in a.AFFINE_SCALE),
                         shear=float(a.AFFINE_SHEAR), alpha=float(a.ELASTIC_ALPHA), sigma=float(a.ELASTIC_SIGMA))
        self._targets = functools.lru_cache(maxsize=256)(self._full_targets)

    # ---- targets -------------------------------------------------------------------------------
    def _read_labels(self, dataset_dict: dict) -> np.ndarray:
        if "ctc_dataset" in dataset_dict:
            from deepcens.data import ctc

            return ctc.read_ctc_labels(dataset_dict)
        from deepcens.data.dense_mapper import _annotations_to_labels
        from deepcens.data.io import read_label

        if dataset_dict.get("label_file_name"):
            return read_label(dataset_dict["label_file_name"], (dataset_dict["height"], dataset_dict["width"]))
        return _annotations_to_labels(dataset_dict)

    def _full_targets(self, key: tuple) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        dataset_dict = dict(key)
        segmentation = self.load_target(dataset_dict)
        labels = self._read_labels(dataset_dict)
        if self.marker_source == "tra":
            from deepcens.data import ctc

            markers = ctc.read_ctc_markers(dataset_dict) if "ctc_dataset" in dataset_dict else None
            if markers is None:
                raise DeepcensInputError(dataset_dict.get("file_name"), "MODEL.NAS.MARKER_SOURCE tra needs TRA markers")
            markers = (markers > 0).astype(np.uint8)
        else:
            markers = marker_target(labels, self.marker_erosion)
        markers[segmentation == IGNORE_VALUE] = IGNORE_VALUE
        weights = unet_weight_map(labels, segmentation, self.w0, self.sigma, self.class_balance)
        return segmentation, markers, weights.astype(np.float16)

    # ---- augmentation ------------------------------------------------------------------------
    def augment_pair(self, image: np.ndarray, maps: list[np.ndarray], fills: list[float], crop: int,
                     rng: np.random.RandomState | None = None) -> tuple[np.ndarray, list[np.ndarray]]:
        """Crop, appearance (``INPUT.DENSE.AUGMENT``), flips, rot90, pair reversal, affine + elastic
        warp, context padding (see module docstring)."""
        rng = rng or np.random
        image, maps = self.random_crop(image, maps, fills, crop, rng)
        if self.augmentation is not None and self.augmentation.active:
            image = self.augmentation.appearance(image, rng)  # one draw for every frame of the pair
        image, maps = self.flip_rotate(image, maps, rng)
        if self.reverse and rng.rand() < 0.5:
            c = image.shape[2] // self.frames
            image = np.concatenate([image[:, :, i * c:(i + 1) * c] for i in reversed(range(self.frames))], axis=2)
        affine, elastic = rng.rand() < self.affine_prob, rng.rand() < self.elastic_prob
        if affine or elastic:
            map_x, map_y = _random_warp_maps(image.shape[:2], rng, affine=affine, elastic=elastic, **self.warp)
            image = cv2.remap(np.ascontiguousarray(image), map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
            if image.ndim == 2:
                image = image[:, :, None]
            maps = [cv2.remap(np.ascontiguousarray(m), map_x, map_y, cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT,
                              borderValue=f) for m, f in zip(maps, fills)]
        image, maps = self.pad_context(image, maps, fills)
        return np.ascontiguousarray(image), [np.ascontiguousarray(m) for m in maps]

    def __call__(self, dataset_dict: dict) -> dict:
        record = copy.deepcopy({k: v for k, v in dataset_dict.items()
                                if k not in ("annotations", "image", "previous_image")})
        current = self.load_image(dataset_dict)
        previous = self.load_image(previous_frame_record(dataset_dict))
        if previous.shape != current.shape:
            raise DeepcensInputError(previous_frame_record(dataset_dict).get("file_name"),
                                     f"previous frame size {previous.shape[:2]} differs from {current.shape[:2]}")
        image = np.concatenate([previous, current], axis=2)
        record.setdefault("height", current.shape[0])
        record.setdefault("width", current.shape[1])
        if self.is_train:
            key = {k: v for k, v in dataset_dict.items() if k not in ("image", "previous_image")}
            if "annotations" in key:
                segmentation, markers, weights = self._full_targets(
                    tuple(sorted((k, v) for k, v in key.items() if k != "annotations")) + (("annotations", key["annotations"]),))
            else:
                segmentation, markers, weights = self._targets(
                    tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in key.items())))
            if segmentation.shape != current.shape[:2]:
                raise DeepcensInputError(dataset_dict.get("label_file_name") or dataset_dict["file_name"],
                                         f"target size {segmentation.shape} differs from image size {current.shape[:2]}")
            crop = self.crop_size_for(dataset_dict, *current.shape[:2])
            image, (segmentation, markers, weights) = self.augment_pair(
                image, [segmentation, markers, weights.astype(np.float32)], [IGNORE_VALUE, IGNORE_VALUE, 0.0], crop)
            record["target"] = torch.as_tensor(segmentation.astype(np.int64))
            record["marker_target"] = torch.as_tensor(markers.astype(np.int64))
            record["weight"] = torch.as_tensor(weights.astype(np.float32))
        record["image"] = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
        return record
