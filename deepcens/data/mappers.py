"""Dataset mappers: dataset dict -> model input. Found by ``cfg.INPUT.MAPPER`` in :data:`MAPPER_REGISTRY`.

A mapper builder is called as ``builder(cfg, is_train)`` and returns a callable mapping one
dataset dict to the model's input dict.
"""
from __future__ import annotations

import copy
import logging
import multiprocessing

import numpy as np
import torch
from detectron2.config import CfgNode
from detectron2.data import DatasetMapper
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from detectron2.utils.registry import Registry

from deepcens.data.io import read_image, to_float_rgb
from deepcens.errors import DeepcensInputError, check_bad_input_policy

MAPPER_REGISTRY = Registry("MAPPER")
MAPPER_REGISTRY.__doc__ = "Dataset mappers: (cfg, is_train) -> callable(dataset_dict) -> model input."

logger = logging.getLogger(__name__)


def read_record_image(dataset_dict: dict) -> np.ndarray:
    """The record's raw ``(H, W, C)`` image: ``dataset_dict["image"]`` when the caller already
    loaded it as a numpy array (the predictor does, e.g. for pages of a TIFF stack, which
    have no file of their own), else :func:`read_image` of ``file_name``."""
    image = dataset_dict.get("image")
    if isinstance(image, np.ndarray):
        return image if image.ndim == 3 else image[:, :, None]
    return read_image(dataset_dict["file_name"])


def build_mapper(cfg: CfgNode, is_train: bool):
    """The mapper named by ``cfg.INPUT.MAPPER``, applying ``cfg.DATASETS.BAD_INPUT_POLICY``."""
    mapper = MAPPER_REGISTRY.get(cfg.INPUT.MAPPER)(cfg, is_train)
    policy = cfg.DATASETS.BAD_INPUT_POLICY if is_train else "fail"
    return BadInputPolicyMapper(mapper, policy)


_SKIPPED_INPUTS: list = []  # one shared counter per policy wrapper built in this process


def bad_input_skip_count() -> int:
    """Training inputs skipped so far by the ``skip`` policy (all wrappers, DataLoader workers included)."""
    return sum(counter.value for counter in _SKIPPED_INPUTS)


class BadInputPolicyMapper:
    """Apply the bad-input policy around a mapper.

    ``fail``: a bad file raises :class:`DeepcensInputError` (detectron2's image-size mismatch
    error becomes one too, naming the file). ``skip``: the error is logged as a warning,
    counted in a counter shared with DataLoader workers, and ``None`` is returned, which
    makes detectron2's ``MapDataset`` draw another image.
    """

    def __init__(self, mapper, policy: str):
        check_bad_input_policy(policy)
        self.mapper = mapper
        self.policy = policy
        self.skipped = multiprocessing.Value("i", 0)
        _SKIPPED_INPUTS.append(self.skipped)

    def __getattr__(self, name: str):  # behave like the wrapped mapper (is_train, augmentations, ...)
        if name == "mapper":
            raise AttributeError(name)
        return getattr(self.mapper, name)

    def __call__(self, dataset_dict: dict):
        try:
            try:
                return self.mapper(dataset_dict)
            except utils.SizeMismatchError as error:
                raise DeepcensInputError(dataset_dict.get("file_name"), str(error).splitlines()[0]) from None
        except DeepcensInputError as error:
            if self.policy == "fail":
                raise
            with self.skipped.get_lock():
                self.skipped.value += 1
            logger.warning(f"Skipping bad training input: {error}")
            return None


def build_instance_augmentations(cfg: CfgNode, is_train: bool) -> list[T.Augmentation]:
    """Resize (exact, as DeepCeNS' 1024x1024, or shortest edge) plus random flips in training."""
    if len(cfg.INPUT.RESIZE_EXACT):
        height, width = cfg.INPUT.RESIZE_EXACT
        augmentations: list[T.Augmentation] = [T.Resize((int(height), int(width)))]
    else:
        augmentations = utils.build_augmentation(cfg, is_train)[:1]
    if is_train and cfg.INPUT.RANDOM_FLIP != "none":
        augmentations.append(T.RandomFlip(horizontal=True, vertical=False))
    if is_train and cfg.INPUT.RANDOM_FLIP_VERTICAL:
        augmentations.append(T.RandomFlip(horizontal=False, vertical=True))
    return augmentations


@MAPPER_REGISTRY.register()
class InstanceDatasetMapper(DatasetMapper):
    """detectron2's ``DatasetMapper`` with microscopy pixel IO.

    Images of any bit depth and 1-4 channels are read through :mod:`deepcens.data.io` and
    turned into 0..255 float RGB (``cfg.INPUT.INTENSITY_MODE``), so 16-bit TIFFs and
    grayscale images work with detectron2's pixel mean/std convention.
    """

    def __init__(self, cfg: CfgNode, is_train: bool = True):
        super().__init__(cfg, is_train=is_train, augmentations=build_instance_augmentations(cfg, is_train))
        self.intensity_mode = cfg.INPUT.INTENSITY_MODE
        self.intensity_percentiles = tuple(cfg.INPUT.INTENSITY_PERCENTILES)
        self.use_instance_mask = cfg.MODEL.MASK_ON
        self.recompute_boxes = cfg.MODEL.MASK_ON

    def load_image(self, dataset_dict: dict) -> np.ndarray:
        """(H, W, 3) float32 RGB on a 0..255 scale."""
        image = read_record_image(dataset_dict)
        image = to_float_rgb(image, self.intensity_mode, self.intensity_percentiles)
        utils.check_image_size(dataset_dict, image)
        return image

    def __call__(self, dataset_dict: dict) -> dict:
        dataset_dict = copy.deepcopy(dataset_dict)
        image = self.load_image(dataset_dict)
        aug_input = T.AugInput(image)
        transforms = self.augmentations(aug_input)
        image = aug_input.image
        if self.image_format == "BGR":
            image = image[:, :, ::-1]
        image_shape = image.shape[:2]
        dataset_dict["image"] = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
        if not self.is_train:
            dataset_dict.pop("annotations", None)
            return dataset_dict
        if "annotations" in dataset_dict:
            self._transform_annotations(dataset_dict, transforms, image_shape)
        return dataset_dict
