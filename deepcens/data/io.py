"""Reading and writing microscopy images and label images (8/16-bit, float, 1-4 channels, stacks).

One place for pixel IO: every dataset, mapper, writer and tool reads and encodes through
here, so bad files give the same clear :class:`~deepcens.errors.DeepcensInputError`
everywhere and every written image has the same encoding (cellpose's ``io.py`` is the model).

- readers: :func:`read_image`, :func:`read_stack`, :func:`read_label`, :func:`read_json`,
  :func:`tiff_page_count`, :func:`iter_image_files`;
- encoders / writers (atomic): :func:`encode_png`, :func:`encode_tiff`, :func:`write_png`,
  :func:`write_label_tiff`;
- :func:`intensity_range`: the (min, max) over the frames of a sequence or stack, which the
  dense mapper normalises by.
"""
from __future__ import annotations

import json
import os
from typing import Any, Iterable, Iterator

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
        page = tif.pages[0]
        compression = getattr(page, "compression", None)
        bits = int(getattr(page, "bitspersample", 0) or np.dtype(dtype).itemsize * 8)
        stored = int(np.ceil(np.prod(shape, dtype=np.float64) * bits / 8))  # 1-bit TIFFs pack 8 pixels a byte
        if compression is not None and int(compression) == 1 and stored > os.path.getsize(path):
            raise DeepcensInputError(path, f"truncated TIFF: header says {stored} bytes of pixels, "
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


def tiff_page_count(path: str | os.PathLike) -> int:
    """Number of 2D images in a file (1 for anything that is not a multi-image TIFF).

    The TIFF's series axes decide: ``Y``, ``X`` and sample / channel axes (``S``, ``C``) make
    one image; every other axis (time, depth, pages) counts images, so a ``YXS`` 32x32x5
    image is one image with 5 samples, not 32 images of 32x5. Files without axes metadata
    (``Q``) follow :func:`read_stack`: a trailing axis of at most 4 is channels. The content
    decides whether a file is a TIFF, not its name (a PNG named ``.tif`` is one image).
    """
    path = os.fspath(path)
    if not os.path.isfile(path) or os.path.getsize(path) == 0 or not _has_tiff_magic(path):
        return 1
    try:
        with tifffile.TiffFile(path) as handle:
            series = handle.series[0]
            axes, shape = series.axes, tuple(series.shape)
    except Exception as exc:  # tifffile raises many types for broken files
        raise DeepcensInputError(path, f"cannot decode TIFF ({type(exc).__name__}: {_one_line(exc)})") from None
    if len(shape) <= 2:
        return 1
    if "Q" not in axes:
        counted = [size for axis, size in zip(axes, shape) if axis not in "YXSC"]
        return int(np.prod(counted)) if counted else 1
    if len(shape) == 3 and (shape[-1] <= 4 < shape[0] or (axes[0] in "SC" and shape[0] <= 4)):
        return 1
    return int(shape[0])


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


def read_label(path: str | os.PathLike, expected_shape: tuple[int, int] | None = None) -> np.ndarray:
    """Read an instance label image (0 = background, k > 0 = object k) as ``int32`` (H, W).

    ``expected_shape`` (H, W) is checked so that a label that does not belong to its image is
    reported instead of silently mis-scored.
    """
    path = os.fspath(path)
    array, is_tiff = _read_raw(path)
    if array.ndim == 3 and array.shape[-1] in (3, 4) and not is_tiff:
        array = array[..., 0]  # label PNGs saved as RGB: all channels equal
    array = np.squeeze(array)
    if array.ndim != 2:
        raise DeepcensInputError(path, f"expected a 2D label image, got shape {array.shape}")
    if array.dtype.kind == "f":
        if not np.isfinite(array).all() or not np.all(array == np.round(array)):
            raise DeepcensInputError(path, "label image has non-integer values")
    if array.min() < 0:
        raise DeepcensInputError(path, "label image has negative labels")
    if expected_shape is not None and tuple(array.shape) != tuple(expected_shape):
        raise DeepcensInputError(
            path, f"label size {array.shape[0]}x{array.shape[1]} differs from image size "
            f"{expected_shape[0]}x{expected_shape[1]}")
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


def intensity_range(images: Iterable[np.ndarray]) -> tuple[float, float]:
    """(min, max) raw intensity over the images of one sequence or stack.

    Dense methods normalise every frame of a time-lapse by the range of the whole video
    (``intensity_range`` of CTC dataset dicts), so frames stay comparable; datasets and
    ``deepcens predict`` both compute it here.
    """
    low, high = np.inf, -np.inf
    for image in images:
        low, high = min(low, float(np.min(image))), max(high, float(np.max(image)))
    return low, high


def encode_png(image: np.ndarray) -> bytes:
    """PNG bytes of an (H, W) or (H, W, 3|4) uint8/uint16 image given in RGB(A) order."""
    image = np.ascontiguousarray(image)
    if image.ndim == 3 and image.shape[2] in (3, 4):
        image = cv2.cvtColor(image, cv2.COLOR_RGBA2BGRA if image.shape[2] == 4 else cv2.COLOR_RGB2BGR)
    ok, buffer = cv2.imencode(".png", image)
    if not ok:
        raise ValueError(f"cannot encode an image of shape {image.shape} and type {image.dtype} as PNG")
    return buffer.tobytes()


def encode_tiff(image: np.ndarray, photometric: str = "minisblack") -> bytes:
    """Uncompressed TIFF bytes, reproducible (no date or software tag): byte-identical for equal input."""
    import io as _io

    buffer = _io.BytesIO()
    tifffile.imwrite(buffer, np.ascontiguousarray(image), photometric=photometric, metadata=None,
                     software=False, datetime=None)
    return buffer.getvalue()


def write_png(path: str | os.PathLike, image: np.ndarray) -> str:
    """Write an RGB(A) or gray image as PNG, atomically; returns the path."""
    from deepcens.utils.atomic import atomic_save_bytes

    atomic_save_bytes(path, encode_png(image))
    return os.fspath(path)


def write_label_tiff(path: str | os.PathLike, labels: np.ndarray) -> str:
    """Write a label image (2D, or a (Z, H, W) stack) as uncompressed uint16 TIFF, atomically."""
    from deepcens.utils.atomic import atomic_save_bytes

    if labels.size and int(labels.max()) > np.iinfo(np.uint16).max:
        raise DeepcensInputError(path, f"{int(labels.max())} labels do not fit a uint16 label image")
    atomic_save_bytes(path, encode_tiff(labels.astype(np.uint16)))
    return os.fspath(path)
