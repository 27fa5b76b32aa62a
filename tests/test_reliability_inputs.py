"""One test per class of bad input (issue 7.1): each gives a one-line DeepcensInputError naming the file."""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest
import tifffile

from conftest import REPO
from deepcens.data import io as pixel_io
from deepcens.errors import DeepcensInputError


def _expect(path, call, *fragments: str) -> DeepcensInputError:
    with pytest.raises(DeepcensInputError) as caught:
        call()
    message = str(caught.value)
    assert caught.value.path == os.fspath(path) and message.startswith(os.fspath(path))
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message
    return caught.value


# ---------------------------------------------------------------- pixels
def test_empty_file(tmp_path):
    path = tmp_path / "a.png"
    path.write_bytes(b"")
    _expect(path, lambda: pixel_io.read_image(path), "empty file")


def test_missing_file(tmp_path):
    path = tmp_path / "missing.tif"
    _expect(path, lambda: pixel_io.read_image(path), "not found")


def test_non_image_file(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("this is not an image\n")
    _expect(path, lambda: pixel_io.read_image(path), "cannot decode")


def test_truncated_png_and_tiff(tmp_path):
    ok, png = cv2.imencode(".png", np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8))
    path = tmp_path / "cut.png"
    path.write_bytes(png.tobytes()[: len(png) // 2])
    _expect(path, lambda: pixel_io.read_image(path), "cannot decode")
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, np.ones((64, 64), np.uint16))
    path = tmp_path / "cut.tif"
    path.write_bytes(buffer.getvalue()[:2000])
    _expect(path, lambda: pixel_io.read_image(path), "truncated TIFF")


def test_tiff_header_claiming_a_huge_image_is_refused_before_allocation(tmp_path, monkeypatch):
    monkeypatch.setattr(pixel_io, "MAX_IMAGE_BYTES", 1000)
    path = tmp_path / "big.tif"
    tifffile.imwrite(path, np.ones((40, 40), np.uint16), compression="zlib")
    _expect(path, lambda: pixel_io.read_image(path), "exceeds DEEPCENS_MAX_IMAGE_BYTES")


def test_unsupported_dtypes(tmp_path):
    for dtype in (np.int64, np.complex64):
        path = tmp_path / f"x_{np.dtype(dtype).name}.tif"
        tifffile.imwrite(path, np.ones((4, 4), dtype))
        _expect(path, lambda: pixel_io.read_image(path), "unsupported pixel type")


def test_nan_and_inf_pixels(tmp_path):
    for bad in (np.nan, np.inf):
        image = np.ones((5, 5), np.float32)
        image[1, 2] = bad
        path = tmp_path / f"f_{bad}.tif"
        tifffile.imwrite(path, image)
        _expect(path, lambda: pixel_io.read_image(path), "NaN or infinite")


def test_label_size_differs_from_image(tmp_path):
    path = tmp_path / "label.tif"
    tifffile.imwrite(path, np.zeros((10, 12), np.uint16))
    _expect(path, lambda: pixel_io.read_label(path, (10, 13)), "differs from image size")


def test_label_with_negative_or_fractional_values(tmp_path):
    path = tmp_path / "neg.tif"
    tifffile.imwrite(path, -np.ones((4, 4), np.int16))
    _expect(path, lambda: pixel_io.read_label(path), "negative")
    path = tmp_path / "frac.tif"
    tifffile.imwrite(path, np.full((4, 4), 0.5, np.float32))
    _expect(path, lambda: pixel_io.read_label(path), "non-integer")


def test_format_follows_content_not_suffix(tmp_path):
    image = np.arange(30, dtype=np.uint16).reshape(5, 6)
    path = tmp_path / "really_a_tiff.png"
    tifffile.imwrite(path, image, photometric="minisblack")
    assert np.array_equal(pixel_io.read_image(tmp_path / "really_a_tiff.png")[..., 0], image)
    ok, png = cv2.imencode(".png", image.astype(np.uint8))
    (tmp_path / "really_a_png.tif").write_bytes(png.tobytes())
    assert np.array_equal(pixel_io.read_image(tmp_path / "really_a_png.tif")[..., 0], image.astype(np.uint8))


# ---------------------------------------------------------------- COCO / EVICAN json
def _coco(tmp_path, mutate) -> str:
    cv2.imwrite(str(tmp_path / "a.png"), np.zeros((16, 16), np.uint8))
    data = {
        "images": [{"id": 1, "file_name": "a.png", "height": 16, "width": 16}],
        "annotations": [{"id": 5, "image_id": 1, "category_id": 1,
                         "segmentation": [[2.0, 2.0, 10.0, 2.0, 10.0, 10.0, 2.0, 10.0]]}],
        "categories": [{"id": 1, "name": "Cell"}, {"id": 2, "name": "Nucleus"}],
    }
    mutate(data)
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(data))
    return str(path)


@pytest.mark.parametrize("name, mutate, fragment", [
    ("missing key", lambda d: d.pop("categories"), "categories"),
    ("image misses keys", lambda d: d["images"][0].pop("height"), "misses keys"),
    ("zero-area polygon", lambda d: d["annotations"][0].update(segmentation=[[2.0, 2.0, 4.0, 4.0, 6.0, 6.0]]), ""),
    ("degenerate polygon", lambda d: d["annotations"][0].update(segmentation=[[1.0, 2.0]]), ""),
    ("missing image", lambda d: d["annotations"][0].update(image_id=99), "99"),
    ("unknown category", lambda d: d["annotations"][0].update(category_id=7), "category"),
    ("missing image file", lambda d: d["images"][0].update(file_name="gone.png"), "gone.png"),
])
def test_coco_json_problems(tmp_path, name, mutate, fragment):
    from deepcens.data.evican import load_evican_json

    path = _coco(tmp_path, mutate)
    _expect(path, lambda: load_evican_json(path, str(tmp_path), setting="cell", policy="fail"), fragment)
    if name != "missing key":  # entry-level problems: the skip policy drops the entry and goes on
        load_evican_json(path, str(tmp_path), setting="cell", policy="skip", drop_empty=False)


def test_coco_json_not_json(tmp_path):
    from deepcens.data.evican import load_evican_json

    path = tmp_path / "instances.json"
    path.write_text('{"images": [')
    _expect(path, lambda: load_evican_json(str(path), str(tmp_path)), "cannot read json")


# ---------------------------------------------------------------- CTC folders
def _ctc(root: str, frames: int = 3) -> str:
    seq = os.path.join(root, "DS", "01")
    for folder in (seq, seq + "_GT/SEG", seq + "_GT/TRA"):
        os.makedirs(folder, exist_ok=True)
    labels = np.zeros((16, 16), np.uint16)
    labels[2:7, 2:7] = 1
    for frame in range(frames):
        tifffile.imwrite(os.path.join(seq, f"t{frame:03d}.tif"), (labels * 50 + 3).astype(np.uint16))
        tifffile.imwrite(os.path.join(seq + "_GT/TRA", f"man_track{frame:03d}.tif"), labels)
    tifffile.imwrite(os.path.join(seq + "_GT/SEG", "man_seg001.tif"), labels)
    with open(os.path.join(seq + "_GT/TRA", "man_track.txt"), "w") as handle:
        handle.write(f"1 0 {frames - 1} 0\n")
    return seq


def test_ctc_missing_frame(tmp_path):
    from deepcens.data.ctc import load_ctc_dicts

    seq = _ctc(str(tmp_path))
    os.unlink(os.path.join(seq, "t001.tif"))
    with pytest.raises(DeepcensInputError, match="t001.tif") as caught:
        load_ctc_dicts(str(tmp_path), "DS", None, "GT")
    assert "\n" not in str(caught.value)


def test_ctc_track_file_disagrees_with_masks(tmp_path):
    from deepcens.data.ctc import load_ctc_dicts

    seq = _ctc(str(tmp_path))
    with open(os.path.join(seq + "_GT/TRA", "man_track.txt"), "w") as handle:
        handle.write("1 0 0 0\n")  # track 1 said to end at frame 0, but it is in frames 1 and 2
    with pytest.raises(DeepcensInputError, match="man_track") as caught:
        load_ctc_dicts(str(tmp_path), "DS", None, "GT")
    assert "\n" not in str(caught.value)


# ---------------------------------------------------------------- tools: one line, exit 2, no traceback
def test_tool_reports_bad_input_in_one_line(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("MODEL:\n  NO_SUCH_KEY: 1\n")
    result = subprocess.run([sys.executable, str(REPO / "tools" / "train_net.py"), "--config-file", str(config)],
                            cwd=REPO, capture_output=True, text=True, timeout=120,
                            env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(error_lines) == 1 and str(config) in error_lines[0]
