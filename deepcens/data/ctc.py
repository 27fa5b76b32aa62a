"""Cell Tracking Challenge (CTC) sequences as detectron2 datasets.

Reads the official layout ``<root>/<Dataset>/<seq>/tTTT.tif`` with ``<seq>_GT/SEG``
(``man_segTTT.tif``, or ``man_seg_TTT_ZZZ.tif`` slices of 3D data), ``<seq>_GT/TRA``
(``man_trackTTT.tif`` + ``man_track.txt``) and ``<seq>_ST/SEG``. 3D data become planar
slices, as in the XB-Net paper. Images are normalised per sequence by the minimum and maximum
over the whole video (:func:`sequence_intensity_range`, computed once per process and cached).

Dataset dicts (one per frame, or per slice of a 3D frame): ``file_name`` (the tif),
``image_id``, ``height``, ``width``, ``label_file_name`` (SEG path or None),
``tra_file_name`` (TRA path or None), ``ctc_dataset``, ``sequence``, ``frame``,
``intensity_range`` (min, max), ``label_source`` ("GT" | "ST" | "none"), ``sparse_labels``,
plus ``slice`` / ``label_slice`` / ``tra_slice`` (plane index into a 3D file, else None),
``st_label_file_name`` (ST of the same frame, helps ignoring unlabelled cells of sparse GT)
and ``target_dilation`` (2 for 2D, 5 for 3D data). Read pixels with :func:`read_ctc_image`,
:func:`read_ctc_labels`; dense targets with :func:`deepcens.data.targets.dense_target_for_dict`.

The paper's six data configurations (Table 2) are registered by :func:`register_ctc_configuration`.

Why one module of this size: the sequence scan (frames, GT / ST / TRA files, 3D planes, their
checks) is cached per folder and shared by the dicts, the splits, the configurations and the
readers; pulling them apart would duplicate that scan or pass its cache between modules. File
names and result folders live in :mod:`deepcens.data.ctc_files`, pixel readers in
:mod:`deepcens.data.io`.
"""
from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import re
from typing import Iterable, Sequence

import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog

from deepcens.data.ctc_files import check_tra_frames, frame_files, match_frame
from deepcens.data.io import intensity_range, read_volume, read_volume_labels, tiff_shape
from deepcens.errors import DeepcensInputError
from deepcens.utils.atomic import atomic_save_json

logger = logging.getLogger(__name__)

LABEL_SOURCES = ("GT", "ST", "none")
CONFIGURATIONS = ("GT", "ST", "GT+ST", "allGT", "allST", "allGT+allST")
DILATION_2D, DILATION_3D = 2, 5

_SEQ_RE = re.compile(r"^\d+$")
_INT_RE = re.compile(r"^-?[0-9]+$")
_BINCOUNT_LIMIT = 1 << 20  # larger label values are compacted before counting

_REGISTERED: dict[str, tuple] = {}


# ---- layout scanning ---------------------------------------------------------------------------

def _folder_signature(folder: str) -> tuple:
    """(name, size, mtime) of every file: the cache key that changes when the data changes."""
    entries = []
    with os.scandir(folder) as it:
        for entry in it:
            if entry.is_file():
                stat = entry.stat()
                entries.append((entry.name, stat.st_size, stat.st_mtime_ns))
    return tuple(sorted(entries))


def _tif_shape(path: str) -> tuple[int, ...]:
    shape = tiff_shape(path)
    shape = tuple(s for s in shape if s != 1) or shape[-2:]
    if len(shape) not in (2, 3):
        raise DeepcensInputError(path, f"expected a 2D image or a 3D stack, got shape {shape}")
    if len(shape) == 3 and shape[-1] <= 4:
        raise DeepcensInputError(path, f"expected a grayscale image or stack, got shape {shape} (colour channels?)")
    return shape



def parse_track_file(path: str) -> np.ndarray:
    """``man_track.txt`` as an ``(n, 4)`` int array of ``L B E P`` rows, checked for sanity."""
    if not os.path.isfile(path):
        raise DeepcensInputError(path, "track file not found")
    rows = []
    try:
        with open(path, encoding="utf-8") as handle:
            lines = handle.read().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DeepcensInputError(path, f"cannot read track file ({type(exc).__name__})") from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 4 or not all(_INT_RE.match(p) for p in parts):
            raise DeepcensInputError(path, f"line {number}: expected 'L B E P' integers, got {line.strip()[:60]!r}")
        rows.append([int(p) for p in parts])
    tracks = np.asarray(rows, dtype=np.int64).reshape(-1, 4)
    labels = tracks[:, 0]
    if len(np.unique(labels)) != len(labels):
        raise DeepcensInputError(path, "track labels are not unique")
    if (labels <= 0).any() or (tracks[:, 1] < 0).any() or (tracks[:, 3] < 0).any():
        raise DeepcensInputError(path, "labels must be > 0, begin frames and parents >= 0")
    bad = tracks[tracks[:, 2] < tracks[:, 1]]
    if len(bad):
        raise DeepcensInputError(path, f"track {bad[0, 0]} ends (frame {bad[0, 2]}) before it begins ({bad[0, 1]})")
    ends = dict(zip(labels.tolist(), tracks[:, 2].tolist()))
    for label, begin, _, parent in tracks.tolist():
        if parent and parent not in ends:
            raise DeepcensInputError(path, f"track {label} has unknown parent {parent}")
        if parent and ends[parent] >= begin:
            raise DeepcensInputError(path, f"parent {parent} of track {label} ends at or after frame {begin}")
    return tracks


def _compact_ids(labels: np.ndarray) -> np.ndarray:
    """Flat int64 label ids, renumbered consecutively (0 kept) when values are huge."""
    ids = labels.ravel().astype(np.int64)
    if ids.size and ids.max() >= _BINCOUNT_LIMIT:
        values, ids = np.unique(ids, return_inverse=True)
        ids = ids + (0 if values[0] == 0 else 1)
    return ids


def _present_labels(labels: np.ndarray) -> set[int]:
    """Non-zero label values present in a label image."""
    ids = labels.ravel()
    if ids.size and int(ids.max()) >= _BINCOUNT_LIMIT:
        values = np.unique(ids)
        return set(values[values > 0].tolist())
    return set(np.flatnonzero(np.bincount(ids.astype(np.int64)))[1:].tolist())


def _uncovered_markers(seg: np.ndarray, markers: np.ndarray, min_overlap: float = 0.5) -> bool:
    """True when some marker is less than ``min_overlap`` covered by the SEG foreground."""
    ids = _compact_ids(markers)
    areas = np.bincount(ids)
    covered = np.bincount(ids, weights=(seg.ravel() > 0).astype(np.float64), minlength=len(areas))
    present = areas > 0
    present[0] = False
    return bool((covered[present] < min_overlap * areas[present]).any())


@functools.lru_cache(maxsize=64)
def _validated_tracks(tra_dir: str, num_frames: int, frame_shape: tuple, signature: tuple,
                      gt_files: tuple = ()) -> tuple:
    """Check ``man_trackTTT.tif`` against ``man_track.txt``.

    Returns (tracks, {frame: path}, {(frame, z, plane): sparse}) where the last maps every GT
    SEG plane (``gt_files``: ((frame, z), path) items) to whether some marker is unlabelled.
    """
    gt_by_frame: dict = {}
    for (frame, z), path in gt_files:
        gt_by_frame.setdefault(frame, []).append((z, path))
    sparse: dict = {}
    tracks = parse_track_file(os.path.join(tra_dir, "man_track.txt"))
    files = frame_files(tra_dir, "tra")
    check_tra_frames(tra_dir, files, num_frames)
    for frame, path in files.items():
        markers = read_volume_labels(path)
        if tuple(markers.shape) != tuple(frame_shape):
            raise DeepcensInputError(path, f"marker image shape {markers.shape} differs from image shape {frame_shape}")
        present = _present_labels(markers)
        alive = set(tracks[(tracks[:, 1] <= frame) & (tracks[:, 2] >= frame), 0].tolist())
        if present != alive:
            unlisted = sorted(present - alive)[:5]
            absent = sorted(alive - present)[:5]
            problem = []
            if unlisted:
                problem.append(f"labels {unlisted} are not alive at frame {frame} in man_track.txt")
            if absent:
                problem.append(f"tracks {absent} listed alive at frame {frame} have no marker")
            raise DeepcensInputError(path, "track file disagrees with the markers: " + "; ".join(problem))
        for z, seg_path in gt_by_frame.get(frame, ()):
            seg = read_volume_labels(seg_path)
            planes = [(z, markers[z] if z is not None else markers, seg)] if (z is not None or seg.ndim == 2) else \
                [(plane, markers[plane], seg[plane]) for plane in range(seg.shape[0])]
            for plane, marker_plane, seg_plane in planes:
                if seg_plane.shape != marker_plane.shape:
                    raise DeepcensInputError(seg_path, f"label shape {seg_plane.shape} differs from marker shape {marker_plane.shape}")
                sparse[(frame, z, plane)] = _uncovered_markers(seg_plane, marker_plane)
    return tracks, files, sparse


@functools.lru_cache(maxsize=64)
def _scan(seq_dir: str, signature: tuple) -> dict:
    """Frames, shape and annotation files of one sequence folder (validated)."""
    frames = frame_files(seq_dir, "frame")
    if not frames:
        raise DeepcensInputError(seq_dir, "no tTTT.tif frames in the sequence folder")
    count = max(frames) + 1
    missing = [t for t in range(count) if t not in frames]
    if missing:
        raise DeepcensInputError(seq_dir, f"missing frame(s) {', '.join(f't{t:03d}.tif' for t in missing[:5])}"
                                 + (" ..." if len(missing) > 5 else ""))
    shape = _tif_shape(frames[0])
    info = {"frames": frames, "shape": shape, "gt": {}, "st": {}, "tra": {}, "tracks": None}
    for kind, folder in (("gt", f"{seq_dir}_GT/SEG"), ("st", f"{seq_dir}_ST/SEG")):
        if not os.path.isdir(folder):
            continue
        files = {(t, None): p for t, p in frame_files(folder, "seg").items()}
        files.update({(t, z): p for (t, z), p in frame_files(folder, "seg_slice").items()})
        for (frame, z), path in files.items():
            if frame not in frames:
                raise DeepcensInputError(path, f"annotation of frame {frame} has no image t{frame:03d}.tif in {seq_dir}")
            if z is not None and (len(shape) != 3 or z >= shape[0]):
                raise DeepcensInputError(path, f"slice {z} does not exist in image stack of shape {shape}")
        info[kind] = files
    info["sparse"] = {}
    tra_dir = f"{seq_dir}_GT/TRA"
    if os.path.isdir(tra_dir):
        tracks, tra_files, sparse = _validated_tracks(tra_dir, count, shape, _folder_signature(tra_dir),
                                                      tuple(sorted(info["gt"].items(), key=lambda kv: str(kv[0]))))
        info["tracks"], info["tra"], info["sparse"] = tracks, tra_files, sparse
    return info


def scan_sequence(root: str, dataset: str, sequence: str) -> dict:
    """Validated content of ``<root>/<dataset>/<sequence>``: frames, shape, GT/ST SEG, TRA.

    Raises :class:`DeepcensInputError` naming what is missing or inconsistent (missing frames,
    annotations without image, TRA files that disagree with ``man_track.txt``).
    """
    dataset_dir = os.path.join(root, dataset)
    if not os.path.isdir(root):
        raise DeepcensInputError(root, "CTC root folder not found")
    if not os.path.isdir(dataset_dir):
        raise DeepcensInputError(dataset_dir, "CTC dataset folder not found")
    seq_dir = os.path.join(dataset_dir, sequence)
    if not os.path.isdir(seq_dir):
        raise DeepcensInputError(seq_dir, "CTC sequence folder not found")
    signature = (_folder_signature(seq_dir),) + tuple(
        _folder_signature(f) if os.path.isdir(f) else None
        for f in (f"{seq_dir}_GT/SEG", f"{seq_dir}_ST/SEG", f"{seq_dir}_GT/TRA"))
    return _scan(os.path.normpath(seq_dir), signature)


def list_sequences(root: str, dataset: str) -> list[str]:
    """Sequence folders (``01``, ``02``, ...) of a CTC dataset."""
    dataset_dir = os.path.join(root, dataset)
    if not os.path.isdir(dataset_dir):
        raise DeepcensInputError(dataset_dir, "CTC dataset folder not found")
    sequences = sorted(n for n in os.listdir(dataset_dir) if _SEQ_RE.match(n) and os.path.isdir(os.path.join(dataset_dir, n)))
    if not sequences:
        raise DeepcensInputError(dataset_dir, "no sequence folders (01, 02, ...) in the CTC dataset folder")
    return sequences


# ---- intensity normalisation -------------------------------------------------------------------

@functools.lru_cache(maxsize=128)
def _intensity_range(seq_dir: str, signature: tuple) -> tuple[float, float]:
    cache_dir = os.environ.get("DEEPCENS_CACHE_DIR", "")
    key = f"{seq_dir}|{hashlib.sha1(repr(signature).encode()).hexdigest()}"
    cache_file = os.path.join(cache_dir, "ctc_intensity_ranges.json") if cache_dir else ""
    cached: dict = {}
    if cache_file and os.path.isfile(cache_file):
        try:
            with open(cache_file, encoding="utf-8") as handle:
                cached = json.load(handle)
        except (OSError, ValueError):
            cached = {}
        if key in cached:
            return tuple(cached[key])
    low, high = intensity_range(read_volume(path) for path in frame_files(seq_dir, "frame").values())
    if cache_file:
        cached[key] = [low, high]
        atomic_save_json(cache_file, cached)
    return low, high


def sequence_intensity_range(seq_dir: str) -> tuple[float, float]:
    """Minimum and maximum intensity over every frame of a sequence (the paper's normalisation).

    Computed once per process for a folder content (keyed by file names, sizes and mtimes);
    with ``$DEEPCENS_CACHE_DIR`` set also kept in a small JSON file there. Never writes into
    the data folder.
    """
    seq_dir = os.path.normpath(seq_dir)
    if not os.path.isdir(seq_dir):
        raise DeepcensInputError(seq_dir, "CTC sequence folder not found")
    signature = tuple(e for e in _folder_signature(seq_dir) if match_frame(e[0], "frame"))
    return _intensity_range(seq_dir, signature)


# ---- dataset dicts -----------------------------------------------------------------------------

def load_ctc_dicts(
    root: str,
    dataset: str,
    sequences: Sequence[str] | None,
    label_source: str,
    frames: Iterable[int] | None = None,
    exclude_gt_frames: bool = False,
) -> list[dict]:
    """Dataset dicts of CTC sequences (see the module docstring for the keys).

    ``label_source``: "GT" (frames with gold-truth SEG; frames without reference are skipped),
    "ST" (frames with silver-truth SEG; ``exclude_gt_frames`` drops frames of 2D sequences that
    have GT, as the authors' 2D preparation does for GT+ST; their 3D preparation keeps them) or
    "none" (every frame, no labels: inference).
    ``sequences``: e.g. ``["01", "02"]``; None = every sequence folder present. ``frames``
    keeps only those frame indices.
    """
    if label_source not in LABEL_SOURCES:
        raise ValueError(f"label_source must be one of {LABEL_SOURCES}, got {label_source!r}")
    sequences = list(sequences) if sequences else list_sequences(root, dataset)
    keep = None if frames is None else {int(f) for f in frames}
    dicts: list[dict] = []
    for sequence in sequences:
        info = scan_sequence(root, dataset, sequence)
        seq_dir = os.path.normpath(os.path.join(root, dataset, sequence))
        shape = info["shape"]
        is_3d = len(shape) == 3
        height, width = shape[-2:]
        if label_source == "GT":
            if not os.path.isdir(f"{seq_dir}_GT/SEG"):
                raise DeepcensInputError(f"{seq_dir}_GT/SEG", "gold-truth SEG folder not found")
            labelled = info["gt"]
        elif label_source == "ST":
            if not os.path.isdir(f"{seq_dir}_ST/SEG"):
                raise DeepcensInputError(f"{seq_dir}_ST/SEG", "silver-truth SEG folder not found")
            gt_frames = {t for t, _ in info["gt"]}
            drop_gt = exclude_gt_frames and not is_3d  # the authors' 3D preparation keeps them
            labelled = {k: p for k, p in info["st"].items() if not (drop_gt and k[0] in gt_frames)}
        else:
            labelled = {(t, None): None for t in info["frames"]}
        intensity = sequence_intensity_range(seq_dir)
        entries = []
        for (frame, z), label_path in sorted(labelled.items(), key=lambda kv: (kv[0][0], -1 if kv[0][1] is None else kv[0][1])):
            if keep is not None and frame not in keep:
                continue
            if label_path is not None:
                label_shape = _tif_shape(label_path)
                expected = shape if z is None else shape[-2:]
                if tuple(label_shape) != tuple(expected):
                    raise DeepcensInputError(label_path, f"label shape {label_shape} differs from image shape {expected}")
            slices = [z] if z is not None else (list(range(shape[0])) if is_3d else [None])
            for plane in slices:
                entries.append((frame, plane, label_path, None if z is not None or label_path is None else plane))
        for frame, plane, label_path, label_slice in entries:
            tra_path = info["tra"].get(frame)
            st_path = info["st"].get((frame, None)) if label_source == "GT" else None
            sparse = False
            if label_source == "GT" and tra_path is not None:
                file_slice = None if label_slice is not None or not is_3d else plane  # per-slice SEG file
                sparse = info["sparse"][(frame, file_slice, plane)]
            dicts.append({
                "file_name": info["frames"][frame],
                "image_id": len(dicts),
                "height": int(height),
                "width": int(width),
                "label_file_name": label_path,
                "tra_file_name": tra_path,
                "st_label_file_name": st_path,
                "ctc_dataset": dataset,
                "sequence": sequence,
                "frame": int(frame),
                "slice": plane,
                "label_slice": label_slice,
                "tra_slice": plane if tra_path is not None and is_3d else None,
                "intensity_range": (float(intensity[0]), float(intensity[1])),
                "label_source": label_source,
                "sparse_labels": sparse,
                "target_dilation": DILATION_3D if is_3d else DILATION_2D,
            })
    return dicts


def split_frames(dicts: list[dict], val_fraction: float = 0.1, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """Split dicts by (sequence, frame) into train / validation (slices of a volume stay together).

    ``round(val_fraction * frames)`` frames (at least 1 when there are >= 2) are drawn with a
    seeded generator, so every process and every call gives the same split.
    """
    keys = sorted({(d["sequence"], d["frame"]) for d in dicts})
    count = int(round(val_fraction * len(keys)))
    if len(keys) >= 2:
        count = min(max(count, 1), len(keys) - 1)
    order = np.random.default_rng(seed).permutation(len(keys))
    val_keys = {keys[i] for i in order[:count]}
    train = [d for d in dicts if (d["sequence"], d["frame"]) not in val_keys]
    val = [d for d in dicts if (d["sequence"], d["frame"]) in val_keys]
    for split in (train, val):
        for index, d in enumerate(split):
            d["image_id"] = index
    return train, val


# ---- pixel readers -----------------------------------------------------------------------------

def _plane(array: np.ndarray, index: int | None, path: str) -> np.ndarray:
    if index is None:
        if array.ndim != 2:
            raise DeepcensInputError(path, f"expected a 2D image, got shape {array.shape}")
        return array
    if array.ndim != 3 or index >= array.shape[0]:
        raise DeepcensInputError(path, f"slice {index} does not exist in stack of shape {array.shape}")
    return array[index]


def read_ctc_image(dataset_dict: dict) -> np.ndarray:
    """The frame (or slice) as float32 ``(H, W)`` normalised by the sequence min/max to [0, 1]."""
    path = dataset_dict["file_name"]
    image = _plane(read_volume(path), dataset_dict.get("slice"), path).astype(np.float32)
    low, high = dataset_dict.get("intensity_range") or (float(image.min()), float(image.max()))
    return (image - np.float32(low)) / np.float32(max(high - low, 1e-6))


def _read_label_plane(path: str | None, index: int | None, shape: tuple[int, int]) -> np.ndarray | None:
    if path is None:
        return None
    labels = _plane(read_volume_labels(path), index, path)
    if tuple(labels.shape) != tuple(shape):
        raise DeepcensInputError(path, f"label size {labels.shape} differs from image size {shape}")
    return labels.astype(np.int32)


def read_ctc_labels(dataset_dict: dict) -> np.ndarray | None:
    """The SEG label image (int32 ``(H, W)``) of a CTC dict, or None for unlabelled frames."""
    shape = (dataset_dict["height"], dataset_dict["width"])
    return _read_label_plane(dataset_dict.get("label_file_name"), dataset_dict.get("label_slice"), shape)


def read_ctc_markers(dataset_dict: dict) -> np.ndarray | None:
    """The TRA marker image (int32 ``(H, W)``) of a CTC dict, or None."""
    shape = (dataset_dict["height"], dataset_dict["width"])
    return _read_label_plane(dataset_dict.get("tra_file_name"), dataset_dict.get("tra_slice"), shape)


def read_ctc_silver(dataset_dict: dict) -> np.ndarray | None:
    """The ST label image of the frame of a GT dict (int32 ``(H, W)``), or None."""
    shape = (dataset_dict["height"], dataset_dict["width"])
    return _read_label_plane(dataset_dict.get("st_label_file_name"), dataset_dict.get("slice"), shape)


# ---- registration ------------------------------------------------------------------------------

def _set_metadata(name: str, root: str, **extra) -> None:
    MetadataCatalog.get(name).set(thing_classes=["cell"], evaluator_type="cell", ctc_root=root, **extra)


def _register(name: str, key: tuple, loader, root: str, **metadata) -> None:
    if _REGISTERED.get(name) == key:
        return
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    DatasetCatalog.register(name, loader)
    _set_metadata(name, root, **metadata)
    _REGISTERED[name] = key


def register_ctc_dataset(
    name: str,
    root: str,
    dataset: str,
    sequences: Sequence[str] | None,
    label_source: str,
    frames: Iterable[int] | None = None,
    exclude_gt_frames: bool = False,
) -> str:
    """Register CTC sequences as dataset ``name`` (lazy: nothing is read until it is loaded).

    Idempotent for the same arguments; other arguments re-register the name.
    """
    if label_source not in LABEL_SOURCES:
        raise ValueError(f"label_source must be one of {LABEL_SOURCES}, got {label_source!r}")
    root = os.path.normpath(root)
    sequences = tuple(sequences) if sequences else None
    frames = tuple(int(f) for f in frames) if frames is not None else None
    key = ("dataset", root, dataset, sequences, label_source, frames, exclude_gt_frames)

    def load() -> list[dict]:
        return load_ctc_dicts(root, dataset, sequences, label_source, frames, exclude_gt_frames)

    _register(name, key, load, root, ctc_dataset=dataset, label_source=label_source)
    return name


def register_ctc_split(
    name: str,
    root: str,
    dataset: str,
    sequences: Sequence[str] | None,
    label_source: str,
    split: str,
    val_fraction: float = 0.1,
    seed: int = 0,
    exclude_gt_frames: bool = False,
) -> str:
    """Register the ``split`` ("train" | "val") part of a seeded 90/10 frame split (lazy)."""
    if split not in ("train", "val"):
        raise ValueError(f"split must be train or val, got {split!r}")
    root = os.path.normpath(root)
    sequences = tuple(sequences) if sequences else None
    key = ("split", root, dataset, sequences, label_source, split, val_fraction, seed, exclude_gt_frames)

    def load() -> list[dict]:
        dicts = load_ctc_dicts(root, dataset, sequences, label_source, None, exclude_gt_frames)
        train, val = split_frames(dicts, val_fraction, seed)
        return train if split == "train" else val

    _register(name, key, load, root, ctc_dataset=dataset, label_source=label_source)
    return name


def configuration_dataset_names(prefix: str, dataset: str, configuration: str) -> tuple[str, str]:
    """Registered (train, val) names of one dataset in one data configuration."""
    slug = configuration.lower()
    return f"{prefix}_{dataset}_{slug}_train", f"{prefix}_{dataset}_{slug}_val"


def register_ctc_configuration(
    configuration: str,
    datasets: Sequence[str],
    root: str,
    prefix: str = "ctc",
    sequences: Sequence[str] | None = None,
    val_fraction: float = 0.1,
    seed: int = 0,
) -> dict[str, list[str]]:
    """Register one of the XB-Net paper's six data configurations (Table 2).

    * GT / allGT: 90% of each dataset's GT frames train, 10% validate;
    * ST / allST: the same with ST frames;
    * GT+ST / allGT+allST: all ST frames train (2D sequences: frames that have GT excluded, as
      the authors' 2D preparation code does; 3D sequences keep them, as their 3D code), all GT
      frames validate.

    Individual configurations (GT, ST, GT+ST) train one model per dataset, the universal ones
    (all*) one model over all datasets with one loader per dataset; both use the same
    per-dataset splits. Both sequences of a dataset are combined (``sequences=None``: all
    present). Returns ``{"train": [names...], "val": [names...]}`` (one name per dataset).
    """
    if configuration not in CONFIGURATIONS:
        raise ValueError(f"configuration must be one of {CONFIGURATIONS}, got {configuration!r}")
    base = configuration.replace("all", "")
    if configuration.startswith("all") and "+" in configuration:
        base = "GT+ST"
    names: dict[str, list[str]] = {"train": [], "val": []}
    for dataset in datasets:
        train_name, val_name = configuration_dataset_names(prefix, dataset, configuration)
        if base in ("GT", "ST"):
            for split, name in (("train", train_name), ("val", val_name)):
                register_ctc_split(name, root, dataset, sequences, base, split, val_fraction, seed)
        else:
            register_ctc_dataset(train_name, root, dataset, sequences, "ST", exclude_gt_frames=True)
            register_ctc_dataset(val_name, root, dataset, sequences, "GT")
        names["train"].append(train_name)
        names["val"].append(val_name)
    return names


def register_ctc_configuration_from_cfg(cfg) -> dict[str, list[str]]:
    """Register ``cfg.DATASETS.CTC``'s data configuration (nothing when ``CONFIGURATION`` is empty).

    The registered names are ``ctc_<dataset>_<configuration>_{train,val}`` (configuration in
    lower case, e.g. ``ctc_Fluo-N2DH-SIM+_gt+st_train``); configs name them in
    ``DATASETS.TRAIN`` / ``VAL`` / ``TEST``.
    """
    c = cfg.DATASETS.CTC
    if not c.CONFIGURATION:
        return {"train": [], "val": []}
    if not c.NAMES:
        raise ValueError("DATASETS.CTC.CONFIGURATION needs the CTC data set names in DATASETS.CTC.NAMES")
    return register_ctc_configuration(c.CONFIGURATION, list(c.NAMES), c.ROOT or default_ctc_root(),
                                      sequences=list(c.SEQUENCES) or None, val_fraction=float(c.VAL_FRACTION),
                                      seed=int(c.SEED))


def default_ctc_root() -> str:
    """``$DEEPCENS_CTC_ROOT``, default ``datasets/ctc`` (relative to the working folder; filled by
    ``tools/prepare_data.py Fluo-N2DH-SIM+ ...``)."""
    return os.environ.get("DEEPCENS_CTC_ROOT", os.path.join("datasets", "ctc"))


def register_ctc_defaults(ctc_root: str | None = None, datasets_root: str | None = None) -> list[str]:
    """Register ``ctc_sim_train`` (Fluo-N2DH-SIM+ 01, frames 0-49), ``ctc_sim_val`` (50-64),
    ``ctc_gowt1_train``, ``ctc_msc_train`` (GT frames), the time splits of their sequence 01
    (``ctc_gowt1_split_train`` frames 0-29 / ``ctc_gowt1_split_val`` 30-91, ``ctc_msc_split_train``
    0-31 / ``ctc_msc_split_val`` 32-47: 18 / 12 and 11 / 7 frames with SEG) and ``synthetic_ctc`` (lazy)."""
    ctc_root = ctc_root or default_ctc_root()
    datasets_root = datasets_root or os.environ.get("DEEPCENS_DATASETS", "datasets")
    return [
        register_ctc_dataset("ctc_sim_train", ctc_root, "Fluo-N2DH-SIM+", ["01"], "GT", frames=range(0, 50)),
        register_ctc_dataset("ctc_sim_val", ctc_root, "Fluo-N2DH-SIM+", ["01"], "GT", frames=range(50, 65)),
        register_ctc_dataset("ctc_gowt1_train", ctc_root, "Fluo-N2DH-GOWT1", None, "GT"),
        register_ctc_dataset("ctc_msc_train", ctc_root, "Fluo-C2DL-MSC", None, "GT"),
        register_ctc_dataset("ctc_gowt1_split_train", ctc_root, "Fluo-N2DH-GOWT1", ["01"], "GT", frames=range(0, 30)),
        register_ctc_dataset("ctc_gowt1_split_val", ctc_root, "Fluo-N2DH-GOWT1", ["01"], "GT", frames=range(30, 92)),
        register_ctc_dataset("ctc_msc_split_train", ctc_root, "Fluo-C2DL-MSC", ["01"], "GT", frames=range(0, 32)),
        register_ctc_dataset("ctc_msc_split_val", ctc_root, "Fluo-C2DL-MSC", ["01"], "GT", frames=range(32, 48)),
        register_ctc_dataset("synthetic_ctc", os.path.join(datasets_root, "synthetic", "ctc"), "Synthetic-Cells", None, "GT"),
    ]


register_ctc_defaults()
