"""NAS U-Net: search space (Table 1), genotypes, binarised search, targets, marker watershed, two processes."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tifffile
import torch

from conftest import REPO
from deepcens.data.nas_targets import marker_target, segmentation_target, unet_weight_map
from deepcens.data.pair_mapper import previous_frame_record
from deepcens.errors import DeepcensInputError
from deepcens.modeling.dense.nas_genotype import Genotype, load_genotype, save_genotype, save_genotype_picture
from deepcens.modeling.dense.nas_ops import BO_SETS, OpSettings, make_bo
from deepcens.modeling.dense.nas_unet import NasUNet
from deepcens.postprocess.watershed import decode_marker_watershed, marker_watershed

TABLE_1 = {  # the paper's Table 1, in its order
    "T": ["CLSTM"],
    "D": ["Max-pooling", "Average-pooling", "Down conv", "Down atrous conv", "Down depthwise-separable conv",
          "Down squeeze-and-excitation"],
    "U": ["Up conv", "Up atrous conv", "Up depthwise-separable conv", "Up squeeze-and-excitation"],
    "N": ["None", "Identity", "Conv", "Atrous conv", "Shuffle conv", "Depthwise-separable conv",
          "Squeeze-and-excitation"],
}
NAME_OF = {"clstm": "CLSTM", "max_pool": "Max-pooling", "avg_pool": "Average-pooling", "down_conv": "Down conv",
           "down_atrous_conv": "Down atrous conv", "down_dep_conv": "Down depthwise-separable conv",
           "down_se": "Down squeeze-and-excitation", "up_conv": "Up conv", "up_atrous_conv": "Up atrous conv",
           "up_dep_conv": "Up depthwise-separable conv", "up_se": "Up squeeze-and-excitation", "none": "None",
           "identity": "Identity", "conv": "Conv", "atrous_conv": "Atrous conv", "shuffle_conv": "Shuffle conv",
           "dep_conv": "Depthwise-separable conv", "se": "Squeeze-and-excitation"}
SMALL = OpSettings(channels=8, gn_groups=4, dilation=2, se_reduction=4, shuffle_groups=4)


def test_bo_sets_are_table_1_and_keep_16_channels():
    assert {kind: [NAME_OF[n] for n in names] for kind, names in BO_SETS.items()} == TABLE_1
    x = torch.rand(2, 16, 8, 8)
    scale = {"T": 1, "D": 0.5, "U": 2, "N": 1}
    for kind, names in BO_SETS.items():
        for name in names:
            op = make_bo(name, OpSettings())
            y = op(torch.cat([x, x]), 2) if kind == "T" else op(x)
            side = int(8 * scale[kind])
            assert y.shape[1:] == (16, side, side), (name, y.shape)
    assert float(make_bo("none", OpSettings())(x).abs().sum()) == 0.0


def _random_supernet(seed: int = 0) -> NasUNet:
    torch.manual_seed(seed)
    net = NasUNet(genotype=None, settings=SMALL)
    with torch.no_grad():
        for p in net.arch_parameters():
            p.normal_()
    return net


def test_genotype_round_trip_rebuilds_the_same_network(tmp_path):
    genotype = _random_supernet().derive()
    path = tmp_path / "genotype.json"
    save_genotype(str(path), genotype)
    loaded = load_genotype(str(path), 3)
    assert loaded == genotype
    direct, rebuilt = NasUNet(genotype=genotype, settings=SMALL), NasUNet(genotype=loaded, settings=SMALL)
    assert str(direct) == str(rebuilt)
    assert sum(p.numel() for p in direct.parameters()) == sum(p.numel() for p in rebuilt.parameters())
    assert not direct.arch_parameters()
    # the derived network keeps one BO per CU and two edges per node
    block = direct.down_blocks[0]
    assert all(len(cu.ops) == 1 for cu in block.edges.values()) and len(block.edges) == 6
    save_genotype_picture(str(tmp_path / "cells.png"), loaded)
    assert (tmp_path / "cells.png").read_bytes()[:4] == b"\x89PNG"


def test_supernet_in_eval_mode_runs_its_derived_network():
    net = _random_supernet(1)
    derived = NasUNet(genotype=net.derive(), settings=SMALL)
    derived.load_state_dict({k: v for k, v in net.state_dict().items() if k in derived.state_dict()})
    net.eval(), derived.eval()
    x = torch.rand(1, 2, 32, 32)
    with torch.no_grad():
        for a, b in zip(net(x), derived(x)):
            torch.testing.assert_close(a, b)


@pytest.mark.parametrize("entry, value, problem", [
    (("up", 0, 1, "edges", 1, 1), "max_pool", "up[0].nodes[1].edges[1]"),
    (("down", 2, 0, "down"), "conv", "down[2].nodes[0].down"),
    (("down", 1, 2, "edges", 0, 0), 7, "down[1].nodes[2].edges[0]"),
])
def test_genotype_outside_the_search_space_is_refused(tmp_path, entry, value, problem):
    data = _random_supernet().derive().to_dict()
    kind, block, node, *rest = entry
    target = data[kind][block]["nodes"][node]
    for key in rest[:-1]:
        target = target[key]
    target[rest[-1]] = value
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(DeepcensInputError) as error:
        load_genotype(str(path), 3)
    message = str(error.value)
    assert str(path) in message and problem in message and "\n" not in message


def test_binarised_steps_run_fewer_paths_and_train_only_their_parameters():
    net = _random_supernet(2)
    net.train()
    x = torch.rand(2, 2, 32, 32)
    evaluations = {}
    for mode in ("binary", "all_paths"):
        net.search_mode = mode
        net.begin_step("arch", 5)
        for p in net.weight_parameters():
            p.requires_grad_(False)
        segmentation, markers = net(x)
        (segmentation.mean() + markers.mean()).backward()
        evaluations[mode] = net.last_bo_evaluations
        grads = [p.grad for p in net.arch_parameters()]
        assert all(p.grad is None for p in net.weight_parameters())
        assert sum(g is not None and bool(g.abs().sum() > 0) for g in grads) > 10
        net.zero_grad(set_to_none=True)
    assert evaluations["binary"] < evaluations["all_paths"] / 2
    net.search_mode = "binary"
    net.begin_step("weight", 5)
    net(x)
    assert net.last_bo_evaluations < evaluations["binary"]  # one BO per CU in weight steps


def _discs(shape, centres, radius):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    labels = np.zeros(shape, np.int32)
    for index, (cy, cx) in enumerate(centres, 1):
        labels[(yy - cy) ** 2 + (xx - cx) ** 2 <= radius ** 2] = index
    return labels


def test_marker_watershed_splits_touching_cells():
    truth = _discs((60, 80), [(30, 25), (30, 47)], 12)  # overlapping discs: one connected blob
    foreground = truth > 0
    from scipy import ndimage

    assert ndimage.label(foreground)[1] == 1
    probability = ndimage.distance_transform_edt(foreground).astype(np.float32)
    seeds = _discs((60, 80), [(30, 25), (30, 47)], 3) > 0
    labels = marker_watershed(probability, seeds, foreground)
    assert labels.max() == 2
    for index in (1, 2):
        overlap = max(np.sum((labels == index) & (truth == k)) / np.sum(truth == k) for k in (1, 2))
        assert overlap > 0.85
    # a foreground component without a seed keeps its own label
    extra = foreground.copy()
    extra[2:6, 70:76] = True
    assert marker_watershed(np.where(extra, 1.0, 0.0), seeds, extra).max() == 3
    assert marker_watershed(np.where(extra, 1.0, 0.0), seeds, extra, keep_unseeded=False).max() == 2


def test_marker_watershed_decoder_returns_instances():
    truth = _discs((40, 60), [(20, 20), (20, 36)], 9)
    cell = (truth > 0).astype(np.float32)
    markers = (_discs((40, 60), [(20, 20), (20, 36)], 3) > 0).astype(np.float32)
    probabilities = np.stack([1 - cell, cell, markers])
    instances = decode_marker_watershed(torch.as_tensor(probabilities))
    assert len(instances) == 2 and instances.pred_masks.shape == (2, 40, 60)
    assert torch.all(instances.scores > 0.9) and set(instances.pred_classes.tolist()) == {0}
    faint = probabilities.copy()
    faint[1, :, 28:] *= 0.6  # the right cell's probability drops to 0.6 (background texture)
    faint[0] = 1 - faint[1]
    assert len(decode_marker_watershed(torch.as_tensor(faint))) == 2
    kept = decode_marker_watershed(torch.as_tensor(faint), min_score=0.7)
    assert len(kept) == 1 and kept.pred_boxes.tensor[0, 0].item() < 20  # the left, confident cell


def test_pair_mapper_applies_one_appearance_draw_to_both_frames(tmp_path):
    from detectron2.config import get_cfg

    from deepcens.config import add_deepcens_config
    from deepcens.data.pair_mapper import FramePairMapper

    cfg = get_cfg()
    add_deepcens_config(cfg)
    cfg.merge_from_file(os.path.join(REPO, "configs", "nas", "nas_unet_sim_cpu.yaml"))
    cfg.INPUT.DENSE.CROP_SIZE, cfg.INPUT.DENSE.CONTEXT_PAD = 32, 0
    cfg.INPUT.DENSE.FLIP, cfg.INPUT.DENSE.ROTATE_90 = False, False
    cfg.INPUT.NAS.REVERSE_PAIR, cfg.INPUT.NAS.AFFINE_PROB, cfg.INPUT.NAS.ELASTIC_PROB = False, 0.0, 0.0
    frame = np.tile(np.linspace(0.1, 0.9, 32, dtype=np.float32), (32, 1))[:, :, None]
    pair = np.concatenate([frame, frame], axis=2)
    maps = [np.zeros((32, 32), np.uint8)]
    plain = FramePairMapper(cfg, is_train=True)
    same, _ = plain.augment_pair(pair, maps, [255], 32, np.random.RandomState(0))
    np.testing.assert_array_equal(same, pair)  # no INPUT.DENSE.AUGMENT: pixels untouched
    cfg.INPUT.DENSE.AUGMENT.PROBABILITY, cfg.INPUT.DENSE.AUGMENT.GAMMA = 1.0, (0.5, 2.0)
    out, _ = FramePairMapper(cfg, is_train=True).augment_pair(pair, maps, [255], 32, np.random.RandomState(0))
    assert not np.allclose(out, pair)
    np.testing.assert_array_equal(out[:, :, 0], out[:, :, 1])  # both frames changed alike


def test_targets_weight_map_and_markers():
    labels = _discs((40, 70), [(20, 20), (20, 45)], 11)  # 3-pixel gap between the cells
    weights = unet_weight_map(labels, w0=10.0, sigma=5.0, class_balance=False)
    assert weights[20, 33] > 5.0  # in the narrow gap: w0 exp(-(d1 + d2)^2 / 2 sigma^2) is large
    assert weights[2, 2] < 1.01 and weights[20, 20] == 1.0
    markers = marker_target(labels, erosion=4)
    from scipy import ndimage

    assert ndimage.label(markers)[1] == 2 and markers[20, 20] == 1 and markers[20, 9] == 0
    touching = _discs((40, 70), [(20, 20), (20, 38)], 10)
    four = segmentation_target(touching, 4, gap_distance=3)
    assert set(np.unique(four)) == {0, 1, 2, 3}


def test_previous_frame_of_a_ctc_sequence(tmp_path):
    for t in range(3):
        tifffile.imwrite(tmp_path / f"t{t:03d}.tif", np.full((4, 4), t, np.uint16))
    record = {"file_name": str(tmp_path / "t002.tif")}
    assert previous_frame_record(record)["file_name"] == str(tmp_path / "t001.tif")
    first = {"file_name": str(tmp_path / "t000.tif")}
    assert previous_frame_record(first) is first  # the first frame pairs with itself
    preloaded = {"file_name": "x.tif", "image": np.zeros((4, 4, 1)), "previous_image": np.ones((4, 4, 1))}
    assert previous_frame_record(preloaded)["image"].max() == 1


TINY = ["INPUT.DENSE.CROP_SIZE", "32", "SOLVER.IMS_PER_BATCH", "2", "DATALOADER.NUM_WORKERS", "0",
        "DATASETS.TEST", "()", "DATASETS.VAL", "()", "MODEL.NAS.CHANNELS", "8", "MODEL.NAS.GN_GROUPS", "4",
        "SOLVER.CHECKPOINT_PERIOD", "1000"]


@pytest.mark.parametrize("config, extra", [
    ("configs/nas/nas_unet_search_sim_cpu.yaml", ["SOLVER.MAX_ITER", "3", "MODEL.NAS.SEARCH.LOG_PERIOD", "1"]),
    ("configs/nas/nas_unet_sim_cpu.yaml", ["SOLVER.MAX_ITER", "2"]),
])
def test_cpu_configs_run_in_two_processes(shared_data, tmp_path, config, extra):
    env = dict(os.environ, OMP_NUM_THREADS="1", DEEPCENS_CTC_ROOT=str(shared_data / "ctc"),
               DEEPCENS_CACHE_DIR=str(tmp_path / "cache"))
    out = tmp_path / "run"
    command = [sys.executable, str(REPO / "tests" / "nas_dist_worker.py"), config, str(out), *TINY, *extra]
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = json.loads((out / "nas_report.json").read_text())
    assert len(ranks) == 2 and ranks[0]["digest"] == ranks[1]["digest"]
    if "search" in config:
        genotype = load_genotype(str(out / "genotype.json"), 3)
        assert isinstance(genotype, Genotype)
        assert (out / "genotype.png").is_file()
        records = [json.loads(line) for line in (out / "metrics.json").read_text().splitlines() if line.strip()]
        assert any(key.startswith("arch/D1/") for record in records for key in record)


class _SupernetProbe(torch.nn.Module):
    """A model around a small supernet whose loss is the mean of both heads; records autocast states."""

    def __init__(self):
        super().__init__()
        self.network = _random_supernet(3)
        self.autocast: list[bool] = []

    def forward(self, batch):
        self.autocast.append(torch.is_autocast_enabled("cpu"))
        segmentation, markers = self.network(batch)
        return {"loss_seg": segmentation.float().pow(2).mean(), "loss_marker": markers.float().pow(2).mean()}


@pytest.mark.parametrize("precision", [None, torch.bfloat16])
def test_search_loop_alternates_steps_and_honours_amp(tmp_path, precision):
    from deepcens.engine.nas_search import NasSearch

    def batches():
        while True:
            yield torch.rand(2, 2, 32, 32)

    model = _SupernetProbe()
    model.train()
    arch_before = [p.detach().clone() for p in model.network.arch_parameters()]
    kernels_before = [p.detach().clone() for p in model.network.weight_parameters()]
    arch_optimizer = torch.optim.Adam(model.network.arch_parameters(), lr=0.01)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.01)
    loop = NasSearch(model, batches(), batches(), optimizer, arch_optimizer, iters_per_epoch=1, max_iter=2,
                     patience_epochs=0, warmup_epochs=0, log_period=1, seed=0, output_dir=str(tmp_path),
                     precision=precision)
    loop.train(0, 2)
    assert model.autocast == [precision is not None] * 4  # an architecture and a weight step per iteration
    assert any(not torch.equal(a, p) for a, p in zip(arch_before, model.network.arch_parameters()))
    assert any(not torch.equal(k, p) for k, p in zip(kernels_before, model.network.weight_parameters()))
    assert load_genotype(str(tmp_path / "genotype.json"), 3) == model.network.derive()
