"""Tertiary decoder: scores -> Instances, thresholds per dataset, round trip through the target."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.data import MetadataCatalog
from detectron2.structures import Instances

from deepcens import add_deepcens_config
from deepcens.data.targets import tertiary_target
from deepcens.postprocess.decoders import (
    DECODER_REGISTRY,
    build_decoder,
    decode_tertiary,
    parse_postprocess_overrides,
    tertiary_labels,
)


def one_hot(target: np.ndarray, confidence: float = 0.8) -> torch.Tensor:
    """Soft scores whose argmax is ``target`` (classes 0/1/2)."""
    rest = (1.0 - confidence) / 2.0
    scores = np.full((3,) + target.shape, rest, np.float32)
    for c in range(3):
        scores[c][target == c] = confidence
    return torch.from_numpy(scores)


def two_cells_target() -> np.ndarray:
    target = np.zeros((30, 40), np.uint8)
    target[4:14, 4:16] = 2
    target[4:14, 16:18] = 1  # boundary band between the two cells
    target[4:14, 18:30] = 2
    target[20:22, 35:37] = 2  # 4-pixel speck
    target[8:10, 8:10] = 0  # 4-pixel hole in the first cell
    return target


def test_components_sizes_holes_and_scores():
    probabilities = one_hot(two_cells_target())
    probabilities[2, 4:14, 18:30] = 0.9
    probabilities[0, 4:14, 18:30] = 0.05
    probabilities[1, 4:14, 18:30] = 0.05
    raw = decode_tertiary(probabilities)
    assert isinstance(raw, Instances) and len(raw) == 3 and raw.image_size == (30, 40)
    cleaned = decode_tertiary(probabilities, min_object_size=5, max_hole_size=4)
    assert len(cleaned) == 2
    areas = sorted(cleaned.pred_masks.areas().tolist())
    assert areas == [120, 120]  # the speck is gone, the 4-pixel hole filled
    assert not decode_tertiary(probabilities, 5, 3).pred_masks.dense()[0, 8, 8]  # 3 < hole area: not filled
    assert cleaned.pred_masks.dtype == torch.bool and cleaned.pred_classes.tolist() == [0, 0]
    assert sorted(cleaned.scores.tolist()) == pytest.approx([(116 * 0.8 + 4 * 0.1) / 120, 0.9])  # filled hole counts
    assert cleaned.pred_boxes.tensor[0].tolist() == [4.0, 4.0, 16.0, 14.0]


def test_ties_are_not_cells_and_bad_shape_is_refused():
    scores = torch.full((3, 6, 6), 1.0 / 3.0)
    assert len(decode_tertiary(scores)) == 0
    with pytest.raises(ValueError):
        decode_tertiary(torch.zeros(2, 6, 6))


def _best_jaccard(seg: np.ndarray, labels: np.ndarray, gt_id: int) -> float:
    gt = seg == gt_id
    candidates = np.unique(labels[gt])
    candidates = candidates[candidates > 0]
    return max(((gt & (labels == c)).sum() / (gt | (labels == c)).sum() for c in candidates), default=0.0)


def _touching_cells(shape=(120, 120), count=30, radius=12.0, seed=1) -> np.ndarray:
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    seeds = np.zeros(shape, np.int32)
    seeds[rng.integers(0, shape[0], count), rng.integers(0, shape[1], count)] = np.arange(1, count + 1)
    distance, indices = ndimage.distance_transform_edt(seeds == 0, return_indices=True)
    labels = seeds[tuple(indices)]
    labels[distance > radius] = 0
    return labels


def test_grow_into_boundary_gives_back_contact_bands_only(shared_data):
    import tifffile

    touching = _touching_cells()
    target = tertiary_target(touching, 2, 2)
    plain = tertiary_labels(one_hot(target))
    grown = tertiary_labels(one_hot(target), grow_into_boundary=2)
    ids = [i for i in np.unique(touching)[1:] if (touching == i).sum() > 100]
    assert len(ids) >= 10
    plain_j = np.mean([_best_jaccard(touching, plain, i) for i in ids])
    grown_j = np.mean([_best_jaccard(touching, grown, i) for i in ids])
    assert grown_j > plain_j + 0.05 and grown_j > 0.9
    assert len(np.unique(grown)) == len(np.unique(plain))  # growing never creates or merges objects
    # isolated real nuclei: the outer boundary ring is not taken
    seg = tifffile.imread(shared_data / "ctc" / "Fluo-N2DH-SIM+" / "01_GT" / "SEG" / "man_seg030.tif").astype(np.int32)
    seg = seg[:256, :256]
    one = one_hot(tertiary_target(seg, 2, 2))
    real_ids = [i for i in np.unique(seg)[1:] if (seg == i).sum() > 200]
    assert len(real_ids) >= 3
    for labels in (tertiary_labels(one), tertiary_labels(one, grow_into_boundary=2)):
        assert np.mean([_best_jaccard(seg, labels, i) for i in real_ids]) > 0.99


def test_volumes_are_cleaned_per_plane_and_labelled_in_3d():
    target = np.zeros((3, 12, 12), np.uint8)
    target[:, 2:6, 2:6] = 2
    target[1, 8:10, 8:10] = 2  # small in its plane
    labels = tertiary_labels(one_hot(target), min_object_size=5)
    assert labels.shape == (3, 12, 12) and set(np.unique(labels)) == {0, 1}


def test_overrides_parse_and_select_by_dataset_or_ctc_name():
    assert parse_postprocess_overrides([["Fluo-N2DH-SIM+", 30, 50], ("a:b", 1, 2)]) == {"Fluo-N2DH-SIM+": (30, 50), "a:b": (1, 2)}
    for bad in (["x:1:2"], [["x", 1]], [["x", "a", 1]], [["", 1, 2]], [["x", -1, 2]], [["x", 1.5, 2]]):
        with pytest.raises(ValueError):
            parse_postprocess_overrides(bad)
    cfg = get_cfg()
    add_deepcens_config(cfg)
    cfg.MODEL.DENSE.MIN_OBJECT_SIZE = 1
    cfg.MODEL.DENSE.MAX_HOLE_SIZE = 0
    cfg.MODEL.DENSE.POSTPROCESS_PER_DATASET = [["Fake-CTC", 5, 4], ["t_decoder_named", 200, 0]]
    MetadataCatalog.get("t_decoder_ctc").set(ctc_dataset="Fake-CTC")
    decode = build_decoder(cfg)
    assert DECODER_REGISTRY.get("tertiary") is not None
    probabilities = one_hot(two_cells_target())
    assert len(decode(probabilities, None)) == 3
    assert len(decode(probabilities, "t_decoder_ctc")) == 2  # matched through metadata ctc_dataset
    assert len(decode(probabilities, "t_decoder_named")) == 0  # matched on the registered name
    assert len(decode(probabilities, "unknown_dataset")) == 3


def test_grid_search_tool_picks_thresholds_that_remove_speckles_and_fill_holes(shared_data):
    import tifffile

    from deepcens.analysis import grid_search as tool

    rng = np.random.default_rng(0)
    probabilities, references = [], []
    for frame in (50, 60):
        root = shared_data / "ctc" / "Fluo-N2DH-SIM+" / "01_GT"
        seg = tifffile.imread(root / "SEG" / f"man_seg{frame:03d}.tif").astype(np.int32)[:200, :200]
        markers = tifffile.imread(root / "TRA" / f"man_track{frame:03d}.tif").astype(np.int32)[:200, :200]
        target = tertiary_target(seg, 2, 2)
        noisy = target.copy()
        noisy[rng.integers(0, 200, 15), rng.integers(0, 200, 15)] = 2  # 1-pixel false cells
        noisy[(rng.random(target.shape) < 0.01) & (target == 2)] = 0  # pinholes in cells
        probabilities.append(one_hot(noisy).numpy())
        references.append((seg, markers))
    result = tool.grid_search(probabilities, references, [0, 5], [0, 4], [0])
    assert result["metric"] == "OP_CSB" and len(result["rows"]) == 4
    best = result["best"]
    assert (best["min_size"], best["max_hole"]) == (5, 4)
    worst = next(r for r in result["rows"] if (r["min_size"], r["max_hole"]) == (0, 0))
    assert best["OP_CSB"] > worst["OP_CSB"] and best["SEG"] > 0.95
    with pytest.raises(ValueError):
        tool.grid_search(probabilities, references[:1], [0], [0])


class _ThresholdModel(torch.nn.Module):
    """A stand-in dense model: scores from image brightness, decoded by the configured decoder."""

    def __init__(self, cfg):
        super().__init__()
        self.decode = build_decoder(cfg)
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def output_probabilities(self, item):
        image = item["image"].float()[:1][None]
        image = torch.nn.functional.interpolate(image, size=(item["height"], item["width"]), mode="bilinear")[0, 0]
        bright = (image > image.mean()).float()
        return torch.stack([1 - bright, torch.full_like(bright, 0.1), bright]).softmax(0)

    def forward(self, batched_inputs):
        raise AssertionError("the grid search decodes the probabilities itself; it must not run inference")


def test_grid_search_tool_end_to_end_with_a_registered_model(tmp_path, capsys):
    import json

    from detectron2.modeling import META_ARCH_REGISTRY

    from deepcens.cli import main as cli_main
    from deepcens.postprocess.decoders import DECODER_REGISTRY

    from deepcens.data import ctc
    from test_ctc_data import make_ctc_tree

    if "_ThresholdModel" not in META_ARCH_REGISTRY:
        META_ARCH_REGISTRY.register(_ThresholdModel)
    registered_before = sorted(DECODER_REGISTRY._obj_map)
    make_ctc_tree(tmp_path / "data", frames=6, gt_frames=(1, 3, 4))
    ctc.register_ctc_dataset("t_grid_val", str(tmp_path / "data"), "Fake-2D", None, "GT")
    config = tmp_path / "model.yaml"
    config.write_text("MODEL:\n  META_ARCHITECTURE: _ThresholdModel\n  DEVICE: cpu\nINPUT:\n  MIN_SIZE_TEST: 0\n")
    weights = tmp_path / "model.pth"
    torch.save({"model": {"dummy": torch.zeros(1)}}, weights)
    out = tmp_path / "grid.json"
    command = ["grid-search", "--config-file", str(config), "--dataset", "t_grid_val", "--min-sizes", "0,40",
               "--max-holes", "0", "--json", str(out), "MODEL.WEIGHTS", str(weights)]
    assert cli_main(command) == 0
    result = json.loads(out.read_text())
    assert result["images"] == 3 and len(result["rows"]) == 2
    assert result["config"]["MODEL.DENSE.POSTPROCESS_PER_DATASET"][0][0] == "Fake-2D"
    assert result["best"]["SEG"] > 0.9  # bright squares are the cells
    assert "best by OP_CSB" in capsys.readouterr().out
    assert sorted(DECODER_REGISTRY._obj_map) == registered_before  # nothing registered at run time


def _scored_cells(cells: list[tuple[slice, slice, float]], shape=(40, 40)) -> tuple[np.ndarray, np.ndarray]:
    """(tertiary scores, labels): each (rows, cols, score) box is a cell whose cell probability is ``score``."""
    labels = np.zeros(shape, np.int32)
    scores = np.zeros((3,) + shape, np.float32)
    scores[0] = 0.9
    scores[1] = 0.05
    scores[2] = 0.05
    for index, (rows, cols, score) in enumerate(cells, start=1):
        labels[rows, cols] = index
        scores[:, rows, cols] = np.array([(1 - score) * 0.8, (1 - score) * 0.2, score], np.float32)[:, None, None]
    return scores, labels


def test_min_score_filter_drops_the_objects_the_decoder_drops():
    from deepcens.postprocess.decoders import drop_low_score_objects, object_scores

    scores, _ = _scored_cells([(slice(2, 8), slice(2, 8), 0.9), (slice(12, 16), slice(20, 26), 0.62),
                               (slice(25, 35), slice(5, 12), 0.71)])
    labels = tertiary_labels(scores)
    per_object = object_scores(labels, scores[2])
    assert np.allclose(sorted(per_object), [0.62, 0.71, 0.9])
    for min_score in (0.0, 0.65, 0.7, 0.75, 0.95):
        kept = drop_low_score_objects(labels, per_object, min_score)
        decoded = decode_tertiary(scores, min_score=min_score)
        kept_scores = sorted(per_object[np.unique(kept[kept > 0]) - 1])
        assert np.allclose(kept_scores, sorted(decoded.scores.tolist()))
        assert len(kept_scores) == sum(s >= min_score for s in (0.62, 0.71, 0.9))


def test_grid_search_picks_one_min_score_for_several_data_sets():
    """Set A has faint background specks (0.65) next to bright cells; set B has cells of 0.75 only.
    Alone, A wants MIN_SCORE 0.7 and B 0; together the best mean is 0.7, not 0.8 (drops B's cells)."""
    from deepcens.analysis import grid_search as tool

    cells_a = [(slice(2, 10), slice(2, 10), 0.95), (slice(20, 30), slice(20, 30), 0.95)]
    specks = [(slice(2, 6), slice(30, 34), 0.65), (slice(32, 36), slice(3, 7), 0.65)]
    scores_a, labels_a = _scored_cells(cells_a + specks)
    reference_a = np.where(labels_a <= 2, labels_a, 0)
    scores_b, labels_b = _scored_cells([(slice(5, 15), slice(5, 15), 0.75), (slice(22, 34), slice(18, 30), 0.75)])
    per_dataset = {"A": ([scores_a], [(reference_a, reference_a)]), "B": ([scores_b], [(labels_b, labels_b)])}
    thresholds = [0.0, 0.6, 0.7, 0.8]
    alone_a = tool.grid_search(*per_dataset["A"], [0], [0], min_scores=thresholds)
    alone_b = tool.grid_search(*per_dataset["B"], [0], [0], min_scores=thresholds)
    assert alone_a["best"]["min_score"] == 0.7 and alone_b["best"]["min_score"] == 0.0
    row_a0 = next(r for r in alone_a["rows"] if r["min_score"] == 0.0)
    assert row_a0["pred_per_ref"] == 2.0 and alone_a["best"]["pred_per_ref"] == 1.0
    joint = tool.grid_search_datasets(per_dataset, [0], [0], min_scores=thresholds)
    assert joint["metric"] == "OP_CSB" and len(joint["rows"]) == 4
    assert joint["best"]["min_score"] == 0.7
    assert joint["best"]["datasets"]["B"]["DET"] == 1.0 and joint["best"]["datasets"]["A"]["DET"] == 1.0
    at_08 = next(r for r in joint["rows"] if r["min_score"] == 0.8)
    assert at_08["datasets"]["B"]["SEG"] == 0.0 and at_08["OP_CSB"] < joint["best"]["OP_CSB"]
    with pytest.raises(ValueError):
        tool.grid_search_datasets({}, [0], [0])


def test_grid_search_tool_one_setting_over_two_registered_data_sets(tmp_path, capsys):
    import json

    from detectron2.modeling import META_ARCH_REGISTRY

    from deepcens.cli import main as cli_main
    from deepcens.data import ctc
    from test_ctc_data import make_ctc_tree

    if "_ThresholdModel" not in META_ARCH_REGISTRY:
        META_ARCH_REGISTRY.register(_ThresholdModel)
    make_ctc_tree(tmp_path / "data", frames=6, gt_frames=(1, 3, 4))
    make_ctc_tree(tmp_path / "data", dataset="Fake-B", frames=4, gt_frames=(2, 3), offset=300)
    ctc.register_ctc_dataset("t_grid_multi_a", str(tmp_path / "data"), "Fake-2D", None, "GT")
    ctc.register_ctc_dataset("t_grid_multi_b", str(tmp_path / "data"), "Fake-B", None, "GT")
    config = tmp_path / "model.yaml"
    config.write_text("MODEL:\n  META_ARCHITECTURE: _ThresholdModel\n  DEVICE: cpu\nINPUT:\n  MIN_SIZE_TEST: 0\n")
    weights = tmp_path / "model.pth"
    torch.save({"model": {"dummy": torch.zeros(1)}}, weights)
    out = tmp_path / "grid.json"
    # the stand-in model scores its cells ~0.56: MIN_SCORE 0.6 drops them all
    command = ["grid-search", "--config-file", str(config), "--dataset", "t_grid_multi_a", "--dataset",
               "t_grid_multi_b", "--min-sizes", "0,40", "--max-holes", "0", "--min-scores", "0,0.6",
               "--json", str(out), "MODEL.WEIGHTS", str(weights)]
    assert cli_main(command) == 0
    result = json.loads(out.read_text())
    assert result["images_per_dataset"] == {"t_grid_multi_a": 3, "t_grid_multi_b": 2}
    assert len(result["rows"]) == 4 and set(result["rows"][0]["datasets"]) == {"t_grid_multi_a", "t_grid_multi_b"}
    assert result["config"] == {"MODEL.DENSE.MIN_OBJECT_SIZE": 0, "MODEL.DENSE.MAX_HOLE_SIZE": 0,
                                "MODEL.DENSE.GROW_INTO_BOUNDARY": 0, "MODEL.DENSE.MIN_SCORE": 0.0}
    assert result["best"]["SEG"] > 0.9
    assert "best by OP_CSB: MODEL.DENSE.MIN_OBJECT_SIZE 0" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        cli_main(command[:-4] + ["--min-scores", "1.5", "MODEL.WEIGHTS", str(weights)])


def test_grid_search_requirements_keep_a_data_set_goal():
    """A ceiling on one set's objects per reference overrides the best mean (A's specks cost
    less than B's lost cell, but A may not have more than 1.3 objects per cell)."""
    from deepcens.analysis import grid_search as tool

    cells_a = [(slice(2, 10), slice(2, 10), 0.95)]
    specks = [(slice(2, 6), slice(30, 34), 0.72), (slice(32, 36), slice(3, 7), 0.72), (slice(20, 24), slice(20, 24), 0.72)]
    scores_a, labels_a = _scored_cells(cells_a + specks)
    reference_a = np.where(labels_a == 1, 1, 0).astype(np.int32)
    scores_b, labels_b = _scored_cells([(slice(5, 15), slice(5, 15), 0.75), (slice(22, 34), slice(18, 30), 0.9)])
    per_dataset = {"A": ([scores_a], [(reference_a, reference_a)]), "B": ([scores_b], [(labels_b, labels_b)])}
    free = tool.grid_search_datasets(per_dataset, [0], [0], min_scores=[0.0, 0.8])
    assert free["best"]["min_score"] == 0.0 and free["best"]["datasets"]["A"]["pred_per_ref"] == 4.0
    ceiling = tool.parse_requirement("A:pred_per_ref<=1.3")
    assert ceiling == ("A", "pred_per_ref", "<=", 1.3)
    capped = tool.grid_search_datasets(per_dataset, [0], [0], min_scores=[0.0, 0.8], requirements=[ceiling])
    assert capped["best"]["min_score"] == 0.8 and capped["best"]["datasets"]["B"]["SEG"] == 0.5
    alone = tool.grid_search(*per_dataset["A"], [0], [0], min_scores=[0.0, 0.8], requirements=[ceiling], name="A")
    assert alone["best"]["min_score"] == 0.8
    floor = tool.parse_requirement("B:SEG>=0.9")
    with pytest.raises(ValueError, match="no setting"):
        tool.grid_search_datasets(per_dataset, [0], [0], min_scores=[0.0, 0.8], requirements=[floor, ceiling])
    with pytest.raises(ValueError, match="not one of"):
        tool.grid_search_datasets(per_dataset, [0], [0], requirements=[("C", "SEG", ">=", 0.5)])
    for bad in ("B:SEG>0.9", "B:AP>=0.5", "SEG>=0.5", "B:SEG>=1.2.3"):
        with pytest.raises(Exception):
            tool.parse_requirement(bad)
