"""Non-finite loss, unsafe checkpoints, bad training input policy, dead ranks (issue 7)."""
from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import time

import cv2
import numpy as np
import pytest
import torch

from conftest import REPO

sys.path.insert(0, str(REPO / "tests"))
import reliability_tiny  # noqa: E402

from deepcens.errors import DeepcensInputError  # noqa: E402


def _tiny_trainer(out_dir: str, opts: list[str], data_dir: str | None = None):
    from detectron2.utils.env import seed_all_rng

    from deepcens.engine.trainer import Trainer

    reliability_tiny.register_tiny(data_dir or os.path.join(os.path.dirname(out_dir), "tiny_data"))
    cfg = reliability_tiny.tiny_cfg(out_dir, opts)
    seed_all_rng(cfg.SEED)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    return trainer


def _poison_loss_at(trainer, iterations: set[int]) -> None:
    """Make the loss NaN at the given iterations (as a diverging model or a bad batch would)."""
    model = trainer._trainer.model
    original = model.forward

    def forward(batched_inputs):
        losses = original(batched_inputs)
        if trainer.iter in iterations:
            losses = {key: value * float("nan") for key, value in losses.items()}
        return losses

    model.forward = forward


# ---------------------------------------------------------------- non-finite loss
def test_nonfinite_loss_stops_naming_iteration_and_keeps_last_good_checkpoint(tmp_path):
    from deepcens.engine.hooks import NonFiniteLossError

    out = tmp_path / "run"
    trainer = _tiny_trainer(str(out), ["SOLVER.MAX_ITER", "4", "SOLVER.CHECKPOINT_PERIOD", "2"])
    _poison_loss_at(trainer, {3})
    with pytest.raises(NonFiniteLossError) as caught:
        trainer.train()
    message = str(caught.value)
    assert "\n" not in message
    assert "iteration 3" in message and str(out / "model_0000001.pth") in message
    # the last iteration failed: no model_final / model_0000003 was written, last_checkpoint unchanged
    assert sorted(name for name in os.listdir(out) if name.endswith(".pth")) == ["model_0000001.pth"]
    assert (out / "last_checkpoint").read_text() == "model_0000001.pth"
    state = torch.load(out / "model_0000001.pth", weights_only=True)["model"]
    assert all(torch.isfinite(value).all() for value in state.values() if value.is_floating_point())


def test_nonfinite_loss_skips_step_when_stop_is_off(tmp_path):
    out = tmp_path / "run"
    trainer = _tiny_trainer(str(out), ["SOLVER.MAX_ITER", "3", "SOLVER.STOP_ON_NONFINITE_LOSS", "False"])
    _poison_loss_at(trainer, {1})
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.train()
    assert trainer.skipped_nonfinite_steps == 1
    assert (out / "model_final.pth").is_file()
    after = trainer.model.state_dict()
    assert all(torch.isfinite(v).all() for v in after.values() if v.is_floating_point())
    assert any(not torch.equal(before[k], after[k]) for k in before)  # the other steps did train


# ---------------------------------------------------------------- safe checkpoint loading
def test_checkpoint_needing_unpickling_is_refused_unless_allowed(tmp_path):
    from deepcens.engine.checkpoint import DeepcensCheckpointer

    model = torch.nn.Linear(2, 2)
    path = str(tmp_path / "unsafe.pth")
    torch.save({"model": model.state_dict(), "extra": argparse.Namespace(payload=1)}, path)
    with pytest.raises(DeepcensInputError) as caught:
        DeepcensCheckpointer(torch.nn.Linear(2, 2)).load(path)
    assert caught.value.path == path and "RUN.ALLOW_UNSAFE_CHECKPOINTS" in str(caught.value)
    target = torch.nn.Linear(2, 2)
    DeepcensCheckpointer(target, allow_unsafe=True).load(path)
    assert torch.equal(target.weight, model.weight)


def test_safe_checkpoint_loads_and_pickle_and_truncated_files_are_refused(tmp_path):
    from deepcens.engine.checkpoint import DeepcensCheckpointer

    model = torch.nn.Linear(2, 2)
    DeepcensCheckpointer(model, str(tmp_path)).save("model_ok")
    target = torch.nn.Linear(2, 2)
    DeepcensCheckpointer(target).load(str(tmp_path / "model_ok.pth"))
    assert torch.equal(target.weight, model.weight)
    (tmp_path / "old.pkl").write_bytes(b"\x80\x04N.")
    with pytest.raises(DeepcensInputError, match="pickle checkpoints"):
        DeepcensCheckpointer(target).load(str(tmp_path / "old.pkl"))
    data = (tmp_path / "model_ok.pth").read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(DeepcensInputError, match="cannot read checkpoint"):
        DeepcensCheckpointer(target).load(str(tmp_path / "cut.pth"))


# ---------------------------------------------------------------- bad training input policy
def _break_two_images(data_dir: str) -> tuple[str, str]:
    """Truncate one training image and replace another by an image of the wrong size."""
    truncated = os.path.join(data_dir, "img_1.png")
    with open(truncated, "rb") as handle:
        head = handle.read(40)
    with open(truncated, "wb") as handle:
        handle.write(head)
    resized = os.path.join(data_dir, "img_2.png")
    cv2.imwrite(resized, np.zeros((32, 48), np.uint8))
    return truncated, resized


def test_bad_input_policy_fail_names_the_file(tmp_path):
    from deepcens.data.mappers import BadInputPolicyMapper, InstanceDatasetMapper

    data_dir = str(tmp_path / "data")
    dicts = reliability_tiny.make_tiny_dataset(data_dir)
    truncated, resized = _break_two_images(data_dir)
    cfg = reliability_tiny.tiny_cfg(str(tmp_path / "out"))
    mapper = BadInputPolicyMapper(InstanceDatasetMapper(cfg, True), "fail")
    with pytest.raises(DeepcensInputError) as caught:
        mapper(dicts[1])
    assert caught.value.path == truncated
    with pytest.raises(DeepcensInputError) as caught:
        mapper(dicts[2])
    assert caught.value.path == resized and "\n" not in str(caught.value)
    assert mapper(dicts[0])["image"].shape[-2:] == (64, 64)


def test_bad_input_policy_skip_trains_counts_and_warns(tmp_path, caplog):
    from deepcens.data.mappers import bad_input_skip_count

    data_dir = str(tmp_path / "data")
    reliability_tiny.make_tiny_dataset(data_dir)
    _break_two_images(data_dir)
    before = bad_input_skip_count()
    trainer = _tiny_trainer(str(tmp_path / "run"), ["SOLVER.MAX_ITER", "3", "DATASETS.BAD_INPUT_POLICY", "skip",
                                                    "SOLVER.CHECKPOINT_PERIOD", "100"], data_dir=data_dir)
    with caplog.at_level(logging.WARNING):
        trainer.train()
    assert bad_input_skip_count() > before
    assert any("could not be read and were skipped" in record.getMessage() for record in caplog.records)
    assert any("img_1.png" in record.getMessage() for record in caplog.records)


def test_bad_input_in_a_dataloader_worker_keeps_its_one_line_error(tmp_path):
    data_dir = str(tmp_path / "data")
    reliability_tiny.make_tiny_dataset(data_dir)
    truncated, _ = _break_two_images(data_dir)
    trainer = _tiny_trainer(str(tmp_path / "run"), ["SOLVER.MAX_ITER", "4", "DATALOADER.NUM_WORKERS", "1"],
                            data_dir=data_dir)
    with pytest.raises(DeepcensInputError) as caught:
        trainer.train()
    assert caught.value.path in (truncated, os.path.join(data_dir, "img_2.png"))
    assert "\n" not in str(caught.value) and "Traceback" not in str(caught.value)


def test_skip_policy_counts_inside_dataloader_workers(tmp_path):
    from deepcens.data.mappers import bad_input_skip_count

    data_dir = str(tmp_path / "data")
    reliability_tiny.make_tiny_dataset(data_dir)
    _break_two_images(data_dir)
    before = bad_input_skip_count()
    trainer = _tiny_trainer(str(tmp_path / "run"), ["SOLVER.MAX_ITER", "3", "DATALOADER.NUM_WORKERS", "1",
                                                    "DATASETS.BAD_INPUT_POLICY", "skip"], data_dir=data_dir)
    trainer.train()
    assert bad_input_skip_count() > before


# ---------------------------------------------------------------- distributed faults
def test_dist_timeout_from_args_reads_config_and_options(tmp_path):
    from detectron2.engine import default_argument_parser

    from deepcens.engine.launch_utils import dist_timeout_from_args

    def timeout(argv):
        return dist_timeout_from_args(default_argument_parser().parse_args(argv))

    config = tmp_path / "c.yaml"
    config.write_text("RUN:\n  DIST_TIMEOUT_SECONDS: 42\n")
    assert timeout(["--config-file", str(config)]).total_seconds() == 42
    assert timeout(["--config-file", str(config), "RUN.DIST_TIMEOUT_SECONDS", "7"]).total_seconds() == 7
    with pytest.raises(DeepcensInputError):
        timeout(["--config-file", str(tmp_path / "missing.yaml")])


def test_hung_peer_ends_the_waiting_rank_with_an_error_within_the_timeout():
    """A rank that stops answering: the other times out in its collective; ``launch`` ends both.
    (A rank that dies is covered by the spawned-rank bad-input test below.)"""
    mode, timeout = "hang", 4
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    process = subprocess.Popen([sys.executable, str(REPO / "tests" / "reliability_dist.py"), mode, str(timeout)],
                               cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        waiting_since = None
        for line in process.stdout:
            if "rank0-waiting" in line:
                waiting_since = time.monotonic()
                break
        stdout, stderr = process.communicate(timeout=timeout + 60)
    finally:
        process.kill()
    ended = time.monotonic()
    assert process.returncode != 0
    assert "rank0-done" not in stdout
    assert waiting_since is not None and ended - waiting_since < timeout + 60
    assert "Timed out" in stderr, stderr[-2000:]


def test_bad_input_on_a_spawned_rank_gives_one_error_line_and_status_2():
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    result = subprocess.run([sys.executable, str(REPO / "tests" / "reliability_dist.py"), "bad", "30"],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert [line for line in result.stderr.splitlines() if line.startswith("error: ")] == [
        "error: data/broken.tif: cannot decode image"]


def _bad_main(path: str) -> None:
    raise DeepcensInputError(path, "unsupported pixel type int64")


def test_launch_reporting_errors_single_process(capsys):
    from deepcens.engine.launch_utils import launch_reporting_errors

    assert launch_reporting_errors(_bad_main, 1, args=("x.tif",)) == 2
    assert capsys.readouterr().err.strip() == "error: x.tif: unsupported pixel type int64"
    assert launch_reporting_errors(lambda: None, 1) == 0
