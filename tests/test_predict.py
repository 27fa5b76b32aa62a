"""deepcens predict: inputs of every kind -> label TIFFs, CTC results, COCO json, CSV, overlays.

A tiny Mask R-CNN (ResNet-18 FPN, BN, random weights, 128-pixel test size) keeps every
prediction fast; the real data sets come from ``../shared/data``.
"""
from __future__ import annotations

import csv
import json
import os
import shutil

import cv2
import numpy as np
import pycocotools.mask as mask_util
import pytest
import tifffile
import torch
from detectron2.structures import Boxes, Instances

from deepcens.predict import collect_inputs, main
from deepcens.predict import predict as predict_with_checks
from deepcens.postprocess.tiling import merge_tiled_instances

TINY_RCNN = """
MODEL:
  META_ARCHITECTURE: "GeneralizedRCNN"
  DEVICE: "cpu"
  MASK_ON: True
  BACKBONE: {NAME: "build_resnet_fpn_backbone"}
  RESNETS: {DEPTH: 18, RES2_OUT_CHANNELS: 64, NORM: "BN", STEM_OUT_CHANNELS: 16,
            OUT_FEATURES: ["res2", "res3", "res4", "res5"]}
  FPN: {IN_FEATURES: ["res2", "res3", "res4", "res5"], OUT_CHANNELS: 32}
  ANCHOR_GENERATOR: {SIZES: [[8], [16], [32], [64], [128]]}
  RPN: {IN_FEATURES: ["p2", "p3", "p4", "p5", "p6"], PRE_NMS_TOPK_TEST: 200, POST_NMS_TOPK_TEST: 40}
  ROI_HEADS: {NAME: "StandardROIHeads", IN_FEATURES: ["p2", "p3", "p4", "p5"], NUM_CLASSES: 2,
              SCORE_THRESH_TEST: 0.0}
  ROI_BOX_HEAD: {NAME: "FastRCNNConvFCHead", NUM_FC: 1, FC_DIM: 64}
  ROI_MASK_HEAD: {NAME: "MaskRCNNConvUpsampleHead", NUM_CONV: 1, CONV_DIM: 16}
INPUT: {MIN_SIZE_TEST: 128, MAX_SIZE_TEST: 128, FORMAT: "RGB"}
TEST: {DETECTIONS_PER_IMAGE: 20}
VERSION: 2
"""


@pytest.fixture(scope="module")
def tiny_config(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("cfg") / "tiny_rcnn.yaml"
    path.write_text(TINY_RCNN)
    return str(path)


def predict(*args, **kwargs):
    """``predict`` with the tiny model's random weights allowed (these tests check the plumbing)."""
    return predict_with_checks(*args, allow_random_weights=True, **kwargs)


def load(config_file: str, *opts: str):
    from deepcens.engine.setup import load_config

    return load_config(config_file, list(opts))


def read_csv(path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def render_expected(results: list[dict], height: int, width: int, threshold: float) -> np.ndarray:
    """Label image rendered independently from COCO results: by score, first mask wins."""
    kept = sorted((r for r in results if r["score"] >= threshold), key=lambda r: -r["score"])
    labels = np.zeros((height, width), dtype=np.int64)
    next_label = 1
    for result in kept:
        rle = dict(result["segmentation"], counts=result["segmentation"]["counts"].encode())
        free = (mask_util.decode(rle) > 0) & (labels == 0)
        if free.any():
            labels[free] = next_label
            next_label += 1
    return labels


def test_real_data_shapes_dtypes_csv_and_label_round_trip(tiny_config, shared_data, tmp_path):
    """16-bit phase TIFF (1022x1024), RGBA PNG and a 16-bit CTC sequence (2 frames): one run."""
    torch.manual_seed(0)
    dsb = sorted((shared_data / "dsb2018-nuclei" / "images").iterdir())[0]
    inputs = [str(shared_data / "usiigaci-phase" / "set1" / "raw.tif"),
              str(shared_data / "usiigaci-phase" / "set2" / "raw.tif"), str(dsb),
              str(shared_data / "ctc" / "Fluo-N2DH-SIM+" / "01")]
    out = tmp_path / "out"
    threshold = 0.3
    summary = predict(load(tiny_config), inputs, str(out), batch_size=2, score_threshold=threshold,
                      coco_json=True, overlays=True, frames="0:2", progress=False)
    assert summary["images"] == 5 and summary["random_weights"]
    expected_files = {"set1_raw": (1022, 1024), "set2_raw": (1022, 1024), dsb.stem: (256, 256),
                      "01/t000": (690, 628), "01/t001": (690, 628)}
    coco = json.loads((out / "coco_results.json").read_text())
    rows = read_csv(out / "summary.csv")
    assert len(rows) == 5
    assert [r["frame"] for r in rows] == ["", "", "", "0", "1"]
    total_rendered = 0
    for image_id, (name, shape) in enumerate(expected_files.items()):
        labels = tifffile.imread(out / "labels" / f"{name}.tif")
        assert labels.dtype == np.uint16 and labels.shape == shape
        # Round trip: the TIFF holds exactly the thresholded predictions, label 1 = best score.
        expected = render_expected([r for r in coco if r["image_id"] == image_id], *shape, threshold)
        np.testing.assert_array_equal(labels.astype(np.int64), expected)
        row = rows[image_id]
        assert (int(row["height"]), int(row["width"])) == shape
        kept = [r for r in coco if r["image_id"] == image_id and r["score"] >= threshold]
        assert int(row["instances"]) == len(kept)
        assert int(row["class0_count"]) + int(row["class1_count"]) == len(kept)
        if kept:
            areas = [mask_util.area(dict(r["segmentation"], counts=r["segmentation"]["counts"].encode()))
                     for r in kept]
            assert float(row["mean_area"]) == pytest.approx(np.mean(areas), abs=0.01)
        total_rendered += labels.max()
        overlay = cv2.imread(str(out / "overlays" / f"{name}.png"))
        assert overlay is not None and overlay.shape[:2] == shape
    assert total_rendered > 0, "random weights at threshold 0.3 should still give some instances"
    assert all(r["category_id"] in (1, 2) and len(r["bbox"]) == 4 for r in coco)


def test_ctc_format_8bit_sequence(tiny_config, shared_data, tmp_path):
    """GOWT1 (8-bit) frames 0..1 in CTC result format: maskTTT.tif, labels unique, res_track.txt."""
    torch.manual_seed(1)
    sequence = tmp_path / "GOWT1" / "01"
    sequence.mkdir(parents=True)
    for frame in ("t000.tif", "t001.tif"):  # a short tmp copy of the sequence
        shutil.copy(shared_data / "ctc" / "Fluo-N2DH-GOWT1" / "01" / frame, sequence / frame)
    out = tmp_path / "out"
    assert main(["--config-file", tiny_config, "--input", str(sequence), "--output", str(out), "--ctc-format",
                 "--score-threshold", "0.2", "--no-progress", "--allow-random-weights"]) == 0
    masks = [tifffile.imread(out / "01_RES" / f"mask00{i}.tif") for i in range(2)]
    assert all(m.dtype == np.uint16 and m.shape == (1024, 1024) for m in masks)
    tracks = [tuple(map(int, line.split())) for line in (out / "01_RES" / "res_track.txt").read_text().splitlines()]
    for frame, mask in enumerate(masks):
        present = set(np.unique(mask)) - {0}
        assert present == {label for label, begin, end, parent in tracks if begin == frame}
    labels_0, labels_1 = set(np.unique(masks[0])) - {0}, set(np.unique(masks[1])) - {0}
    assert not labels_0 & labels_1  # every object is its own one-frame track
    assert all(begin == end and parent == 0 for _, begin, end, parent in tracks)
    assert len(read_csv(out / "summary.csv")) == 2


def test_stacks_float_and_channels(tiny_config, tmp_path):
    """Multi-page TIFF stack, float 2-channel TIFF, 8-bit gray PNG, a glob and a folder."""
    torch.manual_seed(2)
    rng = np.random.default_rng(0)
    data = tmp_path / "data"
    data.mkdir()
    tifffile.imwrite(data / "stack.tif", rng.integers(0, 4000, (3, 60, 70), dtype=np.uint16), photometric="minisblack")
    tifffile.imwrite(data / "float2.tif", rng.random((50, 40, 2), dtype=np.float32))
    cv2.imwrite(str(data / "gray.png"), rng.integers(0, 255, (40, 45), dtype=np.uint8))
    sources = collect_inputs([str(data)], None)
    assert [(s.kind, s.name, len(s.pages)) for s in sources] == [
        ("image", "float2", 1), ("image", "gray", 1), ("stack", "stack", 3)]
    out = tmp_path / "out"
    predict(load(tiny_config), [str(data / "*.tif"), str(data / "gray.png")], str(out), score_threshold=0.0,
            frames="1:3", progress=False)
    stack = tifffile.imread(out / "labels" / "stack.tif")
    assert stack.shape == (2, 60, 70) and stack.dtype == np.uint16  # pages 1 and 2
    assert tifffile.imread(out / "labels" / "float2.tif").shape == (50, 40)
    assert tifffile.imread(out / "labels" / "gray.tif").shape == (40, 45)
    rows = read_csv(out / "summary.csv")
    assert [r["frame"] for r in rows] == ["", "1", "2", ""]


def test_image_without_detections_gives_empty_label_image_and_csv_row(tiny_config, tmp_path):
    """A threshold no score reaches: an all-zero label image and a zero row, not a crash."""
    cv2.imwrite(str(tmp_path / "dark.png"), np.zeros((48, 40), dtype=np.uint8))
    out = tmp_path / "out"
    predict(load(tiny_config), [str(tmp_path / "dark.png")], str(out), score_threshold=1.0, progress=False,
            overlays=True)
    labels = tifffile.imread(out / "labels" / "dark.tif")
    assert labels.shape == (48, 40) and not labels.any()
    rows = read_csv(out / "summary.csv")
    assert len(rows) == 1 and rows[0]["instances"] == "0" and rows[0]["mean_area"] == "0.0"


def test_tiled_inference_gives_full_size_instances(tiny_config, tmp_path):
    torch.manual_seed(3)
    image = np.random.default_rng(1).integers(0, 255, (150, 100, 3), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "big.png"), image)
    out = tmp_path / "out"
    result = predict(load(tiny_config), [str(tmp_path / "big.png")], str(out), score_threshold=0.0,
                     tile_size=64, tile_overlap=0.25, coco_json=True, progress=False)
    assert tifffile.imread(out / "labels" / "big.tif").shape == (150, 100)
    coco = json.loads((out / "coco_results.json").read_text())
    assert result["images"] == 1 and all(r["segmentation"]["size"] == [150, 100] for r in coco)


def _instances(size, masks, scores, classes=None) -> Instances:
    result = Instances(size)
    result.pred_masks = torch.from_numpy(np.stack(masks))
    result.pred_boxes = Boxes(torch.zeros((len(masks), 4)))
    result.scores = torch.tensor(scores, dtype=torch.float32)
    result.pred_classes = torch.tensor(classes or [0] * len(masks))
    return result


def test_merge_tiled_instances_dedups_and_joins():
    """Two 60x60 tiles overlapping by 20 columns of a 60x100 image."""
    left = np.zeros((2, 60, 60), dtype=bool)
    right = np.zeros((2, 60, 60), dtype=bool)
    left[0, 10:20, 42:52] = True  # small cell inside the overlap (cols 40..59), seen by both tiles
    right[0, 10:20, 2:12] = True
    left[1, 30:50, 20:60] = True  # a long cell cut by both inner borders: cols 20..99
    right[1, 30:50, 0:60] = True
    merged = merge_tiled_instances([(_instances((60, 60), list(left), [0.9, 0.7]), 0, 0),
                                    (_instances((60, 60), list(right), [0.8, 0.6]), 0, 40)], (60, 100))
    assert len(merged) == 2
    masks = merged.pred_masks.numpy()
    small = masks[np.argmax(merged.scores.numpy())]
    assert small.sum() == 100 and small[10:20, 42:52].all()
    long = masks[np.argmin(merged.scores.numpy())]
    assert long[30:50, 20:100].all() and long.sum() == 20 * 80
    # Different classes never merge.
    merged = merge_tiled_instances([(_instances((60, 60), [left[0]], [0.9], [0]), 0, 0),
                                    (_instances((60, 60), [right[0]], [0.8], [1]), 0, 40)], (60, 100))
    assert len(merged) == 2


def test_bad_inputs_exit_2_with_one_line(tiny_config, tmp_path, capsys):
    broken = tmp_path / "broken.tif"
    broken.write_bytes(b"II*\x00garbage")
    for inputs, expected in (([str(tmp_path / "missing.tif")], "missing.tif: file not found"),
                             ([str(broken)], "broken.tif"),
                             ([str(tmp_path / "*.png")], "no file matches"),
                             ([str(tmp_path / "note.txt")], "note.txt")):
        (tmp_path / "note.txt").write_text("x")
        assert main(["--config-file", tiny_config, "--input", *inputs, "--output", str(tmp_path / "o"),
                     "--no-progress", "--allow-random-weights"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1].startswith("error: ") and expected in err[-1]
    image = tmp_path / "ok.png"
    cv2.imwrite(str(image), np.zeros((32, 32), dtype=np.uint8))
    assert main(["--config-file", tiny_config, "--input", str(image), "--output", str(tmp_path / "o"),
                 "MODEL.WEIGHTS", str(tmp_path / "nope.pth")]) == 2
    assert "nope.pth: MODEL.WEIGHTS file not found" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "o" / "summary.csv")


def test_repeatable_input_and_trailing_overrides(tiny_config, tmp_path, capsys):
    from deepcens.cli import main as cli_main

    images = []
    for name in ("one", "two"):
        images.append(tmp_path / f"{name}.png")
        cv2.imwrite(str(images[-1]), np.full((40, 40, 3), 100, dtype=np.uint8))
    assert cli_main(["predict", "--config-file", tiny_config, "--input", str(images[0]), "--input", str(images[1]),
                     "--output", str(tmp_path / "o"), "--no-progress", "--allow-random-weights",
                     "--", "TEST.DETECTIONS_PER_IMAGE", "5"]) == 0
    assert len(read_csv(tmp_path / "o" / "summary.csv")) == 2
    # a second path after one --input is not guessed to be an input: it is refused, with the hint
    assert cli_main(["predict", "--config-file", tiny_config, "--input", str(images[0]), str(images[1]),
                     "--output", str(tmp_path / "p"), "--allow-random-weights"]) == 2
    assert "give each input with its own --input" in capsys.readouterr().err
