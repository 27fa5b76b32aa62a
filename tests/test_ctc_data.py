"""CTC dataset registration: real sequences, the paper's data configurations, 3D slices, bad folders."""
from __future__ import annotations

import os
import re

import numpy as np
import pytest
import tifffile
from detectron2.data import DatasetCatalog, MetadataCatalog

from deepcens.data import ctc
from deepcens.errors import DeepcensInputError

CONTRACT_KEYS = {"file_name", "image_id", "height", "width", "label_file_name", "tra_file_name", "ctc_dataset",
                 "sequence", "frame", "intensity_range", "label_source", "sparse_labels"}


def make_ctc_tree(root, dataset="Fake-2D", frames=6, gt_frames=(1, 3, 4), st=True, shape=(24, 20),
                  sequences=("01",), offset=100):
    """A tiny CTC dataset: one moving square cell (track 1) plus a second one from frame 2."""
    for s_index, seq in enumerate(sequences):
        seq_dir = os.path.join(root, dataset, seq)
        for sub in ("", "_GT/SEG", "_GT/TRA", "_ST/SEG" if st else ""):
            os.makedirs(seq_dir + sub, exist_ok=True)
        lines = ["1 0 %d 0" % (frames - 1), "2 2 %d 0" % (frames - 1)]
        for t in range(frames):
            labels = np.zeros(shape, np.uint16)
            labels[..., 2 + t:8 + t, 3:9] = 1
            if t >= 2:
                labels[..., 12:18, 10:16] = 2
            image = (labels > 0).astype(np.uint16) * 500 + offset + 10 * t + s_index
            tifffile.imwrite(f"{seq_dir}/t{t:03d}.tif", image)
            tifffile.imwrite(f"{seq_dir}_GT/TRA/man_track{t:03d}.tif", labels)
            if t in gt_frames:
                gt = labels.copy()
                if t == 4:
                    gt[gt == 2] = 0  # sparse: cell 2 not labelled
                tifffile.imwrite(f"{seq_dir}_GT/SEG/man_seg{t:03d}.tif", gt)
            if st:
                tifffile.imwrite(f"{seq_dir}_ST/SEG/man_seg{t:03d}.tif", labels)
        with open(f"{seq_dir}_GT/TRA/man_track.txt", "w") as handle:
            handle.write("\n".join(lines) + "\n")
    return os.path.join(root, dataset)


# ---- real data ---------------------------------------------------------------------------------

def test_default_sim_datasets_follow_the_contract(shared_data):
    train = DatasetCatalog.get("ctc_sim_train")
    val = DatasetCatalog.get("ctc_sim_val")
    assert [d["frame"] for d in train] == list(range(50))
    assert [d["frame"] for d in val] == list(range(50, 65))
    d = train[0]
    assert CONTRACT_KEYS <= set(d)
    assert (d["height"], d["width"]) == (690, 628) and d["label_source"] == "GT" and d["sequence"] == "01"
    assert d["ctc_dataset"] == "Fluo-N2DH-SIM+" and not d["sparse_labels"] and d["target_dilation"] == 2
    assert d["label_file_name"].endswith("man_seg000.tif") and d["tra_file_name"].endswith("man_track000.tif")
    frames = [tifffile.imread(p) for p in sorted((shared_data / "ctc" / "Fluo-N2DH-SIM+" / "01").glob("t*.tif"))]
    assert d["intensity_range"] == (float(min(f.min() for f in frames)), float(max(f.max() for f in frames)))
    image = ctc.read_ctc_image(d)
    assert image.dtype == np.float32 and image.shape == (690, 628) and 0.0 <= image.min() and image.max() <= 1.0
    meta = MetadataCatalog.get("ctc_sim_train")
    assert meta.thing_classes == ["cell"] and meta.evaluator_type == "cell" and meta.ctc_root


def test_sparse_gold_truth_is_flagged(shared_data):
    gowt1 = DatasetCatalog.get("ctc_gowt1_train")
    assert len(gowt1) == 30  # frames without reference are skipped
    sparse = [d for d in gowt1 if d["sparse_labels"]]
    assert sparse
    d = sparse[0]
    labels, markers = ctc.read_ctc_labels(d), ctc.read_ctc_markers(d)
    assert len(np.unique(markers)) - 1 > len(np.unique(labels)) - 1
    assert all(not d["sparse_labels"] for d in DatasetCatalog.get("ctc_sim_val"))


# ---- configurations on a tiny synthetic tree ---------------------------------------------------

def test_register_dataset_gt_st_none(tmp_path):
    make_ctc_tree(tmp_path)
    root = str(tmp_path)
    gt = DatasetCatalog.get(ctc.register_ctc_dataset("t_fake_gt", root, "Fake-2D", ["01"], "GT"))
    assert [d["frame"] for d in gt] == [1, 3, 4]
    assert [d["sparse_labels"] for d in gt] == [False, False, True]
    assert gt[0]["st_label_file_name"].endswith("01_ST/SEG/man_seg001.tif")
    st = DatasetCatalog.get(ctc.register_ctc_dataset("t_fake_st", root, "Fake-2D", None, "ST"))
    assert [d["frame"] for d in st] == list(range(6)) and all(d["label_source"] == "ST" for d in st)
    none = DatasetCatalog.get(ctc.register_ctc_dataset("t_fake_none", root, "Fake-2D", None, "none", frames=[0, 5]))
    assert [(d["frame"], d["label_file_name"]) for d in none] == [(0, None), (5, None)]
    assert gt[0]["intensity_range"] == (100.0, 650.0)
    labels = ctc.read_ctc_labels(gt[1])
    assert labels.dtype == np.int32 and set(np.unique(labels)) == {0, 1, 2}


def test_six_configurations_follow_table_2(tmp_path):
    for name in ("Fake-A", "Fake-B"):
        make_ctc_tree(tmp_path, dataset=name, frames=12, gt_frames=tuple(range(0, 12)), sequences=("01", "02"))
    root = str(tmp_path)
    names = ctc.register_ctc_configuration("GT", ["Fake-A"], root, prefix="t1")
    train, val = (DatasetCatalog.get(n) for n in (names["train"][0], names["val"][0]))
    keys = lambda ds: {(d["sequence"], d["frame"]) for d in ds}  # noqa: E731
    assert len(train) + len(val) == 24 and len(keys(val)) == 2  # 10% of 24 GT frames, both sequences
    assert not keys(train) & keys(val) and {d["sequence"] for d in train} == {"01", "02"}
    assert [d["image_id"] for d in val] == list(range(len(val)))
    again = ctc.register_ctc_configuration("GT", ["Fake-A"], root, prefix="t1b")
    assert keys(DatasetCatalog.get(again["val"][0])) == keys(val)  # same seed, same split
    st = ctc.register_ctc_configuration("ST", ["Fake-A"], root, prefix="t1")
    assert all(d["label_source"] == "ST" for d in DatasetCatalog.get(st["train"][0]))
    mixed = ctc.register_ctc_configuration("GT+ST", ["Fake-A"], root, prefix="t1")
    assert mixed["train"] == ["t1_Fake-A_gt+st_train"]
    assert DatasetCatalog.get(mixed["train"][0]) == []  # every ST frame has GT here: excluded
    assert len(DatasetCatalog.get(mixed["val"][0])) == 24
    universal = ctc.register_ctc_configuration("allGT+allST", ["Fake-A", "Fake-B"], root, prefix="t2")
    assert universal["val"] == ["t2_Fake-A_allgt+allst_val", "t2_Fake-B_allgt+allst_val"]
    assert set(ctc.register_ctc_configuration("allGT", ["Fake-A", "Fake-B"], root, prefix="t2")) == {"train", "val"}
    with pytest.raises(ValueError):
        ctc.register_ctc_configuration("GT-only", ["Fake-A"], root)


def test_gt_plus_st_excludes_gt_frames_from_training(tmp_path):
    make_ctc_tree(tmp_path, frames=6, gt_frames=(1, 3))
    names = ctc.register_ctc_configuration("GT+ST", ["Fake-2D"], str(tmp_path), prefix="t3")
    assert [d["frame"] for d in DatasetCatalog.get(names["train"][0])] == [0, 2, 4, 5]
    assert [d["frame"] for d in DatasetCatalog.get(names["val"][0])] == [1, 3]


def test_3d_sequences_become_planar_slices(tmp_path):
    root = tmp_path
    seq = root / "Fake-3D" / "01"
    for sub in ("", "_GT/SEG", "_ST/SEG"):
        os.makedirs(str(seq) + sub)
    volume = np.zeros((4, 16, 18), np.uint16)
    volume[1:3, 4:10, 5:12] = 3
    for t in range(3):
        tifffile.imwrite(seq / f"t{t:03d}.tif", volume * 7 + t)
        tifffile.imwrite(f"{seq}_ST/SEG/man_seg{t:03d}.tif", volume)
    tifffile.imwrite(f"{seq}_GT/SEG/man_seg_001_002.tif", volume[2])  # one annotated slice
    gt = DatasetCatalog.get(ctc.register_ctc_dataset("t_fake3d_gt", str(root), "Fake-3D", None, "GT"))
    assert [(d["frame"], d["slice"], d["label_slice"]) for d in gt] == [(1, 2, None)]
    assert gt[0]["target_dilation"] == 5 and (gt[0]["height"], gt[0]["width"]) == (16, 18)
    st = DatasetCatalog.get(ctc.register_ctc_dataset("t_fake3d_st", str(root), "Fake-3D", None, "ST"))
    assert len(st) == 12 and st[5]["slice"] == 1 and st[5]["label_slice"] == 1
    image = ctc.read_ctc_image(st[5])
    assert image.shape == (16, 18) and np.allclose(image, (volume[1] * 7 + 1) / 23.0)  # sequence range 0..23
    assert np.array_equal(ctc.read_ctc_labels(st[5]), volume[1].astype(np.int32))


def test_intensity_range_cached_and_never_written_into_data(tmp_path, monkeypatch):
    data = tmp_path / "data"
    make_ctc_tree(data)
    cache = tmp_path / "cache"
    monkeypatch.setenv("DEEPCENS_CACHE_DIR", str(cache))
    seq_dir = str(data / "Fake-2D" / "01")
    before = sorted(os.listdir(seq_dir))
    calls = []
    real_read = ctc._read_tif
    monkeypatch.setattr(ctc, "_read_tif", lambda p: calls.append(p) or real_read(p))
    assert ctc.sequence_intensity_range(seq_dir) == (100.0, 650.0)
    first = len(calls)
    assert first == 6 and ctc.sequence_intensity_range(seq_dir) == (100.0, 650.0) and len(calls) == first
    assert (cache / "ctc_intensity_ranges.json").is_file() and sorted(os.listdir(seq_dir)) == before
    ctc._intensity_range.cache_clear()
    assert ctc.sequence_intensity_range(seq_dir) == (100.0, 650.0) and len(calls) == first  # from the JSON cache
    tifffile.imwrite(os.path.join(seq_dir, "t002.tif"), np.full((24, 20), 5000, np.uint16))
    os.utime(os.path.join(seq_dir, "t002.tif"), ns=(1, 1))
    assert ctc.sequence_intensity_range(seq_dir)[1] == 5000.0


# ---- bad folders -------------------------------------------------------------------------------

def _load(root, source="GT", dataset="Fake-2D"):
    return ctc.load_ctc_dicts(str(root), dataset, None, source)


def test_missing_folders_name_what_is_missing(tmp_path):
    with pytest.raises(DeepcensInputError, match="CTC root folder not found"):
        ctc.load_ctc_dicts(str(tmp_path / "nowhere"), "Fake-2D", ["01"], "GT")
    make_ctc_tree(tmp_path, st=False)
    with pytest.raises(DeepcensInputError, match=re.escape(os.path.join("Fake-2D", "02")) + ".*sequence folder"):
        ctc.load_ctc_dicts(str(tmp_path), "Fake-2D", ["02"], "GT")
    with pytest.raises(DeepcensInputError, match="_ST/SEG: silver-truth SEG folder not found"):
        _load(tmp_path, "ST")
    with pytest.raises(DeepcensInputError, match="Other.*dataset folder not found"):
        _load(tmp_path, dataset="Other")
    ctc.register_ctc_dataset("t_missing", str(tmp_path / "x"), "Fake-2D", None, "GT")  # lazy: no error yet
    with pytest.raises(DeepcensInputError):
        DatasetCatalog.get("t_missing")


def test_missing_frame_is_reported(tmp_path):
    make_ctc_tree(tmp_path)
    os.remove(tmp_path / "Fake-2D" / "01" / "t002.tif")
    with pytest.raises(DeepcensInputError, match="missing frame.*t002.tif"):
        _load(tmp_path)


def test_annotation_without_image_is_reported(tmp_path):
    make_ctc_tree(tmp_path)
    tifffile.imwrite(tmp_path / "Fake-2D" / "01_GT" / "SEG" / "man_seg009.tif", np.zeros((24, 20), np.uint16))
    with pytest.raises(DeepcensInputError, match="man_seg009.tif: annotation of frame 9 has no image"):
        _load(tmp_path)


def test_track_file_disagreeing_with_markers_is_reported(tmp_path):
    make_ctc_tree(tmp_path)
    tra = tmp_path / "Fake-2D" / "01_GT" / "TRA"
    markers = tifffile.imread(tra / "man_track003.tif")
    markers[0:2, 0:2] = 9
    tifffile.imwrite(tra / "man_track003.tif", markers)
    with pytest.raises(DeepcensInputError, match=r"man_track003.tif: track file disagrees.*\[9\]"):
        _load(tmp_path)
    markers[markers == 9] = 0
    markers[markers == 2] = 0
    tifffile.imwrite(tra / "man_track003.tif", markers)
    with pytest.raises(DeepcensInputError, match=r"tracks \[2\] listed alive at frame 3 have no marker"):
        _load(tmp_path)


def test_missing_tra_frame_and_bad_track_file(tmp_path):
    make_ctc_tree(tmp_path)
    tra = tmp_path / "Fake-2D" / "01_GT" / "TRA"
    os.remove(tra / "man_track005.tif")
    with pytest.raises(DeepcensInputError, match="missing TRA frame.*man_track005.tif"):
        _load(tmp_path)
    make_ctc_tree(tmp_path)
    (tra / "man_track.txt").write_text("1 0 5 0\n2 2 x 0\n")
    with pytest.raises(DeepcensInputError, match="man_track.txt: line 2"):
        _load(tmp_path)
    (tra / "man_track.txt").write_text("1 0 5 0\n2 2 5 1\n")
    with pytest.raises(DeepcensInputError, match="parent 1 of track 2 ends at or after frame 2"):
        _load(tmp_path)


def test_label_size_mismatch_is_reported(tmp_path):
    make_ctc_tree(tmp_path)
    tifffile.imwrite(tmp_path / "Fake-2D" / "01_GT" / "SEG" / "man_seg001.tif", np.zeros((10, 10), np.uint16))
    with pytest.raises(DeepcensInputError, match="man_seg001.tif: label shape"):
        _load(tmp_path)


def test_synthetic_sequence_registers(tmp_path):
    from deepcens.data import synthetic
    synthetic.make_synthetic(str(tmp_path), seed=0, num_train=1, num_val=1, num_eval=1, size=64, ctc_frames=4)
    name = ctc.register_ctc_dataset("t_synthetic_ctc", str(tmp_path / "ctc"), "Synthetic-Cells", None, "GT")
    dicts = DatasetCatalog.get(name)
    assert len(dicts) >= 1 and dicts[0]["height"] == 64 and ctc.read_ctc_labels(dicts[0]).max() > 0


def test_unreadable_or_wrong_kind_files_are_reported(tmp_path):
    make_ctc_tree(tmp_path)
    tra = tmp_path / "Fake-2D" / "01_GT" / "TRA"
    (tra / "man_track.txt").write_bytes(b"1 0 5 0\n\xff\xfe 2 5 0\n")
    with pytest.raises(DeepcensInputError, match="man_track.txt: cannot read track file"):
        _load(tmp_path)
    (tra / "man_track.txt").write_text("1 0 5 0\n--2 2 5 0\n")
    with pytest.raises(DeepcensInputError, match="man_track.txt: line 2"):
        _load(tmp_path)
    make_ctc_tree(tmp_path)
    tifffile.imwrite(tra / "man_track001.tif", np.full((24, 20), 0.5, np.float32))
    with pytest.raises(DeepcensInputError, match="man_track001.tif: label image must hold integers"):
        _load(tmp_path)
    make_ctc_tree(tmp_path)
    (tmp_path / "Fake-2D" / "01" / "t003.tif").write_bytes(b"not a tiff")
    with pytest.raises(DeepcensInputError, match="t003.tif: cannot decode TIFF"):
        _load(tmp_path)
    make_ctc_tree(tmp_path)
    tifffile.imwrite(tmp_path / "Fake-2D" / "01" / "t000.tif", np.zeros((24, 20, 3), np.uint8))
    with pytest.raises(DeepcensInputError, match="t000.tif: expected a grayscale"):
        _load(tmp_path)


def test_gt_plus_st_keeps_gt_frames_of_3d_sequences(tmp_path):
    """The authors drop GT frames from ST training in their 2D preparation only; 3D keeps them."""
    make_ctc_tree(tmp_path, dataset="Fake-3D", frames=4, gt_frames=(1, 3), shape=(3, 24, 20))
    names = ctc.register_ctc_configuration("GT+ST", ["Fake-3D"], str(tmp_path), prefix="t3d")
    train = DatasetCatalog.get(names["train"][0])
    assert sorted({d["frame"] for d in train}) == [0, 1, 2, 3]
    assert len(train) == 4 * 3  # every plane of every ST volume


def test_data_configuration_key_registers_the_papers_split_on_shared_data(shared_data):
    """DATASETS.CTC selects a Table 2 configuration from the config: GT only = 90/10 over all GT
    frames of the data set (here SIM+ 01, 65 fully labelled frames)."""
    from deepcens.engine.setup import load_config, prepare_datasets

    config = os.path.join(os.path.dirname(__file__), "..", "configs", "xbnet", "xbnet_fluo_n2dh_sim.yaml")
    cfg = load_config(config, ["DATASETS.CTC.ROOT", str(shared_data / "ctc"), "MODEL.DEVICE", "cpu"])
    assert cfg.DATASETS.CTC.CONFIGURATION == "GT" and list(cfg.DATASETS.CTC.NAMES) == ["Fluo-N2DH-SIM+"]
    prepare_datasets(cfg)
    (train_name,), (val_name,) = cfg.DATASETS.TRAIN, cfg.DATASETS.VAL
    train, val = DatasetCatalog.get(train_name), DatasetCatalog.get(val_name)
    frames = lambda ds: {(d["sequence"], d["frame"]) for d in ds}  # noqa: E731
    assert len(frames(val)) == 6 and len(frames(train)) == 59  # round(0.1 * 65) validate
    assert not frames(train) & frames(val)
    assert frames(train) | frames(val) == {("01", t) for t in range(65)}
    assert all(d["label_source"] == "GT" and d["ctc_dataset"] == "Fluo-N2DH-SIM+" for d in train + val)
