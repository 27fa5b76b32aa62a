"""deepcens evaluate: CTC folders, label-image folders and COCO results json; bad input -> exit 2."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

REPO = Path(__file__).resolve().parents[1]


class _Evaluate:
    """``deepcens evaluate`` through the package's command line."""

    @staticmethod
    def main(argv: list[str]) -> int:
        from deepcens.cli import main

        return main(["evaluate", *argv])


def _tool():
    return _Evaluate


def _labels(shape=(40, 40)):
    labels = np.zeros(shape, np.uint16)
    labels[2:12, 2:12] = 1
    labels[20:34, 5:15] = 2
    labels[22:30, 25:37] = 3
    return labels


def _ctc(tmp_path, frames=3):
    gt, res = tmp_path / "01_GT", tmp_path / "01_RES"
    for folder in (gt / "SEG", gt / "TRA", res):
        folder.mkdir(parents=True)
    labels = _labels()
    for t in range(frames):
        tifffile.imwrite(gt / "SEG" / f"man_seg{t:03d}.tif", labels)
        tifffile.imwrite(gt / "TRA" / f"man_track{t:03d}.tif", labels)
        pred = labels.copy()
        pred[pred == 3] = 0  # one missed object per frame
        tifffile.imwrite(res / f"mask{t:03d}.tif", pred)
    return gt, res


def test_ctc_folders_json(tmp_path, capsys):
    gt, res = _ctc(tmp_path)
    out = tmp_path / "out.json"
    assert _tool().main(["--ctc-gt", str(gt), "--ctc-res", str(res), "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["SEG"] == pytest.approx(2 / 3) and result["DET"] == pytest.approx(2 / 3)
    assert result["OP_CSB"] == pytest.approx(2 / 3) and len(result["per_frame"]) == 3
    assert "SEG=0.666667" in capsys.readouterr().out


def test_ctc_bad_input_exits_2_with_one_line(tmp_path):
    gt, res = _ctc(tmp_path)
    os.remove(res / "mask002.tif")
    completed = subprocess.run(
        [sys.executable, str(REPO / "tools" / "evaluate.py"), "--ctc-gt", str(gt), "--ctc-res", str(res)],
        capture_output=True, text=True, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=120)
    assert completed.returncode == 2
    errors = [line for line in completed.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "mask002.tif: missing result frame 2" in errors[0]
    assert "Traceback" not in completed.stderr


def test_label_folders(tmp_path):
    gt_dir, pred_dir = tmp_path / "gt", tmp_path / "pred"
    gt_dir.mkdir()
    pred_dir.mkdir()
    for name in ("a", "b"):
        tifffile.imwrite(gt_dir / f"{name}.tif", _labels())
        tifffile.imwrite(pred_dir / f"{name}.tif", _labels())
    tool = _tool()
    out = tmp_path / "out.json"
    assert tool.main(["--gt-labels", str(gt_dir), "--pred-labels", str(pred_dir), "--json", str(out),
                      "--output-dir", str(tmp_path / "reports")]) == 0
    result = json.loads(out.read_text())["gt"]
    assert result["segm"]["AP"] == pytest.approx(100.0) and result["ctc"]["SEG"] == pytest.approx(1.0)
    assert (tmp_path / "reports" / "per_image.json").exists() and (tmp_path / "reports" / "evaluation.md").exists()
    tifffile.imwrite(pred_dir / "c.tif", _labels())
    assert tool.main(["--gt-labels", str(gt_dir), "--pred-labels", str(pred_dir)]) == 2
    os.remove(pred_dir / "c.tif")
    tifffile.imwrite(pred_dir / "b.tif", _labels((20, 40)))
    assert tool.main(["--gt-labels", str(gt_dir), "--pred-labels", str(pred_dir)]) == 2


def test_coco_results_round_trip(tmp_path, capsys):
    from detectron2.data import DatasetCatalog, MetadataCatalog

    from deepcens.evaluation import CellEvaluator
    from deepcens.postprocess.instances import label_image_to_instances

    labels = _labels()
    label_file = tmp_path / "label.tif"
    tifffile.imwrite(label_file, labels)
    dicts = [{"file_name": str(tmp_path / f"img{i}.png"), "image_id": f"img{i}", "height": 40, "width": 40,
              "label_file_name": str(label_file)} for i in range(2)]
    name = "test_evaluation_tool_roundtrip"
    if name not in DatasetCatalog.list():
        DatasetCatalog.register(name, lambda: dicts)
        MetadataCatalog.get(name).set(thing_classes=["cell"])
    pred = labels.copy()
    pred[pred == 2] = 0
    evaluator = CellEvaluator(name, str(tmp_path / "inference"), distributed=False)
    for record in dicts:
        evaluator.process([{"image_id": record["image_id"]}], [{"instances": label_image_to_instances(pred)}])
    direct = evaluator.evaluate()
    results_file = tmp_path / "inference" / "coco_instances_results.json"
    out = tmp_path / "out.json"
    tool = _tool()
    assert tool.main(["--dataset", name, "--pred-coco", str(results_file), "--json", str(out)]) == 0
    again = json.loads(out.read_text())[name]
    assert again["segm"]["AP"] == pytest.approx(direct["segm"]["AP"])
    assert again["ctc"]["SEG"] == pytest.approx(direct["ctc"]["SEG"])
    pred_dir = tmp_path / "pred_labels"
    pred_dir.mkdir()
    for record in dicts:
        tifffile.imwrite(pred_dir / (os.path.basename(record["file_name"])[:-4] + ".tif"), pred)
    assert tool.main(["--dataset", name, "--pred-labels", str(pred_dir), "--json", str(out)]) == 0
    assert json.loads(out.read_text())[name]["segm"]["AP"] == pytest.approx(direct["segm"]["AP"])
    entries = json.loads(results_file.read_text())
    entries[0]["image_id"] = "no_such_image"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(entries))
    capsys.readouterr()
    assert tool.main(["--dataset", name, "--pred-coco", str(bad)]) == 2
    assert "unknown image id 'no_such_image'" in capsys.readouterr().err
    bad.write_text("[]")
    assert tool.main(["--dataset", name, "--pred-coco", str(bad), "--json", str(out)]) == 0
    assert json.loads(out.read_text())[name]["segm"]["AP"] == 0.0  # documented zero score
