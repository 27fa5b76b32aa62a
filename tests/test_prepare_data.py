"""prepare_data on archives built here and served from 127.0.0.1 (no network): download,
resume after an interruption, size and integrity checks, unpack-then-rename, layouts."""
from __future__ import annotations

import argparse
import glob
import hashlib
import io
import json
import os
import re
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import cv2
import numpy as np
import pytest
import tifffile

from deepcens.data import download as dl
from deepcens.data.prepare import SOURCES, add_arguments, expand_names, prepare, run
from deepcens.errors import DeepcensInputError


def ctc_zip(name: str = "Fluo-N2DH-SIM+") -> bytes:
    """A two-frame CTC training set zipped as the challenge does (top folder = data set name)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        rng = np.random.default_rng(0)
        for frame in range(2):
            labels = np.zeros((32, 32), np.uint16)
            labels[4:12, 4:12], labels[18:28, 16:30] = 1, 2
            image = (labels > 0) * 900 + rng.integers(0, 99, labels.shape)
            for folder, array in ((f"{name}/01/t{frame:03d}.tif", image.astype(np.uint16)),
                                  (f"{name}/01_GT/SEG/man_seg{frame:03d}.tif", labels)):
                payload = io.BytesIO()
                tifffile.imwrite(payload, array)
                archive.writestr(folder, payload.getvalue())
    return buffer.getvalue()


class Server:
    """Files from memory over HTTP with Range support and scripted faults."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.faults: list[str] = []  # consumed one per GET: "cut" (half, then close), "overstate" (announce +100)
        self.ranges: list[str | None] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                data = server.files.get(self.path)
                server.ranges.append(self.headers.get("Range"))
                if data is None:
                    self.send_error(404)
                    return
                fault = server.faults.pop(0) if server.faults else ""
                match = re.match(r"bytes=(\d+)-", self.headers.get("Range") or "")
                start = int(match.group(1)) if match else 0
                if start >= len(data) and match:
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(data)}")
                    self.end_headers()
                    return
                body = data[start:]
                self.send_response(206 if match else 200)
                announced = len(data) + (100 if fault == "overstate" else 0)
                if match:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{announced}")
                self.send_header("Content-Length", str(len(body) + announced - len(data)))
                self.end_headers()
                self.wfile.write(body[: len(body) // 2] if fault == "cut" else body)
                self.wfile.flush()
                self.close_connection = True

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=10)


@pytest.fixture
def server():
    with Server() as running:
        yield running


def _leftovers(root) -> list[str]:
    return glob.glob(os.path.join(root, "**", ".*partial*"), recursive=True)


def test_ctc_set_is_downloaded_verified_and_renamed_into_place(tmp_path, server):
    data = ctc_zip()
    server.files["/Fluo-N2DH-SIM+.zip"] = data
    final = prepare(SOURCES["Fluo-N2DH-SIM+"], str(tmp_path), url=server.url("/Fluo-N2DH-SIM+.zip"), progress=False)
    assert final == os.path.join(str(tmp_path), "ctc", "Fluo-N2DH-SIM+")
    from deepcens.data.ctc import load_ctc_dicts

    dicts = load_ctc_dicts(os.path.join(str(tmp_path), "ctc"), "Fluo-N2DH-SIM+", ["01"], "GT")
    assert len(dicts) == 2
    manifest = json.loads(open(os.path.join(final, "deepcens_manifest.json")).read())
    entry = manifest["files"][0]
    assert entry["sha256"] == hashlib.sha256(data).hexdigest()
    assert entry["bytes"] == entry["announced_bytes"] == len(data)
    assert not _leftovers(tmp_path) and not os.listdir(tmp_path / "downloads")  # archive removed after unpacking


def test_interrupted_download_resumes_with_a_range_request(tmp_path, server):
    data = ctc_zip()
    server.files["/a.zip"] = data
    server.faults = ["cut"]
    with pytest.raises(DeepcensInputError, match="interrupted .* run the same command again to resume"):
        prepare(SOURCES["Fluo-N2DH-SIM+"], str(tmp_path), url=server.url("/a.zip"), progress=False)
    part = glob.glob(str(tmp_path / "downloads" / "*.part"))
    assert len(part) == 1 and 0 < os.path.getsize(part[0]) < len(data)
    assert not os.path.exists(tmp_path / "ctc" / "Fluo-N2DH-SIM+")
    first = os.path.getsize(part[0])
    final = prepare(SOURCES["Fluo-N2DH-SIM+"], str(tmp_path), url=server.url("/a.zip"), progress=False)
    assert server.ranges[-1] == f"bytes={first}-"
    entry = json.loads(open(os.path.join(final, "deepcens_manifest.json")).read())["files"][0]
    assert entry["resumed_from_byte"] == first
    assert entry["sha256"] == hashlib.sha256(data).hexdigest()


def test_size_that_disagrees_with_the_announced_one_is_refused(tmp_path, server):
    server.files["/a.zip"] = ctc_zip()
    server.faults = ["overstate"]
    with pytest.raises(DeepcensInputError, match="interrupted"):  # fewer bytes than announced
        dl.download(server.url("/a.zip"), str(tmp_path / "a.zip"), progress=False)
    with pytest.raises(DeepcensInputError, match="size mismatch: the server first announced"):
        dl.download(server.url("/a.zip"), str(tmp_path / "a.zip"), progress=False)
    assert not glob.glob(str(tmp_path / "a.zip*"))  # the inconsistent partial file is gone


def test_publisher_sha256_is_checked(tmp_path, server):
    server.files["/a.zip"] = b"not what was published"
    with pytest.raises(DeepcensInputError, match="SHA-256 mismatch"):
        dl.download(server.url("/a.zip"), str(tmp_path / "a.zip"), sha256="0" * 64, progress=False)
    assert not os.path.exists(tmp_path / "a.zip")


def test_corrupt_archive_leaves_no_folder_under_the_final_name(tmp_path, server):
    data = bytearray(ctc_zip())
    first = zipfile.ZipFile(io.BytesIO(bytes(data))).infolist()[0]
    offset = first.header_offset + 30 + len(first.filename.encode()) + 5  # inside its compressed data
    data[offset] ^= 0xFF
    server.files["/bad.zip"] = bytes(data)
    with pytest.raises(DeepcensInputError, match="corrupt archive"):
        prepare(SOURCES["Fluo-N2DH-SIM+"], str(tmp_path), url=server.url("/bad.zip"), progress=False)
    assert not os.path.exists(tmp_path / "ctc" / "Fluo-N2DH-SIM+") and not _leftovers(tmp_path)
    assert not glob.glob(str(tmp_path / "downloads" / "*.zip"))  # fetched again next time


def test_archive_with_the_wrong_layout_is_not_renamed_into_place(tmp_path):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("something/else.txt", "hello")
    (tmp_path / "x.zip").write_bytes(buffer.getvalue())
    with pytest.raises(DeepcensInputError, match="no sequence folders"):
        prepare(SOURCES["Fluo-C2DL-MSC"], str(tmp_path / "root"), archives=[str(tmp_path / "x.zip")], progress=False)
    assert not os.path.exists(tmp_path / "root" / "ctc" / "Fluo-C2DL-MSC") and not _leftovers(tmp_path)


def test_file_url_and_dsb2018_masks_become_label_images(tmp_path):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for image_id in ("abc", "def"):
            image = np.full((24, 24, 4), 40, np.uint8)
            archive.writestr(f"fixes-master/stage1_train/{image_id}/images/{image_id}.png", cv2.imencode(".png", image)[1].tobytes())
            for index, (y, x) in enumerate(((2, 2), (12, 12))):
                mask = np.zeros((24, 24), np.uint8)
                mask[y:y + 6, x:x + 6] = 255
                archive.writestr(f"fixes-master/stage1_train/{image_id}/masks/m{index}.png", cv2.imencode(".png", mask)[1].tobytes())
    (tmp_path / "dsb.zip").write_bytes(buffer.getvalue())
    final = prepare(SOURCES["DSB2018"], str(tmp_path / "root"), url=(tmp_path / "dsb.zip").as_uri(), progress=False)
    labels = tifffile.imread(os.path.join(final, "labels", "abc.tif"))
    assert labels.dtype == np.uint16 and sorted(np.unique(labels)) == [0, 1, 2] and (labels == 2).sum() == 36
    from deepcens.data.user_datasets import load_label_folder

    assert len(load_label_folder(os.path.join(final, "images"), os.path.join(final, "labels"))) == 2


def test_existing_folder_is_kept_unless_forced_and_cli_lists_and_fails_cleanly(tmp_path, capsys):
    (tmp_path / "ctc" / "Fluo-N2DH-SIM+").mkdir(parents=True)
    (tmp_path / "x.zip").write_bytes(ctc_zip())
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert run(parser.parse_args(["Fluo-N2DH-SIM+", "--root", str(tmp_path), "--archive", str(tmp_path / "x.zip")])) == 0
    assert os.listdir(tmp_path / "ctc" / "Fluo-N2DH-SIM+") == []
    assert run(parser.parse_args(["Fluo-N2DH-SIM+", "--root", str(tmp_path), "--archive", str(tmp_path / "x.zip"), "--force"])) == 0
    assert os.path.isdir(tmp_path / "ctc" / "Fluo-N2DH-SIM+" / "01_GT")
    assert run(parser.parse_args(["--list"])) == 0
    listing = capsys.readouterr().out
    assert all(name in listing for name in ("Fluo-N3DL-TRIF", "DSB2018", "NeurIPS2022-CellSeg", "EVICAN2"))
    assert run(parser.parse_args(["EVICAN2", "--root", str(tmp_path)])) == 2
    assert "--archive" in capsys.readouterr().err
    assert [s.name for s in expand_names(["ctc-2d"])][-1] == "Fluo-N2DH-SIM+" and len(expand_names(["ctc-all"])) == 20
