"""deepcens predict in several processes (detectron2 ``launch``, gloo on CPU) and ``--skip-existing``.

The tiny Mask R-CNN of tests/test_predict.py with weights saved to a checkpoint, so that every
process (and every run) predicts with the same model; 64x64 images and a 3-page stack.
"""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tifffile
import torch

from conftest import REPO
from deepcens.errors import DeepcensInputError
from deepcens.predict import sharded
from deepcens.predict.cli import main
from deepcens.predict.run_folder import RunFolder
from test_predict import TINY_RCNN


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> tuple[str, str]:
    """(config file, checkpoint) of the tiny two-class Mask R-CNN with fixed random weights."""
    from detectron2.modeling import build_model

    from deepcens.engine.setup import load_config

    folder = tmp_path_factory.mktemp("model")
    config = folder / "tiny_rcnn.yaml"
    config.write_text(TINY_RCNN)
    torch.manual_seed(0)
    network = build_model(load_config(str(config), []))
    weights = folder / "tiny.pth"
    torch.save({"model": network.state_dict()}, weights)
    return str(config), str(weights)


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> str:
    """Five 64x64 images and one 3-page stack (the stack is one source of weight 3)."""
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(7)
    for index in range(5):
        image = rng.integers(0, 60, (64, 64), dtype=np.uint16)
        for _ in range(4):  # a few bright discs, something for the model to react to
            y, x = rng.integers(10, 54, 2)
            yy, xx = np.ogrid[:64, :64]
            image[(yy - y) ** 2 + (xx - x) ** 2 < 49] = 4000
        tifffile.imwrite(folder / f"img{index}.tif", image, photometric="minisblack")
    tifffile.imwrite(folder / "stack.tif", rng.integers(0, 4000, (3, 64, 64), dtype=np.uint16),
                     photometric="minisblack")
    return str(folder)


def arguments(model, images, output, *extra) -> list[str]:
    config, weights = model
    return ["--config-file", config, "--input", images, "--output", str(output), "--no-progress", "--coco-json",
            "--score-threshold", "0.05", *extra, "MODEL.WEIGHTS", weights]


def summary_rows(output) -> list[dict]:
    """summary.csv rows with the output folder taken out of the ``output`` column."""
    with open(os.path.join(output, "summary.csv"), newline="") as handle:
        rows = list(csv.DictReader(handle))
    for row in rows:
        row["output"] = os.path.relpath(row["output"], output)
    return rows


def label_images(output) -> dict[str, np.ndarray]:
    """Label images and their class maps (``.classes.json``) by file name."""
    folder = os.path.join(output, "labels")
    return {name: tifffile.imread(os.path.join(folder, name)) if name.endswith(".tif")
            else np.array(json.dumps(json.load(open(os.path.join(folder, name))), sort_keys=True))
            for name in sorted(os.listdir(folder))}


def assert_same_outputs(first, second) -> None:
    assert summary_rows(first) == summary_rows(second)
    first_labels, second_labels = label_images(first), label_images(second)
    assert first_labels.keys() == second_labels.keys()
    for name in first_labels:
        np.testing.assert_array_equal(first_labels[name], second_labels[name], err_msg=name)
    first_coco = json.loads(open(os.path.join(first, "coco_results.json")).read())
    assert first_coco == json.loads(open(os.path.join(second, "coco_results.json")).read())


@pytest.fixture(scope="module")
def one_process(model, images, tmp_path_factory) -> str:
    output = tmp_path_factory.mktemp("one") / "out"
    assert main(arguments(model, images, output)) == 0
    return str(output)


def test_two_cpu_processes_write_what_one_process_writes(model, images, one_process, tmp_path):
    output = tmp_path / "two"
    command = [sys.executable, "-m", "deepcens.cli", "predict", *arguments(model, images, output, "--num-gpus", "2",
                                                                          "--device", "cpu")]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("8 images") == 1  # one closing line, from process 0
    assert_same_outputs(one_process, output)
    assert sum(int(row["instances"]) for row in summary_rows(output)) > 0  # the comparison is not of empty images
    status = json.loads((output / "predict_run.json").read_text())
    assert status["state"] == "complete" and status["processes"] == 2 and status["images"] == 8
    journals = sharded.journal_paths(str(output))
    assert [os.path.basename(p) for p in journals] == ["rank-000.jsonl", "rank-001.jsonl"]
    # both processes predicted: the stack (3 pages) on one, images on the other
    done_by = [[entry["done"][0] for entry in map(json.loads, open(p)) if "done" in entry] for p in journals]
    assert all(done_by)
    # every file either process wrote is owned by the run (a later run may replace it)
    labels = {f"labels/{name}" for name in label_images(output)}
    assert labels <= set(status["files"])


def test_skip_existing_resumes_an_interrupted_run(model, images, one_process, tmp_path, monkeypatch):
    from deepcens.predict import writers

    output = tmp_path / "resumed"
    real_write = writers.write_label_tiff
    calls = []

    def interrupted_write(path, labels):  # Ctrl-C while the fourth source is written
        calls.append(path)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return real_write(path, labels)

    monkeypatch.setattr(writers, "write_label_tiff", interrupted_write)
    assert main(arguments(model, images, output)) == 130
    monkeypatch.setattr(writers, "write_label_tiff", real_write)
    status = json.loads((output / "predict_run.json").read_text())
    assert status["state"] == "incomplete" and not (output / "summary.csv").exists()
    assert sorted(os.listdir(output / "labels")) == sorted(f"img{i}{suffix}" for i in range(3)
                                                           for suffix in (".tif", ".classes.json"))
    os.unlink(output / "labels" / "img1.tif")  # a finished source whose output went missing is predicted again
    before = {name: os.stat(output / "labels" / name).st_mtime_ns for name in os.listdir(output / "labels")
              if not name.startswith("img1")}

    predicted = []
    real_run = sharded._run

    def counting_run(predictor, shard, *args, **kwargs):
        predicted.extend(w.source.name for w in shard)
        return real_run(predictor, shard, *args, **kwargs)

    monkeypatch.setattr(sharded, "_run", counting_run)
    assert main(arguments(model, images, output, "--skip-existing")) == 0
    assert sorted(predicted) == ["img1", "img3", "img4", "stack"]
    for name, mtime in before.items():  # kept, not rewritten
        assert os.stat(output / "labels" / name).st_mtime_ns == mtime
    assert_same_outputs(one_process, output)
    status = json.loads((output / "predict_run.json").read_text())
    assert status["state"] == "complete" and status["kept"] == 2 and status["images"] == 6

    # everything is there now: a second resume predicts nothing and writes the same summary
    predicted.clear()
    assert main(arguments(model, images, output, "--skip-existing")) == 0
    assert predicted == []
    assert_same_outputs(one_process, output)
    # without --skip-existing the run starts over
    assert main(arguments(model, images, output)) == 0
    assert len(predicted) == 6
    assert_same_outputs(one_process, output)


def test_partition_is_balanced_deterministic_and_complete():
    weights = [3, 1, 1, 1, 1, 1, 5, 2]
    shards = sharded.partition(weights, 3)
    assert sorted(i for shard in shards for i in shard) == list(range(len(weights)))
    loads = [sum(weights[i] for i in shard) for shard in shards]
    assert max(loads) - min(loads) <= 1
    assert all(shard == sorted(shard) for shard in shards)
    assert shards == sharded.partition(weights, 3)
    assert sharded.partition([1, 1], 4) == [[0], [1], [], []]


def test_other_processes_join_only_their_own_run(tmp_path):
    folder = RunFolder(str(tmp_path))
    folder.lock()
    folder.start("deepcens predict", run_id="run-a")
    rank_folder = sharded.RankFolder(str(tmp_path), sharded.Journal(str(tmp_path), 1))
    rank_folder.join("run-a")  # a process of the run that holds the lock
    with pytest.raises(DeepcensInputError, match="every machine of the run shares"):
        rank_folder.join("run-b")  # e.g. a machine whose --output is another folder
    with pytest.raises(DeepcensInputError, match="another deepcens predict"):
        RunFolder(str(tmp_path)).lock()  # a different run is still refused
    folder.unlock()


def test_launch_options_are_checked(model, images, tmp_path, capsys):
    for extra, message in ((["--num-gpus", "0"], "--num-gpus"),
                           (["--num-machines", "2"], "--dist-url"),
                           (["--num-machines", "2", "--machine-rank", "2", "--dist-url", "tcp://h:1"],
                            "--machine-rank"),
                           (["--num-gpus", "2", "--device", "cuda:1"], "every process on one GPU")):
        assert main(arguments(model, images, tmp_path / "o", *extra)) == 2
        assert message in capsys.readouterr().err


def test_the_command_writes_what_the_python_predict_writes(model, images, one_process, tmp_path):
    """The command (journals, merge by process 0) and ``deepcens.predict.predict`` agree."""
    from deepcens.engine.setup import load_config
    from deepcens.predict import predict

    config, weights = model
    output = tmp_path / "python"
    predict(load_config(config, ["MODEL.WEIGHTS", weights]), [images], str(output), coco_json=True,
            score_threshold=0.05, progress=False)
    assert_same_outputs(one_process, output)
