"""``CroppedMasks``: instance masks that cost what the objects cost, not objects x image pixels.

Every instance keeps a boolean crop of its integer box ``(x0, y0, x1, y1)`` (exclusive end)
in an image of ``image_size``. Building them from a label image, painting them into one,
encoding them as COCO RLE and decoding COCO RLE into them all take time and memory in
proportion to the objects' boxes. The full ``(N, H, W)`` stack exists only when asked for
(:attr:`CroppedMasks.tensor`, ``np.asarray``).

The class supports what detectron2's ``Instances`` needs of a field: ``len``, indexing by
int / slice / bool or index tensors and arrays (``instances[keep]``), ``cat``
(``Instances.cat``) and ``to(device)`` (the crops stay in host memory: they are read by
numpy, pycocotools and OpenCV, never by the network).
"""
from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np
import pycocotools.mask as mask_util
import torch
from scipy import ndimage


def _as_index(item, length: int) -> np.ndarray | slice:
    """A numpy index (int array or slice) for ``item`` (int, slice, bool/int tensor, array or list)."""
    if isinstance(item, (int, np.integer)):
        if not -length <= int(item) < length:
            raise IndexError(f"mask index {int(item)} out of range for {length} masks")
        return np.asarray([int(item) % length])
    if isinstance(item, slice):
        return item
    if isinstance(item, torch.Tensor):
        item = item.detach().cpu().numpy()
    index = np.asarray(item)
    if index.dtype == bool:
        if index.shape != (length,):
            raise IndexError(f"boolean mask index of shape {index.shape} for {length} masks")
        return np.flatnonzero(index)
    if index.size == 0:
        return np.zeros(0, dtype=np.int64)
    if index.dtype.kind not in "iu":
        raise IndexError(f"cannot index masks with {index.dtype} values")
    return index.reshape(-1).astype(np.int64)


class CroppedMasks:
    """Binary masks of ``N`` instances as box crops (see the module docstring).

    ``crops[i]`` is a bool array of shape ``(y1 - y0, x1 - x0)`` for ``boxes[i] = (x0, y0,
    x1, y1)``; boxes lie inside the image and may be empty (a mask without pixels).
    """

    def __init__(self, crops: Sequence[np.ndarray], boxes: np.ndarray | Sequence, image_size: tuple[int, int]):
        boxes = np.asarray(boxes, dtype=np.int64).reshape(-1, 4)
        if len(crops) != len(boxes):
            raise ValueError(f"{len(crops)} crops for {len(boxes)} boxes")
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.boxes = boxes
        self.crops = list(crops)
        for crop, (x0, y0, x1, y1) in zip(self.crops, boxes):
            if crop.dtype != bool or crop.shape != (y1 - y0, x1 - x0):
                raise ValueError(f"crop {crop.shape} {crop.dtype} does not fit box {(x0, y0, x1, y1)}")

    # ---- what Instances needs ---------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.crops)

    def __getitem__(self, item) -> "CroppedMasks":
        index = _as_index(item, len(self))
        if isinstance(index, slice):
            return CroppedMasks(self.crops[index], self.boxes[index], self.image_size)
        return CroppedMasks([self.crops[i] for i in index], self.boxes[index], self.image_size)

    def items(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(box, crop) per instance: the compact way through the masks."""
        return iter(zip(self.boxes, self.crops))

    def __iter__(self) -> Iterator[np.ndarray]:
        """Full-size ``(H, W)`` bool masks one at a time, as iterating a mask tensor gives them
        (for detectron2 code such as ``instances_to_coco_json``); prefer :meth:`items`."""
        height, width = self.image_size
        for (x0, y0, x1, y1), crop in self.items():
            mask = np.zeros((height, width), dtype=bool)
            mask[y0:y1, x0:x1] = crop
            yield mask

    @classmethod
    def cat(cls, masks_list: Sequence["CroppedMasks"]) -> "CroppedMasks":
        if not masks_list:
            raise ValueError("cannot concatenate an empty list of masks")
        size = masks_list[0].image_size
        if any(m.image_size != size for m in masks_list):
            raise ValueError("cannot concatenate masks of different image sizes")
        crops = [c for m in masks_list for c in m.crops]
        return cls(crops, np.concatenate([m.boxes for m in masks_list]), size)

    def to(self, *args, **kwargs) -> "CroppedMasks":
        """The crops stay in host memory on every device (see the module docstring)."""
        return self

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        return torch.bool

    @property
    def shape(self) -> tuple[int, int, int]:
        return (len(self), *self.image_size)

    def __repr__(self) -> str:
        return f"CroppedMasks(num_instances={len(self)}, image_size={self.image_size})"

    # ---- dense views (cost N x H x W: only where truly needed) ------------------------------
    def dense(self) -> np.ndarray:
        """The full ``(N, H, W)`` bool stack."""
        out = np.zeros(self.shape, dtype=bool)
        for index, ((x0, y0, x1, y1), crop) in enumerate(self.items()):
            out[index, y0:y1, x0:x1] = crop
        return out

    @property
    def tensor(self) -> torch.Tensor:
        """The full ``(N, H, W)`` bool tensor (as ``BitMasks.tensor``), built on each call."""
        return torch.from_numpy(self.dense())

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        dense = self.dense()
        return dense if dtype is None else dense.astype(dtype)

    # ---- measures -----------------------------------------------------------------------------
    def areas(self) -> np.ndarray:
        """Pixel count of every mask (int64)."""
        return np.asarray([int(np.count_nonzero(c)) for c in self.crops], dtype=np.int64)

    def tight_boxes(self) -> np.ndarray:
        """(N, 4) float32 XYXY boxes around each mask's pixels (zeros for an empty mask), as
        detectron2's ``BitMasks.get_bounding_boxes``."""
        out = np.zeros((len(self), 4), dtype=np.float32)
        for index, ((x0, y0, _, _), crop) in enumerate(self.items()):
            rows, cols = np.flatnonzero(crop.any(1)), np.flatnonzero(crop.any(0))
            if len(rows):
                out[index] = (x0 + cols[0], y0 + rows[0], x0 + cols[-1] + 1, y0 + rows[-1] + 1)
        return out

    # ---- construction -------------------------------------------------------------------------
    @classmethod
    def from_label_image(cls, labels: np.ndarray) -> tuple["CroppedMasks", np.ndarray]:
        """Masks of every object of an integer label image and their ids (ascending, > 0).

        One pass over the image (``ndimage.find_objects``), then work per object box.
        """
        labels = np.asarray(labels)
        if labels.ndim != 2:
            raise ValueError(f"label image must be 2D, got shape {labels.shape}")
        if labels.dtype == bool:
            labels = labels.view(np.uint8)
        if labels.dtype.kind not in "ui":
            raise ValueError(f"label image must hold integers, got {labels.dtype}")
        if labels.dtype.kind == "i" and labels.size and labels.min() < 0:
            raise ValueError("label image has negative labels")
        ids, crops, boxes = [], [], []
        for index, found in enumerate(ndimage.find_objects(labels)):
            if found is None:
                continue
            ids.append(index + 1)
            crops.append(labels[found] == index + 1)
            boxes.append((found[1].start, found[0].start, found[1].stop, found[0].stop))
        return cls(crops, np.asarray(boxes, dtype=np.int64).reshape(-1, 4), labels.shape), np.asarray(ids, np.int64)

    @classmethod
    def from_dense(cls, masks, threshold: float = 0.5) -> "CroppedMasks":
        """Crop a full ``(N, H, W)`` stack (bool, or soft masks kept where ``>= threshold``)."""
        if hasattr(masks, "tensor") and not isinstance(masks, torch.Tensor):
            masks = masks.tensor  # detectron2 BitMasks
        if isinstance(masks, torch.Tensor):
            masks = masks.detach().cpu()
            masks = masks.numpy() if masks.dtype != torch.bfloat16 else masks.float().numpy()
        masks = np.asarray(masks)
        if masks.ndim != 3:
            raise ValueError(f"expected (N, H, W) masks, got shape {masks.shape}")
        crops, boxes = [], []
        for mask in masks:
            binary = mask if mask.dtype == bool else mask >= threshold
            rows, cols = np.flatnonzero(binary.any(1)), np.flatnonzero(binary.any(0))
            if len(rows) == 0:
                crops.append(np.zeros((0, 0), dtype=bool))
                boxes.append((0, 0, 0, 0))
                continue
            y0, y1, x0, x1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
            crops.append(np.ascontiguousarray(binary[y0:y1, x0:x1]))
            boxes.append((x0, y0, x1, y1))
        return cls(crops, np.asarray(boxes, dtype=np.int64).reshape(-1, 4), masks.shape[1:])

    @classmethod
    def from_boxes(cls, boxes: np.ndarray, image_size: tuple[int, int]) -> "CroppedMasks":
        """Filled rectangles of XYXY boxes (rounded, clipped to the image): masks of box-only predictions."""
        height, width = image_size
        rounded = np.round(np.asarray(boxes, dtype=np.float64).reshape(-1, 4)).astype(np.int64)
        rounded[:, 0::2] = rounded[:, 0::2].clip(0, width)
        rounded[:, 1::2] = rounded[:, 1::2].clip(0, height)
        rounded[:, 2] = np.maximum(rounded[:, 2], rounded[:, 0])
        rounded[:, 3] = np.maximum(rounded[:, 3], rounded[:, 1])
        crops = [np.ones((y1 - y0, x1 - x0), dtype=bool) for x0, y0, x1, y1 in rounded]
        return cls(crops, rounded, image_size)

    @classmethod
    def from_rles(cls, rles: Sequence[dict], image_size: tuple[int, int]) -> "CroppedMasks":
        """Decode COCO RLEs (compressed or not, of ``image_size``) into crops, never at full size."""
        crops, boxes = [], []
        for rle in rles:
            box, crop = rle_to_crop(rle)
            if tuple(int(v) for v in rle["size"]) != tuple(image_size):
                raise ValueError(f"RLE size {tuple(rle['size'])} differs from image size {tuple(image_size)}")
            crops.append(crop)
            boxes.append(box)
        return cls(crops, np.asarray(boxes, dtype=np.int64).reshape(-1, 4), image_size)

    # ---- output -------------------------------------------------------------------------------
    def to_rles(self) -> list[dict]:
        """COCO compressed RLEs (``bytes`` counts) at image size, byte-identical to
        ``pycocotools.mask.encode`` of the full masks, computed from the crops."""
        if not len(self):
            return []
        height, width = self.image_size
        uncompressed = [{"size": [height, width], "counts": _crop_counts(crop, box, height, width)}
                        for box, crop in self.items()]
        return mask_util.frPyObjects(uncompressed, height, width)

    def paint(self, labels: np.ndarray, values: Sequence[int], order: Sequence[int] | None = None,
              overwrite: bool = False) -> np.ndarray:
        """Paint masks into ``labels`` in ``order`` (default: index order) with their ``values``.

        With ``overwrite`` later masks win; without, a mask only takes background (0) pixels, so
        earlier masks win. Returns the number of pixels each painted mask took (in ``order``).
        """
        if tuple(labels.shape) != self.image_size:
            raise ValueError(f"label image {labels.shape} differs from mask size {self.image_size}")
        order = range(len(self)) if order is None else order
        taken = np.zeros(len(order), dtype=np.int64)
        for position, (index, value) in enumerate(zip(order, values)):
            x0, y0, x1, y1 = self.boxes[index]
            region = labels[y0:y1, x0:x1]
            where = self.crops[index] if overwrite else self.crops[index] & (region == 0)
            region[where] = value
            taken[position] = np.count_nonzero(where)
        return taken


def _crop_counts(crop: np.ndarray, box: np.ndarray, height: int, width: int) -> np.ndarray:
    """Uncompressed COCO RLE counts (column-major runs, zeros first) of a crop placed at ``box``."""
    h = crop.shape[0]
    padded = np.zeros((h + 2, crop.shape[1]), dtype=np.int8)
    padded[1:-1] = crop
    step = np.diff(padded.ravel(order="F"))
    rises, falls = np.flatnonzero(step == 1) + 1, np.flatnonzero(step == -1) + 1
    if len(rises) == 0:
        return np.asarray([height * width], dtype=np.int64)
    column, row = np.divmod(rises, h + 2)
    starts = (box[0] + column) * height + box[1] + row - 1
    ends = starts + (falls - rises)
    # A run can continue into the next column only when the crop spans the image height.
    continued = starts[1:] == ends[:-1]
    if continued.any():
        starts, ends = starts[np.r_[True, ~continued]], ends[np.r_[~continued, True]]
    counts = np.empty(2 * len(starts) + 1, dtype=np.int64)
    counts[0] = starts[0]
    counts[1:-1:2] = ends - starts
    counts[2:-1:2] = starts[1:] - ends[:-1]
    counts[-1] = height * width - ends[-1]
    return counts if counts[-1] else counts[:-1]


def rle_counts(rle: dict) -> np.ndarray:
    """Uncompressed run lengths of a COCO RLE (the compressed string decoded as COCO's
    ``rleFrString`` does; pycocotools offers no Python call for it)."""
    counts = rle["counts"]
    if isinstance(counts, (list, tuple, np.ndarray)):
        return np.asarray(counts, dtype=np.int64)
    data = counts.encode("ascii") if isinstance(counts, str) else bytes(counts)
    values: list[int] = []
    position, length = 0, len(data)
    while position < length:
        value, shift, more = 0, 0, True
        while more:
            char = data[position] - 48
            value |= (char & 0x1F) << shift
            more = bool(char & 0x20)
            position += 1
            shift += 5
            if not more and char & 0x10:
                value |= -1 << shift
        if len(values) > 2:
            value += values[-2]
        values.append(value)
    return np.asarray(values, dtype=np.int64)


def rle_to_crop(rle: dict) -> tuple[tuple[int, int, int, int], np.ndarray]:
    """(box, crop) of one COCO RLE: the tight box of its pixels and the bool crop inside it."""
    height, width = (int(v) for v in rle["size"])
    counts = rle_counts(rle)
    if counts.sum() != height * width or (counts < 0).any():
        raise ValueError(f"RLE counts do not describe a {height}x{width} mask")
    ends = np.cumsum(counts)
    starts, stops = ends[0::2][: len(counts) // 2], ends[1::2]
    lengths = stops - starts
    keep = lengths > 0
    starts, lengths = starts[keep], lengths[keep]
    if len(starts) == 0:
        return (0, 0, 0, 0), np.zeros((0, 0), dtype=bool)
    # Every pixel index of every run (work in proportion to the mask's area).
    offsets = np.repeat(starts - np.r_[0, np.cumsum(lengths)[:-1]], lengths)
    pixels = offsets + np.arange(int(lengths.sum()))
    columns, rows = np.divmod(pixels, height)
    x0, x1 = int(columns.min()), int(columns.max()) + 1
    y0, y1 = int(rows.min()), int(rows.max()) + 1
    crop = np.zeros((y1 - y0, x1 - x0), dtype=bool)
    crop[rows - y0, columns - x0] = True
    return (x0, y0, x1, y1), crop
