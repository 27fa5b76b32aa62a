"""The user's own data: label folders and COCO files, registered from the config or from Python,
read by the R-CNN and dense mappers, trained on by both kinds of method."""
from __future__ import annotations

import json
import logging
import os

import cv2
import numpy as np
import pytest
import tifffile
from detectron2.data import DatasetCatalog, MetadataCatalog
from pycocotools import mask as mask_util

from deepcens.data import register_label_folder
from deepcens.data.user_datasets import load_coco_instances, load_label_folder, pair_label_folder, register_coco_json
from deepcens.errors import DeepcensInputError

SIZE = 48


def blob_pair(seed: int, size: int = SIZE) -> tuple[np.ndarray, np.ndarray]:
    """A uint16 image with 2-3 bright ellipses and its uint16 instance label image."""
    rng = np.random.default_rng(seed)
    labels = np.zeros((size, size), np.uint16)
    for label in range(1, int(rng.integers(2, 4)) + 1):
        cx, cy = (int(v) for v in rng.integers(10, size - 10, 2))
        cv2.ellipse(labels, (cx, cy), (int(rng.integers(4, 8)), int(rng.integers(4, 8))), 0, 0, 360, label, -1)
    image = (labels > 0) * 3000 + rng.integers(0, 400, labels.shape)
    return image.astype(np.uint16), labels


def write_folder(root, names: list[tuple[str, str]], size: int = SIZE) -> tuple[str, str]:
    """``images/`` and ``labels/`` under ``root`` with (image name, label name) pairs."""
    images, labels = os.path.join(root, "images"), os.path.join(root, "labels")
    os.makedirs(images, exist_ok=True)
    os.makedirs(labels, exist_ok=True)
    for index, (image_name, label_name) in enumerate(names):
        image, label = blob_pair(index, size)
        if image_name:
            if image_name.endswith(".png"):
                cv2.imwrite(os.path.join(images, image_name), (image // 16).astype(np.uint8))
            else:
                tifffile.imwrite(os.path.join(images, image_name), image)
        if label_name:
            if label_name.endswith(".png"):
                cv2.imwrite(os.path.join(labels, label_name), label.astype(np.uint8))
            else:
                tifffile.imwrite(os.path.join(labels, label_name), label)
    return images, labels


def test_pairing_rules_accept_every_suffix_and_ctc_names(tmp_path):
    names = [("a.tif", "a.tif"), ("b.png", "b_label.png"), ("c.tif", "c_labels.tif"), ("d.tif", "d_masks.png"),
             ("e.png", "e_seg.tiff"), ("t007.tif", "man_seg007.tif"), ("f_label.tif", "f_label_masks.tif")]
    images, labels = write_folder(tmp_path, names)
    pairs = pair_label_folder(images, labels)
    got = {os.path.basename(i): os.path.basename(lab) for i, lab in pairs}
    assert got == dict(names)


def test_one_shared_folder_in_cellpose_style(tmp_path):
    folder = tmp_path / "both"
    folder.mkdir()
    for index, stem in enumerate(["x", "y"]):
        image, labels = blob_pair(index)
        tifffile.imwrite(folder / f"{stem}.tif", image)
        tifffile.imwrite(folder / f"{stem}_masks.tif", labels)
    pairs = pair_label_folder(str(folder), str(folder))
    assert [(os.path.basename(i), os.path.basename(lab)) for i, lab in pairs] == [("x.tif", "x_masks.tif"), ("y.tif", "y_masks.tif")]


def test_dicts_carry_rle_annotations_and_the_label_path(tmp_path):
    images, labels = write_folder(tmp_path, [("a.tif", "a_label.tif"), ("b.png", "b_masks.png")])
    dicts = load_label_folder(images, labels, dataset_name="mine")
    assert [d["image_id"] for d in dicts] == [0, 1]
    for record, seed in zip(dicts, (0, 1)):
        truth = blob_pair(seed)[1]
        assert (record["height"], record["width"]) == truth.shape
        assert record["label_file_name"].startswith(labels) and record["dataset_name"] == "mine"
        assert len(record["annotations"]) == len(np.unique(truth)) - 1
        for ann in record["annotations"]:
            mask = mask_util.decode(ann["segmentation"]).astype(bool)
            assert np.array_equal(mask, truth == ann["label_id"])
            x, y, w, h = ann["bbox"]
            ys, xs = np.nonzero(mask)
            assert (x, y, x + w, y + h) == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)


@pytest.mark.parametrize("problem", ["missing", "size", "ambiguous", "orphan"])
def test_bad_pairs_fail_naming_the_file_or_are_skipped_and_counted(tmp_path, caplog, problem):
    names = [("a.tif", "a.tif"), ("b.tif", "b_label.tif")]
    if problem == "missing":
        names.append(("c.tif", None))
        culprit, message = "c.tif", "no label image"
    elif problem == "ambiguous":
        names += [("c.tif", "c_masks.tif"), (None, "c_seg.tif")]
        culprit, message = "c.tif", "several label images match"
    elif problem == "orphan":
        names.append((None, "z_label.tif"))
        culprit, message = "z_label.tif", "has no image"
    else:
        names.append(("c.tif", None))
        culprit, message = "c_label.tif", "label size 40x48 differs from image size 48x48"
    images, labels = write_folder(tmp_path, names)
    if problem == "size":
        tifffile.imwrite(os.path.join(labels, "c_label.tif"), blob_pair(2)[1][:40])
    with pytest.raises(DeepcensInputError, match=message) as error:
        load_label_folder(images, labels, policy="fail")
    assert os.path.basename(error.value.path) == culprit
    with caplog.at_level(logging.WARNING, logger="deepcens.data.user_datasets"):
        dicts = load_label_folder(images, labels, policy="skip")
    assert sorted(os.path.basename(d["file_name"]) for d in dicts) == ["a.tif", "b.tif"]
    assert any("skipped 1 " in r.getMessage() for r in caplog.records)
    assert any(culprit in r.getMessage() for r in caplog.records)


def test_empty_or_missing_folders_are_clear_errors(tmp_path):
    with pytest.raises(DeepcensInputError, match="folder not found"):
        pair_label_folder(str(tmp_path / "nope"), str(tmp_path))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DeepcensInputError, match="no image files"):
        pair_label_folder(str(tmp_path / "empty"), str(tmp_path / "empty"))
    images, labels = write_folder(tmp_path / "x", [("a.tif", None)])
    with pytest.raises(DeepcensInputError, match="no usable image / label pair"):
        load_label_folder(images, labels, policy="skip")


def test_builtin_names_cannot_be_taken(tmp_path):
    images, labels = write_folder(tmp_path, [("a.tif", "a.tif")])
    with pytest.raises(DeepcensInputError, match="already taken"):
        register_label_folder("evican_train_cell", images, labels)


def write_coco(tmp_path, with_missing_image: bool = False) -> tuple[str, str]:
    """Two images, categories 7 'nucleus' and 3 'cell': polygons, RLE and a bbox-less annotation."""
    root = tmp_path / "coco_images"
    root.mkdir()
    images, annotations = [], []
    for index in range(2):
        image, labels = blob_pair(index)
        cv2.imwrite(str(root / f"im{index}.png"), (image // 16).astype(np.uint8))
        images.append({"id": 10 + index, "file_name": f"im{index}.png", "height": SIZE, "width": SIZE})
        for label in range(1, int(labels.max()) + 1):
            mask = (labels == label).astype(np.uint8)
            if label == 1:  # RLE, no bbox
                rle = mask_util.encode(np.asfortranarray(mask))
                segmentation = {"size": rle["size"], "counts": rle["counts"].decode()}
                annotations.append({"id": len(annotations) + 1, "image_id": 10 + index, "category_id": 3,
                                    "segmentation": segmentation, "iscrowd": 0})
            else:
                contour = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)[0][0]
                annotations.append({"id": len(annotations) + 1, "image_id": 10 + index, "category_id": 7,
                                    "segmentation": [contour.reshape(-1).astype(float).tolist()],
                                    "bbox": list(cv2.boundingRect(mask)), "iscrowd": 0, "area": float(mask.sum())})
    if with_missing_image:
        images.append({"id": 99, "file_name": "gone.png", "height": SIZE, "width": SIZE})
    data = {"images": images, "annotations": annotations,
            "categories": [{"id": 7, "name": "nucleus"}, {"id": 3, "name": "cell"}]}
    json_file = tmp_path / "instances.json"
    json_file.write_text(json.dumps(data))
    return str(json_file), str(root)


def test_coco_json_registration_maps_categories_and_derives_boxes(tmp_path):
    json_file, root = write_coco(tmp_path)
    register_coco_json("user_coco_test", json_file, root)
    dicts = DatasetCatalog.get("user_coco_test")
    meta = MetadataCatalog.get("user_coco_test")
    assert meta.thing_classes == ["cell", "nucleus"]  # json id order: 3 -> 0, 7 -> 1
    assert meta.thing_dataset_id_to_contiguous_id == {3: 0, 7: 1}
    assert len(dicts) == 2 and all(d["dataset_name"] == "user_coco_test" for d in dicts)
    for record in dicts:
        rle = [a for a in record["annotations"] if isinstance(a["segmentation"], dict)]
        assert len(rle) == 1 and rle[0]["category_id"] == 0
        assert len(rle[0]["bbox"]) == 4 and rle[0]["bbox"][2] > 0  # derived from the RLE
        assert all(a["category_id"] == 1 for a in record["annotations"] if isinstance(a["segmentation"], list))


def test_coco_json_bad_entries_follow_the_policy(tmp_path):
    json_file, root = write_coco(tmp_path, with_missing_image=True)
    with pytest.raises(DeepcensInputError, match="image file not found") as error:
        load_coco_instances(json_file, root, "fail")
    assert error.value.path.endswith("gone.png")
    assert len(load_coco_instances(json_file, root, "skip")) == 2
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps({"images": [], "annotations": []}))
    with pytest.raises(DeepcensInputError, match="not a COCO instances file"):
        load_coco_instances(str(broken), root)


def _cfg(tmp_path, base: str, opts: list[str]):
    from deepcens.engine.setup import load_config, prepare_datasets

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    cfg = load_config(os.path.join(repo, base), ["OUTPUT_DIR", str(tmp_path / "out"), "MODEL.DEVICE", "cpu", *opts],
                      freeze=False)
    prepare_datasets(cfg)
    return cfg


def test_config_lists_register_folders_and_coco_files(tmp_path):
    from deepcens.data.user_datasets import register_user_datasets_from_cfg

    images, labels = write_folder(tmp_path, [("a.tif", "a_label.tif"), ("b.tif", "b_label.tif")])
    json_file, root = write_coco(tmp_path)
    cfg = _cfg(tmp_path, "configs/examples/my_folders_xbnet.yaml", [
        "DATASETS.FOLDERS", f"[('cfg_folder', '{images}', '{labels}')]",
        "DATASETS.COCO", f"[['cfg_coco', '{json_file}', '{root}']]"])
    assert len(DatasetCatalog.get("cfg_folder")) == 2 and len(DatasetCatalog.get("cfg_coco")) == 2
    cfg.DATASETS.FOLDERS = [("only_a_name",)]
    with pytest.raises(DeepcensInputError, match="DATASETS.FOLDERS entry"):
        register_user_datasets_from_cfg(cfg)
    cfg.DATASETS.FOLDERS = [("twice", images, labels), ("twice", images, labels)]
    with pytest.raises(DeepcensInputError, match="names a dataset twice"):
        register_user_datasets_from_cfg(cfg)


def _train_two_iterations(cfg):
    from deepcens.engine.trainer import Trainer

    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    return trainer


@pytest.mark.parametrize("base", ["configs/examples/my_folders_xbnet.yaml", "configs/examples/my_folders_mask_rcnn.yaml"])
def test_both_kinds_of_method_train_and_evaluate_on_a_label_folder(tmp_path, base):
    images, labels = write_folder(tmp_path, [(f"im{i}.tif", f"im{i}_masks.tif") for i in range(4)], size=64)
    tiny = (["MODEL.DENSE.XBNET.BASE_CHANNELS", "4", "MODEL.DENSE.XBNET.NUM_STAGES", "2", "INPUT.DENSE.CROP_SIZE", "32",
             "MODEL.DENSE.SIZE_DIVISIBILITY", "4"] if "xbnet" in base else
            ["MODEL.RESNEST.DEPTH", "0", "MODEL.RESNEST.STEM_WIDTH", "16", "MODEL.RESNEST.BOTTLENECK_WIDTH", "16", "MODEL.FPN.OUT_CHANNELS", "16",
             "INPUT.RESIZE_EXACT", "[64, 64]", "MODEL.RPN.POST_NMS_TOPK_TRAIN", "50", "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "16",
             "MODEL.ROI_MASK_HEAD.CONV_DIM", "8", "MODEL.ROI_MASK_HEAD.NUM_CONV", "1", "MODEL.ROI_BOX_HEAD.FC_DIM", "32",
             "MODEL.ROI_BOX_HEAD.CONV_DIM", "8", "MODEL.ROI_BOX_HEAD.NUM_CONV", "1", "MODEL.RPN.PRE_NMS_TOPK_TEST", "100",
             "MODEL.RPN.POST_NMS_TOPK_TEST", "30", "MODEL.RPN.PRE_NMS_TOPK_TRAIN", "200",
             "MODEL.ANCHOR_GENERATOR.FLAT_SIZES_MAPPING", "split", "MODEL.RESNEST.DEFORM_NUM_GROUPS", "1",
             "TEST.DETECTIONS_PER_IMAGE", "20"])
    cfg = _cfg(tmp_path, base, [
        "DATASETS.FOLDERS", f"[('my_train', '{images}', '{labels}'), ('my_val', '{images}', '{labels}')]",
        "DATASETS.TRAIN", "('my_train',)", "DATASETS.TEST", "('my_val',)", "DATASETS.VAL", "()", "SOLVER.MAX_ITER", "2",
        "SOLVER.IMS_PER_BATCH", "2", "DATALOADER.NUM_WORKERS", "0", "TEST.EVAL_PERIOD", "0", *tiny])
    trainer = _train_two_iterations(cfg)
    from deepcens.engine.trainer import Trainer

    results = Trainer.test(cfg, trainer.model)
    flat = json.dumps(results, default=str)
    assert "segm" in flat and "SEG" in flat
