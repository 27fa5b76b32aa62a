"""Resumable, verified downloads and safe unpacking (used by :mod:`deepcens.data.prepare`).

* :func:`download` fetches a URL into ``<dest>.part`` and renames it to ``dest`` when complete.
  An interrupted download leaves the ``.part`` file; the next call asks the server for the
  rest (HTTP ``Range``) and appends, or starts over when the server ignores the range. The
  size the server announces (``Content-Length`` / ``Content-Range``) is checked, and a
  SHA-256 given by the publisher is compared; the SHA-256 of what was fetched is returned.
* :func:`verify_archive` reads a zip (CRC of every member) or tar archive to its end.
* :func:`unpack_archive` extracts into a new folder, refusing members that would land outside it.
"""
from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import tarfile
import urllib.error
import urllib.request
import zipfile
import zlib
from dataclasses import dataclass

from deepcens.errors import DeepcensInputError

CHUNK = 1 << 20
TIMEOUT_S = 60


@dataclass
class Fetched:
    """What :func:`download` got: the file, its size, its SHA-256 and the size the server announced."""

    path: str
    size: int
    sha256: str
    announced_size: int | None
    resumed_from: int


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def _progress(total: int | None, initial: int, label: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit="B", unit_scale=True, unit_divisor=1024, desc=label,
                disable=not enabled, leave=False, dynamic_ncols=True)


def _announced_total(response, start: int) -> int | None:
    """Full size of the resource from a 200 (``Content-Length``) or 206 (``Content-Range``) reply."""
    if getattr(response, "status", 200) == 206:
        content_range = response.headers.get("Content-Range", "")
        total = content_range.rpartition("/")[2]
        return int(total) if total.isdigit() else None
    length = response.headers.get("Content-Length")
    return int(length) if length and length.isdigit() else None


def download(url: str, dest: str, sha256: str | None = None, progress: bool = True) -> Fetched:
    """Fetch ``url`` into ``dest`` (resuming ``dest + ".part"``); see the module docstring.

    Raises :class:`DeepcensInputError` naming the URL when the transfer breaks off (the
    ``.part`` file stays for the next call), when the size differs from the announced one or
    when the SHA-256 differs from ``sha256`` (then the file is removed).
    """
    part = dest + ".part"
    os.makedirs(os.path.dirname(os.path.abspath(dest)), exist_ok=True)
    start = os.path.getsize(part) if os.path.isfile(part) else 0
    request = urllib.request.Request(url, headers={"User-Agent": "deepcens-prepare-data"})
    if start:
        request.add_header("Range", f"bytes={start}-")
    try:
        response = urllib.request.urlopen(request, timeout=TIMEOUT_S)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and start:  # the range starts at the end: the partial file is complete
            announced = exc.headers.get("Content-Range", "").rpartition("/")[2]
            total = int(announced) if announced.isdigit() else None
            _check_same_size(url, part, total, start)
            return _finish(url, part, dest, sha256, total, start)
        raise DeepcensInputError(url, f"download failed: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise DeepcensInputError(url, f"download failed: {getattr(exc, 'reason', exc)}") from None
    with response:
        if start and getattr(response, "status", 200) != 206:
            start = 0  # the server sent the whole file again
        total = _announced_total(response, start)
        _check_same_size(url, part, total, start)
        mode = "ab" if start else "wb"
        received = start
        bar = _progress(total, start, os.path.basename(dest), progress)
        try:
            with open(part, mode) as handle:
                while True:
                    try:
                        block = response.read(CHUNK)
                    except (http.client.IncompleteRead, ConnectionError, TimeoutError, OSError) as exc:
                        handle.flush()
                        raise DeepcensInputError(
                            url, f"download interrupted after {received} of {total or '?'} bytes "
                            f"({type(exc).__name__}); run the same command again to resume") from None
                    if not block:
                        break
                    handle.write(block)
                    received += len(block)
                    bar.update(len(block))
        finally:
            bar.close()
    if total is not None and received < total:
        raise DeepcensInputError(url, f"download interrupted after {received} of {total} bytes; "
                                      "run the same command again to resume")
    return _finish(url, part, dest, sha256, total, start)


def _check_same_size(url: str, part: str, total: int | None, start: int) -> None:
    """Remember the announced size beside the partial file; a resumed transfer whose server
    announces another size is refused (the file changed, or the server is inconsistent)."""
    sidecar = part + ".size"
    if start and os.path.isfile(sidecar):
        with open(sidecar, encoding="utf-8") as handle:
            first = handle.read().strip()
        if total is not None and first.isdigit() and int(first) != total:
            _remove(part, sidecar)
            raise DeepcensInputError(url, f"size mismatch: the server first announced {first} bytes, now {total} "
                                          "(partial download removed; run again to start over)")
    if total is not None:
        with open(sidecar, "w", encoding="utf-8") as handle:
            handle.write(str(total))


def _remove(*paths: str) -> None:
    for path in paths:
        if os.path.isfile(path):
            os.remove(path)


def _finish(url: str, part: str, dest: str, sha256: str | None, total: int | None, resumed_from: int) -> Fetched:
    size = os.path.getsize(part)
    if total is not None and size != total:
        _remove(part, part + ".size")
        raise DeepcensInputError(url, f"size mismatch: got {size} bytes, the server announced {total} (partial file removed)")
    digest = file_sha256(part)
    if sha256 and digest != sha256.lower():
        _remove(part, part + ".size")
        raise DeepcensInputError(url, f"SHA-256 mismatch: got {digest}, the publisher gives {sha256} (file removed)")
    os.replace(part, dest)
    _remove(part + ".size")
    return Fetched(dest, size, digest, total, resumed_from)


def archive_kind(path: str) -> str:
    """``zip`` or ``tar`` by content; raises for anything else."""
    if zipfile.is_zipfile(path):
        return "zip"
    try:
        if tarfile.is_tarfile(path):
            return "tar"
    except OSError:
        pass
    raise DeepcensInputError(path, "not a zip or tar archive (damaged or wrong file)")


def verify_archive(path: str) -> int:
    """Read the whole archive (zip: CRC of every member; tar: every block); returns the member count."""
    kind = archive_kind(path)
    try:
        if kind == "zip":
            with zipfile.ZipFile(path) as archive:
                bad = archive.testzip()
                if bad is not None:
                    raise DeepcensInputError(path, f"corrupt archive: member {bad} fails its CRC check")
                return len(archive.infolist())
        with tarfile.open(path) as archive:
            count = 0
            for member in archive:
                if member.isfile():
                    reader = archive.extractfile(member)
                    while reader.read(CHUNK):
                        pass
                count += 1
            return count
    except DeepcensInputError:
        raise
    except (zipfile.BadZipFile, tarfile.TarError, zlib.error, EOFError, OSError, ValueError) as exc:
        raise DeepcensInputError(path, f"corrupt archive ({type(exc).__name__}: {exc})") from None


def _inside(folder: str, name: str) -> bool:
    target = os.path.realpath(os.path.join(folder, name))
    return target == folder or target.startswith(folder + os.sep)


def unpack_archive(path: str, folder: str) -> None:
    """Extract a verified archive into ``folder`` (created); members escaping it are refused."""
    folder = os.path.realpath(folder)
    os.makedirs(folder, exist_ok=True)
    if archive_kind(path) == "zip":
        with zipfile.ZipFile(path) as archive:
            for name in archive.namelist():
                if not _inside(folder, name):
                    raise DeepcensInputError(path, f"archive member {name!r} would be written outside the target folder")
            archive.extractall(folder)
        return
    with tarfile.open(path) as archive:
        archive.extractall(folder, filter="data")  # refuses absolute paths, '..' and links out of folder


def single_top_folder(folder: str) -> str:
    """The one sub-folder ``folder`` holds (archives that wrap their content), else ``folder``."""
    entries = [e for e in os.listdir(folder) if not e.startswith(".") and e != "__MACOSX"]
    if len(entries) == 1 and os.path.isdir(os.path.join(folder, entries[0])):
        return os.path.join(folder, entries[0])
    return folder


def remove_tree(path: str) -> None:
    shutil.rmtree(path, ignore_errors=True)
