"""CTC TRA and 3D SEG/DET: exact agreement with py-ctcmetrics on real sequences with perturbed
tracks, and on a 3D case."""
from __future__ import annotations

import contextlib
import io
import os
import shutil

import numpy as np
import pytest
import tifffile
from scipy import ndimage

from deepcens.benchmarks.ctc_metrics import perturb_labels
from deepcens.data.ctc import parse_track_file
from deepcens.data.ctc_files import frame_files, write_result_folder
from deepcens.errors import DeepcensInputError
from deepcens.evaluation.ctc_measures import evaluate_ctc_folders
from deepcens.evaluation.ctc_tra import clip_track_table, track_table_problems
from deepcens.tracking import write_track_table


def reference(gt_dir, res_dir, metrics) -> dict:
    from ctc_metrics import evaluate_sequence

    with contextlib.redirect_stdout(io.StringIO()):
        return evaluate_sequence(str(res_dir), str(gt_dir), metrics=list(metrics), threads=1)


def gt_window(gt_dir: str, first: int, last: int, out_dir) -> list[np.ndarray]:
    """Frames first..last of a CTC GT (TRA only) renumbered from 0, man_track.txt clipped to
    the window (parents outside it dropped). Returns the marker frames."""
    tra = frame_files(os.path.join(gt_dir, "TRA"), "tra")
    os.makedirs(os.path.join(out_dir, "TRA"))
    markers = []
    for new, frame in enumerate(range(first, last + 1)):
        shutil.copyfile(tra[frame], os.path.join(out_dir, "TRA", f"man_track{new:03d}.tif"))
        markers.append(tifffile.imread(tra[frame]).astype(np.int32))
    tracks = parse_track_file(os.path.join(gt_dir, "TRA", "man_track.txt"))
    write_track_table(os.path.join(out_dir, "TRA", "man_track.txt"), clip_track_table(tracks, first, last))
    return markers


def table_from_masks(frames: list[np.ndarray], parents: dict[int, int]) -> np.ndarray:
    """L B E P rows from label presence (every label must be present in consecutive frames)."""
    spans: dict[int, list[int]] = {}
    for t, labels in enumerate(frames):
        for label in np.unique(labels[labels > 0]).tolist():
            spans.setdefault(label, []).append(t)
    return np.array([[label, min(s), max(s), parents.get(label, 0)] for label, s in sorted(spans.items())])


def perturbed_tracks(markers: list[np.ndarray], gt_tracks: np.ndarray, seed: int) -> tuple[list[np.ndarray], np.ndarray]:
    """The GT markers as a tracking result with track errors: swapped ids, broken tracks,
    missed divisions (both links lost, or one daughter continuing the mother), a declared gap
    and a false object."""
    rng = np.random.default_rng(seed)
    frames = [m.copy() for m in markers]
    parents = {int(l): int(p) for l, _, _, p in gt_tracks.tolist() if p}
    next_label = int(gt_tracks[:, 0].max()) + 1
    last = len(frames) - 1
    children_of = lambda label: [c for c, p in parents.items() if p == label]  # noqa: E731
    spans = {int(l): (int(b), int(e)) for l, b, e, _ in gt_tracks.tolist()}
    to_end = [l for l, (b, e) in spans.items() if b <= 4 and e == last and not children_of(l)]
    # swapped ids from the middle frame on
    a, b = rng.choice(to_end, 2, replace=False)
    for t in range(len(frames) // 2, last + 1):
        frame = frames[t]
        in_a, in_b = frame == a, frame == b
        frame[in_a], frame[in_b] = b, a
    # broken tracks: a new id from a frame inside the track on, without parent
    long_tracks = [l for l, (b0, e0) in spans.items() if e0 - b0 >= 5 and l not in (a, b)]
    for label in rng.choice(long_tracks, 2, replace=False).tolist():
        b0, e0 = spans[label]
        cut = int(rng.integers(b0 + 2, e0))
        for t in range(cut, e0 + 1):
            frames[t][frames[t] == label] = next_label
        for child in children_of(label):
            parents[child] = next_label
        next_label += 1
    # missed divisions
    mothers = sorted({p for p in parents.values() if len(children_of(p)) == 2})
    assert len(mothers) >= 2, "the window needs two divisions"
    lost, continued = mothers[0], mothers[1]
    for child in children_of(lost):
        parents.pop(child)
    first_child, second_child = sorted(children_of(continued))
    for frame in frames:
        frame[frame == first_child] = continued
    parents.pop(first_child)
    parents.pop(second_child)
    for grandchild in children_of(first_child):
        parents[grandchild] = continued
    # a declared gap: one object missing in one frame, the rest of its track a child
    candidates = [l for l, (b0, e0) in spans.items() if e0 - b0 >= 4 and l in np.unique(frames[b0 + 2])
                  and all(l in np.unique(frames[t]) for t in range(b0, e0 + 1))]
    gap_label = int(rng.choice(candidates))
    b0, e0 = spans[gap_label]
    frames[b0 + 2][frames[b0 + 2] == gap_label] = 0
    for t in range(b0 + 3, e0 + 1):
        frames[t][frames[t] == gap_label] = next_label
    for child in children_of(gap_label):
        parents[child] = next_label
    parents[next_label] = gap_label
    next_label += 1
    # a false object
    frames[3][:6, :6] = np.where(frames[3][:6, :6] == 0, next_label, frames[3][:6, :6])
    return frames, table_from_masks(frames, parents)


def write_tracking_result(frames: list[np.ndarray], tracks: np.ndarray, res_dir) -> None:
    os.makedirs(res_dir, exist_ok=True)
    for t, labels in enumerate(frames):
        tifffile.imwrite(os.path.join(res_dir, f"mask{t:03d}.tif"), labels.astype(np.uint16))
    write_track_table(os.path.join(res_dir, "res_track.txt"), tracks)


TRA_KEYS = ("TRA", "AOGM", "AOGM_0", "AOGM_NS", "AOGM_FN", "AOGM_FP", "AOGM_ED", "AOGM_EA", "AOGM_EC", "DET")


def test_tra_identical_to_py_ctcmetrics_with_perturbed_tracks(shared_data, tmp_path):
    """SIM+ 01 frames 7-16 (4 divisions): swapped ids, broken tracks, missed divisions, a gap."""
    gt_dir = tmp_path / "01_GT"
    markers = gt_window(str(shared_data / "ctc" / "Fluo-N2DH-SIM+" / "01_GT"), 7, 16, gt_dir)
    gt_tracks = parse_track_file(gt_dir / "TRA" / "man_track.txt")
    frames, tracks = perturbed_tracks(markers, gt_tracks, seed=0)
    assert not track_table_problems(tracks, [np.unique(f[f > 0]) for f in frames])
    write_tracking_result(frames, tracks, tmp_path / "01_RES")
    ours = evaluate_ctc_folders(gt_dir, tmp_path / "01_RES")
    ref = reference(gt_dir, tmp_path / "01_RES", ["Valid", "DET", "TRA"])
    assert ref["Valid"] == 1
    for key in TRA_KEYS:
        assert abs(ours[key] - float(ref[key])) < 1e-9, (key, ours[key], ref[key])
    assert ours["AOGM_ED"] >= 2 and ours["AOGM_EA"] >= 4 and ours["AOGM_FN"] == 1 and ours["AOGM_FP"] == 1
    assert 0.9 < ours["TRA"] < 0.999
    # The unperturbed markers with the GT table score 1.
    write_tracking_result(markers, gt_tracks, tmp_path / "perfect")
    assert evaluate_ctc_folders(gt_dir, tmp_path / "perfect")["TRA"] == 1.0


def test_tra_identical_to_py_ctcmetrics_with_segmentation_errors(shared_data, tmp_path):
    """GOWT1 01 frames 30-33 segmented with splits, merges, misses and false objects, every
    object its own one-frame track (the untracked result folder)."""
    gt_dir = tmp_path / "01_GT"
    markers = gt_window(str(shared_data / "ctc" / "Fluo-N2DH-GOWT1" / "01_GT"), 30, 33, gt_dir)
    rng = np.random.default_rng(2)
    grown = [ndimage.grey_dilation(m, size=9) for m in markers]
    write_result_folder({t: perturb_labels(g, rng) for t, g in enumerate(grown)}, str(tmp_path / "01_RES"))
    ours = evaluate_ctc_folders(gt_dir, tmp_path / "01_RES")
    ref = reference(gt_dir, tmp_path / "01_RES", ["Valid", "DET", "TRA"])
    for key in TRA_KEYS:
        assert abs(ours[key] - float(ref[key])) < 1e-9, (key, ours[key], ref[key])
    assert ours["AOGM_NS"] > 0 and ours["AOGM_EA"] == ours["num_edges_tra"] and ours["AOGM_ED"] == 0


def test_invalid_tracking_result_is_refused(tmp_path):
    labels = np.zeros((16, 16), np.uint16)
    labels[2:6, 2:6] = 1
    gt = tmp_path / "01_GT" / "TRA"
    gt.mkdir(parents=True)
    for t in range(3):
        tifffile.imwrite(gt / f"man_track{t:03d}.tif", labels)
    write_track_table(gt / "man_track.txt", np.array([[1, 0, 2, 0]]))
    write_tracking_result([labels] * 3, np.array([[1, 0, 1, 0]]), tmp_path / "01_RES")
    with pytest.raises(DeepcensInputError, match=r"res_track\.txt: not a valid CTC tracking result: .*label 1 in frame 2"):
        evaluate_ctc_folders(tmp_path / "01_GT", tmp_path / "01_RES")
    assert "TRA" not in evaluate_ctc_folders(tmp_path / "01_GT", tmp_path / "01_RES", tra=False)
    problems = track_table_problems(np.array([[1, 0, 2, 0], [2, 2, 2, 1]]), [np.array([1])] * 2 + [np.array([1, 2])])
    assert any("parent 1 of track 2 ends at frame 2" in p for p in problems)


# ---- 3D -----------------------------------------------------------------------------------------

def _pseudo_volumes(gt_dir: str, num_volumes: int = 3, planes: int = 4) -> list[np.ndarray]:
    """3D label volumes from consecutive SIM+ marker frames stacked as planes (a nucleus keeps
    its label from plane to plane, so objects are 3D), subsampled to 345x314."""
    tra = frame_files(os.path.join(gt_dir, "TRA"), "tra")
    return [np.stack([tifffile.imread(tra[t + z])[::2, ::2] for z in range(planes)]).astype(np.int32)
            for t in range(num_volumes)]


def _perturb_volume(volume: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    ids = np.unique(volume[volume > 0])
    out = ndimage.grey_erosion(volume, size=(1, 3, 3))
    dilated = ndimage.grey_dilation(volume, size=(1, 5, 5))
    grow = np.isin(volume, ids[::3]) | ((volume == 0) & np.isin(dilated, ids[1::5]))
    out[grow] = dilated[grow]
    out[np.isin(volume, ids[2::7])] = 0                       # missed objects
    split = ids[4]
    out[(out == split) & (np.arange(volume.shape[2]) < np.median(np.nonzero(volume == split)[2]))] = volume.max() + 1
    out[1:3, 5:15, 5:15] = np.where(out[1:3, 5:15, 5:15] == 0, volume.max() + 2, out[1:3, 5:15, 5:15])
    merge = ids[6:8]
    out[out == merge[1]] = merge[0]
    return out


def test_3d_seg_det_tra_identical_to_py_ctcmetrics(shared_data, tmp_path):
    """3D volumes (full 3D SEG for frame 0, SEG annotated in one plane for frame 1, none for 2),
    3D TRA markers, perturbed 3D results: SEG, DET and TRA as py-ctcmetrics gives them."""
    volumes = _pseudo_volumes(str(shared_data / "ctc" / "Fluo-N2DH-SIM+" / "01_GT"))
    gt_dir = tmp_path / "01_GT"
    (gt_dir / "SEG").mkdir(parents=True)
    (gt_dir / "TRA").mkdir()
    for t, volume in enumerate(volumes):
        tifffile.imwrite(gt_dir / "TRA" / f"man_track{t:03d}.tif", volume.astype(np.uint16))
    tifffile.imwrite(gt_dir / "SEG" / "man_seg000.tif", volumes[0].astype(np.uint16))
    tifffile.imwrite(gt_dir / "SEG" / "man_seg_001_002.tif", volumes[1][2].astype(np.uint16))
    write_track_table(gt_dir / "TRA" / "man_track.txt", table_from_masks(volumes, {}))
    rng = np.random.default_rng(0)
    write_result_folder({t: _perturb_volume(v, rng) for t, v in enumerate(volumes)}, str(tmp_path / "01_RES"))
    ours = evaluate_ctc_folders(gt_dir, tmp_path / "01_RES")
    ref = reference(gt_dir, tmp_path / "01_RES", ["SEG", "DET", "TRA"])
    for key in ("SEG", "DET", "TRA", "AOGM_NS", "AOGM_FN", "AOGM_FP"):
        assert abs(ours[key] - float(ref[key])) < 1e-9, (key, ours[key], ref[key])
    assert ours["num_frames_seg"] == 2 and 0.3 < ours["SEG"] < 0.95 and 0.5 < ours["DET"] < 0.99
    assert ours["AOGM_NS"] >= 1 and ours["AOGM_FN"] >= 1 and ours["AOGM_FP"] >= 1
    tifffile.imwrite(tmp_path / "01_RES" / "mask001.tif", np.zeros((4, 345, 100), np.uint16))
    with pytest.raises(DeepcensInputError, match=r"mask001\.tif: label size 4x345x100 differs from image size 4x345x314"):
        evaluate_ctc_folders(gt_dir, tmp_path / "01_RES")
