"""Tertiary target (XB-Net Algorithm 1) against a literal per-cell implementation, sparse ignore."""
from __future__ import annotations

import numpy as np
import pytest
import tifffile
from detectron2.config import get_cfg
from scipy import ndimage

from deepcens import add_deepcens_config
from deepcens.data import targets
from deepcens.data.targets import IGNORE_VALUE, TARGET_REGISTRY, sparse_ignore_mask, tertiary_target


def per_cell_reference(seg: np.ndarray, dilation: int, erosion: int) -> np.ndarray:
    """Algorithm 1 cell by cell, as the authors wrote it (window test pixel by pixel)."""
    cross = ndimage.generate_binary_structure(seg.ndim, 1)
    background = seg == 0
    out = np.zeros(seg.shape, np.uint8)
    for cell in np.unique(seg)[1:]:
        mask = seg == cell
        if dilation:
            out[ndimage.binary_dilation(mask, cross, iterations=dilation) & background] = 1
        out[mask] = 2
        eroded = ndimage.binary_erosion(mask, cross, iterations=erosion) if erosion else mask
        for pixel in zip(*np.nonzero(mask & ~eroded)):
            window = seg[tuple(slice(max(p - erosion, 0), p + erosion + 1) for p in pixel)]
            if ((window > 0) & (window != cell)).any():
                out[pixel] = 1
    return out


def voronoi_cells(shape: tuple[int, ...], count: int, radius: float, seed: int = 0) -> np.ndarray:
    """Touching cells: nearest-seed regions cut at ``radius`` from their seed."""
    rng = np.random.default_rng(seed)
    seeds = np.zeros(shape, np.int32)
    points = tuple(rng.integers(0, s, count) for s in shape)
    seeds[points] = np.arange(1, count + 1)
    distance, indices = ndimage.distance_transform_edt(seeds == 0, return_indices=True)
    labels = seeds[tuple(indices)]
    labels[distance > radius] = 0
    return labels


@pytest.mark.parametrize("name", [
    "Fluo-N2DH-SIM+/01_GT/SEG/man_seg010.tif",
    "Fluo-C2DL-MSC/01_GT/SEG/man_seg005.tif",
    "Fluo-N2DH-GOWT1/01_GT/TRA/man_track010.tif",
])
def test_equals_per_cell_algorithm_on_real_ctc_frames(shared_data, name):
    seg = tifffile.imread(shared_data / "ctc" / name).astype(np.int32)
    for dilation, erosion in ((2, 2), (5, 2)):
        expected = per_cell_reference(seg, dilation, erosion)
        assert np.array_equal(tertiary_target(seg, dilation, erosion), expected)


@pytest.mark.parametrize("dilation,erosion", [(2, 2), (5, 2), (1, 1), (0, 3), (3, 0)])
def test_equals_per_cell_algorithm_on_touching_cells(dilation, erosion):
    seg = voronoi_cells((96, 80), 40, 9.0, seed=dilation * 10 + erosion)
    target = tertiary_target(seg, dilation, erosion)
    assert np.array_equal(target, per_cell_reference(seg, dilation, erosion))
    if erosion:
        # touching cells exist, and their contact pixels are boundary
        contact = (seg[:, 1:] != seg[:, :-1]) & (seg[:, 1:] > 0) & (seg[:, :-1] > 0)
        assert contact.any() and (target[:, 1:][contact] == 1).all()


def test_equals_per_cell_algorithm_in_3d():
    seg = voronoi_cells((8, 40, 36), 25, 7.0, seed=3)
    assert len(np.unique(seg)) > 20
    for dilation, erosion in ((5, 2), (2, 2)):
        assert np.array_equal(tertiary_target(seg, dilation, erosion), per_cell_reference(seg, dilation, erosion))


def test_hand_example_two_touching_cells_and_image_border():
    seg = np.zeros((12, 14), np.int32)
    seg[2:8, 0:5] = 1  # touches the left image border
    seg[2:8, 5:10] = 2  # touches cell 1
    target = tertiary_target(seg, dilation=2, erosion=2)
    assert target.dtype == np.uint8
    assert target[4, 0] == 2  # at the image border, no other cell within 2: stays cell
    assert (target[4, 3:7] == 1).all()  # cell-cell contact band (2 pixels each side)
    assert target[4, 2] == 2 and target[4, 7] == 2  # 3 pixels away from the other cell
    assert target[8, 6] == 1 and target[9, 6] == 1 and target[10, 6] == 0  # 2-pixel outer ring
    assert target[8, 10] == 1 and target[9, 10] == 0 and target[8, 11] == 0  # cross element: L1 distance
    assert tertiary_target(np.zeros((5, 5), np.uint16)).sum() == 0


def test_rejects_non_integer_or_negative_labels():
    with pytest.raises(ValueError):
        tertiary_target(np.full((4, 4), 0.5))
    with pytest.raises(ValueError):
        tertiary_target(-np.ones((4, 4), np.int32))


def test_registry_builder_uses_config_and_dilation_override():
    cfg = get_cfg()
    add_deepcens_config(cfg)
    cfg.MODEL.DENSE.TARGET_DILATION = 3
    build = TARGET_REGISTRY.get("tertiary")(cfg)
    seg = voronoi_cells((40, 40), 8, 8.0)
    assert np.array_equal(build(seg), tertiary_target(seg, 3, 2))
    assert np.array_equal(build(seg, dilation=5), tertiary_target(seg, 5, 2))
    assert targets.build_target(cfg)(seg).shape == seg.shape


def test_sparse_ignore_mask_from_markers_and_silver():
    labels = np.zeros((40, 60), np.int32)
    labels[5:15, 5:15] = 7  # the only labelled cell
    markers = np.zeros_like(labels)
    markers[7:13, 7:13] = 1  # marker of the labelled cell
    markers[22:28, 32:38] = 2  # marker of an unlabelled cell (true extent 20:30, 30:40)
    ignore = sparse_ignore_mask(labels, markers=markers)
    assert not ignore[labels > 0].any()
    assert ignore[20:30, 30:40].all()  # the whole unlabelled cell, not only its marker
    assert not ignore[0, 59] and not ignore[39, 0]  # far background is still taught
    silver = np.zeros_like(labels)
    silver[5:15, 5:15] = 1
    silver[30:36, 50:56] = 2  # a cell only the silver truth knows
    ignore = sparse_ignore_mask(labels, silver=silver, dilation=2)
    assert ignore[30:36, 48:58].all() and ignore[28:38, 50:56].all() and not ignore[28, 48] and not ignore[labels > 0].any() and not ignore[0, 0]
    # no reference at all: only the labelled cells and their ring are taught
    ignore = sparse_ignore_mask(labels, dilation=2)
    assert ignore[30, 40] and not ignore[16, 10] and ignore[17, 10]


def test_dense_target_for_sparse_gowt1_frame_ignores_unlabelled_cells(shared_data):
    from detectron2.data import DatasetCatalog

    from deepcens.data import ctc

    dicts = [d for d in DatasetCatalog.get("ctc_gowt1_train") if d["sparse_labels"]][:1]
    assert dicts, "GOWT1 gold truth is sparse"
    d = dicts[0]
    fn = lambda labels, dilation=None: tertiary_target(labels, dilation or 2)  # noqa: E731
    target = targets.dense_target_for_dict(d, fn)
    labels, markers = ctc.read_ctc_labels(d), ctc.read_ctc_markers(d)
    assert target.shape == labels.shape and set(np.unique(target)) <= {0, 1, 2, IGNORE_VALUE}
    assert not (target[labels > 0] == IGNORE_VALUE).any()
    covered = np.bincount(markers.ravel(), weights=(labels > 0).ravel(), minlength=markers.max() + 1)
    area = np.bincount(markers.ravel())
    unlabelled = np.flatnonzero((area > 0) & (covered < 0.5 * np.maximum(area, 1)))
    unlabelled = unlabelled[unlabelled > 0]
    assert len(unlabelled) > 5
    assert (target[np.isin(markers, unlabelled)] == IGNORE_VALUE).all()
    assert (target == 0).mean() > 0.5  # most of the background is still taught


def test_dense_target_for_dense_sim_frame_has_no_ignore(shared_data):
    from detectron2.data import DatasetCatalog

    d = DatasetCatalog.get("ctc_sim_val")[0]
    assert not d["sparse_labels"]
    target = targets.dense_target_for_dict(d, lambda labels, dilation=None: tertiary_target(labels, dilation or 2))
    assert set(np.unique(target)) == {0, 1, 2}
