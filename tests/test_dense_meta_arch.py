"""DenseSegmentor meta-architecture and DenseTargetMapper on tiny images."""
from __future__ import annotations

import numpy as np
import pytest
import tifffile
import torch
from detectron2.config import get_cfg
from detectron2.modeling import build_model
from detectron2.structures import Instances
from torch import nn

from deepcens.config import add_deepcens_config
from deepcens.data.dense_mapper import DenseTargetMapper, dataset_crop_sizes
from deepcens.errors import DeepcensInputError
from deepcens.postprocess.tiling import blend_window, tile_starts


def tiny_cfg():
    cfg = get_cfg()
    add_deepcens_config(cfg)
    cfg.MODEL.META_ARCHITECTURE = "DenseSegmentor"
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.DENSE.XBNET.BASE_CHANNELS = 8
    cfg.MODEL.DENSE.XBNET.NUM_STAGES = 2
    cfg.MODEL.DENSE.SIZE_DIVISIBILITY = 4
    cfg.MODEL.DENSE.MIN_OBJECT_SIZE = 0
    cfg.INPUT.MAPPER = "DenseTargetMapper"
    cfg.INPUT.DENSE.CROP_SIZE = 24
    cfg.INPUT.DENSE.CONTEXT_PAD = 4
    return cfg


def _label_image(height: int, width: int) -> np.ndarray:
    labels = np.zeros((height, width), dtype=np.uint16)
    labels[3:11, 4:12] = 1
    labels[3:11, 12:19] = 2  # touches cell 1
    labels[16:24, 20:28] = 3
    return labels


@pytest.fixture()
def tiny_record(tmp_path):
    labels = _label_image(30, 37)
    image = (100 + 800 * (labels > 0)).astype(np.uint16)
    tifffile.imwrite(tmp_path / "t000.tif", image)
    tifffile.imwrite(tmp_path / "man_seg000.tif", labels)
    return {"file_name": str(tmp_path / "t000.tif"), "label_file_name": str(tmp_path / "man_seg000.tif"),
            "image_id": 0, "height": 30, "width": 37, "intensity_range": (100.0, 900.0)}


def test_mapper_training_output_is_aligned_and_padded(tiny_record):
    mapper = DenseTargetMapper(tiny_cfg(), is_train=True)
    for seed in range(6):
        np.random.seed(seed)
        out = mapper(tiny_record)
        image, target = out["image"], out["target"]
        assert image.shape == (1, 32, 32) and target.shape == (32, 32)  # 24 crop + 2 x 4 context
        assert image.dtype == torch.float32 and 0.0 <= float(image.min()) and float(image.max()) <= 1.0
        assert bool((target[:4] == 255).all()) and bool((target[:, -4:] == 255).all())
        inner_img, inner_tgt = image[0, 4:-4, 4:-4], target[4:-4, 4:-4]
        assert bool((inner_img[inner_tgt == 2] == 1.0).all())  # cells stay under cell pixels after flips/rotations
        assert bool((inner_img[inner_tgt == 0] == 0.0).all())
    assert set(torch.unique(target).tolist()) <= {0, 1, 2, 255}


def test_mapper_test_mode_whole_image_and_channels(tiny_record):
    cfg = tiny_cfg()
    out = DenseTargetMapper(cfg, is_train=False)(tiny_record)
    assert out["image"].shape == (1, 30, 37) and "target" not in out
    cfg.MODEL.DENSE.INPUT_CHANNELS = 3
    assert DenseTargetMapper(cfg, is_train=False)(tiny_record)["image"].shape == (3, 30, 37)


def test_mapper_rasterises_polygon_annotations_and_rejects_unlabelled(tiny_record):
    record = dict(tiny_record)
    del record["label_file_name"]
    mapper = DenseTargetMapper(tiny_cfg(), is_train=True)
    with pytest.raises(DeepcensInputError, match="no labels"):
        mapper(record)
    record["annotations"] = [{"segmentation": [[4, 3, 12, 3, 12, 11, 4, 11]], "category_id": 0, "iscrowd": 0}]
    cfg = tiny_cfg()
    cfg.INPUT.DENSE.CROP_SIZE = 0
    cfg.INPUT.DENSE.CONTEXT_PAD = 0
    cfg.INPUT.DENSE.FLIP = False
    cfg.INPUT.DENSE.ROTATE_90 = False
    target = DenseTargetMapper(cfg, is_train=True)(record)["target"]
    assert target.shape == (30, 37) and int((target == 2).sum()) > 30


def test_crop_size_per_dataset_and_short_side():
    assert dataset_crop_sizes(["Fluo-N2DH-SIM+", "a:b"], [64, 16]) == {"Fluo-N2DH-SIM+": 64, "a:b": 16}
    with pytest.raises(ValueError, match="same length"):
        dataset_crop_sizes(["a", "b"], [64])
    with pytest.raises(ValueError, match="integer >= -1"):
        dataset_crop_sizes(["a"], ["64"])
    cfg = tiny_cfg()
    cfg.INPUT.DENSE.CROP_SIZE = -1
    cfg.INPUT.DENSE.DATASET_CROP_NAMES = ["X"]
    cfg.INPUT.DENSE.DATASET_CROP_SIZES = [8]
    mapper = DenseTargetMapper(cfg, is_train=True)
    assert mapper.crop_size_for({}, 30, 37) == 30
    assert mapper.crop_size_for({"ctc_dataset": "X"}, 30, 37) == 8


def test_train_step_and_inference_return_instances(tiny_record):
    cfg = tiny_cfg()
    torch.manual_seed(0)
    model = build_model(cfg)
    train_mapper, test_mapper = DenseTargetMapper(cfg, True), DenseTargetMapper(cfg, False)
    model.train()
    losses = model([train_mapper(tiny_record), train_mapper(tiny_record)])
    assert set(losses) == {"loss_ce", "loss_jreg"} and all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert model.network.classifier.weight.grad is not None
    model.eval()
    with torch.no_grad():
        outputs = model([test_mapper(tiny_record)])
    instances = outputs[0]["instances"]
    assert isinstance(instances, Instances) and instances.image_size == (30, 37)
    assert instances.pred_masks.shape[1:] == (30, 37) and instances.pred_masks.dtype == torch.bool
    assert {"pred_boxes", "scores", "pred_classes"} <= set(instances.get_fields())


def test_inference_output_resized_to_record_size(tiny_record):
    cfg = tiny_cfg()
    model = build_model(cfg).eval()
    item = DenseTargetMapper(cfg, False)(tiny_record)
    item["height"], item["width"] = 60, 74  # the mapper resized: predictions go back to the record size
    with torch.no_grad():
        assert model([item])[0]["instances"].image_size == (60, 74)


def test_tiles_cover_and_window_is_positive():
    assert tile_starts(10, 16, 12) == [0]
    starts = tile_starts(70, 32, 24)
    assert starts[0] == 0 and starts[-1] == 38 and all(b - a <= 24 for a, b in zip(starts, starts[1:]))
    window = blend_window(32, 0.25)
    assert float(window.min()) > 0 and float(window.max()) == pytest.approx(1.0)


def test_sliding_window_equals_whole_image_for_pointwise_net():
    """A 1x1-conv network is exactly translation-equivariant: blended tiles = whole image."""
    cfg = tiny_cfg()
    cfg.MODEL.DENSE.SLIDING_OVERLAP = 0.3
    model = build_model(cfg).eval()
    torch.manual_seed(1)
    model.network = nn.Sequential(nn.Conv2d(1, 3, 1), nn.Tanh(), nn.Conv2d(3, 3, 1))
    image = torch.rand(1, 45, 53)
    with torch.no_grad():
        whole = model.predict_probabilities(image)
        model.sliding_window = 16
        tiled = model.predict_probabilities(image)
    assert tiled.shape == whole.shape == (3, 45, 53)
    assert torch.allclose(tiled, whole, atol=1e-5)


def test_sliding_window_with_context_network_is_close_inside():
    cfg = tiny_cfg()
    cfg.MODEL.DENSE.SLIDING_WINDOW = 24
    model = build_model(cfg).eval()
    image = torch.rand(1, 50, 41)
    with torch.no_grad():
        tiled = model.predict_probabilities(image)
        model.sliding_window = 0
        whole = model.predict_probabilities(image)
    assert tiled.shape == (3, 50, 41)
    assert torch.allclose(tiled.sum(0), torch.ones(50, 41), atol=1e-5)
    assert float((tiled - whole).abs().mean()) < 0.1


def test_mapper_on_ctc_frame(shared_data):
    from detectron2.data import DatasetCatalog

    record = DatasetCatalog.get("ctc_sim_train")[0]
    cfg = tiny_cfg()
    cfg.INPUT.DENSE.CROP_SIZE = 64
    out = DenseTargetMapper(cfg, True)(record)
    assert out["image"].shape == (1, 72, 72) and out["target"].shape == (72, 72)
    assert int((out["target"] == 2).sum()) > 0 or int((out["target"] == 0).sum()) > 0


def test_xbnet_configs_load_and_name_registered_parts():
    from pathlib import Path

    from deepcens.data.mappers import MAPPER_REGISTRY
    from deepcens.engine.loops import TRAIN_LOOP_REGISTRY
    from deepcens.engine.setup import load_config
    from deepcens.modeling.dense import DENSE_NETWORK_REGISTRY
    from deepcens.modeling.dense.blocks import num_parameters
    from deepcens.modeling.losses import DENSE_LOSS_REGISTRY

    folder = Path(__file__).resolve().parents[1] / "configs" / "xbnet"
    files = sorted(folder.glob("*.yaml"))
    assert len(files) >= 20
    for path in files:
        cfg = load_config(str(path))
        assert cfg.MODEL.META_ARCHITECTURE == "DenseSegmentor", path.name
        DENSE_NETWORK_REGISTRY.get(cfg.MODEL.DENSE.NETWORK)
        DENSE_LOSS_REGISTRY.get(cfg.MODEL.DENSE.LOSS)
        MAPPER_REGISTRY.get(cfg.INPUT.MAPPER)
        TRAIN_LOOP_REGISTRY.get(cfg.SOLVER.TRAIN_SCHEME)
    cfg = load_config(str(folder / "unet_scheme_acc.yaml"))
    assert cfg.SOLVER.TRAIN_SCHEME == "Acc" and cfg.SOLVER.MAX_ITER * len(cfg.DATASETS.TRAIN) == pytest.approx(33800, abs=3)
    cfg = load_config(str(folder / "xbnet_sim01_frame_split.yaml"))
    assert tuple(cfg.SOLVER.COSINE_RESTARTS) == (600, 1800, 4200) and cfg.SOLVER.MAX_ITER == 9000
    cfg = load_config(str(folder / "xbnet_fluo_n2dh_sim.yaml"))  # paper GT only: 193 frames // 8 per epoch
    assert tuple(cfg.SOLVER.COSINE_RESTARTS) == (2400, 7200, 16800) and cfg.SOLVER.MAX_ITER == 36000
    cfg = load_config(str(folder / "xbnet_sim_cpu.yaml"))
    assert num_parameters(build_model(cfg).network) == 713123
