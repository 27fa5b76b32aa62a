"""Tracking: links -> CTC tracks, the registered trackers on real GT sequences, track files."""
from __future__ import annotations

import csv
import os
import shutil

import numpy as np
import pytest
import tifffile
from detectron2.config import get_cfg

from deepcens.config import add_deepcens_config
from deepcens.data.ctc import parse_track_file
from deepcens.data.ctc_files import frame_files
from deepcens.evaluation.ctc_measures import evaluate_ctc_folders
from deepcens.evaluation.ctc_tra import track_table_problems
from deepcens.tracking import (
    TrackingResult, build_tracker, frame_objects, links_to_tracks, write_track_csv, write_track_table,
)
from deepcens.tracking.trackers import GreedyTracker, LapTracker


def _disc(shape, centre, radius, label, out):
    rows, cols = np.ogrid[:shape[0], :shape[1]]
    out[(rows - centre[0]) ** 2 + (cols - centre[1]) ** 2 <= radius ** 2] = label


def _dividing_cell_frames() -> list[np.ndarray]:
    """A cell moving right (frames 0-2), dividing into two (frames 3-5), a second cell missing
    in frame 2 (a gap), and ids that change at random from frame to frame."""
    frames = []
    for t in range(6):
        labels = np.zeros((64, 96), np.uint16)
        if t < 3:
            _disc(labels.shape, (20, 10 + 3 * t), 6, 7 + t, labels)
        else:
            _disc(labels.shape, (20 - 2.5 * (t - 1), 10 + 3 * t), 4, 30 - t, labels)
            _disc(labels.shape, (20 + 2.5 * (t - 1), 10 + 3 * t), 4, 40 + t, labels)
        if t != 2:
            _disc(labels.shape, (50, 60 + 2 * t), 5, 3 if t % 2 else 90, labels)
        frames.append(labels)
    return frames


def _ids(frames):
    return [np.unique(f[f > 0]) for f in frames]


def test_links_to_tracks_declares_divisions_and_gaps():
    frames = _dividing_cell_frames()
    objects = [frame_objects(f) for f in frames]
    offsets = np.concatenate([[0], np.cumsum([len(o.ids) for o in objects])])
    # objects per frame sorted by id: frame 0 (7, 90), 1 (3, 8), 2 (9), 3 (3, 27, 43), 4 (26, 44, 90), 5 (3, 25, 45)
    g = lambda t, i: offsets[t] + i  # noqa: E731
    source = [g(0, 0), g(1, 1), g(2, 0), g(2, 0), g(3, 1), g(3, 2), g(4, 0), g(4, 1),  # the dividing cell
              g(0, 1), g(1, 0), g(3, 0), g(4, 2)]                                     # the cell with a gap
    target = [g(1, 1), g(2, 0), g(3, 1), g(3, 2), g(4, 0), g(4, 1), g(5, 1), g(5, 2),
              g(1, 0), g(3, 0), g(4, 2), g(5, 0)]
    result = links_to_tracks(frames, objects, np.array(source), np.array(target))
    assert result.tracks.tolist() == [[1, 0, 2, 0], [2, 0, 1, 0], [3, 3, 5, 2], [4, 3, 5, 1], [5, 3, 5, 1]]
    assert result.divisions() == 1
    assert not track_table_problems(result.tracks, _ids(result.labels))
    for t, (before, after) in enumerate(zip(frames, result.labels)):
        assert np.array_equal(before > 0, after > 0), t  # masks unchanged, only ids
    with pytest.raises(ValueError, match="two predecessors"):
        links_to_tracks(frames, objects, np.array([g(0, 0), g(0, 1)]), np.array([g(1, 0), g(1, 0)]))


@pytest.mark.parametrize("cost", ["centroid", "overlap"])
def test_lap_tracker_finds_division_and_closes_gap(cost):
    frames = _dividing_cell_frames()
    result = LapTracker(cost=cost, max_distance=12, min_overlap=0.2, gap_closing_frames=1,
                        gap_closing_max_distance=12, division_max_distance=15).track(frames)
    assert result.divisions() == 1
    assert not track_table_problems(result.tracks, _ids(result.labels))
    ends = {row[0]: row for row in result.tracks.tolist()}
    gap_child = [row for row in result.tracks.tolist() if row[1] == 3 and row[3] and ends[row[3]][2] == 1]
    if cost == "centroid":  # the overlap cost cannot bridge a gap the disc moved out of
        assert len(gap_child) == 1
    from deepcens.postprocess.instances import label_image_to_instances

    from_instances = LapTracker(cost=cost, max_distance=12, min_overlap=0.2, gap_closing_frames=1,
                                gap_closing_max_distance=12, division_max_distance=15).track(
        [label_image_to_instances(f) for f in frames])
    assert np.array_equal(from_instances.tracks, result.tracks)  # Instances are rendered, then linked alike
    without = LapTracker(cost=cost, max_distance=12, gap_closing_frames=0, divisions=False).track(frames)
    assert without.divisions() == 0 and not track_table_problems(without.tracks, _ids(without.labels))


def _sim_markers(shared_data, frames=None):
    gt_dir = shared_data / "ctc" / "Fluo-N2DH-SIM+" / "01_GT"
    files = frame_files(gt_dir / "TRA", "tra")
    chosen = sorted(files) if frames is None else frames
    return str(gt_dir), [tifffile.imread(files[t]) for t in chosen]


def _write(result: TrackingResult, res_dir):
    os.makedirs(res_dir)
    for t, labels in enumerate(result.labels):
        tifffile.imwrite(os.path.join(res_dir, f"mask{t:03d}.tif"), labels)
    write_track_table(os.path.join(res_dir, "res_track.txt"), result.tracks)


def test_tracking_sim_from_its_gt_masks(shared_data, tmp_path):
    """The default tracker on SIM+ 01's own GT markers (65 frames, 28 divisions, ids shuffled
    per frame): TRA >= 0.99, a valid result folder."""
    gt_dir, markers = _sim_markers(shared_data)
    rng = np.random.default_rng(0)
    shuffled = []
    for labels in markers:  # the tracker must not lean on the GT ids
        lut = np.zeros(int(labels.max()) + 1, np.uint16)
        lut[1:] = rng.permutation(np.arange(1, len(lut))) + 100
        shuffled.append(lut[labels])
    cfg = get_cfg()
    add_deepcens_config(cfg)
    result = build_tracker(cfg).track(shuffled)
    assert not track_table_problems(result.tracks, _ids(result.labels))
    _write(result, tmp_path / "01_RES")
    measures = evaluate_ctc_folders(gt_dir, tmp_path / "01_RES")
    assert measures["TRA"] >= 0.99 and measures["DET"] == 1.0
    assert result.divisions() >= 20
    gt_tracks = parse_track_file(os.path.join(gt_dir, "TRA", "man_track.txt"))
    # one-frame tracks score far lower: TRA measures the links
    singles = TrackingResult(*_single_frame_tracks(markers))
    _write(singles, tmp_path / "singles")
    assert evaluate_ctc_folders(gt_dir, tmp_path / "singles")["TRA"] < 0.9
    assert len(gt_tracks) > 0


def _single_frame_tracks(frames):
    labels, rows, next_id = [], [], 1
    for t, frame in enumerate(frames):
        ids = np.unique(frame[frame > 0])
        lut = np.zeros(int(frame.max()) + 1, np.uint16)
        lut[ids] = np.arange(next_id, next_id + len(ids))
        labels.append(lut[frame])
        rows += [[i, t, t, 0] for i in range(next_id, next_id + len(ids))]
        next_id += len(ids)
    return labels, np.array(rows)


def test_greedy_tracker_and_csv(shared_data, tmp_path):
    """XB-Net's nearest-centroid rule on SIM+ frames 7-16: valid, high TRA, no divisions;
    the per-track CSV lists every object once with its track's span and parent."""
    _, markers = _sim_markers(shared_data, list(range(7, 17)))
    cfg = get_cfg()
    add_deepcens_config(cfg)
    cfg.TRACKING.NAME = "GreedyTracker"
    tracker = build_tracker(cfg)
    assert isinstance(tracker, GreedyTracker)
    result = tracker.track(markers)
    assert result.divisions() == 0 and not track_table_problems(result.tracks, _ids(result.labels))
    write_track_csv(tmp_path / "tracks.csv", result, frame_numbers=range(7, 17))
    with open(tmp_path / "tracks.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == sum(len(np.unique(f[f > 0])) for f in markers)
    table = {row[0]: row for row in result.tracks.tolist()}
    for row in rows[:50]:
        label, begin, end, parent = table[int(row["track_id"])]
        assert (int(row["start"]), int(row["end"]), int(row["parent"])) == (begin + 7, end + 7, parent)
        labels = result.labels[int(row["frame"]) - 7]
        ys, xs = np.nonzero(labels == label)
        assert abs(float(row["y"]) - ys.mean()) < 0.01 and abs(float(row["x"]) - xs.mean()) < 0.01


def test_tracker_config_errors():
    cfg = get_cfg()
    add_deepcens_config(cfg)
    cfg.TRACKING.COST = "iou"
    with pytest.raises(ValueError, match="TRACKING.COST"):
        build_tracker(cfg)
    with pytest.raises(ValueError, match="shape"):
        LapTracker().track([np.zeros((4, 4), np.uint16), np.zeros((4, 5), np.uint16)])
    empty = LapTracker().track([np.zeros((4, 4), np.uint16)] * 3)
    assert empty.num_tracks == 0 and len(empty.labels) == 3


def test_cell_evaluator_reports_tra_like_the_folder_path(shared_data, tmp_path):
    """CellEvaluator on SIM+ frames 7-16 links the predictions with TRACKING.* and reports the
    TRA the folder path gives for the same tracked result against the clipped GT."""
    from deepcens.data.ctc import load_ctc_dicts
    from deepcens.evaluation import CellEvaluator
    from deepcens.evaluation.ctc_tra import clip_track_table
    from deepcens.postprocess.instances import instances_to_label_image, label_image_to_instances

    root = shared_data / "ctc"
    frames = list(range(7, 17))
    dicts = load_ctc_dicts(str(root), "Fluo-N2DH-SIM+", ["01"], "GT", frames=frames)
    gt_dir, markers = _sim_markers(shared_data, frames)
    tracker = LapTracker()
    evaluator = CellEvaluator("sim_window", None, distributed=False, dataset_dicts=dicts, class_names=["cell"],
                              tracker=tracker)
    rendered = []
    for record, labels in zip(dicts, markers):
        labels = labels.copy()
        labels[labels == labels.max()] = 0  # one object missed per frame
        instances = label_image_to_instances(labels)
        rendered.append(instances_to_label_image(instances))
        evaluator.process([{"image_id": record["image_id"]}], [{"instances": instances}])
    ctc = evaluator.evaluate()["ctc"]
    window = tmp_path / "01_GT" / "TRA"
    window.mkdir(parents=True)
    for t, labels in enumerate(markers):
        tifffile.imwrite(window / f"man_track{t:03d}.tif", labels)
    write_track_table(window / "man_track.txt",
                      clip_track_table(parse_track_file(os.path.join(gt_dir, "TRA", "man_track.txt")), 7, 16))
    _write(tracker.track(rendered), tmp_path / "01_RES")
    folder = evaluate_ctc_folders(tmp_path / "01_GT", tmp_path / "01_RES")
    assert 0.8 < ctc["TRA"] < 1.0
    for key in ("TRA", "AOGM", "AOGM_0", "AOGM_FN"):
        assert ctc[key] == pytest.approx(folder[key], abs=1e-12), key
    assert ctc["TRA-Fluo-N2DH-SIM+/01"] == ctc["TRA"] and ctc["OP_CTB"] == pytest.approx(0.5 * (ctc["SEG"] + ctc["TRA"]))


def test_predict_ctc_format_track_writes_a_valid_tracked_folder(shared_data, tmp_path, monkeypatch):
    """``predict --ctc-format --track --overlays`` on 6 SIM+ frames whose predictions are the GT
    markers (the model call is replaced): persistent ids, a res_track.txt that py-ctcmetrics
    calls valid, TRA >= 0.99 against the window's GT, the per-track CSV and overlays."""
    import contextlib
    import io
    import re

    from ctc_metrics.metrics import valid
    from ctc_metrics.utils.filesystem import parse_masks, read_tracking_file

    from deepcens.predict import main as predict_main
    from deepcens.predict.predictor import Predictor
    from deepcens.evaluation.ctc_tra import clip_track_table
    from deepcens.postprocess.instances import label_image_to_instances

    gt_dir, markers = _sim_markers(shared_data, list(range(7, 13)))
    sequence = tmp_path / "SIM" / "01"
    sequence.mkdir(parents=True)
    for t in range(6):
        shutil.copy(shared_data / "ctc" / "Fluo-N2DH-SIM+" / "01" / f"t{t + 7:03d}.tif", sequence / f"t{t:03d}.tif")

    def gt_predictions(self, images, file_names, batch_size=1, extra=None):
        return [label_image_to_instances(markers[int(re.search(r"t(\d+)\.tif", name).group(1))]) for name in file_names]

    monkeypatch.setattr(Predictor, "__call__", gt_predictions)
    config = tmp_path / "xbnet.yaml"
    config.write_text('_BASE_: "{}"\nMODEL: {{DEVICE: "cpu"}}\n'.format(
        os.path.abspath("configs/xbnet/xbnet_sim_cpu.yaml")))
    out = tmp_path / "out"
    assert predict_main(["--config-file", str(config), "--input", str(sequence), "--output", str(out),
                         "--ctc-format", "--track", "--overlays", "--no-progress", "--allow-random-weights"]) == 0
    res = out / "01_RES"
    tracks = read_tracking_file(str(res / "res_track.txt"))
    masks = parse_masks(str(res))
    with contextlib.redirect_stdout(io.StringIO()):
        assert valid(masks, tracks, [np.unique(tifffile.imread(m))[1:].tolist() for m in masks]) == 1
    window = tmp_path / "01_GT" / "TRA"
    window.mkdir(parents=True)
    for t, labels in enumerate(markers):
        tifffile.imwrite(window / f"man_track{t:03d}.tif", labels)
    write_track_table(window / "man_track.txt",
                      clip_track_table(parse_track_file(os.path.join(gt_dir, "TRA", "man_track.txt")), 7, 12))
    assert evaluate_ctc_folders(tmp_path / "01_GT", res)["TRA"] >= 0.99
    with open(out / "01_tracks.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == sum(len(np.unique(m)) - 1 for m in markers)
    assert sorted(os.listdir(out / "overlays" / "01")) == [f"t{t:03d}.png" for t in range(6)]
    assert predict_main(["--config-file", str(config), "--input", str(sequence), "--output", str(tmp_path / "o2"),
                         "--track", "--no-progress", "--allow-random-weights"]) == 2  # --track needs --ctc-format
