"""Synthetic microscopy generator: determinism, EVICAN2 layout, CTC validity, CLI."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

from deepcens.data.io import read_image
from deepcens.data.synthetic import make_synthetic, mask_polygon

REPO = Path(__file__).resolve().parents[1]
SMALL = dict(seed=3, num_train=6, num_val=3, num_eval=4, size=64, ctc_frames=5)


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> dict:
    """One small generated set shared by the read-only checks."""
    return make_synthetic(tmp_path_factory.mktemp("synth") / "out", **SMALL)


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_gives_identical_bytes_and_other_seed_differs(tmp_path):
    args = dict(SMALL, num_train=3, num_val=2, num_eval=2, ctc_frames=3)
    make_synthetic(tmp_path / "a", **args)
    make_synthetic(tmp_path / "b", **args)
    a, b = _tree(tmp_path / "a"), _tree(tmp_path / "b")
    assert len(a) > 10 and a.keys() == b.keys()
    assert [k for k in a if a[k] != b[k]] == []
    make_synthetic(tmp_path / "c", **dict(args, seed=args["seed"] + 1))
    c = _tree(tmp_path / "c")
    assert len(a) == len(c)  # names may differ: the PNG/TIFF mix is drawn from the seed
    assert sum(a[k] != c.get(k) for k in a) > len(a) // 2
    assert not [k for k in a if k.split("/")[-1].startswith(".")]  # no atomic-write leftovers


def test_evican_layout_and_coco_content(synth):
    from pycocotools.coco import COCO

    root = Path(synth["evican"])
    stems = {"train": "instances_train2019", "val": "instances_val2019",
             "eval_easy": "instances_eval2019_easy", "eval_medium": "instances_eval2019_medium",
             "eval_difficult": "instances_eval2019_difficult"}
    folders = {"train": "train2019", "val": "val2019"}
    for split, stem in stems.items():
        path = root / "annotations" / f"{stem}.json"
        assert synth["annotations"][split] == str(path)
        raw = json.loads(path.read_text())
        assert raw["categories"][0]["id"] == 1 and raw["categories"][0]["name"] == "Cell"
        assert raw["categories"][1]["id"] == 2 and raw["categories"][1]["name"] == "Nucleus"
        coco = COCO(str(path))
        expected = SMALL["num_train"] if split == "train" else SMALL["num_val"] if split == "val" else SMALL["num_eval"]
        assert len(coco.imgs) == expected
        folder = root / folders.get(split, "eval2019")
        cats = set()
        for ann in raw["annotations"]:
            assert "bbox" not in ann and "area" not in ann
            assert isinstance(ann["segmentation"], list) and len(ann["segmentation"]) == 1
            polygon = np.asarray(ann["segmentation"][0], float)
            assert polygon.size >= 6 and polygon.size % 2 == 0
            image = coco.imgs[ann["image_id"]]
            assert polygon[0::2].min() >= 0 and polygon[0::2].max() <= image["width"]
            assert polygon[1::2].min() >= 0 and polygon[1::2].max() <= image["height"]
            assert coco.annToMask(ann).sum() > 0
            cats.add(ann["category_id"])
        assert cats == {1, 2}
        for image in raw["images"]:
            pixels = read_image(folder / image["file_name"])
            assert pixels.shape[:2] == (image["height"], image["width"]) == (SMALL["size"],) * 2
            assert pixels.std() > 0


def test_nuclei_lie_inside_cells_and_cells_do_not_overlap(synth):
    from pycocotools.coco import COCO

    coco = COCO(synth["annotations"]["train"])
    nuclei_total = 0
    for image_id in coco.imgs:
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[image_id]))
        cells = [coco.annToMask(a).astype(bool) for a in anns if a["category_id"] == 1]
        nuclei = [coco.annToMask(a).astype(bool) for a in anns if a["category_id"] == 2]
        if cells:
            assert np.sum(cells, axis=0).max() == 1  # touching allowed, overlapping not
        union = np.any(cells, axis=0) if cells else None
        for nucleus in nuclei:
            assert union is not None and (nucleus & ~union).sum() == 0
        nuclei_total += len(nuclei)
    assert nuclei_total > 0


def test_background_images_and_bit_depths(synth):
    for split in ("train", "val"):
        raw = json.loads(Path(synth["annotations"][split]).read_text())
        annotated = {a["image_id"] for a in raw["annotations"]}
        assert any(im["id"] not in annotated for im in raw["images"]), split
    dtypes = set()
    for split, paths in synth["images"].items():
        kinds = {os.path.splitext(p)[1] for p in paths}
        if len(paths) >= 2:
            assert kinds == {".png", ".tif"}, split
        for path in paths:
            pixels = read_image(path)
            dtypes.add(pixels.dtype)
            assert pixels.dtype == (np.uint8 if path.endswith(".png") else np.uint16)
    assert dtypes == {np.dtype(np.uint8), np.dtype(np.uint16)}


def test_eval_difficulty_is_ordered(tmp_path):
    out = make_synthetic(tmp_path / "d", seed=0, num_train=1, num_val=0, num_eval=6, size=96, ctc_frames=0)
    assert "ctc" not in out
    density, contrast = {}, {}
    for level in ("eval_easy", "eval_medium", "eval_difficult"):
        raw = json.loads(Path(out["annotations"][level]).read_text())
        cells = sum(a["category_id"] == 1 for a in raw["annotations"])
        density[level] = cells / len(raw["images"])
        assert all(any(a["image_id"] == im["id"] for a in raw["annotations"]) for im in raw["images"])
    assert density["eval_easy"] < density["eval_medium"] < density["eval_difficult"]


def test_mask_polygon_rasterises_back_to_the_mask():
    from pycocotools import mask as mask_util

    for size, notch in ((2, False), (3, False), (3, True), (7, True), (20, True)):
        mask = np.zeros((32, 32), bool)
        mask[5:5 + size, 9:9 + size] = True
        mask[5, 9] = not notch  # a missing corner makes the shape non-convex
        polygon = mask_polygon(mask)
        assert polygon is not None and len(polygon) >= 6
        back = mask_util.decode(mask_util.frPyObjects([polygon], 32, 32))[..., 0].astype(bool)
        assert (back == mask).all(), (size, notch)
    line = np.zeros((8, 8), bool)
    line[2, 1:6] = True
    assert mask_polygon(line) is not None  # a 1-pixel-wide line still has 4 corners


def test_ctc_sequence_is_valid_for_py_ctcmetrics(synth, tmp_path):
    from ctc_metrics.scripts.evaluate import evaluate_sequence
    from ctc_metrics.scripts.validate import validate_sequence
    from ctc_metrics.utils.filesystem import read_tracking_file

    ctc = Path(synth["ctc"])
    frames = SMALL["ctc_frames"]
    assert sorted(p.name for p in (ctc / "01").iterdir()) == [f"t{t:03d}.tif" for t in range(frames)]
    tracks = read_tracking_file(str(ctc / "01_GT" / "TRA" / "man_track.txt"))
    by_label = {int(l): (int(b), int(e), int(p)) for l, b, e, p in tracks}
    daughters = [(l, b, p) for l, (b, e, p) in by_label.items() if p]
    assert len(daughters) >= 2
    for label, begin, parent in daughters:
        assert by_label[parent][1] == begin - 1  # parent ends the frame before
        assert sum(p == parent for _, _, p in daughters) == 2
    for t in range(frames):
        raw = tifffile.imread(ctc / "01" / f"t{t:03d}.tif")
        seg = tifffile.imread(ctc / "01_GT" / "SEG" / f"man_seg{t:03d}.tif")
        tra = tifffile.imread(ctc / "01_GT" / "TRA" / f"man_track{t:03d}.tif")
        assert raw.dtype == seg.dtype == tra.dtype == np.uint16 and raw.shape == seg.shape
        alive = {l for l, (b, e, _) in by_label.items() if b <= t <= e}
        assert set(np.unique(tra)) - {0} == alive
        assert set(np.unique(seg)) - {0} == alive
    first = tifffile.imread(ctc / "01_GT" / "SEG" / "man_seg000.tif")
    last = tifffile.imread(ctc / "01_GT" / "SEG" / f"man_seg{frames - 1:03d}.tif")
    steady = [l for l, (b, e, _) in by_label.items() if b == 0 and e == frames - 1]
    shifts = [np.hypot(*(np.argwhere(first == l).mean(0) - np.argwhere(last == l).mean(0))) for l in steady]
    assert steady and np.mean(shifts) > 0.5  # cells move
    # py-ctcmetrics' own validity check, run on the GT laid out as a result folder.
    res = tmp_path / "Synthetic-Cells" / "01_RES"
    res.mkdir(parents=True)
    shutil.copy(ctc / "01_GT" / "TRA" / "man_track.txt", res / "res_track.txt")
    for t in range(frames):
        shutil.copy(ctc / "01_GT" / "TRA" / f"man_track{t:03d}.tif", res / f"mask{t:03d}.tif")
    assert validate_sequence(str(res), threads=1)["Valid"] == 1
    scores = evaluate_sequence(str(res), str(ctc / "01_GT"), metrics=["DET", "SEG", "TRA"], threads=1)
    assert scores.get("Valid", 1) == 1
    assert scores["DET"] == pytest.approx(1.0) and scores["SEG"] == pytest.approx(1.0)
    assert scores["TRA"] == pytest.approx(1.0)


def test_bad_arguments(tmp_path):
    from deepcens.errors import DeepcensInputError

    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(DeepcensInputError, match="not a folder"):
        make_synthetic(blocker)
    with pytest.raises(ValueError, match="size"):
        make_synthetic(tmp_path / "x", size=8)
    with pytest.raises(ValueError, match="ctc_frames"):
        make_synthetic(tmp_path / "x", ctc_frames=1)


def test_cli(tmp_path, capsys):
    from deepcens.cli import main

    out = tmp_path / "cli"
    assert main(["synthetic", "--out", str(out), "--seed", "1", "--images", "3", "--size", "48", "--ctc-frames", "3"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["num_images"] == {"train": 3, "val": 2, "eval_easy": 2, "eval_medium": 2, "eval_difficult": 2}
    assert (out / "evican" / "annotations" / "instances_train2019.json").is_file()
    assert (out / "ctc" / "Synthetic-Cells" / "01_GT" / "TRA" / "man_track.txt").is_file()
    assert main(["synthetic", "--out", str(out), "--ctc-frames", "1"]) == 2
    assert "--ctc-frames must be 0 or >= 2" in capsys.readouterr().err
    # Bad input: one "error: ..." line on stderr and exit status 2 (the shim run as a script).
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    completed = subprocess.run([sys.executable, str(REPO / "tools" / "make_synthetic.py"), "--out", str(blocker)],
                               capture_output=True, text=True, cwd=REPO, timeout=120,
                               env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)})
    err = completed.stderr.strip().splitlines()
    assert completed.returncode == 2 and err[-1].startswith("error: ") and "not a folder" in err[-1]
    assert "Traceback" not in completed.stderr
