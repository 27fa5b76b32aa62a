"""EfficientCellSeg: encoder / decoder sizes, ImageNet loading, Context Aware Pseudocoloring,
watershed decoders, configs, plateau schedule, PESEG and a 2-iteration training run."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from detectron2.config import get_cfg

from deepcens.config import add_deepcens_config
from deepcens.data.ecs_mapper import ContextSliceMapper
from deepcens.data.pseudocolor import neighbour_frame_path, neighbour_roi, pseudocolor_image
from deepcens.data.targets import centre_heatmap
from deepcens.engine.plateau import StoragePlateauScheduler
from deepcens.engine.setup import load_config
from deepcens.errors import DeepcensInputError
from deepcens.evaluation.reports import add_parameter_efficiency, ctc_table
from deepcens.modeling.dense.efficientcellseg import EfficientCellSegNet, EfficientNetB5Encoder, count_parameters
from deepcens.modeling.meta_arch.efficientcellseg import patch_layout
from deepcens.postprocess.ecs_decoders import (
    centre_watershed_labels,
    component_labels,
    distance_watershed_labels,
)

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "efficientcellseg"


def ecs_cfg(**overrides):
    cfg = get_cfg()
    add_deepcens_config(cfg)
    cfg.merge_from_file(str(CONFIGS / "Base-EfficientCellSeg.yaml"))
    cfg.MODEL.DEVICE = "cpu"
    for key, value in overrides.items():
        node = cfg
        *parents, leaf = key.split(".")
        for part in parents:
            node = node[part]
        node[leaf] = value
    return cfg


# ---- model sizes -------------------------------------------------------------------------------

def test_encoder_is_efficientnet_b5_cut_after_the_sixth_blocks_expansion():
    encoder = EfficientNetB5Encoder()
    assert count_parameters(encoder) == 5_565_880  # paper Table 1: 5.6 M
    skips, out = encoder(torch.rand(1, 3, 64, 64))
    assert out.shape == (1, 1056, 4, 4)  # 24 x 24 x 1056 for 384 x 384 (Sec. 2.1)
    assert [s.shape[1] for s in skips] == [3, 48, 240, 384]


def test_model_size_matches_table_1_and_wider_decoders_grow():
    model = EfficientCellSegNet((64, 48, 32, 16))
    total = count_parameters(model)
    assert abs(total - 6.7e6) / 6.7e6 < 0.03  # paper Table 1: 6.7 M overall
    wide = count_parameters(EfficientCellSegNet((512, 256, 128, 64))) - 5_565_880
    assert abs(wide - 12.5e6) / 12.5e6 < 0.06  # paper Table 2, model 5: 12.5 M decoder
    assert model(torch.rand(2, 3, 48, 80)).shape == (2, 1, 48, 80)


def test_imagenet_encoder_weights_load_from_a_local_file(tmp_path):
    from torchvision.models import efficientnet_b5

    torch.manual_seed(3)
    reference = efficientnet_b5(weights=None)
    path = tmp_path / "efficientnet_b5.pth"
    torch.save(reference.state_dict(), path)
    from deepcens.modeling.dense import build_dense_network

    model = build_dense_network(ecs_cfg(**{"MODEL.DENSE.ECS.ENCODER_WEIGHTS": str(path)}))
    loaded = model.networks[0].encoder.body.state_dict()
    source = reference.state_dict()
    assert all(torch.equal(loaded[k], source[k]) for k in loaded)
    torch.save({"features.0.0.weight": torch.zeros(1)}, tmp_path / "wrong.pth")
    with pytest.raises(DeepcensInputError, match="wrong.pth"):
        build_dense_network(ecs_cfg(**{"MODEL.DENSE.ECS.ENCODER_WEIGHTS": str(tmp_path / "wrong.pth")}))
    with pytest.raises(DeepcensInputError, match="not found"):
        build_dense_network(ecs_cfg(**{"MODEL.DENSE.ECS.ENCODER_WEIGHTS": str(tmp_path / "absent.pth")}))


# ---- Context Aware Pseudocoloring --------------------------------------------------------------

def _three_slice_stack() -> np.ndarray:
    stack = np.zeros((3, 64, 64), dtype=np.float32)
    stack[0, 8:24, 8:24] = 1.0  # a cell in z-1 (left half)
    stack[1, :, :32] = 0.5  # current slice: left half 0.5, right half 1.0, one dark pixel
    stack[1, :, 32:] = 1.0
    stack[1, 0, 0] = 0.0
    stack[2, 40:56, 36:52] = 1.0  # a cell in z+1 (right half)
    return stack


@pytest.mark.parametrize("method", ["otsu", "adaptive"])
def test_pseudocolor_of_a_hand_made_stack(method):
    stack = _three_slice_stack()
    cfg = ecs_cfg(**{"INPUT.ECS.ROI_METHOD": method, "INPUT.ECS.ROI_BLUR": 0})
    mapper = ContextSliceMapper(cfg, is_train=False)
    record = {"file_name": "stack.tif", "image_id": 0, "height": 64, "width": 64, "image": stack[1],
              "intensity_range": (0.0, 1.0), "context_images": (stack[0], stack[2])}
    red, green, blue = mapper(record)["image"].numpy()
    np.testing.assert_array_equal(green, stack[1])  # G = the slice, min-max normalised
    # R = G + M(z-1) * G: the block of z-1 doubles 0.5 to 1.0; max 1 -> unchanged by the norm
    expected_red = stack[1].copy()
    expected_red[8:24, 8:24] = 1.0
    np.testing.assert_allclose(red, expected_red, atol=1e-6)
    # B = G + M(z+1) * G: the block of z+1 doubles 1.0 to 2.0; normalised by 2
    expected_blue = stack[1] / 2.0
    expected_blue[40:56, 36:52] = 1.0
    np.testing.assert_allclose(blue, expected_blue, atol=1e-6)


def test_missing_neighbour_gives_an_empty_mask_and_grey_repeats_the_slice():
    stack = _three_slice_stack()
    assert not neighbour_roi(None, (64, 64)).any()
    assert not neighbour_roi(np.zeros((64, 64)), (64, 64)).any()
    first = pseudocolor_image(stack[0], None, stack[1], method="otsu", blur=0)
    np.testing.assert_array_equal(first[..., 0], first[..., 1])  # no z-1: R = G
    mapper = ContextSliceMapper(ecs_cfg(**{"INPUT.ECS.TRANSFORM": "grey"}), is_train=False)
    image = mapper({"file_name": "x.tif", "image_id": 0, "image": stack[1], "intensity_range": (0.0, 1.0),
                    "context_images": (stack[0], stack[2])})["image"].numpy()
    assert np.array_equal(image[0], image[1]) and np.array_equal(image[1], image[2])


def test_time_lapse_neighbours_are_the_adjacent_frame_files(tmp_path):
    for t in (0, 1, 2):
        (tmp_path / f"t{t:03d}.tif").write_bytes(b"")
    assert neighbour_frame_path(str(tmp_path / "t001.tif"), -1) == str(tmp_path / "t000.tif")
    assert neighbour_frame_path(str(tmp_path / "t002.tif"), 1) is None
    assert neighbour_frame_path(str(tmp_path / "t000.tif"), -1) is None


# ---- decoders ----------------------------------------------------------------------------------

def _touching_discs(shape=(64, 96), centres=((32, 34), (32, 60)), radius=14) -> np.ndarray:
    grid = np.indices(shape)
    labels = np.zeros(shape, dtype=np.int32)
    for index, centre in enumerate(centres, start=1):
        inside = sum((g - c) ** 2 for g, c in zip(grid, centre)) <= radius ** 2
        labels[inside & (labels == 0)] = index
    return labels


def _best_ious(reference: np.ndarray, predicted: np.ndarray) -> list[float]:
    ious = []
    for ref_id in range(1, int(reference.max()) + 1):
        ref = reference == ref_id
        ious.append(max((np.logical_and(ref, predicted == p).sum() / np.logical_or(ref, predicted == p).sum())
                        for p in range(1, int(predicted.max()) + 1)))
    return ious


def test_both_watersheds_split_touching_discs_that_components_merge():
    truth = _touching_discs()
    foreground = (truth > 0).astype(np.float32)
    assert component_labels(foreground).max() == 1  # the two discs touch
    split = distance_watershed_labels(foreground, min_distance=5)
    assert split.max() == 2 and min(_best_ious(truth, split)) > 0.9
    heatmap = centre_heatmap(truth, sigma=3.0)
    split = centre_watershed_labels(foreground, heatmap, marker_threshold=0.5)
    assert split.max() == 2 and min(_best_ious(truth, split)) > 0.9


def test_watersheds_split_touching_balls_in_3d():
    truth = _touching_discs((24, 40, 56), ((12, 20, 18), (12, 20, 37)), 10)
    foreground = (truth > 0).astype(np.float32)
    split = distance_watershed_labels(foreground, min_distance=4)
    assert split.ndim == 3 and split.max() == 2 and min(_best_ious(truth, split)) > 0.9
    split = centre_watershed_labels(foreground, centre_heatmap(truth, 2.0), marker_threshold=0.5)
    assert split.max() == 2 and min(_best_ious(truth, split)) > 0.9


def test_six_patches_cover_a_tric_slice():
    assert patch_layout(1745, 2440, 2, 3) == (873, [0, 872], [0, 784, 1567])
    assert patch_layout(300, 350, 1, 1)[0] == 300


# ---- configs, schedule, PESEG ------------------------------------------------------------------

@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_loads(path):
    cfg = load_config(str(path))
    assert cfg.MODEL.META_ARCHITECTURE == "EfficientCellSegSegmentor"
    assert cfg.MODEL.DENSE.NUM_OUTPUTS == cfg.MODEL.DENSE.ECS.NUM_NETWORKS
    assert cfg.SOLVER.LR_SCHEDULER_NAME == "ReduceLROnPlateau" and cfg.SOLVER.WEIGHT_DECAY == 0.0  # Adam


def test_paper_settings_per_data_set():
    tric = load_config(str(CONFIGS / "ecs_tric.yaml"))
    assert tuple(tric.MODEL.DENSE.ECS.PATCHES) == (2, 3) and tric.MODEL.DENSE.DECODER == "ecs_distance_watershed"
    mda = load_config(str(CONFIGS / "ecs_mda231.yaml"))
    assert mda.MODEL.DENSE.ECS.NUM_NETWORKS == 2 and mda.MODEL.DENSE.LOSS == "dice_focal"
    assert mda.MODEL.DENSE.DECODER == "ecs_centre_watershed"
    assert load_config(str(CONFIGS / "ecs_a549_sim.yaml")).MODEL.DENSE.ECS.NETWORK_SIZE == 384
    model1 = load_config(str(CONFIGS / "ablation_model1.yaml"))
    assert model1.INPUT.ECS.TRANSFORM == "grey" and model1.MODEL.DENSE.ECS.ENCODER_WEIGHTS == ""
    assert tuple(load_config(str(CONFIGS / "ablation_model4.yaml")).MODEL.DENSE.ECS.DECODER_CHANNELS) == (112, 80, 48, 16)


def test_paper_data_sets_name_the_missing_folder(tmp_path, monkeypatch):
    from detectron2.data import DatasetCatalog

    from deepcens.data.ecs_datasets import register_efficientcellseg_datasets

    register_efficientcellseg_datasets(str(tmp_path))
    try:
        with pytest.raises(DeepcensInputError, match="Fluo-N3DL-TRIC"):
            DatasetCatalog.get("Fluo-N3DL-TRIC_train")
    finally:
        register_efficientcellseg_datasets()


def test_plateau_scheduler_reduces_the_lr_on_a_flat_validation_loss():
    from detectron2.utils.events import EventStorage

    optimizer = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    scheduler = StoragePlateauScheduler(optimizer, "val_total_loss", patience=2, factor=0.1)
    with EventStorage() as storage:
        for iteration in range(8):
            storage.iter = iteration
            if iteration % 2 == 0:
                storage.put_scalar("val_total_loss", 1.0)
            scheduler.step()
    assert math.isclose(optimizer.param_groups[0]["lr"], 1e-4)


def test_peseg_is_seg_per_million_parameters_in_the_ctc_table():
    results = add_parameter_efficiency({"ctc": {"SEG": 0.951, "DET": 0.9, "OP_CSB": 0.9255}}, 6_700_000, "a549")
    assert math.isclose(results["a549"]["ctc"]["PESEG"], 0.951 / 6.7)  # paper Table 3: 0.142
    header, rows = ctc_table(results)
    assert header[-2:] == ["PESEG", "parameters"] and rows[0][-1] == 6_700_000


# ---- training and inference end to end ----------------------------------------------------------

@pytest.mark.parametrize("heatmap", [False, True], ids=["segmentation", "with_centre_heatmap"])
def test_two_training_iterations_then_slice_and_volume_inference(tmp_path, heatmap):
    from detectron2.data import DatasetCatalog

    from deepcens.data.ctc import register_ctc_dataset
    from deepcens.data.synthetic import make_ctc_sequence
    from deepcens.engine.trainer import Trainer

    make_ctc_sequence(str(tmp_path / "Synthetic-Cells"), seed=1, size=64, frames=3)
    name = register_ctc_dataset(f"ecs_tiny_{heatmap}", str(tmp_path), "Synthetic-Cells", ["01"], "GT")
    overrides = {"MODEL.DENSE.ECS.NETWORK_SIZE": 0, "INPUT.ECS.PATCH_SIZE": 48, "SOLVER.IMS_PER_BATCH": 2,
                 "SOLVER.MAX_ITER": 2, "DATALOADER.NUM_WORKERS": 0, "DATASETS.TRAIN": (name,), "DATASETS.TEST": (),
                 "OUTPUT_DIR": str(tmp_path / "out"), "MODEL.DENSE.ECS.MIN_OBJECT_SIZE": 0}
    if heatmap:
        overrides.update({"MODEL.DENSE.NUM_OUTPUTS": 2, "MODEL.DENSE.ECS.NUM_NETWORKS": 2,
                          "MODEL.DENSE.TARGET": "foreground_centre", "MODEL.DENSE.LOSS": "dice_focal",
                          "MODEL.DENSE.DECODER": "ecs_centre_watershed"})
    cfg = ecs_cfg(**overrides)
    trainer = Trainer(cfg)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items() if v.dtype.is_floating_point}
    trainer.train()
    after = trainer.model.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert ("loss_focal" in trainer.storage.histories()) == heatmap  # the heatmap network has its focal loss
    model = trainer.model.eval()
    mapper = ContextSliceMapper(cfg, is_train=False)
    inputs = [mapper(d) for d in DatasetCatalog.get(name)]
    with torch.no_grad():
        outputs = model(inputs[:1])
    assert tuple(outputs[0]["instances"].image_size) == (64, 64)
    volume = model.predict_volume(inputs)  # three frames stacked as a volume
    assert volume.shape == (3, 64, 64) and volume.dtype == np.int32


def test_predict_writes_a_3d_label_tiff_for_a_stack_and_frame_labels_for_a_sequence(tmp_path):
    import tifffile

    from deepcens.predict import predict

    rng = np.random.default_rng(0)
    stack = (rng.random((6, 32, 48)) * 1000).astype(np.uint16)
    tifffile.imwrite(tmp_path / "volume.tif", stack)
    sequence = tmp_path / "01"
    sequence.mkdir()
    for t in range(3):
        tifffile.imwrite(sequence / f"t{t:03d}.tif", stack[t])
    cfg = ecs_cfg(**{"MODEL.DENSE.ECS.NETWORK_SIZE": 0, "MODEL.DENSE.ECS.FOREGROUND_THRESHOLD": 0.0,
                     "MODEL.DENSE.ECS.MIN_OBJECT_SIZE": 0})
    result = predict(cfg, [str(tmp_path / "volume.tif"), str(sequence)], str(tmp_path / "out"), progress=False,
                     allow_random_weights=True)
    labels = tifffile.imread(tmp_path / "out" / "labels" / "volume.tif")
    assert labels.shape == (6, 32, 48) and labels.dtype == np.uint16
    assert labels.max() == 1  # threshold 0: the whole volume is one 3D object
    assert (tmp_path / "out" / "labels" / "01" / "t002.tif").is_file()
    assert result["images"] == 4  # three 2D frames and one volume


def test_3d_sequence_is_predicted_as_volumes_and_scored_in_3d(tmp_path, monkeypatch):
    """Slice-wise maps re-stacked and split by the 3D watershed into the two touching balls of
    each volume; the written CTC result scores like py-ctcmetrics against the 3D reference."""
    import tifffile

    from deepcens.evaluation.ctc_measures import evaluate_ctc_folders
    from deepcens.modeling.meta_arch.efficientcellseg import EfficientCellSegSegmentor
    from deepcens.predict import predict

    truth = _touching_discs((12, 40, 56), ((6, 20, 18), (6, 20, 37)), 10).astype(np.uint16)
    (tmp_path / "01").mkdir()
    for kind in ("SEG", "TRA"):
        (tmp_path / "01_GT" / kind).mkdir(parents=True)
    for t in range(2):
        tifffile.imwrite(tmp_path / "01" / f"t{t:03d}.tif", np.where(truth > 0, 1000, 100).astype(np.uint16))
        tifffile.imwrite(tmp_path / "01_GT" / "SEG" / f"man_seg{t:03d}.tif", truth)
        tifffile.imwrite(tmp_path / "01_GT" / "TRA" / f"man_track{t:03d}.tif", truth)
    (tmp_path / "01_GT" / "TRA" / "man_track.txt").write_text("1 0 1 0\n2 0 1 0\n")
    # the network's map is replaced by the slice itself (green = the normalised slice): the test
    # checks the slice-wise -> volume -> 3D watershed -> CTC writing and scoring chain
    monkeypatch.setattr(EfficientCellSegSegmentor, "predict_probabilities", lambda self, image: image[1:2])
    cfg = ecs_cfg(**{"MODEL.DENSE.ECS.NETWORK_SIZE": 0, "MODEL.DENSE.DECODER": "ecs_distance_watershed",
                     "MODEL.DENSE.ECS.MIN_DISTANCE": 4, "MODEL.DENSE.ECS.MIN_OBJECT_SIZE": 0})
    predict(cfg, [str(tmp_path / "01")], str(tmp_path / "out"), ctc_format=True, progress=False, allow_random_weights=True)
    result = tifffile.imread(tmp_path / "out" / "01_RES" / "mask001.tif")
    assert result.shape == truth.shape and len(np.unique(result[result > 0])) == 2
    scores = evaluate_ctc_folders(tmp_path / "01_GT", tmp_path / "out" / "01_RES", tra=False)
    assert scores["SEG"] > 0.99 and scores["DET"] == 1.0  # a few voxels on the contact plane differ
    from deepcens.benchmarks.ctc_metrics import reference_measures

    reference = reference_measures(str(tmp_path / "01_GT"), str(tmp_path / "out" / "01_RES"))
    assert scores["SEG"] == pytest.approx(reference["SEG"]) and scores["DET"] == pytest.approx(reference["DET"])


def test_bn_momentum_key_sets_every_batchnorm_and_zero_keeps_the_paper_layers():
    from deepcens.modeling.dense import build_dense_network

    def momenta(cfg):
        return {m.momentum for m in build_dense_network(cfg).modules() if isinstance(m, torch.nn.BatchNorm2d)}

    assert momenta(ecs_cfg()) == {0.01, 0.1}  # encoder as torchvision (Keras 0.99), decoder PyTorch's default
    assert momenta(ecs_cfg(**{"MODEL.DENSE.ECS.BN_MOMENTUM": 0.3})) == {0.3}
    with pytest.raises(ValueError, match="BN_MOMENTUM"):
        build_dense_network(ecs_cfg(**{"MODEL.DENSE.ECS.BN_MOMENTUM": 1.5}))


def test_frame_percentile_normalisation_brightens_a_dark_slice_with_a_hot_pixel():
    slice_ = np.full((64, 64), 0.02, dtype=np.float32)
    slice_[20:40, 20:40] = 0.1  # a dim cell
    slice_[0, 0] = 1.0  # one saturated pixel sets the min-max range
    record = {"file_name": "x.tif", "image_id": 0, "image": slice_, "intensity_range": (0.0, 1.0),
              "context_images": (None, None)}
    images = {}
    for normalization in ("sequence_minmax", "frame_percentile"):
        cfg = ecs_cfg(**{"INPUT.DENSE.NORMALIZATION": normalization})
        images[normalization] = ContextSliceMapper(cfg, is_train=False)(dict(record))["image"].numpy()
    assert images["sequence_minmax"][1, 30, 30] < 0.1  # the cell stays dark under min-max
    assert images["frame_percentile"][1, 30, 30] == pytest.approx(1.0)
    assert images["frame_percentile"][1, 5, 5] == pytest.approx(0.0)


def test_training_cache_reads_each_slice_once_and_keeps_the_last_ones(monkeypatch):
    cfg = ecs_cfg(**{"INPUT.ECS.CACHE_SLICES": 2, "INPUT.ECS.PATCH_SIZE": 32, "MODEL.DENSE.ECS.NETWORK_SIZE": 0})
    mapper = ContextSliceMapper(cfg, is_train=True)
    reads = []
    rng = np.random.RandomState(0)

    def fake_image(record):
        reads.append(record["file_name"])
        return rng.rand(48, 48, 3).astype(np.float32)

    monkeypatch.setattr(mapper, "load_image", fake_image)
    monkeypatch.setattr(mapper, "load_target", lambda record: np.ones((48, 48), dtype=np.uint8))
    records = [{"file_name": f"t{i:03d}.tif", "image_id": i, "height": 48, "width": 48} for i in range(3)]
    for record in (records[0], records[0], records[1], records[0], records[2], records[1], records[0]):
        out = mapper(dict(record))
        assert out["image"].shape == (3, 32, 32) and out["target"].shape == (32, 32)
    # t001 dropped when t002 came in (cache of 2, least recently used first); t000 stayed
    assert reads == ["t000.tif", "t001.tif", "t002.tif", "t001.tif", "t000.tif"]
    assert not mapper._cached_slice(records[0])[0].flags.writeable
    assert ContextSliceMapper(cfg, is_train=False).cache_slices == 0  # prediction never caches
