"""Overlays (draw_instances / write_overlay), training-curve plots and the visual report."""
from __future__ import annotations

import json
import os

import cv2
import numpy as np
import pytest
import torch
from detectron2.structures import Boxes, Instances

from deepcens.postprocess.instances import label_image_to_instances, mask_to_rle
from deepcens.cli import main as cli_main
from deepcens.plots import plot_metrics
from deepcens.report import best_and_worst, build_report
from deepcens.visualize import class_color, draw_instances, side_by_side, to_display_uint8, write_overlay


def two_instances() -> Instances:
    labels = np.zeros((64, 100), dtype=np.int32)  # objects clear of the legend (top left)
    labels[40:60, 5:25] = 1
    labels[10:30, 60:95] = 2
    instances = label_image_to_instances(labels, scores=np.array([0.9, 0.4]), classes=np.array([0, 1]))
    return instances


def test_draw_instances_contours_in_class_colours():
    image = np.full((64, 100, 3), 50, dtype=np.uint8)
    drawing = draw_instances(image, two_instances(), ["cell", "nucleus"], show_scores=False)
    assert drawing.shape == image.shape and drawing.dtype == np.uint8
    assert (image == 50).all(), "the input image is not modified"
    # Contours lie on the mask border, in the class colour; interiors stay untouched.
    assert tuple(drawing[50, 5]) == class_color(0)
    assert tuple(drawing[20, 94]) == class_color(1)
    assert tuple(drawing[50, 15]) == (50, 50, 50) and tuple(drawing[20, 77]) == (50, 50, 50)
    assert tuple(drawing[50, 45]) == (50, 50, 50)  # background away from legend and objects
    assert (drawing[2:20, 2:20] != 50).any(), "legend drawn top left"
    with_scores = draw_instances(image, two_instances(), ["cell", "nucleus"])
    assert (with_scores != drawing).any(), "score text is drawn"
    empty = Instances((64, 100))
    empty.pred_masks = torch.zeros((0, 64, 100), dtype=torch.bool)
    assert (draw_instances(image, empty, ["cell"]) == image).all()
    with pytest.raises(ValueError):
        draw_instances(image[:32], two_instances(), ["cell"])


def test_draw_instances_from_boxes_only():
    instances = Instances((40, 40))
    instances.pred_boxes = Boxes(torch.tensor([[5.0, 5.0, 20.0, 25.0]]))
    instances.scores = torch.tensor([0.8])
    instances.pred_classes = torch.tensor([0])
    drawing = draw_instances(np.zeros((40, 40, 3), dtype=np.uint8), instances, None, show_scores=False)
    assert tuple(drawing[15, 5]) == class_color(0) and tuple(drawing[15, 12]) == (0, 0, 0)


def test_write_overlay_png_round_trip(tmp_path):
    raw = np.zeros((64, 100), dtype=np.uint16)
    raw[:, 40:] = 4000
    path = write_overlay(tmp_path / "o" / "x.png", raw, two_instances(), ["cell", "nucleus"], show_scores=False)
    back = cv2.cvtColor(cv2.imread(path), cv2.COLOR_BGR2RGB)
    assert back.shape == (64, 100, 3)
    assert tuple(back[50, 5]) == class_color(0)  # RGB order preserved through the PNG
    assert back[50, 30, 0] == 0 and back[50, 45, 0] == 255  # 16-bit image contrast-stretched
    assert os.listdir(tmp_path / "o") == ["x.png"]  # no temporary file left


def test_to_display_uint8_kinds():
    rgba = np.dstack([np.full((4, 4, 3), 7, np.uint8), np.zeros((4, 4), np.uint8)])
    assert (to_display_uint8(rgba) == 7).all()
    gray16 = np.arange(16, dtype=np.uint16).reshape(4, 4) * 1000
    out = to_display_uint8(gray16, (0, 100))
    assert out.shape == (4, 4, 3) and out[0, 0, 0] == 0 and out[3, 3, 0] == 255
    flat = to_display_uint8(np.full((3, 3, 1), 0.5, np.float32))
    assert flat.dtype == np.uint8 and flat.shape == (3, 3, 3)
    panel = side_by_side([np.zeros((10, 5, 3), np.uint8), np.zeros((8, 6, 3), np.uint8)], ["a", "b"])
    assert panel.shape[1] == 5 + 4 + 6 and panel.shape[0] > 10


def write_metrics(path, torn: bool = False) -> None:
    lines = []
    for iteration in range(19, 200, 20):
        record = {"iteration": iteration, "total_loss": 2.0 / (iteration + 1), "lr": 0.01}
        if (iteration + 1) % 100 == 0:
            record.update({"val_total_loss": 2.5 / (iteration + 1), "synthetic_easy/segm/AP": iteration / 4.0,
                           "synthetic_easy/bbox/AP": iteration / 5.0, "ctc/SEG": iteration / 400.0})
        lines.append(json.dumps(record))
    text = "\n".join(lines) + "\n"
    if torn:
        text += '{"iteration": 219, "total_lo'
    path.write_text(text)


def test_plot_metrics_writes_loss_and_metric_pngs(tmp_path):
    write_metrics(tmp_path / "metrics.json", torn=True)
    written = plot_metrics(str(tmp_path))
    assert set(written) == {"loss", "metrics"}
    for path in written.values():
        image = cv2.imread(path)
        assert image is not None and image.shape[0] > 100 and image.std() > 0
    # Only losses recorded: no metrics plot.
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "metrics.json").write_text(json.dumps({"iteration": 0, "total_loss": 1.0}) + "\n")
    assert set(plot_metrics(str(tmp_path / "b"))) == {"loss"}


def test_plot_metrics_bad_input_exit_2(tmp_path, capsys, caplog):
    assert cli_main(["plot", str(tmp_path)]) == 2
    assert "metrics.json: metrics file not found" in capsys.readouterr().err
    # one rule for damaged lines (deepcens.utils.metrics_log): a broken middle line is skipped with a warning
    (tmp_path / "metrics.json").write_text('{"iteration": 1, "total_loss": 1}\nnot json\n{"iteration": 2, "total_loss": 0.5}\n')
    assert cli_main(["plot", str(tmp_path)]) == 0
    assert "1 line(s) are not valid JSON (first: line 2)" in caplog.text
    # a binary file is not a metrics file: one line, exit 2
    (tmp_path / "metrics.json").write_bytes(bytes(range(256)) * 8)
    assert cli_main(["plot", str(tmp_path)]) == 2
    assert "holds no JSON metrics record" in capsys.readouterr().err


def test_best_and_worst_ranking():
    images = [{"image_id": str(i), "segm_ap_proxy": s} for i, s in enumerate([0.5, None, 0.9, 0.1, 0.7])]
    images.append({"image_id": "5", "segm_ap_proxy": None, "SEG": 0.95})
    best, worst = best_and_worst(images, 2)
    assert [e["image_id"] for e in best] == ["5", "2"]
    assert [e["image_id"] for e in worst] == ["3", "0"]


def _report_main(argv: list[str]) -> int:
    return cli_main(["report", *argv])


@pytest.fixture()
def evaluated_run(tmp_path):
    """A fake evaluated run on a registered 3-image label dataset: per_image.json + COCO results."""
    from detectron2.data import DatasetCatalog, MetadataCatalog

    from deepcens.evaluation.reports import write_per_image, write_predictions_json, write_reports

    rng = np.random.default_rng(0)
    records = []
    for index in range(3):
        image = rng.integers(0, 200, (48, 56), dtype=np.uint8)
        labels = np.zeros((48, 56), dtype=np.uint16)
        labels[5:20, 5:20] = 1
        labels[25:45, 30:50] = 2
        cv2.imwrite(str(tmp_path / f"img{index}.png"), image)
        cv2.imwrite(str(tmp_path / f"lab{index}.png"), labels.astype(np.uint8))
        records.append({"file_name": str(tmp_path / f"img{index}.png"), "image_id": index, "height": 48,
                        "width": 56, "label_file_name": str(tmp_path / f"lab{index}.png")})
    name = "test_visualize_report_labels"
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    DatasetCatalog.register(name, lambda: records)
    MetadataCatalog.get(name).set(thing_classes=["cell"], evaluator_type="cell")
    run = tmp_path / "run"
    folder = run / "inference" / name
    mask = np.zeros((48, 56), dtype=bool)
    mask[6:20, 5:21] = True
    predictions = [{"image_id": i, "category_id": 0, "bbox": [5, 6, 16, 14], "score": 0.8 - 0.1 * i,
                    "segmentation": mask_to_rle(mask)} for i in range(3)]
    write_predictions_json(folder / "coco_instances_results.json", predictions)
    write_per_image(folder / "per_image.json", name, ["cell"],
                    [{"image_id": str(i), "file_name": records[i]["file_name"], "num_gt": 2, "num_pred": 1,
                      "segm_ap_proxy": [0.3, 0.6, 0.45][i]} for i in range(3)])
    write_reports({name: {"segm": {"AP": 41.5, "AP50": 50.0}, "ctc": {"SEG": 0.4, "DET": 0.5, "OP_CSB": 0.45}}},
                  run)
    return run, name


def test_report_html_markdown_and_panels(evaluated_run):
    run, name = evaluated_run
    result = build_report(str(run), count=1)
    assert result["datasets"] == [name]
    assert [os.path.basename(p) for p in result["panels"]] == [f"{name}_best1_img1.png", f"{name}_worst1_img0.png"]
    html = open(result["html"]).read()
    assert "41.50" in html and "0.4500" in html  # the metric tables
    assert html.index("best1_img1") < html.index("worst1_img0")
    panel = cv2.cvtColor(cv2.imread(result["panels"][0]), cv2.COLOR_BGR2RGB)
    assert panel.shape[1] == 3 * 56 + 2 * 4  # image | ground truth | prediction
    assert (panel == class_color(0)).all(axis=2).any()
    markdown = open(result["markdown"]).read()
    assert "segm_ap_proxy = 0.600" in markdown and "](panels/" in markdown


def test_report_cli_bad_folder(tmp_path, capsys):
    assert _report_main([str(tmp_path / "none")]) == 2
    assert "evaluation folder not found" in capsys.readouterr().err
    assert _report_main([str(tmp_path)]) == 2
    assert "neither evaluation.json nor any per_image.json" in capsys.readouterr().err
