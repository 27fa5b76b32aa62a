"""Epoch-stated schedules (XB-Net Table 3) become iterations from the registered training data."""
from __future__ import annotations

import os

import pytest
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog

from deepcens.config import add_deepcens_config
from deepcens.data import ctc
from deepcens.engine.epochs import apply_epoch_schedule, iterations_per_epoch
from deepcens.engine.setup import load_config, prepare_datasets
from test_ctc_data import make_ctc_tree  # tests/ is on sys.path under pytest

CONFIGS = os.path.join(os.path.dirname(__file__), "..", "configs", "xbnet")


def _register(name: str, count: int) -> None:
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
    DatasetCatalog.register(name, lambda: [{"image_id": i} for i in range(count)])


def _cfg(train, scheme="Single", batch=8, epochs=100, restarts=(), eval_epochs=10):
    cfg = get_cfg()
    add_deepcens_config(cfg)
    cfg.DATASETS.TRAIN = tuple(train)
    cfg.SOLVER.TRAIN_SCHEME, cfg.SOLVER.IMS_PER_BATCH = scheme, batch
    cfg.SOLVER.EPOCHS, cfg.SOLVER.RESTART_EPOCHS, cfg.TEST.EVAL_PERIOD_EPOCHS = epochs, restarts, eval_epochs
    cfg.freeze()
    return cfg


def test_individual_epoch_is_samples_over_batch():
    _register("epochs_a", 59)
    cfg = apply_epoch_schedule(_cfg(["epochs_a"], restarts=(10, 30)))
    assert iterations_per_epoch(cfg) == 7  # 59 // 8
    assert cfg.SOLVER.MAX_ITER == 700 and tuple(cfg.SOLVER.COSINE_RESTARTS) == (70, 210)
    assert cfg.TEST.EVAL_PERIOD == 70 and cfg.is_frozen()


def test_universal_epoch_is_twenty_minibatches_per_dataset():
    _register("epochs_a", 59)
    _register("epochs_b", 500)
    assert iterations_per_epoch(_cfg(["epochs_a", "epochs_b"], scheme="Fix")) == 40
    assert iterations_per_epoch(_cfg(["epochs_a", "epochs_b"], scheme="Acc")) == 20  # one step = a minibatch of each


def test_no_epochs_keeps_the_config_and_too_little_data_is_an_error():
    cfg = _cfg(["epochs_a"], epochs=0)
    assert apply_epoch_schedule(cfg) is cfg
    _register("epochs_tiny", 3)
    with pytest.raises(ValueError, match="no full batch"):
        apply_epoch_schedule(_cfg(["epochs_tiny"]))


def test_3d_individual_config_counts_planes_of_its_training_volumes(tmp_path):
    """The shipped 3D setting (100 epochs, no restarts) on a small 3D CTC data set."""
    make_ctc_tree(tmp_path, dataset="Fluo-N3DH-CHO", frames=10, gt_frames=tuple(range(10)), shape=(5, 24, 20),
                  sequences=("01", "02"))
    cfg = load_config(os.path.join(CONFIGS, "xbnet_fluo_n3dh_cho.yaml"),
                      ["DATASETS.CTC.ROOT", str(tmp_path), "MODEL.DEVICE", "cpu"])
    prepare_datasets(cfg)
    train = DatasetCatalog.get(cfg.DATASETS.TRAIN[0])
    assert len(train) == 18 * 5  # 18 of 20 GT volumes (90 %), 5 planes each
    cfg = apply_epoch_schedule(cfg)
    assert cfg.SOLVER.MAX_ITER == 100 * (90 // 8) and tuple(cfg.SOLVER.COSINE_RESTARTS) == ()
    assert cfg.TEST.EVAL_PERIOD == 10 * (90 // 8)
    assert cfg.SOLVER.LR_SCHEDULER_NAME == "CosineWarmRestarts"
    assert ctc.configuration_dataset_names("ctc", "Fluo-N3DH-CHO", "GT") == tuple(cfg.DATASETS.TRAIN + cfg.DATASETS.VAL)
