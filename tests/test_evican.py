"""EVICAN2 registration on a tiny EVICAN-layout fixture written here (polygons only, no bbox/area)."""
from __future__ import annotations

import json
import logging
import os

import cv2
import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode

import deepcens  # noqa: F401  (registers the default evican / synthetic_evican prefixes)
from deepcens.data.evican import evican_dataset_names, load_evican_json, register_evican
from deepcens.errors import DeepcensInputError

CATEGORIES = [{"id": 1, "name": "Cell"}, {"id": 2, "name": "Nucleus"}]


def _square(x, y, side):
    return [[x, y, x + side, y, x + side, y + side, x, y + side]]


def _write_split(root, split, images, annotations, original_names=False):
    """images: list of (id, file_name); annotations: list of (image_id, category_id, segmentation)."""
    folder = split.split("_")[0] + "2019"
    stem = split.replace("eval_", "eval2019_") if split.startswith("eval_") else split + "2019"
    if original_names:
        ann_dir, json_name, img_dir = "annotations_EVICAN2", f"instances_{stem}_EVICAN2.json", os.path.join("Images", f"EVICAN_{folder}")
    else:
        ann_dir, json_name, img_dir = "annotations", f"instances_{stem}.json", folder
    os.makedirs(os.path.join(root, ann_dir), exist_ok=True)
    os.makedirs(os.path.join(root, img_dir), exist_ok=True)
    for _, file_name in images:
        cv2.imwrite(os.path.join(root, img_dir, file_name), np.full((48, 64), 100, np.uint8))
    data = {
        "images": [{"id": i, "file_name": f, "height": 48, "width": 64} for i, f in images],
        "annotations": [{"id": k + 1, "image_id": im, "category_id": c, "segmentation": seg, "iscrowd": 0}
                        for k, (im, c, seg) in enumerate(annotations)],
        "categories": CATEGORIES,
    }
    path = os.path.join(root, ann_dir, json_name)
    with open(path, "w") as handle:
        json.dump(data, handle)
    return path


def _write_evican(root, original_names=False):
    # train: 1 cell+nucleus, 1 nucleus only, 1 background image; val: 1 cell, 1 background
    _write_split(root, "train", [(1, "a.png"), (2, "b.png"), (3, "c.png")],
                 [(1, 1, _square(10, 5, 20)), (1, 2, _square(15, 10, 6)), (2, 2, _square(30, 20, 8))], original_names)
    _write_split(root, "val", [(7, "v.png"), (8, "w.png")], [(7, 1, _square(0, 0, 10))], original_names)
    for difficulty in ("easy", "medium", "difficult"):
        _write_split(root, f"eval_{difficulty}", [(20, f"{difficulty}.png"), (21, f"{difficulty}_empty.png")],
                     [(20, 1, _square(5, 5, 12)), (20, 2, _square(8, 8, 4))], original_names)


def test_default_prefixes_registered_at_import():
    names = set(DatasetCatalog.list())
    assert set(evican_dataset_names("evican")) <= names
    assert set(evican_dataset_names("synthetic_evican")) <= names
    assert len(evican_dataset_names("evican")) == 15
    meta = MetadataCatalog.get("evican_eval_medium_cell_nucleus")
    assert meta.thing_classes == ["cell", "nucleus"] and meta.evaluator_type == "cell"
    assert meta.difficulty == "medium"


@pytest.mark.parametrize("original_names", [False, True])
def test_settings_filter_classes_and_drop_background_images(tmp_path, original_names):
    _write_evican(str(tmp_path), original_names)
    prefix = f"t_evican_layout{int(original_names)}"
    assert len(register_evican(prefix, str(tmp_path))) == 15

    cell = DatasetCatalog.get(f"{prefix}_train_cell")
    assert [r["image_id"] for r in cell] == [1]  # nucleus-only and background images dropped
    (ann,) = cell[0]["annotations"]
    assert ann["category_id"] == 0 and ann["bbox_mode"] == BoxMode.XYWH_ABS
    assert ann["bbox"] == pytest.approx([10, 5, 20, 20])  # derived from the polygon
    assert 380 <= ann["area"] <= 441  # rasterised pixel area of a 20x20 square
    assert cell[0]["height"] == 48 and os.path.isfile(cell[0]["file_name"])

    nucleus = DatasetCatalog.get(f"{prefix}_train_nucleus")
    assert sorted(r["image_id"] for r in nucleus) == [1, 2]
    assert {a["category_id"] for r in nucleus for a in r["annotations"]} == {0}

    both = DatasetCatalog.get(f"{prefix}_train_cell_nucleus")
    assert sorted(a["category_id"] for r in both for a in r["annotations"]) == [0, 1, 1]
    assert len(DatasetCatalog.get(f"{prefix}_val_cell_nucleus")) == 1

    for difficulty in ("easy", "medium", "difficult"):
        evaluation = DatasetCatalog.get(f"{prefix}_eval_{difficulty}_cell")
        assert len(evaluation) == 2  # eval keeps every image (fully annotated test set)
        meta = MetadataCatalog.get(f"{prefix}_eval_{difficulty}_cell")
        assert meta.difficulty == difficulty and meta.thing_classes == ["cell"]
        assert os.path.isfile(meta.json_file) and meta.root == os.path.normpath(str(tmp_path))
    assert MetadataCatalog.get(f"{prefix}_train_nucleus").thing_dataset_id_to_contiguous_id == {2: 0}


def test_register_is_idempotent_and_follows_a_new_root(tmp_path):
    first, second = tmp_path / "a", tmp_path / "b"
    _write_evican(str(first))
    names = register_evican("t_evican_idem", str(first))
    assert register_evican("t_evican_idem", str(first)) == names
    assert len(DatasetCatalog.get("t_evican_idem_train_cell")) == 1
    register_evican("t_evican_idem", str(second))  # nothing there: re-registered, fails on use
    assert MetadataCatalog.get("t_evican_idem_train_cell").root == os.path.normpath(str(second))
    with pytest.raises(DeepcensInputError):
        DatasetCatalog.get("t_evican_idem_train_cell")


def test_missing_data_says_which_files_go_where(tmp_path):
    register_evican("t_evican_missing", str(tmp_path))
    with pytest.raises(DeepcensInputError) as info:
        DatasetCatalog.get("t_evican_missing_val_nucleus")
    message = str(info.value)
    assert "instances_val2019.json" in message and "instances_val2019_EVICAN2.json" in message
    assert os.path.join(str(tmp_path), "annotations") in message and "val2019" in message
    os.makedirs(tmp_path / "annotations")
    (tmp_path / "annotations" / "instances_val2019.json").write_text("{}")
    with pytest.raises(DeepcensInputError, match="image folder not found"):
        DatasetCatalog.get("t_evican_missing_val_nucleus")


BAD_CASES = {
    "missing key": (lambda d: d.pop("images"), "missing or non-list key 'images'"),
    "two-point polygon": (lambda d: d["annotations"].append(
        {"id": 90, "image_id": 1, "category_id": 1, "segmentation": [[1, 1, 5, 5]]}), "degenerate polygon"),
    "zero-area polygon": (lambda d: d["annotations"].append(
        {"id": 91, "image_id": 1, "category_id": 1, "segmentation": [[1, 1, 5, 5, 9, 9]]}), "zero area"),
    "missing image": (lambda d: d["annotations"].append(
        {"id": 92, "image_id": 999, "category_id": 1, "segmentation": _square(1, 1, 5)}), "missing image_id 999"),
    "unknown category": (lambda d: d["annotations"].append(
        {"id": 93, "image_id": 1, "category_id": 7, "segmentation": _square(1, 1, 5)}), "unknown category_id 7"),
    "no segmentation": (lambda d: d["annotations"].append(
        {"id": 94, "image_id": 1, "category_id": 1}), "misses keys ['segmentation']"),
    "image file missing": (lambda d: d["images"].append(
        {"id": 5, "file_name": "gone.png", "height": 48, "width": 64}), "file not found"),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_json_fails_naming_file_or_is_skipped_with_a_count(tmp_path, case, caplog):
    mutate, expected = BAD_CASES[case]
    json_file = _write_split(str(tmp_path), "train", [(1, "a.png")], [(1, 1, _square(10, 5, 20))])
    with open(json_file) as handle:
        data = json.load(handle)
    mutate(data)
    with open(json_file, "w") as handle:
        json.dump(data, handle)
    image_root = str(tmp_path / "train2019")
    with pytest.raises(DeepcensInputError) as info:
        load_evican_json(json_file, image_root, "cell")
    assert str(info.value).startswith(json_file) and expected in str(info.value)
    if case == "missing key":
        return  # a file without images cannot be skipped into something usable
    with caplog.at_level(logging.WARNING, logger="deepcens.data.evican"):
        dicts = load_evican_json(json_file, image_root, "cell", policy="skip")
    assert [len(r["annotations"]) for r in dicts] == [1]  # the good annotation survives
    assert "skipped bad entries" in caplog.text and "1 " in caplog.text


def test_synthetic_generator_output_registers(tmp_path):
    from deepcens.data import synthetic
    if not hasattr(synthetic, "make_synthetic"):
        pytest.skip("deepcens.data.synthetic.make_synthetic not written yet")
    synthetic.make_synthetic(str(tmp_path), seed=0, num_train=3, num_val=2, num_eval=1, size=64, ctc_frames=0)
    register_evican("t_synth", str(tmp_path / "evican"))
    train = DatasetCatalog.get("t_synth_train_cell_nucleus")
    assert train and all(r["annotations"] for r in train)
    assert all(len(DatasetCatalog.get(f"t_synth_eval_{d}_cell")) == 1 for d in ("easy", "medium", "difficult"))
