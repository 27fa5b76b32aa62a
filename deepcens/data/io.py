"""Reading microscopy images and label images (8/16-bit, float, 1-4 channels, TIFF stacks).

One place for pixel IO: every dataset, mapper and tool reads through here, so bad files give
the same clear :class:`~deepcens.errors.DeepcensInputError` everywhere.
"""
from __future__ import annotations

import json
import os
from typing import Any, Iterator

import cv2
import numpy as np
import tifffile

from deepcens.errors import DeepcensInputError

TIFF_SUFFIXES = (".tif", ".tiff")
IMAGE_SUFFIXES = TIFF_SUFFIXES + (".png", ".jpg", ".jpeg", ".bmp")
SUPPORTED_DTYPES = (np.uint8, np.uint16, np.int8, np.int16, np.int32, np.uint32, np.float32, np.float64)


TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")  # classic and BigTIFF, both byte orders
#: largest decoded image accepted; a damaged header claiming more is refused before allocating
MAX_IMAGE_BYTES = int(os.environ.get("DEEPCENS_MAX_IMAGE_BYTES", str(16 * 1024**3)))


def _is_tiff(path: str) -> bool:
    return path.lower().endswith(TIFF_SUFFIXES)


def _one_line(text: object, limit: int = 300) -> str:
    """Decoder messages (OpenCV's span several lines) squeezed into one short line."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def _has_tiff_magic(path: str) -> bool:
    with open(path, "rb") as handle:
        return handle.read(4) in TIFF_MAGIC


def _read_tiff(path: str) -> np.ndarray:
    """Decode a TIFF after checking its header: refuse sizes beyond ``MAX_IMAGE_BYTES`` and
    uncompressed pixel data longer than the file (truncated), before anything is allocated."""
    with tifffile.TiffFile(path) as tif:
        if not tif.series:
            raise ValueError("no image data in the TIFF")
        series = tif.series[0]
        shape, dtype = tuple(series.shape), series.dtype
        if dtype is None:
            raise ValueError("unsupported TIFF sample format")
        nbytes = int(np.prod(shape, dtype=np.float64) * np.dtype(dtype).itemsize)
        if nbytes > MAX_IMAGE_BYTES:
            raise DeepcensInputError(path, f"image of shape {shape} ({nbytes / 1024**3:.1f} GiB) exceeds "
                                     f"DEEPCENS_MAX_IMAGE_BYTES ({MAX_IMAGE_BYTES / 1024**3:.1f} GiB)")
        compression = getattr(tif.pages[0], "compression", None)
        if compression is not None and int(compression) == 1 and nbytes > os.path.getsize(path):
            raise DeepcensInputError(path, f"truncated TIFF: header says {nbytes} bytes of pixels, "
                                     f"file holds {os.path.getsize(path)}")
        return tif.asarray()


def _read_raw(path: str) -> tuple[np.ndarray, bool]:
    """Decode a file into its native array (no conversion); also says whether it was a TIFF.

    The decoder follows the file's content (TIFF magic bytes), not its suffix, so a TIFF saved
    as ``.png`` or a PNG named ``.tif`` still reads, and the TIFF layout rules (stacks,
    channel-first) apply to what the file really is.
    """
    if not os.path.isfile(path):
        raise DeepcensInputError(path, "file not found")
    if os.path.getsize(path) == 0:
        raise DeepcensInputError(path, "empty file")
    try:
        is_tiff = _has_tiff_magic(path)
    except OSError as exc:
        raise DeepcensInputError(path, f"cannot open file ({_one_line(exc)})") from None
    try:
        if is_tiff:
            array = _read_tiff(path)
        else:
            array = cv2.imread(path, cv2.IMREAD_UNCHANGED)
            if array is None:
                kind = "TIFF" if _is_tiff(path) else "image"
                raise ValueError(f"not a readable {kind} (unknown format or damaged data)")
            if array.ndim == 3:  # OpenCV gives BGR(A); the rest of the project uses RGB(A)
                code = cv2.COLOR_BGRA2RGBA if array.shape[2] == 4 else cv2.COLOR_BGR2RGB
                array = cv2.cvtColor(array, code)
    except DeepcensInputError:
        raise
    except Exception as exc:  # decoders raise many types for broken files (MemoryError included)
        raise DeepcensInputError(path, f"cannot decode image ({type(exc).__name__}: {_one_line(exc)})") from None
    array = np.asarray(array)
    if array.size == 0:
        raise DeepcensInputError(path, "image has no pixels")
    if array.dtype == np.bool_:
        array = array.astype(np.uint8)
    if not any(array.dtype == d for d in SUPPORTED_DTYPES):
        raise DeepcensInputError(path, f"unsupported pixel type {array.dtype}")
    return array, is_tiff


def read_stack(path: str | os.PathLike) -> np.ndarray:
    """Read a 2D image or a multi-page TIFF as ``(Z, H, W[, C])`` (Z = 1 for a plain image)."""
    path = os.fspath(path)
    array, is_tiff = _read_raw(path)
    if array.ndim == 2 or (array.ndim == 3 and array.shape[-1] <= 4 and not is_tiff):
        return array[None]
    if array.ndim == 3 and array.shape[-1] <= 4 and array.shape[0] > 4:
        return array[None]  # a single multi-channel (H, W, C) TIFF
    if array.ndim in (3, 4):
        return array
    raise DeepcensInputError(path, f"unsupported image shape {array.shape}")


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read one 2D image as ``(H, W, C)`` with C in 1..4, in its native dtype.

    Float images must be finite. Multi-page files are refused here (use :func:`read_stack`).
    """
    path = os.fspath(path)
    array, is_tiff = _read_raw(path)
    if array.ndim == 3 and array.shape[0] <= 4 and array.shape[-1] > 4 and is_tiff:
        array = np.moveaxis(array, 0, -1)  # channel-first TIFF (C, H, W)
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[2] > 4:
        raise DeepcensInputError(path, f"expected a 2D image with 1-4 channels, got shape {array.shape}")
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise DeepcensInputError(path, "image contains NaN or infinite pixels")
    return array


def read_label(path: str | os.PathLike, expected_shape: tuple[int, ...] | None = None, *,
               volume: bool = False) -> np.ndarray:
    """Read an instance label image (0 = background, k > 0 = object k) as ``int32`` (H, W).

    ``expected_shape`` is checked so that a label that does not belong to its image is
    reported instead of silently mis-scored. ``volume=True`` also accepts a 3D label stack
    (Z, H, W), as CTC 3D sequences store them.
    """
    path = os.fspath(path)
    array, is_tiff = _read_raw(path)
    if array.ndim == 3 and array.shape[-1] in (3, 4) and not is_tiff:
        array = array[..., 0]  # label PNGs saved as RGB: all channels equal
    array = np.squeeze(array)
    if array.ndim != 2 and not (volume and array.ndim == 3):
        raise DeepcensInputError(path, f"expected a {'2D or 3D' if volume else '2D'} label image, got shape {array.shape}")
    if array.dtype.kind == "f":
        if not np.isfinite(array).all() or not np.all(array == np.round(array)):
            raise DeepcensInputError(path, "label image has non-integer values")
    if array.min() < 0:
        raise DeepcensInputError(path, "label image has negative labels")
    if expected_shape is not None and tuple(array.shape) != tuple(expected_shape):
        raise DeepcensInputError(
            path, f"label size {'x'.join(map(str, array.shape))} differs from image size "
            f"{'x'.join(map(str, expected_shape))}")
    return array.astype(np.int32)


def to_float_rgb(image: np.ndarray, mode: str = "dtype", percentiles: tuple[float, float] = (1.0, 99.8)) -> np.ndarray:
    """Convert an (H, W, C) image of any dtype into float32 RGB on a 0..255 scale.

    Grayscale is repeated to three channels and alpha dropped, so 8-bit images keep their
    values and models configured with 0..255 pixel statistics (detectron2's convention) see
    the same range for 16-bit and float data.

    mode: ``"dtype"`` scales by the dtype's range (uint16 -> /257), ``"minmax"`` stretches
    each image to 0..255, ``"percentile"`` stretches between the given percentiles.
    """
    if image.ndim == 2:
        image = image[:, :, None]
    channels = image.shape[2]
    if channels == 4:
        image = image[:, :, :3]
    elif channels == 2:
        image = image[:, :, :1]
    data = image.astype(np.float32)
    if mode == "dtype":
        if image.dtype == np.uint8:
            pass
        elif image.dtype.kind in "ui":
            data = data * (255.0 / float(np.iinfo(image.dtype).max))
        else:  # float: assume 0..1 if it looks like it, else min-max
            low, high = float(data.min()), float(data.max())
            if low >= 0.0 and high <= 1.0:
                data = data * 255.0
            else:
                data = (data - low) * (255.0 / max(high - low, 1e-6))
    elif mode in ("minmax", "percentile"):
        if mode == "minmax":
            low, high = float(data.min()), float(data.max())
        else:
            low, high = (float(v) for v in np.percentile(data, percentiles))
        data = np.clip((data - low) * (255.0 / max(high - low, 1e-6)), 0.0, 255.0)
    else:
        raise ValueError(f"unknown intensity mode {mode!r}; use dtype, minmax or percentile")
    if data.shape[2] == 1:
        data = np.repeat(data, 3, axis=2)
    return np.ascontiguousarray(data)


def read_json(path: str | os.PathLike) -> Any:
    """A JSON file's content; a missing or unreadable file is a one-line ``DeepcensInputError``."""
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except FileNotFoundError:
        raise DeepcensInputError(path, "file not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DeepcensInputError(path, _one_line(f"cannot read json ({exc})")) from None


def iter_image_files(folder: str | os.PathLike) -> Iterator[str]:
    """Sorted image files in a folder (by suffix)."""
    folder = os.fspath(folder)
    for name in sorted(os.listdir(folder)):
        if name.lower().endswith(IMAGE_SUFFIXES):
            yield os.path.join(folder, name)
