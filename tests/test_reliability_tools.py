"""Reliability of predict, evaluate and train as an adversary uses them: outputs never lost,
wrong weights refused, one-line errors before any work, results that round-trip.

Each test reproduces one failure a user met (the behaviour before the fix is in the test's
docstring) with a tiny random-weight Mask R-CNN built in the test.
"""
from __future__ import annotations

import json
import os
import stat
import tempfile

import cv2
import numpy as np
import pytest
import tifffile
import torch

from deepcens.cli import main as cli
from test_predict import TINY_RCNN, read_csv


@pytest.fixture(scope="module")
def config(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("cfg") / "tiny_rcnn.yaml"
    path.write_text(TINY_RCNN)
    return str(path)


@pytest.fixture(scope="module")
def weights(config, tmp_path_factory) -> str:
    """A checkpoint that fits the tiny model exactly."""
    from detectron2.modeling import build_model

    from deepcens.engine.setup import load_config

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("w") / "model.pth"
    torch.save({"model": build_model(load_config(config)).state_dict()}, path)
    return str(path)


def image(path, value: int = 120, shape=(48, 48, 3)) -> str:
    cv2.imwrite(str(path), np.full(shape, value, np.uint8))
    return str(path)


def predict(config: str, inputs: list, output, *extra: str) -> int:
    argv = ["predict", "--config-file", config, "--output", str(output), "--no-progress"]
    for path in inputs:
        argv += ["--input", str(path)]
    return cli(argv + list(extra))


def last_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert err, "expected an error line"
    assert "Traceback" not in "\n".join(err)
    return err[-1]


# ---- 1. predict never overwrites its input or a file it did not create --------------------------
def test_predict_refuses_to_overwrite_its_input_or_foreign_files(config, weights, tmp_path, capsys):
    """Before: an input under <output>/labels/ was replaced by its label image, exit 0."""
    labels_dir = tmp_path / "x" / "labels"
    labels_dir.mkdir(parents=True)
    original = image(labels_dir / "some.png")
    tifffile.imwrite(labels_dir / "some.tif", np.full((48, 48), 7, np.uint8))
    before = (labels_dir / "some.tif").read_bytes()
    assert predict(config, [labels_dir / "some.tif"], tmp_path / "x", "MODEL.WEIGHTS", weights) == 2
    assert "would overwrite an input file" in last_error(capsys)
    assert (labels_dir / "some.tif").read_bytes() == before
    # a file the run did not create is not overwritten either
    out = tmp_path / "out"
    (out / "labels").mkdir(parents=True)
    (out / "labels" / "some.tif").write_bytes(b"precious")
    assert predict(config, [original], out, "MODEL.WEIGHTS", weights) == 2
    assert "was not written by deepcens predict" in last_error(capsys)
    assert (out / "labels" / "some.tif").read_bytes() == b"precious"
    # files an earlier predict wrote here are replaced by a new run
    (out / "labels" / "some.tif").unlink()
    assert predict(config, [original], out, "MODEL.WEIGHTS", weights) == 0
    assert predict(config, [original], out, "MODEL.WEIGHTS", weights) == 0


# ---- 2. unique output names by construction ---------------------------------------------------
def test_same_stem_in_two_formats_gives_two_outputs(config, weights, tmp_path):
    """Before: img.png + img.tif went to one label file, the first silently lost."""
    data = tmp_path / "data"
    data.mkdir()
    image(data / "img.png", shape=(40, 50, 3))
    tifffile.imwrite(data / "img.tif", np.zeros((30, 20), np.uint8))
    assert predict(config, [data], tmp_path / "out", "MODEL.WEIGHTS", weights) == 0
    assert tifffile.imread(tmp_path / "out" / "labels" / "img_png.tif").shape == (40, 50)
    assert tifffile.imread(tmp_path / "out" / "labels" / "img_tif.tif").shape == (30, 20)
    outputs = [row["output"] for row in read_csv(tmp_path / "out" / "summary.csv")]
    assert len(set(outputs)) == 2


# ---- 3. wrong weights never pass silently -------------------------------------------------------
def test_wrong_or_missing_weights_are_refused(config, weights, tmp_path, capsys):
    """Before: a checkpoint matching nothing gave '1 images, 0 instances', exit 0."""
    picture = image(tmp_path / "a.png")
    unrelated = tmp_path / "unrelated.pth"
    torch.save({"model": {"head.weight": torch.zeros(3)}}, unrelated)
    assert predict(config, [picture], tmp_path / "o1", "MODEL.WEIGHTS", str(unrelated)) == 2
    message = last_error(capsys)
    assert "model parameters uninitialised" in message and "backbone." in message
    state = torch.load(weights)["model"]
    key = next(k for k in state if k.endswith("cls_score.weight"))
    state[key] = torch.zeros(5, 7)
    wrong_shape = tmp_path / "wrong_shape.pth"
    torch.save({"model": state}, wrong_shape)
    assert predict(config, [picture], tmp_path / "o2", "MODEL.WEIGHTS", str(wrong_shape)) == 2
    assert "shapes differ for" in last_error(capsys)
    assert predict(config, [picture], tmp_path / "o3") == 2  # no weights at all
    assert "no weights given" in last_error(capsys)
    assert predict(config, [picture], tmp_path / "o4", "--allow-random-weights",
                   "MODEL.WEIGHTS", str(unrelated)) == 0
    noise = tmp_path / "noise.pth"
    noise.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    assert predict(config, [picture], tmp_path / "o5", "MODEL.WEIGHTS", str(noise)) == 2
    message = last_error(capsys)
    assert "not a torch checkpoint" in message and "ALLOW_UNSAFE" not in message
    assert predict(config, [picture], tmp_path / "o6", "MODEL.WEIGHTS", weights) == 0


def test_eval_only_without_weights_is_refused_before_launch(config, tmp_path, capsys):
    """Before: --eval-only without weights evaluated a random model."""
    argv = ["train", "--config-file", config, "--eval-only", "OUTPUT_DIR", str(tmp_path / "run")]
    assert cli(argv) == 2
    assert "--eval-only needs trained weights" in last_error(capsys)


# ---- 4. a run's outputs as a unit -------------------------------------------------------------
def test_interrupted_run_is_marked_incomplete_and_ctrl_c_is_one_line(config, weights, tmp_path, capsys,
                                                                     monkeypatch):
    """Before: after Ctrl-C an old summary.csv stayed and looked complete; a traceback was printed."""
    from deepcens.predict.predictor import Predictor

    inputs = [image(tmp_path / f"{name}.png") for name in ("a", "b", "c")]
    out = tmp_path / "out"
    assert predict(config, inputs, out, "MODEL.WEIGHTS", weights) == 0
    status = json.loads((out / "predict_run.json").read_text())
    assert status["state"] == "complete" and "summary.csv" in status["files"]
    calls = {"count": 0}
    original = Predictor.__call__

    def interrupted(self, *args, **kwargs):
        calls["count"] += 1
        if calls["count"] == 2:
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Predictor, "__call__", interrupted)
    assert predict(config, inputs, out, "MODEL.WEIGHTS", weights) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == "interrupted" and "Traceback" not in "\n".join(err)
    status = json.loads((out / "predict_run.json").read_text())
    assert status["state"] == "incomplete" and "interrupted" in status["error"]
    assert not (out / "summary.csv").exists()  # the old run's summary no longer looks current


def test_second_run_into_the_same_folder_is_refused(config, weights, tmp_path, capsys):
    """Before: two predicts into one folder lost one run's rows silently."""
    from deepcens.predict.run_folder import RunFolder

    holder = RunFolder(str(tmp_path / "out"))
    holder.lock()
    try:
        assert predict(config, [image(tmp_path / "a.png")], tmp_path / "out", "MODEL.WEIGHTS", weights) == 2
        assert "another deepcens predict is writing into this folder" in last_error(capsys)
    finally:
        holder.unlock()


def test_skip_bad_goes_on_and_lists_the_unreadable_inputs(config, weights, tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    image(data / "good.png")
    (data / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    assert predict(config, [data], tmp_path / "o1", "MODEL.WEIGHTS", weights) == 2
    assert "broken.png" in last_error(capsys)
    assert predict(config, [data], tmp_path / "o2", "--skip-bad", "MODEL.WEIGHTS", weights) == 0
    captured = capsys.readouterr()
    assert "skipped: " in captured.err and "broken.png" in captured.err and "1 unreadable input(s) skipped" in captured.out
    status = json.loads((tmp_path / "o2" / "predict_run.json").read_text())
    assert status["state"] == "complete" and len(status["skipped"]) == 1
    assert len(read_csv(tmp_path / "o2" / "summary.csv")) == 1


# ---- 5. file modes respect the umask ----------------------------------------------------------
@pytest.mark.parametrize("umask, expected", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_written_files_respect_the_umask(tmp_path, umask, expected):
    """Before: every result file and checkpoint was created 0600 (mkstemp)."""
    from deepcens.utils.atomic import atomic_save_bytes

    previous = os.umask(umask)
    try:
        atomic_save_bytes(tmp_path / "result.bin", b"x")
    finally:
        os.umask(previous)
    assert stat.S_IMODE(os.stat(tmp_path / "result.bin").st_mode) == expected


# ---- 6. readers that refused good files or misread them -----------------------------------------
def test_readers_accept_one_bit_tiff_png_named_tif_and_read_series_axes(config, weights, tmp_path):
    """Before: a 1-bit TIFF was 'truncated'; a PNG named .tif was refused by predict; a 32x32x5
    TIFF was read as 32 frames of 32x5 pixels."""
    from deepcens.data.io import read_image, tiff_page_count
    from deepcens.errors import DeepcensInputError
    from deepcens.predict import collect_inputs

    bits = np.random.default_rng(0).random((40, 36)) > 0.5
    tifffile.imwrite(tmp_path / "bits.tif", bits, bitspersample=1, photometric="minisblack")
    np.testing.assert_array_equal(read_image(tmp_path / "bits.tif")[..., 0], bits.astype(np.uint8))
    ok, png = cv2.imencode(".png", np.full((30, 30), 9, np.uint8))
    (tmp_path / "png_inside.tif").write_bytes(png.tobytes())
    assert [s.kind for s in collect_inputs([str(tmp_path / "png_inside.tif")])] == ["image"]
    assert predict(config, [tmp_path / "png_inside.tif"], tmp_path / "out", "MODEL.WEIGHTS", weights) == 0
    tifffile.imwrite(tmp_path / "five.tif", np.zeros((32, 32, 5), np.uint8), photometric="minisblack",
                     planarconfig="contig", metadata={"axes": "YXS"})
    assert tiff_page_count(tmp_path / "five.tif") == 1
    with pytest.raises(DeepcensInputError, match="1-4 channels, got shape \\(32, 32, 5\\)"):
        read_image(tmp_path / "five.tif")
    tifffile.imwrite(tmp_path / "stack.tif", np.zeros((3, 32, 32), np.uint8), metadata={"axes": "ZYX"})
    assert tiff_page_count(tmp_path / "stack.tif") == 3


# ---- 7. one line instead of a traceback, checked before work starts ---------------------------
def test_unusable_output_folders_fail_before_the_model_runs(config, weights, tmp_path, capsys, monkeypatch):
    """Before: predict found out only after running the model; train_net and evaluate printed tracebacks."""
    from deepcens.predict import predictor

    blocker = tmp_path / "file"
    blocker.write_text("x")
    monkeypatch.setattr(predictor.Predictor, "__init__", lambda *a, **k: pytest.fail("model built"))
    assert predict(config, [image(tmp_path / "a.png")], blocker, "MODEL.WEIGHTS", weights) == 2
    assert "output folder is a file" in last_error(capsys)
    assert cli(["train", "--config-file", config, "OUTPUT_DIR", str(blocker)]) == 2
    assert "OUTPUT_DIR is a file" in last_error(capsys)
    assert cli(["evaluate", "--gt-labels", str(tmp_path), "--pred-labels", str(tmp_path),
                "--output-dir", str(blocker)]) == 2
    assert "--output-dir is a file" in last_error(capsys)
    assert cli(["evaluate", "--gt-labels", str(tmp_path), "--pred-labels", str(tmp_path),
                "--json", str(tmp_path)]) == 2
    assert "--json names a folder" in last_error(capsys)

    def no_write(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "mkstemp", no_write)  # a read-only folder, also for root
    assert predict(config, [tmp_path / "a.png"], tmp_path / "ro", "MODEL.WEIGHTS", weights) == 2
    assert "cannot write into the output folder (Permission denied)" in last_error(capsys)


@pytest.mark.parametrize("text, fragment", [
    ("MODEL: [unclosed\n", "YAML syntax error"),
    ("", "config file is empty"),
    ("_BASE_: missing_base.yaml\n", "_BASE_ 'missing_base.yaml' not found"),
    ("MODEL:\n  DEVICE: gpu\n", "MODEL.DEVICE 'gpu' is not cpu, cuda or cuda:N"),
])
def test_config_problems_are_one_line(tmp_path, capsys, text, fragment):
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    assert predict(str(bad), [image(tmp_path / "a.png")], tmp_path / "out") == 2
    assert fragment in last_error(capsys)
    assert cli(["train", "--config-file", str(bad)]) == 2
    assert fragment in last_error(capsys)


def test_device_gpu_and_stale_last_checkpoint(config, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        predict(config, [image(tmp_path / "a.png")], tmp_path / "out", "--device", "gpu")
    assert exit_info.value.code == 2 and "'gpu' is not cpu, cuda or cuda:N" in capsys.readouterr().err
    run = tmp_path / "run"
    run.mkdir()
    (run / "last_checkpoint").write_text("model_0000099.pth")
    assert cli(["train", "--config-file", config, "--resume", "OUTPUT_DIR", str(run)]) == 2
    assert "names checkpoint 'model_0000099.pth', which does not exist" in last_error(capsys)


def test_bad_coco_results_are_one_line_and_polygons_are_scored(tmp_path, capsys):
    """Before: a result without segmentation, a NaN score or polygon masks gave tracebacks."""
    from detectron2.data import DatasetCatalog, MetadataCatalog

    labels = np.zeros((40, 40), np.uint16)
    labels[5:20, 5:20] = 1
    tifffile.imwrite(tmp_path / "gt.tif", labels)
    name = "reliability_tools_coco"
    if name not in DatasetCatalog.list():
        dicts = [{"file_name": str(tmp_path / "img.png"), "image_id": "img", "height": 40, "width": 40,
                  "label_file_name": str(tmp_path / "gt.tif")}]
        DatasetCatalog.register(name, lambda: dicts)
        MetadataCatalog.get(name).set(thing_classes=["cell"])
    square = [5.0, 5.0, 20.0, 5.0, 20.0, 20.0, 5.0, 20.0]
    good = {"image_id": "img", "category_id": 0, "score": 0.9, "segmentation": [square]}
    for entry, fragment in (({k: v for k, v in good.items() if k != "segmentation"}, "has no segmentation"),
                            (dict(good, score=float("nan")), "scores must be finite")):
        (tmp_path / "r.json").write_text(json.dumps([entry]))
        assert cli(["evaluate", "--dataset", name, "--pred-coco", str(tmp_path / "r.json")]) == 2
        assert fragment in last_error(capsys)
    (tmp_path / "r.json").write_text(json.dumps([good]))
    assert cli(["evaluate", "--dataset", name, "--pred-coco", str(tmp_path / "r.json"),
                "--json", str(tmp_path / "out.json")]) == 0
    assert json.loads((tmp_path / "out.json").read_text())[name]["segm"]["AP"] > 50


def test_input_error_traceback_stays_off_the_console(capsys):
    """Before: detectron2's 50-line training traceback came before the one-line error."""
    import logging

    from deepcens.engine.train_net import keep_input_error_tracebacks_off_the_console
    from deepcens.errors import DeepcensInputError

    logger = logging.getLogger("detectron2.test_console_filter")
    handler = logging.StreamHandler()
    logging.getLogger("detectron2").addHandler(handler)
    try:
        keep_input_error_tracebacks_off_the_console()
        try:
            raise DeepcensInputError("img.png", "cannot decode image")
        except DeepcensInputError:
            logger.exception("Exception during training:")
        try:
            raise RuntimeError("a real bug")
        except RuntimeError:
            logger.exception("Exception during training:")
    finally:
        logging.getLogger("detectron2").removeHandler(handler)
    err = capsys.readouterr().err
    assert "a real bug" in err and "cannot decode image" not in err


# ---- 8. plausible wrong results -------------------------------------------------------------------
def test_out_of_range_options_and_empty_resume_are_said(config, weights, tmp_path, capsys):
    """Before: --score-threshold 5 and --tile-size 8 (10 minutes on 256x256) ran; --resume on an
    empty OUTPUT_DIR started from scratch with one line in log.txt only."""
    picture = image(tmp_path / "a.png")
    for option, value, fragment in (("--score-threshold", "5", "--score-threshold must be in [0, 1]"),
                                    ("--tile-size", "8", "--tile-size must be 0 (whole images) or >= 64"),
                                    ("--batch-size", "0", "--batch-size must be >= 1")):
        assert predict(config, [picture], tmp_path / "out", option, value, "MODEL.WEIGHTS", weights) == 2
        assert fragment in last_error(capsys)
    import argparse

    from deepcens.engine.train_net import add_arguments, preflight

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    preflight(parser.parse_args(["--config-file", config, "--resume", "OUTPUT_DIR", str(tmp_path / "mispelled")]))
    assert "--resume found no checkpoint" in capsys.readouterr().err


def test_ctc_gt_with_a_missing_tra_frame_follows_the_dataset_rule(tmp_path, capsys):
    """Before: evaluate scored DET over fewer frames where the dataset reader refused the folder."""
    gt, res = tmp_path / "01_GT", tmp_path / "01_RES"
    for folder in (gt / "SEG", gt / "TRA", res):
        folder.mkdir(parents=True)
    labels = np.zeros((30, 30), np.uint16)
    labels[5:15, 5:15] = 1
    for t in range(3):
        tifffile.imwrite(gt / "SEG" / f"man_seg{t:03d}.tif", labels)
        tifffile.imwrite(gt / "TRA" / f"man_track{t:03d}.tif", labels)
        tifffile.imwrite(res / f"mask{t:03d}.tif", labels)
    (gt / "TRA" / "man_track.txt").write_text("1 0 2 0\n")
    assert cli(["evaluate", "--ctc-gt", str(gt), "--ctc-res", str(res)]) == 0
    os.remove(gt / "TRA" / "man_track001.tif")
    assert cli(["evaluate", "--ctc-gt", str(gt), "--ctc-res", str(res)]) == 2
    assert "missing TRA frame(s) man_track001.tif" in last_error(capsys)


# ---- 9. predict -> evaluate round trip ----------------------------------------------------------
def test_predict_then_evaluate_round_trips(config, weights, tmp_path, capsys, caplog):
    """Before: --coco-json numbered images 0..N-1 so --pred-coco refused it; multi-class label
    images scored every class as one; one extra label image aborted; --frames 0:2 then
    --ctc-gt failed on frame 2."""
    from detectron2.data import DatasetCatalog, MetadataCatalog

    data = tmp_path / "data"
    data.mkdir()
    labels = np.zeros((48, 48), np.uint16)
    labels[8:24, 8:24] = 1
    dicts = []
    for index in range(2):
        tifffile.imwrite(data / f"gt{index}.tif", labels)
        dicts.append({"file_name": image(data / f"img{index}.png", 60 + 40 * index), "image_id": 100 + index,
                      "height": 48, "width": 48, "label_file_name": str(data / f"gt{index}.tif")})
    name = "reliability_tools_round_trip"
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
    DatasetCatalog.register(name, lambda: dicts)
    MetadataCatalog.get(name).set(thing_classes=["cell", "nucleus"])
    out = tmp_path / "pred"
    assert predict(config, [d["file_name"] for d in dicts], out, "--coco-json", "--score-threshold", "0",
                   "MODEL.WEIGHTS", weights) == 0
    assert cli(["evaluate", "--dataset", name, "--pred-coco", str(out / "coco_results.json")]) == 0
    class_map = json.loads((out / "labels" / "img0.classes.json").read_text())
    assert class_map["class_names"] == ["class0", "class1"]
    label_image = tifffile.imread(out / "labels" / "img0.tif")
    assert set(map(int, class_map["classes"])) == set(np.unique(label_image[label_image > 0]).tolist())
    assert cli(["evaluate", "--dataset", name, "--pred-labels", str(out / "labels")]) == 0
    os.remove(out / "labels" / "img1.classes.json")
    with caplog.at_level("WARNING"):
        assert cli(["evaluate", "--dataset", name, "--pred-labels", str(out / "labels")]) == 0
    assert "carry no class map" in caplog.text
    tifffile.imwrite(out / "labels" / "extra.tif", labels)
    assert cli(["evaluate", "--dataset", name, "--pred-labels", str(out / "labels")]) == 2
    assert "--ignore-unmatched" in last_error(capsys)
    assert cli(["evaluate", "--dataset", name, "--pred-labels", str(out / "labels"), "--ignore-unmatched"]) == 0
    # CTC: predict frames 0:2 of a 3-frame sequence, then score just those frames
    sequence, gt = tmp_path / "seq" / "01", tmp_path / "seq" / "01_GT"
    sequence.mkdir(parents=True)
    (gt / "SEG").mkdir(parents=True)
    for t in range(3):
        image(sequence / f"t{t:03d}.tif".replace(".tif", ".png"), 100)
        os.replace(sequence / f"t{t:03d}.png", sequence / f"t{t:03d}.tif")
        tifffile.imwrite(gt / "SEG" / f"man_seg{t:03d}.tif", labels)
    ctc_out = tmp_path / "ctc"
    assert predict(config, [sequence], ctc_out, "--ctc-format", "--frames", "0:2", "MODEL.WEIGHTS", weights) == 0
    arguments = ["evaluate", "--ctc-gt", str(gt), "--ctc-res", str(ctc_out / "01_RES")]
    assert cli(arguments) == 2
    assert "missing result frame 2" in last_error(capsys)
    assert cli(arguments + ["--frames", "0:2"]) == 0
    assert "over frames 0..1 (2 frames)" in capsys.readouterr().out


def test_one_ctc_file_name_rule_for_reader_evaluation_and_predict(tmp_path):
    """Before: data/ctc.py, the evaluation and predict disagreed on `.tiff` and letter case."""
    from deepcens.data.ctc_files import frame_files
    from deepcens.errors import DeepcensInputError
    from deepcens.evaluation.ctc_measures import ctc_frame_files
    from deepcens.predict import collect_inputs

    sequence = tmp_path / "01"
    sequence.mkdir()
    for name in ("t000.tif", "t001.TIFF", "T0002.Tif"):
        tifffile.imwrite(sequence / name, np.zeros((8, 8), np.uint8))
    assert sorted(frame_files(sequence, "frame")) == [0, 1, 2]
    assert [p.frame for p in collect_inputs([str(sequence)])[0].pages] == [0, 1, 2]
    for name in ("mask000.tif", "MASK001.tiff"):
        tifffile.imwrite(tmp_path / name, np.zeros((8, 8), np.uint8))
    assert sorted(ctc_frame_files(tmp_path, "res")) == [0, 1]
    tifffile.imwrite(sequence / "t1.tif", np.zeros((8, 8), np.uint8))
    with pytest.raises(DeepcensInputError, match="same frame as"):
        frame_files(sequence, "frame")
