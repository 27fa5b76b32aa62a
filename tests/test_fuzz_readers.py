"""Fuzzing the readers: whatever the bytes, only ``DeepcensInputError`` comes out (issue 7.7).

Image / label / stack readers get random bytes and mutated valid PNG, JPEG and TIFF files
(truncated, bytes overwritten, odd dtypes, NaN pixels, multi-page); the EVICAN (COCO) reader
gets a valid annotation file with one value replaced or one key deleted anywhere in it, and
random text; the CTC reader gets a valid two-frame sequence with a file deleted, damaged or
replaced, or a random track file. A successful read must satisfy the reader's contract.

``DEEPCENS_FUZZ_EXAMPLES`` scales the number of examples per test (default 60, CI-sized);
docs/reliability.md records the counts of longer runs (``--hypothesis-show-statistics``).
"""
from __future__ import annotations

import io
import json
import math
import os
import shutil
import tempfile

import cv2
import numpy as np
import tifffile
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from deepcens.data import io as pixel_io
from deepcens.errors import DeepcensInputError

EXAMPLES = int(os.environ.get("DEEPCENS_FUZZ_EXAMPLES", "60"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
def _png(array: np.ndarray) -> bytes:
    ok, data = cv2.imencode(".png", array)
    assert ok
    return data.tobytes()


def _tiff(array: np.ndarray, **kwargs) -> bytes:
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, array, **kwargs)
    return buffer.getvalue()


def _seed_files() -> list[tuple[str, bytes]]:
    rng = np.random.default_rng(0)
    gray8 = rng.integers(0, 255, (12, 10), dtype=np.uint8)
    ok, jpeg = cv2.imencode(".jpg", gray8)
    float_nan = rng.random((8, 8)).astype(np.float32)
    float_nan[2, 3] = np.nan
    return [
        (".png", _png(gray8)),
        (".png", _png(rng.integers(0, 65535, (9, 7), dtype=np.uint16))),
        (".png", _png(rng.integers(0, 255, (6, 5, 3), dtype=np.uint8))),
        (".png", _png(rng.integers(0, 255, (6, 5, 4), dtype=np.uint8))),
        (".jpg", jpeg.tobytes()),
        (".tif", _tiff(rng.integers(0, 65535, (10, 11), dtype=np.uint16))),
        (".tif", _tiff(rng.integers(0, 5, (10, 11), dtype=np.int32))),
        (".tif", _tiff(float_nan)),
        (".tif", _tiff(rng.random((3, 8, 9)).astype(np.float32))),  # stack or channel-first
        (".tif", _tiff(rng.integers(0, 255, (8, 9, 3), dtype=np.uint8), photometric="rgb")),
        (".tif", _tiff(rng.integers(0, 9, (4, 4), dtype=np.int64))),  # unsupported dtype
        (".tif", _tiff((rng.random((4, 4)) + 1j).astype(np.complex64))),
        (".tif", _tiff(rng.random((5, 5)) > 0.5)),
        (".tif", _tiff(-rng.integers(1, 5, (6, 6), dtype=np.int16))),  # negative labels
        (".tiff", _tiff(rng.integers(0, 255, (2, 3, 6, 7), dtype=np.uint8))),
    ]


SEEDS = _seed_files()


@st.composite
def damaged_files(draw) -> tuple[str, bytes]:
    """(suffix, bytes): random bytes, or a seed file truncated / overwritten / extended."""
    suffix, data = draw(st.sampled_from(SEEDS))
    suffix = draw(st.sampled_from([suffix, suffix, ".png", ".tif", ".jpg", ".bmp"]))
    kind = draw(st.sampled_from(["random", "truncate", "overwrite", "append", "intact"]))
    if kind == "random":
        return suffix, draw(st.binary(max_size=300))
    if kind == "truncate":
        return suffix, data[: draw(st.integers(0, len(data)))]
    if kind == "overwrite":
        data = bytearray(data)
        for _ in range(draw(st.integers(1, 8))):
            position = draw(st.integers(0, len(data) - 1))
            data[position] = draw(st.integers(0, 255))
        return suffix, bytes(data)
    if kind == "append":
        return suffix, data + draw(st.binary(min_size=1, max_size=64))
    return suffix, data


def _write(folder: str, suffix: str, data: bytes) -> str:
    path = os.path.join(folder, "file" + suffix)
    with open(path, "wb") as handle:
        handle.write(data)
    return path


@FUZZ
@given(damaged_files())
def test_fuzz_read_image(sample):
    with tempfile.TemporaryDirectory() as folder:
        path = _write(folder, *sample)
        try:
            image = pixel_io.read_image(path)
        except DeepcensInputError as error:
            assert error.path == path and "\n" not in str(error)
            return
        assert image.ndim == 3 and 1 <= image.shape[2] <= 4 and image.size > 0
        assert any(image.dtype == dtype for dtype in pixel_io.SUPPORTED_DTYPES)
        if image.dtype.kind == "f":
            assert np.isfinite(image).all()
        rgb = pixel_io.to_float_rgb(image)
        assert rgb.shape == image.shape[:2] + (3,) and np.isfinite(rgb).all()


@FUZZ
@given(damaged_files(), st.one_of(st.none(), st.tuples(st.integers(1, 16), st.integers(1, 16))))
def test_fuzz_read_label(sample, expected_shape):
    with tempfile.TemporaryDirectory() as folder:
        path = _write(folder, *sample)
        try:
            labels = pixel_io.read_label(path, expected_shape)
        except DeepcensInputError as error:
            assert error.path == path and "\n" not in str(error)
            return
        assert labels.ndim == 2 and labels.dtype == np.int32 and labels.min() >= 0
        if expected_shape is not None:
            assert labels.shape == tuple(expected_shape)


@FUZZ
@given(damaged_files())
def test_fuzz_read_stack(sample):
    with tempfile.TemporaryDirectory() as folder:
        path = _write(folder, *sample)
        try:
            stack = pixel_io.read_stack(path)
        except DeepcensInputError as error:
            assert error.path == path and "\n" not in str(error)
            return
        assert stack.ndim in (3, 4) and stack.size > 0


# ---------------------------------------------------------------- EVICAN (COCO json)
def _base_coco() -> dict:
    square = [2.0, 2.0, 10.0, 2.0, 10.0, 10.0, 2.0, 10.0]
    return {
        "info": {"description": "fuzz"},
        "images": [{"id": 1, "file_name": "a.png", "height": 16, "width": 16},
                   {"id": 2, "file_name": "b.png", "height": 16, "width": 16}],
        "annotations": [
            {"id": 10, "image_id": 1, "category_id": 1, "segmentation": [square], "iscrowd": 0},
            {"id": 11, "image_id": 1, "category_id": 2, "segmentation": [[4.0, 4.0, 8.0, 4.0, 8.0, 8.0]]},
            {"id": 12, "image_id": 2, "category_id": 1,
             "segmentation": {"size": [16, 16], "counts": [20, 6, 10, 6, 214]}},
        ],
        "categories": [{"id": 1, "name": "Cell"}, {"id": 2, "name": "Nucleus"}],
    }


def _paths(node, prefix=()) -> list[tuple]:
    """Every key path inside a JSON value (the root included)."""
    found = [prefix]
    if isinstance(node, dict):
        for key, value in node.items():
            found.extend(_paths(value, prefix + (key,)))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found.extend(_paths(value, prefix + (index,)))
    return found


JSON_VALUES = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-10**12, 10**12), st.floats(allow_nan=True),
              st.text(max_size=8), st.sampled_from(["a.png", "../a.png", "", "Cell", "nucleus"])),
    lambda children: st.one_of(st.lists(children, max_size=4),
                               st.dictionaries(st.sampled_from(["id", "name", "size", "counts", "x"]),
                                               children, max_size=3)),
    max_leaves=8)


@st.composite
def mutated_coco(draw) -> str:
    """JSON text: the base file with a value replaced / a key deleted, or random text."""
    if draw(st.integers(0, 9)) == 0:
        return draw(st.text(max_size=80))
    data = _base_coco()
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(_paths(data)))
        if not path:
            data = draw(JSON_VALUES)
            break
        parent = data
        for key in path[:-1]:
            parent = parent[key]
        if isinstance(parent, dict) and draw(st.booleans()):
            del parent[path[-1]]
        else:
            parent[path[-1]] = draw(JSON_VALUES)
    return json.dumps(data, allow_nan=True)


@FUZZ
@given(mutated_coco(), st.sampled_from(["fail", "skip"]), st.sampled_from(["cell", "nucleus", "cell_nucleus"]))
def test_fuzz_evican_json(text, policy, setting):
    from deepcens.data.evican import load_evican_json

    with tempfile.TemporaryDirectory() as folder:
        for name in ("a.png", "b.png"):
            cv2.imwrite(os.path.join(folder, name), np.zeros((16, 16), np.uint8))
        path = os.path.join(folder, "instances.json")
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(text)
        try:
            dicts = load_evican_json(path, folder, setting=setting, policy=policy, drop_empty=False)
        except DeepcensInputError as error:
            assert "\n" not in str(error)
            return
        for record in dicts:
            assert os.path.isfile(record["file_name"])
            for ann in record["annotations"]:
                x, y, w, h = ann["bbox"]
                assert all(math.isfinite(v) for v in (x, y, w, h)) and ann["area"] > 0
                assert 0 <= ann["category_id"] < (2 if setting == "cell_nucleus" else 1)


# ---------------------------------------------------------------- CTC sequences
def _make_ctc(root: str) -> None:
    seq = os.path.join(root, "DS", "01")
    for folder in (seq, seq + "_GT/SEG", seq + "_GT/TRA"):
        os.makedirs(folder, exist_ok=True)
    labels = np.zeros((16, 16), np.uint16)
    labels[2:7, 2:7] = 1
    labels[9:14, 8:14] = 2
    for frame in range(2):
        tifffile.imwrite(os.path.join(seq, f"t{frame:03d}.tif"), (labels * 100 + 7).astype(np.uint16))
        tifffile.imwrite(os.path.join(seq + "_GT/TRA", f"man_track{frame:03d}.tif"), labels)
    tifffile.imwrite(os.path.join(seq + "_GT/SEG", "man_seg000.tif"), labels)
    with open(os.path.join(seq + "_GT/TRA", "man_track.txt"), "w") as handle:
        handle.write("1 0 1 0\n2 0 1 0\n")


CTC_FILES = ["DS/01/t000.tif", "DS/01/t001.tif", "DS/01_GT/SEG/man_seg000.tif", "DS/01_GT/TRA/man_track000.tif",
             "DS/01_GT/TRA/man_track001.tif", "DS/01_GT/TRA/man_track.txt"]


@st.composite
def ctc_damage(draw) -> tuple[str, str, bytes | None]:
    """(kind, relative file, new bytes or None)."""
    target = draw(st.sampled_from(CTC_FILES))
    kind = draw(st.sampled_from(["delete", "truncate", "random", "track_text", "other_array"]))
    if kind == "delete":
        return kind, target, None
    if kind == "random":
        return kind, target, draw(st.binary(max_size=200))
    if kind == "track_text":
        lines = draw(st.lists(st.lists(st.integers(-2, 4), min_size=0, max_size=5), max_size=4))
        text = "\n".join(" ".join(str(v) for v in line) for line in lines)
        return kind, "DS/01_GT/TRA/man_track.txt", text.encode()
    if kind == "other_array":
        shape = draw(st.sampled_from([(16, 16), (8, 16), (2, 16, 16), (16, 16, 3)]))
        dtype = draw(st.sampled_from([np.uint16, np.uint8, np.float32, np.int32]))
        array = np.asarray(np.random.default_rng(draw(st.integers(0, 9))).integers(0, 4, shape)).astype(dtype)
        return kind, target if target.endswith(".tif") else CTC_FILES[0], _tiff(array)
    return kind, target, b""  # truncate: filled below from the real file


@FUZZ
@given(st.lists(ctc_damage(), min_size=1, max_size=2))
def test_fuzz_ctc_sequence(damages):
    from deepcens.data.ctc import load_ctc_dicts, read_ctc_image, read_ctc_labels

    root = tempfile.mkdtemp()
    try:
        _make_ctc(root)
        for kind, relative, data in damages:
            path = os.path.join(root, relative)
            if kind == "truncate" and os.path.isfile(path):
                with open(path, "rb") as handle:
                    whole = handle.read()
                data = whole[: len(whole) // 3]
            if data is None:
                if os.path.isfile(path):
                    os.unlink(path)
                continue
            with open(path, "wb") as handle:
                handle.write(data)
        try:
            dicts = load_ctc_dicts(root, "DS", None, "GT")
            for record in dicts:
                image = read_ctc_image(record)
                labels = read_ctc_labels(record)
                assert labels is None or labels.shape == image.shape[:2]
        except DeepcensInputError as error:
            assert "\n" not in str(error)
    finally:
        shutil.rmtree(root, ignore_errors=True)
