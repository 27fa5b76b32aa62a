"""2D DiNTS and MONAI baselines: parameter counts, the six-operation cell, targets, decoder,
loss, cell-segmentation folders, and tiny search -> decode -> retrain runs (1 and 2 processes)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tifffile
import torch
from detectron2.data import DatasetCatalog
from detectron2.modeling import build_model

from conftest import REPO
from deepcens.data.cellseg import (CellSegMapper, interior_boundary_target, normalize_cellseg,
                                   register_cellseg_folder, register_cellseg_from_cfg)
from deepcens.engine.setup import load_config
from deepcens.errors import DeepcensInputError
from deepcens.evaluation.matching import f1_score
from deepcens.modeling.dense.dints import SixOpCell
from deepcens.postprocess.interior_boundary import interior_boundary_labels

CONFIGS = REPO / "configs" / "dints"


def _count(config: str, *opts: str) -> int:
    cfg = load_config(str(CONFIGS / config), ["MODEL.DEVICE", "cpu", *opts])
    return sum(p.numel() for p in build_model(cfg).parameters())


@pytest.mark.parametrize("config, expected", [
    ("unet.yaml", 1_626_072),
    ("segresnet_deconv.yaml", 400_571),
    ("segresnet_nontrainable.yaml", 395_139),
    ("segresnet_pixelshuffle.yaml", 443_747),
])
def test_baseline_parameter_counts_are_the_papers(config, expected):
    assert _count(config) == expected  # Table 3, exactly


@pytest.mark.parametrize("config, opts, paper", [
    ("dints_search_mul05.yaml", (), 3_782_259),
    ("dints_search.yaml", (), 15_115_251),
])
def test_dints_supernet_counts_within_two_percent_of_table_3(config, opts, paper):
    assert abs(_count(config, *opts) - paper) / paper < 0.02


def test_six_op_cell_operations_and_ram_costs():
    assert list(SixOpCell.OPS2D) == ["skip_connect", "conv_1x1", "conv_3x3", "dwconv_3x3", "conv_5x5", "conv_7x7"]
    cell = SixOpCell(8, 8, 0, arch_code_c=np.ones(6), spatial_dims=2)
    ops = list(cell.op.ops)
    assert len(ops) == 6
    assert [op.ram_cost for op in ops] == [0, 3, 3, 3, 3, 3]
    kernels = [None] + [op.conv.kernel_size for op in ops[1:]]
    assert kernels == [None, (1, 1), (3, 3), (3, 3), (5, 5), (7, 7)]
    assert ops[3].conv.groups == 8 and ops[2].conv.groups == 1  # depthwise vs full 3x3
    x = torch.rand(2, 8, 16, 16)
    weights = torch.softmax(torch.rand(6), 0)
    assert cell(x, weights).shape == x.shape
    # a one-hot code keeps one operation only (what the retrained network builds)
    chosen = SixOpCell(8, 8, 0, arch_code_c=np.eye(6)[4], spatial_dims=2)
    assert len(chosen.op.ops) == 1 and chosen.op.ops[0].conv.kernel_size == (5, 5)


def test_six_op_search_space_sizes_its_ram_table():
    from monai.networks.nets import TopologySearch

    space = TopologySearch(channel_mul=0.25, cell=SixOpCell, num_blocks=2, num_depths=3, spatial_dims=2)
    assert space.log_alpha_c.shape == (2, 7, 6)
    preprocess = space.cell_tree[str((0, 1))].preprocess.ram_cost
    np.testing.assert_allclose(space.ram_cost[0, 1], np.array([0, 3, 3, 3, 3, 3]) + preprocess)


def _touching_cells() -> np.ndarray:
    labels = np.zeros((40, 40), np.int32)
    labels[5:20, 5:18] = 1
    labels[5:20, 18:32] = 2  # touches cell 1
    labels[25:36, 8:20] = 3
    return labels


def test_interior_boundary_target_separates_touching_cells():
    labels = _touching_cells()
    target = interior_boundary_target(labels)
    assert set(np.unique(target)) == {0, 1, 2}
    assert (target[12, 17:20] == 2).all()  # the contact line between cells 1 and 2 is boundary
    assert target[12, 10] == 1 and target[30, 14] == 1 and target[0, 0] == 0
    assert (target[labels == 0] != 1).all()  # interior never leaves the objects


def test_decoder_recovers_touching_instances_from_their_target():
    labels = _touching_cells()
    probabilities = np.eye(3, dtype=np.float32)[interior_boundary_target(labels)].transpose(2, 0, 1)
    decoded = interior_boundary_labels(probabilities, min_object_size=4, growth=2)
    assert len(np.unique(decoded)) - 1 == 3
    assert f1_score(labels, decoded) == 1.0
    without_growth = interior_boundary_labels(probabilities, min_object_size=4, growth=0)
    assert (decoded > 0).sum() > (without_growth > 0).sum()  # growth gives back the boundary band


def test_dice_ce_is_monais_and_skips_ignored_pixels():
    from monai.losses import DiceCELoss

    from deepcens.modeling.dense.monai_nets import DiceCE

    logits = torch.randn(2, 3, 8, 8)
    targets = torch.randint(0, 3, (2, 8, 8))
    ours = DiceCE(255)(logits, targets)["loss_dice_ce"]
    torch.testing.assert_close(ours, DiceCELoss(to_onehot_y=True, softmax=True)(logits, targets[:, None]))
    ignored = targets.clone()
    ignored[:, :, 4:] = 255
    changed = logits.clone()
    changed[:, :, :, 4:] = torch.randn(2, 3, 8, 4) * 10
    torch.testing.assert_close(DiceCE(255)(logits, ignored)["loss_dice_ce"], DiceCE(255)(changed, ignored)["loss_dice_ce"])


def test_neurips_layout_registration_and_normalisation(shared_data):
    names = register_cellseg_folder("test_neurips", str(shared_data / "neurips-cellseg-sample"), val_fraction=0.34)
    assert names[:3] == ["test_neurips_all", "test_neurips_train", "test_neurips_val"]
    records = DatasetCatalog.get("test_neurips_all")
    assert len(records) == 3 and all(r["label_file_name"].endswith("_label.tiff") for r in records)
    train, val = DatasetCatalog.get("test_neurips_train"), DatasetCatalog.get("test_neurips_val")
    assert len(val) == 1 and {r["image_id"] for r in train} | {r["image_id"] for r in val} == {r["image_id"] for r in records}
    gray = next(r for r in records if r["file_name"].endswith(".tif"))  # the 1-channel uint16 image
    cfg = load_config(str(CONFIGS / "unet.yaml"), ["MODEL.DEVICE", "cpu", "INPUT.DENSE.CROP_SIZE", "64"])
    mapped = CellSegMapper(cfg, is_train=True)(dict(gray))
    assert mapped["image"].shape == (3, 64, 64) and mapped["target"].shape == (64, 64)
    assert float(mapped["image"].min()) >= 0.0 and float(mapped["image"].max()) <= 1.0
    image = normalize_cellseg(np.stack([np.arange(100, dtype=np.uint16).reshape(10, 10)] * 1, -1))
    assert image.shape == (10, 10, 3) and np.allclose(image[..., 0], image[..., 2]) and image.max() == 1.0
    dsb = register_cellseg_folder("test_dsb", str(shared_data / "dsb2018-nuclei"), val_fraction=0.2)
    assert len(DatasetCatalog.get(dsb[2])) == 10 and len(DatasetCatalog.get(dsb[1])) == 41


def test_cellseg_folders_pair_like_user_label_folders(tmp_path):
    """Cell-segmentation folders accept every label naming of DATASETS.FOLDERS and follow
    DATASETS.BAD_INPUT_POLICY: an image without label names the file (fail) or is left out (skip)."""
    root = tmp_path / "mixed"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    labels = np.zeros((20, 24), np.uint16)
    labels[4:12, 4:12] = 1
    for stem, label_name in [("a", "a_label.tiff"), ("b", "b.tif"), ("c", "c_masks.tif"), ("d", None)]:
        tifffile.imwrite(root / "images" / f"{stem}.tif", (labels * 100).astype(np.uint8))
        if label_name:
            tifffile.imwrite(root / "labels" / label_name, labels)
    with pytest.raises(DeepcensInputError, match=r"d\.tif.*no label image"):
        DatasetCatalog.get(register_cellseg_folder("mixed_fail", str(root))[0])
    cfg = load_config(str(CONFIGS / "unet.yaml"), [
        "MODEL.DEVICE", "cpu", "DATASETS.CELLSEG.FOLDERS", f"[['mixed', '{root}']]", "DATASETS.BAD_INPUT_POLICY", "skip"])
    register_cellseg_from_cfg(cfg)
    records = DatasetCatalog.get("mixed_all")
    assert [(r["image_id"], os.path.basename(r["label_file_name"]), r["height"], r["width"]) for r in records] == [
        ("a", "a_label.tiff", 20, 24), ("b", "b.tif", 20, 24), ("c", "c_masks.tif", 20, 24)]


def _tiny_folder(root) -> str:
    """Six 48x48 images (gray and RGB) with disc-shaped cells, in the challenge layout."""
    rng = np.random.RandomState(0)
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    yy, xx = np.mgrid[:48, :48]
    for index in range(6):
        labels = np.zeros((48, 48), np.uint16)
        for cell in range(1, 5):
            cy, cx = rng.randint(8, 40, size=2)
            labels[(yy - cy) ** 2 + (xx - cx) ** 2 < 25] = cell
        image = (labels > 0) * 180 + rng.randint(0, 40, size=(48, 48))
        if index % 2:
            image = np.stack([image] * 3, -1)
        tifffile.imwrite(root / "images" / f"cell_{index:05d}.tif", image.astype(np.uint8))
        tifffile.imwrite(root / "labels" / f"cell_{index:05d}_label.tiff", labels)
    return str(root)


def _tiny_opts(folder: str, out) -> list[str]:
    return [
        "MODEL.DEVICE", "cpu", "DATASETS.CELLSEG.FOLDERS", f"[['tiny', '{folder}']]", "DATASETS.CELLSEG.VAL_FRACTION", "0.34",
        "DATASETS.TRAIN", "('tiny_train_weights',)", "SOLVER.DINTS_SEARCH.ARCH_DATASETS", "('tiny_train_arch',)",
        "DATASETS.VAL", "('tiny_val',)", "DATASETS.TEST", "('tiny_val',)",
        "MODEL.DENSE.DINTS.CHANNEL_MUL", "0.25", "MODEL.DENSE.DINTS.NUM_BLOCKS", "2", "MODEL.DENSE.DINTS.CELL", "six_ops",
        "INPUT.DENSE.CROP_SIZE", "32", "MODEL.DENSE.MONAI.ROI_SIZE", "32", "SOLVER.IMS_PER_BATCH", "2",
        "SOLVER.MAX_ITER", "2", "SOLVER.DINTS_SEARCH.WARMUP_ITERS", "1", "SOLVER.DINTS_SEARCH.DECODE_PERIOD", "0",
        "SOLVER.EARLY_STOP.PATIENCE", "0", "DATALOADER.NUM_WORKERS", "0", "RUN.OUTPUT_OVERLAYS", "0",
        "SOLVER.CHECKPOINT_PERIOD", "1000", "OUTPUT_DIR", str(out),
    ]


def test_search_decode_retrain_tiny(tmp_path):
    from deepcens.engine.setup import prepare_datasets
    from deepcens.engine.trainer import Trainer

    folder = _tiny_folder(tmp_path / "data")
    cfg = load_config(str(CONFIGS / "dints_search.yaml"), _tiny_opts(folder, tmp_path / "search"))
    prepare_datasets(cfg)
    trainer = Trainer(cfg)
    space = trainer._trainer.space
    alpha_before = space.log_alpha_c.detach().clone()
    trainer.train()
    assert not torch.equal(alpha_before, space.log_alpha_c.detach())  # one architecture step ran
    assert all(p is not space.log_alpha_c for g in trainer.optimizer.param_groups for p in g["params"])
    arch = json.loads((tmp_path / "search" / "arch_code.json").read_text())
    assert arch["cell"] == "six_ops" and np.asarray(arch["arch_code_c"]).shape == (2, 7)

    retrain_opts = _tiny_opts(folder, tmp_path / "retrain") + [
        "MODEL.DENSE.NETWORK", "DiNTS2D", "MODEL.DENSE.DINTS.ARCH_FILE", str(tmp_path / "search" / "arch_code.json"),
        "SOLVER.TRAIN_SCHEME", "EarlyStopping", "DATASETS.TRAIN", "('tiny_train',)",
        "SOLVER.EARLY_STOP.PATIENCE", "1", "SOLVER.EARLY_STOP.PERIOD", "1", "SOLVER.MAX_ITER", "3"]
    cfg = load_config(str(CONFIGS / "dints_search.yaml"), retrain_opts)
    retrainer = Trainer(cfg)
    assert not any("log_alpha" in name for name, _ in retrainer.model.named_parameters())
    retrainer.train()
    loop = retrainer._trainer
    assert loop.best_val_loss < float("inf") and loop.checks_without_improvement <= 1
    results = Trainer.test(cfg, retrainer.model)
    assert {"F1", "precision", "recall", "Dice"} <= set(results["F1"])

    bad = dict(arch, num_blocks=5)
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    with pytest.raises(ValueError, match="bad.json: searched with num_blocks=5"):
        build_model(load_config(str(CONFIGS / "dints_search.yaml"), retrain_opts[:-2] + [
            "SOLVER.MAX_ITER", "3", "MODEL.DENSE.DINTS.ARCH_FILE", str(tmp_path / "bad.json")]))


def test_search_runs_on_two_cpu_processes(tmp_path):
    folder = _tiny_folder(tmp_path / "data")
    out = tmp_path / "search2"
    command = [sys.executable, "tools/train_net.py", "--config-file", str(CONFIGS / "dints_search.yaml"),
               "--num-gpus", "2", "--dist-url", "auto", *_tiny_opts(folder, out), "SOLVER.IMS_PER_BATCH", "4",
               "TEST.EVAL_PERIOD", "0", "RUN.CONSOLE", "progress"]
    result = subprocess.run(command, cwd=REPO, env=dict(os.environ, OMP_NUM_THREADS="1"),
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    arch = json.loads((out / "arch_code.json").read_text())
    assert arch["iteration"] == 2
    metrics = [json.loads(line) for line in (out / "metrics.json").read_text().splitlines() if line.strip()]
    assert any("arch_arch_ram" in record or any(k.startswith("arch_") for k in record) for record in metrics)


@pytest.mark.parametrize("search, retrain", [
    ("cpu_dints_search.yaml", "cpu_dints_retrain.yaml"),
    ("dints_search.yaml", "dints_retrain.yaml"),
])
def test_retrain_configs_read_the_file_their_search_writes(search, retrain):
    """The documented flow is two commands: the retraining reads the search's final decode."""
    searched = load_config(str(CONFIGS / search), ["MODEL.DEVICE", "cpu"])
    retrained = load_config(str(CONFIGS / retrain), ["MODEL.DEVICE", "cpu"])
    assert retrained.MODEL.DENSE.DINTS.ARCH_FILE == os.path.join(searched.OUTPUT_DIR, "arch_code.json")
    for key in ("CHANNEL_MUL", "NUM_BLOCKS", "NUM_DEPTHS", "USE_DOWNSAMPLE", "CELL"):
        assert retrained.MODEL.DENSE.DINTS[key] == searched.MODEL.DENSE.DINTS[key], key
    assert searched.SOLVER.DINTS_SEARCH.WARMUP_ITERS < searched.SOLVER.MAX_ITER  # architecture steps run
