"""Exact resume, kill-during-save, crash-safe metrics (issue 7, items 2 and 3)."""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import REPO

sys.path.insert(0, str(REPO / "tests"))
import reliability_tiny  # noqa: E402


def _scramble_rng() -> None:
    """A fresh process would start from other random states: make sure resume does not rely on them."""
    torch.manual_seed(987654)
    np.random.seed(987654)
    random.seed(987654)


# ---------------------------------------------------------------- sampler and random states
def test_resumable_sampler_continues_the_uninterrupted_stream():
    from itertools import islice

    from deepcens.engine.resume import ResumableTrainingSampler

    for size, start in [(5, 0), (5, 3), (5, 12), (7, 21)]:
        full = list(islice(iter(ResumableTrainingSampler(size, seed=3)), start + 9))
        resumed = ResumableTrainingSampler(size, seed=99)
        resumed.set_position(3, start)
        assert list(islice(iter(resumed), 9)) == full[start:], (size, start)


def test_resumable_sampler_matches_detectron2_training_sampler():
    from itertools import islice

    from detectron2.data.samplers import TrainingSampler

    from deepcens.engine.resume import ResumableTrainingSampler

    assert list(islice(iter(ResumableTrainingSampler(6, seed=5)), 20)) == list(islice(iter(TrainingSampler(6, seed=5)), 20))


def test_rng_state_round_trip_survives_weights_only_load(tmp_path):
    from deepcens.engine.resume import capture_rng_state, restore_rng_state

    random.random(), np.random.normal(), torch.rand(1)
    state = capture_rng_state()
    expected = (random.random(), float(np.random.normal()), float(torch.rand(1)))
    torch.save({"rng": state}, tmp_path / "s.pth")
    loaded = torch.load(tmp_path / "s.pth", weights_only=True)["rng"]
    _scramble_rng()
    restore_rng_state(loaded)
    assert (random.random(), float(np.random.normal()), float(torch.rand(1))) == expected


# ---------------------------------------------------------------- exact resume (R-CNN)
@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("resume")
    return reliability_tiny.train(str(out / "full"), resume=False, opts=[])


def test_rcnn_resume_gives_same_losses_and_weights(uninterrupted, tmp_path):
    out = str(tmp_path / "split")
    first = reliability_tiny.train(out, resume=False, opts=[], stop_after=4)
    assert sorted(first["losses"]) == [0, 1, 2, 3]
    _scramble_rng()
    second = reliability_tiny.train(out, resume=True, opts=[])
    assert second["start_iter"] == 4
    assert sorted(second["losses"]) == [4, 5, 6, 7]
    full = uninterrupted["losses"]
    np.testing.assert_allclose([first["losses"][i] for i in range(4)], [full[i] for i in range(4)], rtol=1e-6)
    np.testing.assert_allclose([second["losses"][i] for i in range(4, 8)], [full[i] for i in range(4, 8)], rtol=1e-6)
    assert second["digest"] == uninterrupted["digest"]


# ---------------------------------------------------------------- exact resume (U-Net, DenseSegmentor)
def _tiny_ctc(root: str) -> None:
    import tifffile

    seq = os.path.join(root, "DS", "01")
    os.makedirs(seq, exist_ok=True)
    os.makedirs(seq + "_GT/SEG", exist_ok=True)
    rng = np.random.default_rng(1)
    for frame in range(4):
        labels = np.zeros((48, 48), np.uint16)
        for label in range(1, 4):
            y, x = (int(v) for v in rng.integers(6, 36, 2))
            labels[y:y + 8, x:x + 9] = label
        image = (labels > 0) * 900 + rng.integers(0, 100, (48, 48))
        tifffile.imwrite(os.path.join(seq, f"t{frame:03d}.tif"), image.astype(np.uint16))
        tifffile.imwrite(os.path.join(seq + "_GT/SEG", f"man_seg{frame:03d}.tif"), labels)


def test_unet_resume_gives_same_losses_and_weights(tmp_path):
    config = REPO / "configs" / "xbnet" / "Base-XBNet.yaml"
    if not config.is_file():
        pytest.skip("the XB-Net config is not in this checkout")
    from detectron2.modeling import META_ARCH_REGISTRY

    from deepcens.data.ctc import register_ctc_dataset
    from deepcens.data.mappers import MAPPER_REGISTRY
    from deepcens.engine.setup import load_config

    if "DenseSegmentor" not in META_ARCH_REGISTRY or "DenseTargetMapper" not in MAPPER_REGISTRY:
        pytest.skip("the dense meta-architecture / mapper are not in this checkout")
    _tiny_ctc(str(tmp_path / "ctc"))
    register_ctc_dataset("reliability_ctc_train", str(tmp_path / "ctc"), "DS", ["01"], "GT")

    def cfg(out: str):
        return load_config(str(config), [
            "OUTPUT_DIR", out, "MODEL.DEVICE", "cpu", "MODEL.DENSE.NETWORK", "UNet",
            "MODEL.DENSE.UNET.BASE_CHANNELS", "4", "MODEL.DENSE.UNET.DEPTH", "3", "MODEL.DENSE.SIZE_DIVISIBILITY", "4",
            "INPUT.DENSE.CROP_SIZE", "32", "DATASETS.TRAIN", "('reliability_ctc_train',)", "DATASETS.TEST", "()",
            "DATALOADER.NUM_WORKERS", "0", "SOLVER.IMS_PER_BATCH", "2", "SOLVER.MAX_ITER", "6",
            "SOLVER.CHECKPOINT_PERIOD", "3", "SOLVER.BEST_CHECKPOINT_METRIC", "", "TEST.EVAL_PERIOD", "0",
            "SOLVER.COSINE_RESTARTS", "()", "SEED", "3"], freeze=False)

    full = reliability_tiny.train_cfg(cfg(str(tmp_path / "full")), resume=False)
    first = reliability_tiny.train_cfg(cfg(str(tmp_path / "split")), resume=False, stop_after=3)
    _scramble_rng()
    second = reliability_tiny.train_cfg(cfg(str(tmp_path / "split")), resume=True)
    assert second["start_iter"] == 3 and sorted(second["losses"]) == [3, 4, 5]
    losses = {**first["losses"], **second["losses"]}
    np.testing.assert_allclose([losses[i] for i in range(6)], [full["losses"][i] for i in range(6)], rtol=1e-6)
    assert second["digest"] == full["digest"]


# ---------------------------------------------------------------- kill in the middle of a save
def test_kill_during_save_then_resume_continues_from_last_complete_checkpoint(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    script = str(REPO / "tests" / "reliability_tiny.py")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    opts = ["SOLVER.CHECKPOINT_PERIOD", "2", "SOLVER.MAX_ITER", "6"]
    process = subprocess.Popen([sys.executable, script, "--pause-in-save", "model_0000003:120", str(out), *opts],
                               cwd=REPO, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    seen = ""
    try:
        for line in process.stderr:
            seen += line
            if "deepcens-test: sleeping in save of model_0000003" in line:
                break
            assert time.monotonic() < deadline, "training never reached the save of model_0000003"
        else:
            pytest.fail(f"process ended before the save: {seen[-2000:]}")
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.kill()
        process.wait()
    # the interrupted save left no model_0000003.pth; last_checkpoint still names the complete one
    assert not (out / "model_0000003.pth").exists()
    assert (out / "last_checkpoint").read_text() == "model_0000001.pth"
    assert any(name.startswith(".model_0000003.pth.") for name in os.listdir(out))  # the killed temp file
    from deepcens.engine.checkpoint import DeepcensCheckpointer

    loaded = DeepcensCheckpointer(torch.nn.Linear(1, 1), str(out))._torch_load(str(out / "model_0000001.pth"))
    assert loaded["trainer"]["iteration"] == 1

    report = reliability_tiny.train(str(out), resume=True, opts=opts)  # --resume, in this process
    assert report["start_iter"] == 2
    assert sorted(report["losses"]) == [2, 3, 4, 5]
    assert (out / "last_checkpoint").read_text() == "model_final.pth"
    from deepcens.utils.metrics_log import read_metrics

    assert [r["iteration"] for r in read_metrics(out / "metrics.json")] == [5]


# ---------------------------------------------------------------- metrics.json
def test_metrics_reader_skips_partial_last_line(tmp_path):
    from deepcens.utils.metrics_log import read_metrics

    path = tmp_path / "metrics.json"
    path.write_text('{"iteration": 0, "total_loss": 1.0}\n{"iteration": 1, "total_loss": 0.9}\n{"iteration": 2, "tot')
    assert [r["iteration"] for r in read_metrics(path)] == [0, 1]


def test_metrics_writer_repairs_partial_line_and_drops_records_after_resume_point(tmp_path):
    from detectron2.utils.events import EventStorage

    from deepcens.utils.metrics_log import SafeJSONWriter, read_metrics

    path = tmp_path / "metrics.json"
    path.write_text("".join(json.dumps({"iteration": i, "total_loss": 1.0 / (i + 1)}) + "\n" for i in range(6))
                    + '{"iteration": 6, "total_lo')
    writer = SafeJSONWriter(str(path))
    writer.truncate_from(4)  # resumed from the checkpoint of iteration 3
    with EventStorage(4) as storage:
        storage.put_scalar("total_loss", 0.25, smoothing_hint=False)
        writer.write()
    writer.close()
    text = path.read_text()
    assert text.endswith("\n")
    lines = [json.loads(line) for line in text.splitlines()]  # every line parses
    assert [r["iteration"] for r in lines] == [0, 1, 2, 3, 4]
    assert read_metrics(path)[-1]["total_loss"] == 0.25
