"""Multi-modality cell images in the NeurIPS 2022 Cell Segmentation layout, for dense methods.

Layout: ``<root>/images/<stem>.<png|tif|...>`` (brightfield, fluorescence, phase contrast,
DIC; 1 or 3 channels, any dtype) and ``<root>/labels/`` instance label images paired with
them by the same rules as the user's label folders (``DATASETS.FOLDERS``,
:func:`deepcens.data.user_datasets.pair_label_folder`): ``<stem>_label.tiff`` in the
challenge layout, ``<stem>.tif`` in the DSB 2018 layout, and the other label suffixes there;
pairs that do not match follow ``DATASETS.BAD_INPUT_POLICY``.

:func:`register_cellseg_folder` registers ``<prefix>_all``, a held-back split
``<prefix>_train`` / ``<prefix>_val`` (sorted stems, shuffled with a seed) and the two halves
of the training part ``<prefix>_train_weights`` / ``<prefix>_train_arch`` that the DiNTS
search feeds to its two optimisers. :func:`register_cellseg_from_cfg` does it for every
``DATASETS.CELLSEG.FOLDERS`` ``[prefix, folder]`` pair.

Pre-processing follows the 2D DiNTS paper (Sec. 2.1) and the challenge baseline it starts
from: 1-channel images are repeated to 3 channels (alpha dropped), each channel is stretched
between its 1st and 99th percentile of non-zero pixels to 0..255 (channels without
contrast are left as they are), then the image is scaled by its maximum to [0, 1]
(:func:`normalize_cellseg`, used by :class:`CellSegMapper`). Training targets are the
baseline's three classes background 0 / interior 1 / boundary 2 (``"interior_boundary"`` in
``TARGET_REGISTRY``, :func:`interior_boundary_target`).
"""
from __future__ import annotations

import os
import random
from typing import Callable

import numpy as np
from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog, MetadataCatalog
from skimage import morphology, segmentation

from deepcens.data.dense_mapper import DenseTargetMapper
from deepcens.data.io import read_image, read_label
from deepcens.data.mappers import MAPPER_REGISTRY, read_record_image
from deepcens.data.targets import TARGET_REGISTRY, _as_labels
from deepcens.data.user_datasets import pair_label_folder
from deepcens.errors import DeepcensInputError

SPLITS = ("all", "train", "val", "train_weights", "train_arch")
INTERIOR, BOUNDARY = 1, 2


# ---- records ---------------------------------------------------------------------------------
def _label_shape(label: str) -> tuple[int, int]:
    """(height, width) of a label image; TIFFs from their header, without decoding pixels."""
    if label.lower().endswith((".tif", ".tiff")):
        import tifffile

        try:
            with tifffile.TiffFile(label) as handle:
                shape = handle.pages[0].shape
        except Exception as exc:  # noqa: BLE001  (any decoder failure is bad input)
            raise DeepcensInputError(label, f"cannot read TIFF header ({exc})") from None
    else:
        shape = read_label(label).shape
    return int(shape[0]), int(shape[1])


def scan_cellseg_folder(root: str, policy: str = "fail") -> list[dict]:
    """Dataset dicts (``file_name``, ``label_file_name``, ``height``, ``width``, ``image_id`` =
    the image stem) of every image under ``root/images`` paired with a label image under
    ``root/labels`` (pairing rules and ``policy`` of :func:`pair_label_folder`), sorted by stem."""
    images_dir, labels_dir = os.path.join(root, "images"), os.path.join(root, "labels")
    for folder in (images_dir, labels_dir):
        if not os.path.isdir(folder):
            raise DeepcensInputError(folder, "folder not found (expected images/ and labels/ of the cell "
                                             "segmentation layout)")
    records = []
    for image, label in pair_label_folder(images_dir, labels_dir, policy):
        height, width = _label_shape(label)
        records.append({"file_name": image, "label_file_name": label,
                        "image_id": os.path.splitext(os.path.basename(image))[0], "height": height, "width": width})
    if not records:
        raise DeepcensInputError(images_dir, "no labelled images")
    return sorted(records, key=lambda r: r["image_id"])


def split_records(records: list[dict], split: str, val_fraction: float, seed: int) -> list[dict]:
    """The ``split`` part of ``records``: a seeded shuffle of the sorted stems; the last
    ``round(val_fraction * n)`` (at least 1 when ``val_fraction`` > 0 and n > 1) are ``val``;
    ``train_weights`` / ``train_arch`` are the two halves of ``train`` (even / odd positions)."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; use one of {SPLITS}")
    if split == "all":
        return list(records)
    order = sorted(records, key=lambda r: r["image_id"])
    random.Random(seed).shuffle(order)
    num_val = int(round(val_fraction * len(order)))
    if val_fraction > 0 and len(order) > 1:
        num_val = min(max(num_val, 1), len(order) - 1)
    train, val = order[:len(order) - num_val], order[len(order) - num_val:]
    if split == "val":
        return val
    if split == "train":
        return train
    half = train[0::2] if split == "train_weights" else train[1::2]
    return half or train  # a single training image feeds both optimisers


def register_cellseg_folder(prefix: str, root: str, val_fraction: float = 0.2, seed: int = 0,
                            policy: str = "fail") -> list[str]:
    """Register ``<prefix>_<split>`` for every split of the folder (lazily: read on first use);
    ``policy`` (``fail`` | ``skip``) handles images and labels that do not pair."""
    names = []
    for split in SPLITS:
        name = f"{prefix}_{split}"

        def load(split=split, name=name) -> list[dict]:
            records = split_records(scan_cellseg_folder(root, policy), split, val_fraction, seed)
            return [dict(r, dataset_name=name) for r in records]

        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)
        DatasetCatalog.register(name, load)
        MetadataCatalog.get(name).set(thing_classes=["cell"], cellseg_root=root, evaluator_type="cell")
        names.append(name)
    return names


def parse_folder_entries(entries) -> list[tuple[str, str]]:
    """``[["neurips_cellseg", "datasets/neurips2022_cellseg"], ...]`` -> ``[(prefix, folder), ...]``."""
    parsed = []
    for entry in entries:
        if isinstance(entry, str) or len(entry) != 2 or not all(isinstance(v, str) and v for v in entry):
            raise ValueError(f"DATASETS.CELLSEG.FOLDERS entry {entry!r} is not a [prefix, folder] pair")
        parsed.append((entry[0], entry[1]))
    return parsed


def register_cellseg_from_cfg(cfg: CfgNode) -> list[str]:
    """Register every ``DATASETS.CELLSEG.FOLDERS`` entry with the config's split settings and
    ``DATASETS.BAD_INPUT_POLICY``."""
    c = cfg.DATASETS.CELLSEG
    names = []
    for prefix, folder in parse_folder_entries(c.FOLDERS):
        names += register_cellseg_folder(prefix, folder, float(c.VAL_FRACTION), int(c.SEED),
                                         cfg.DATASETS.BAD_INPUT_POLICY)
    return names


# ---- normalisation and mapper ----------------------------------------------------------------
def normalize_cellseg(image: np.ndarray, percentiles: tuple[float, float] = (1.0, 99.0)) -> np.ndarray:
    """(H, W, 3) float32 in [0, 1] from an (H, W[, C]) image of any dtype (see the module docstring)."""
    if image.ndim == 2:
        image = image[:, :, None]
    if image.shape[2] == 1:
        image = np.repeat(image, 3, axis=2)
    elif image.shape[2] == 2:
        image = np.concatenate([image, image[:, :, :1]], axis=2)
    image = image[:, :, :3].astype(np.float32)
    out = np.empty_like(image)
    for channel in range(3):
        plane = image[:, :, channel]
        nonzero = plane[plane != 0]
        if nonzero.size:
            low, high = np.percentile(nonzero, percentiles)
        else:
            low = high = 0.0
        if high - low > 1e-3:
            out[:, :, channel] = np.clip((plane - low) / (high - low), 0.0, 1.0) * 255.0
        else:
            out[:, :, channel] = plane
    peak = float(out.max())
    return out / peak if peak > 0 else out


@MAPPER_REGISTRY.register()
class CellSegMapper(DenseTargetMapper):
    """``DenseTargetMapper`` with the challenge's per-channel percentile normalisation
    (``INPUT.INTENSITY_PERCENTILES``) and 3 input channels; crops, flips and targets as the parent."""

    def load_image(self, dataset_dict: dict) -> np.ndarray:
        raw = read_record_image(dataset_dict)
        image = normalize_cellseg(raw, tuple(self.intensity_percentiles))
        if image.shape[2] != self.channels:
            raise DeepcensInputError(dataset_dict.get("file_name"),
                                     f"CellSegMapper makes 3-channel images; MODEL.DENSE.INPUT_CHANNELS is {self.channels}")
        self.check_size(dataset_dict, image, "its label image")
        return image


# ---- targets ---------------------------------------------------------------------------------
def interior_boundary_target(labels: np.ndarray, boundary_radius: int = 1, min_interior_size: int = 16) -> np.ndarray:
    """uint8 target: 0 background, 1 interior, 2 boundary, from an instance label image.

    Boundary = inner boundary pixels of every object (touching objects included), dilated
    by a disk of ``boundary_radius``; interior = object pixels outside it, with interior
    fragments below ``min_interior_size`` pixels dropped to background (the challenge
    baseline's target).
    """
    labels = _as_labels(labels)
    if labels.ndim != 2:
        raise ValueError(f"interior_boundary_target takes a 2D label image, got shape {labels.shape}")
    boundary = segmentation.find_boundaries(labels, mode="inner")
    if boundary_radius > 0:
        boundary = morphology.binary_dilation(boundary, morphology.disk(boundary_radius))
    interior = (labels > 0) & ~boundary
    if min_interior_size > 1:
        interior = morphology.remove_small_objects(interior, min_size=min_interior_size)
    target = np.zeros(labels.shape, dtype=np.uint8)
    target[interior] = INTERIOR
    target[boundary] = BOUNDARY
    return target


@TARGET_REGISTRY.register()
def interior_boundary(cfg: CfgNode) -> Callable[..., np.ndarray]:
    """Challenge-baseline 3-class target (``MODEL.DENSE.INTERIOR_BOUNDARY.TARGET_*``)."""
    c = cfg.MODEL.DENSE.INTERIOR_BOUNDARY
    radius, min_size = int(c.TARGET_BOUNDARY_RADIUS), int(c.TARGET_MIN_INTERIOR_SIZE)

    def target(labels: np.ndarray, dilation: int | None = None) -> np.ndarray:
        return interior_boundary_target(labels, radius, min_size)

    return target


def read_cellseg_image(path: str) -> np.ndarray:
    """A cell image normalised as for training (for prediction scripts and notebooks)."""
    return normalize_cellseg(read_image(path))


DEFAULT_FOLDERS = (("neurips_cellseg", "datasets/neurips2022_cellseg"), ("dsb2018", "datasets/dsb2018"))  # tools/prepare_data.py folders
for _prefix, _folder in parse_folder_entries(DEFAULT_FOLDERS):
    register_cellseg_folder(_prefix, _folder, val_fraction=0.1, seed=0)
