"""The out-of-tree plugin of examples/deepcens_plugin: its network, decoder and backbone are
found by name from its YAMLs (which inherit deepcens' configs), train two iterations and predict."""
from __future__ import annotations

import os
import sys

import numpy as np
import pytest
import tifffile

from test_user_datasets import write_folder

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PLUGIN_ROOT = os.path.join(REPO, "examples", "deepcens_plugin")  # the plugin project (holds deepcens_plugin/)
PLUGIN_CONFIGS = os.path.join(PLUGIN_ROOT, "configs")


@pytest.fixture
def plugin(monkeypatch):
    monkeypatch.syspath_prepend(PLUGIN_ROOT)
    monkeypatch.setenv("DEEPCENS_PLUGINS", "deepcens_plugin")
    import deepcens_plugin

    return deepcens_plugin


def _train_and_predict(tmp_path, config: str, opts: list[str]) -> tuple[object, list[str]]:
    from deepcens.engine.setup import load_config, prepare_datasets
    from deepcens.engine.trainer import Trainer
    from deepcens.predict import main as predict_main

    images, labels = write_folder(tmp_path / "data", [(f"im{i}.tif", f"im{i}_label.tif") for i in range(4)], size=64)
    common = ["OUTPUT_DIR", str(tmp_path / "out"), "MODEL.DEVICE", "cpu", "DATALOADER.NUM_WORKERS", "0",
              "SOLVER.MAX_ITER", "2", "SOLVER.IMS_PER_BATCH", "2", "SOLVER.CHECKPOINT_PERIOD", "100", "TEST.EVAL_PERIOD", "0",
              "DATASETS.FOLDERS", f"[('plugin_train', '{images}', '{labels}')]",
              "DATASETS.TRAIN", "('plugin_train',)", "DATASETS.TEST", "()", "DATASETS.VAL", "()", *opts]
    cfg = load_config(config, common, freeze=False)
    prepare_datasets(cfg)
    cfg.freeze()
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    weights = os.path.join(cfg.OUTPUT_DIR, "model_final.pth")
    assert os.path.isfile(weights)
    out = tmp_path / "pred"
    status = predict_main(["--config-file", config, "--input", images, "--output", str(out), "--no-progress",
                           "MODEL.WEIGHTS", weights, *opts, "MODEL.DEVICE", "cpu"])
    assert status == 0
    written = sorted(p for p in os.listdir(out / "labels") if p.endswith(".tif"))
    return trainer.model, written


def test_plugin_dense_network_and_decoder_train_and_predict(tmp_path, plugin):
    from deepcens_plugin.network import PluginMiniUNet

    model, written = _train_and_predict(tmp_path, os.path.join(PLUGIN_CONFIGS, "plugin_unet.yaml"), [
        "MODEL.PLUGIN.WIDTH", "4", "MODEL.PLUGIN.LEVELS", "2", "INPUT.DENSE.CROP_SIZE", "32"])
    assert isinstance(model.network, PluginMiniUNet) and model.network.size_divisibility == 4
    assert model.decoder.__qualname__.startswith("plugin_distance_watershed")
    assert len(written) == 4
    labels = tifffile.imread(os.path.join(tmp_path / "pred", "labels", written[0]))
    assert labels.shape == (64, 64) and labels.dtype == np.uint16


def test_plugin_backbone_under_deepcens_cascade_rcnn(tmp_path, plugin):
    from deepcens_plugin.backbone import PlainTrunk

    model, written = _train_and_predict(tmp_path, os.path.join(PLUGIN_CONFIGS, "plugin_rcnn.yaml"), [
        "MODEL.PLUGIN.WIDTH", "8", "MODEL.ROI_HEADS.NUM_CLASSES", "1", "INPUT.RESIZE_EXACT", "[64, 64]",
        "DATASETS.AUTO_SYNTHETIC", "False"])
    assert isinstance(model.backbone.bottom_up, PlainTrunk)
    assert len(written) == 4


def test_unknown_plugin_is_a_clear_error(monkeypatch):
    from deepcens.engine.setup import load_config
    from deepcens.errors import DeepcensInputError

    monkeypatch.setenv("DEEPCENS_PLUGINS", "no_such_plugin_module")
    with pytest.raises(DeepcensInputError, match="cannot import plugin 'no_such_plugin_module'"):
        load_config(os.path.join(REPO, "configs", "xbnet", "Base-XBNet.yaml"))
    assert sys.modules.get("no_such_plugin_module") is None
