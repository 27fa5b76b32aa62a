"""``DenseTargetMapper``: dataset dict -> normalised image (+ dense training target) for U-Net methods.

Normalisation and the optional appearance / scale augmentation are in :mod:`deepcens.data.augment`.

Training follows the XB-Net paper (Sec. 3.2, 3.4): the image is normalised by its sequence's
min/max intensity (``intensity_range`` of CTC dicts) to [0, 1]; the instance labels become
the target of ``MODEL.DENSE.TARGET`` (255 = ignore, e.g. unlabelled cells of sparse CTC GT);
then, in this order, a random square crop (``INPUT.DENSE.CROP_SIZE``, per dataset through
``INPUT.DENSE.DATASET_CROP_NAMES`` / ``DATASET_CROP_SIZES``; -1 = the image's short side as at the CTC), random
horizontal / vertical flips, a random multiple of 90-degree rotation, and reflection padding
of ``INPUT.DENSE.CONTEXT_PAD`` (8) pixels on every side, where the target is 255 so that the
loss sees only the crop (the padding gives the crop's border pixels their context).
At test time the whole image is returned without target; the meta-architecture pads it.

Dicts without ``intensity_range`` are normalised by ``INPUT.INTENSITY_MODE``; dicts with
COCO-style polygon ``annotations`` instead of a label image (EVICAN) are rasterised.
"""
from __future__ import annotations

import copy

from typing import Sequence

import numpy as np
import torch
from detectron2.config import CfgNode

from deepcens.data.augment import NORMALIZATIONS, DenseAugmentation, percentile_normalize
from deepcens.data.io import to_float_rgb
from deepcens.data.mappers import MAPPER_REGISTRY, read_record_image
from deepcens.errors import DeepcensInputError


def dataset_crop_sizes(names: Sequence[str], sizes: Sequence[int]) -> dict[str, int]:
    """``INPUT.DENSE.DATASET_CROP_NAMES`` / ``DATASET_CROP_SIZES`` (parallel lists) as a mapping."""
    if len(names) != len(sizes):
        raise ValueError(f"INPUT.DENSE.DATASET_CROP_NAMES ({len(names)} entries) and DATASET_CROP_SIZES "
                         f"({len(sizes)} entries) must have the same length")
    if len(set(names)) != len(names):
        raise ValueError(f"INPUT.DENSE.DATASET_CROP_NAMES has repeated names: {list(names)}")
    result = {}
    for name, size in zip(names, sizes):
        if isinstance(size, bool) or not isinstance(size, int) or size < -1:
            raise ValueError(f"INPUT.DENSE.DATASET_CROP_SIZES entry for {name!r} must be an integer >= -1, got {size!r}")
        result[str(name)] = size
    return result


def _annotations_to_labels(dataset_dict: dict) -> np.ndarray:
    """Instance label image from polygon / RLE annotations (later objects drawn over earlier)."""
    from deepcens.postprocess.instances import segmentations_to_masks

    height, width = int(dataset_dict["height"]), int(dataset_dict["width"])
    labels = np.zeros((height, width), dtype=np.int32)
    chosen = [a for a in dataset_dict["annotations"] if not a.get("iscrowd", 0)]
    if any(not isinstance(a.get("segmentation"), (list, dict)) for a in chosen):
        raise DeepcensInputError(dataset_dict.get("file_name"), "annotation without a segmentation")
    masks = segmentations_to_masks([a["segmentation"] for a in chosen], height, width, dataset_dict.get("file_name"))
    masks.paint(labels, range(1, len(chosen) + 1), overwrite=True)
    return labels


@MAPPER_REGISTRY.register()
class DenseTargetMapper:
    """Dense (U-Net) mapper; see the module docstring. Output keys: ``image`` (float32
    ``(MODEL.DENSE.INPUT_CHANNELS, H, W)`` in [0, 1]), ``target`` (int64 ``(H, W)``, training
    only) and the dict's own keys (``height``, ``width``, ``file_name``, ``ctc_dataset``, ...)."""

    def __init__(self, cfg: CfgNode, is_train: bool = True):
        from deepcens.data.targets import build_target  # imported when a mapper is built

        self.is_train = is_train
        self.target_fn = build_target(cfg) if is_train else None
        self.channels = int(cfg.MODEL.DENSE.INPUT_CHANNELS)
        self.intensity_mode = cfg.INPUT.INTENSITY_MODE
        self.intensity_percentiles = tuple(cfg.INPUT.INTENSITY_PERCENTILES)
        self.ignore_value = int(cfg.MODEL.DENSE.IGNORE_VALUE)
        d = cfg.INPUT.DENSE
        self.crop_size = int(d.CROP_SIZE)
        self.dataset_crop_sizes = dataset_crop_sizes(d.DATASET_CROP_NAMES, d.DATASET_CROP_SIZES)
        self.context_pad = int(d.CONTEXT_PAD)
        self.flip = bool(d.FLIP)
        self.rotate = bool(d.ROTATE_90)
        if d.NORMALIZATION not in NORMALIZATIONS:
            raise ValueError(f"INPUT.DENSE.NORMALIZATION must be one of {NORMALIZATIONS}, got {d.NORMALIZATION!r}")
        self.normalization = d.NORMALIZATION
        self.augmentation = DenseAugmentation.from_config(cfg) if is_train else None

    # ---- reading -----------------------------------------------------------------------------
    def load_image(self, dataset_dict: dict) -> np.ndarray:
        """(H, W, C) float32 in [0, 1] with C = ``MODEL.DENSE.INPUT_CHANNELS``."""
        if "ctc_dataset" in dataset_dict:
            from deepcens.data.ctc import read_ctc_image

            image = read_ctc_image(dataset_dict)[:, :, None]
        else:
            raw = read_record_image(dataset_dict)  # a preloaded "image" array (predictor) or file_name
            if dataset_dict.get("intensity_range"):
                low, high = (float(v) for v in dataset_dict["intensity_range"])
                image = (raw[:, :, :3].astype(np.float32) - low) / max(high - low, 1e-6)
            else:
                image = to_float_rgb(raw, self.intensity_mode, self.intensity_percentiles) / 255.0
        if self.normalization == "frame_percentile":
            image = percentile_normalize(image, *self.intensity_percentiles)
        image = np.clip(image, 0.0, 1.0).astype(np.float32, copy=False)
        if image.shape[2] != self.channels:
            if self.channels == 1:
                image = image.mean(axis=2, keepdims=True)
            elif image.shape[2] == 1:
                image = np.repeat(image, self.channels, axis=2)
            else:
                raise DeepcensInputError(dataset_dict["file_name"],
                                         f"image has {image.shape[2]} channels, the network takes {self.channels}")
        self.check_size(dataset_dict, image, "the dataset record")
        return image

    @staticmethod
    def check_size(dataset_dict: dict, image: np.ndarray, against: str) -> None:
        """Refuse an image whose size differs from the record's ``height`` x ``width`` (``against``
        names where that size comes from in the message)."""
        if "height" in dataset_dict and tuple(image.shape[:2]) != (dataset_dict["height"], dataset_dict["width"]):
            raise DeepcensInputError(
                dataset_dict["file_name"], f"image size {image.shape[0]}x{image.shape[1]} differs from {against} "
                f"{dataset_dict['height']}x{dataset_dict['width']}")

    def load_target(self, dataset_dict: dict) -> np.ndarray:
        """uint8 (H, W) target of ``MODEL.DENSE.TARGET`` (255 = ignore)."""
        from deepcens.data.targets import dense_target_for_dict

        target = dense_target_for_dict(dataset_dict, self.target_fn)
        if target is None and dataset_dict.get("annotations") is not None:
            target = self.target_fn(_annotations_to_labels(dataset_dict), dilation=dataset_dict.get("target_dilation"))
        if target is None:
            raise DeepcensInputError(dataset_dict.get("file_name"),
                                     "training record has no labels (label_file_name or annotations)")
        return target

    # ---- augmentation ------------------------------------------------------------------------
    def crop_size_for(self, dataset_dict: dict, height: int, width: int) -> int:
        size = self.crop_size
        for key in (dataset_dict.get("dataset_name"), dataset_dict.get("ctc_dataset")):
            if key in self.dataset_crop_sizes:
                size = self.dataset_crop_sizes[key]
                break
        return min(height, width) if size < 0 else size

    def augment(self, image: np.ndarray, target: np.ndarray, crop: int,
                rng: np.random.RandomState | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Random square crop, flips, 90-degree rotation, context reflection padding (paper order)."""
        rng = rng or np.random
        if self.augmentation is not None and self.augmentation.active:
            image, target = self.augmentation.rescale(image, target, rng)
        fills = [self.ignore_value]
        image, (target,) = self.random_crop(image, [target], fills, crop, rng)
        if self.augmentation is not None and self.augmentation.active:
            image = self.augmentation.appearance(image, rng)
        image, (target,) = self.flip_rotate(image, [target], rng)
        image, (target,) = self.pad_context(image, [target], fills)
        return np.ascontiguousarray(image), np.ascontiguousarray(target)

    # The steps below take the image and a list of per-pixel maps (targets, weights) that move
    # with it; ``fills`` is each map's value where the image is padded (ignore, zero weight).
    @staticmethod
    def random_crop(image: np.ndarray, maps: list[np.ndarray], fills: list[float], crop: int,
                    rng) -> tuple[np.ndarray, list[np.ndarray]]:
        """A random ``crop`` x ``crop`` square (0 = none); an image smaller than the crop is first
        reflected to size, its maps filled there."""
        if crop <= 0:
            return image, maps
        pad_h, pad_w = max(crop - image.shape[0], 0), max(crop - image.shape[1], 0)
        if pad_h or pad_w:
            image = np.pad(image, ((0, pad_h), (0, pad_w), (0, 0)), mode="symmetric")
            maps = [np.pad(m, ((0, pad_h), (0, pad_w)), constant_values=f) for m, f in zip(maps, fills)]
        top = int(rng.randint(0, image.shape[0] - crop + 1))
        left = int(rng.randint(0, image.shape[1] - crop + 1))
        return image[top:top + crop, left:left + crop], [m[top:top + crop, left:left + crop] for m in maps]

    def flip_rotate(self, image: np.ndarray, maps: list[np.ndarray], rng) -> tuple[np.ndarray, list[np.ndarray]]:
        """Random horizontal and vertical flips (``INPUT.DENSE.FLIP``) and a random multiple of 90
        degrees (``INPUT.DENSE.ROTATE_90``)."""
        if self.flip and rng.rand() < 0.5:
            image, maps = image[:, ::-1], [m[:, ::-1] for m in maps]
        if self.flip and rng.rand() < 0.5:
            image, maps = image[::-1], [m[::-1] for m in maps]
        if self.rotate:
            k = int(rng.randint(0, 4))
            image, maps = np.rot90(image, k, axes=(0, 1)), [np.rot90(m, k, axes=(0, 1)) for m in maps]
        return image, maps

    def pad_context(self, image: np.ndarray, maps: list[np.ndarray],
                    fills: list[float]) -> tuple[np.ndarray, list[np.ndarray]]:
        """``INPUT.DENSE.CONTEXT_PAD`` pixels of reflected context around the image, maps filled there."""
        p = self.context_pad
        if p <= 0:
            return image, maps
        image = np.pad(image, ((p, p), (p, p), (0, 0)), mode="reflect" if min(image.shape[:2]) > p else "symmetric")
        return image, [np.pad(m, ((p, p), (p, p)), constant_values=f) for m, f in zip(maps, fills)]

    def __call__(self, dataset_dict: dict) -> dict:
        record = {k: v for k, v in dataset_dict.items() if k != "annotations"}
        record = copy.deepcopy(record)
        image = self.load_image(dataset_dict)
        record.setdefault("height", image.shape[0])
        record.setdefault("width", image.shape[1])
        if self.is_train:
            target = self.load_target(dataset_dict)
            if target.shape != image.shape[:2]:
                raise DeepcensInputError(dataset_dict.get("label_file_name") or dataset_dict["file_name"],
                                         f"target size {target.shape} differs from image size {image.shape[:2]}")
            crop = self.crop_size_for(dataset_dict, *image.shape[:2])
            image, target = self.augment(image, target, crop)
            record["target"] = torch.as_tensor(target.astype(np.int64))
        record["image"] = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
        return record
