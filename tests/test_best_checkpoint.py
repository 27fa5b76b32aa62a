"""The checkpoint kept as model_best: each criterion on a scripted validation history."""
from __future__ import annotations

import pytest

from deepcens.engine.best_checkpoint import CheckpointCriterion

# (iteration, scalars) as the evaluation and validation-loss hooks leave them in the storage
HISTORY = [
    (499, {"segm/AP": 30.0, "val_total_loss": 1.20}),
    (999, {"segm/AP": 41.0, "val_total_loss": 0.90}),
    (1499, {"segm/AP": 41.6, "val_total_loss": 0.70}),  # AP tie within 1 point, lower loss
    (1999, {"segm/AP": 41.9, "val_total_loss": 0.95}),  # AP tie within 1 point, higher loss
    (2499, {"segm/AP": 40.0, "val_total_loss": 0.60}),  # lowest loss, AP 1.6 below
    (2999, {"segm/AP": float("nan"), "val_total_loss": 0.50}),  # broken evaluation
]


def test_metric_alone_keeps_the_highest_ap():
    best = CheckpointCriterion("metric", "segm/AP").select(HISTORY)
    assert best.iteration == 1999


def test_loss_alone_keeps_the_lowest_validation_loss():
    best = CheckpointCriterion("loss").select(HISTORY)
    assert best.iteration == 2999


def test_paper_rule_prefers_lower_loss_among_ap_ties():
    best = CheckpointCriterion("metric_then_loss", "segm/AP", tolerance=1.0).select(HISTORY)
    assert best.iteration == 1499
    # no tolerance: AP decides, the loss only breaks exact ties
    assert CheckpointCriterion("metric_then_loss", "segm/AP", tolerance=0.0).select(HISTORY).iteration == 1999


def test_min_mode_and_missing_values():
    criterion = CheckpointCriterion("metric", "val_total_loss", mode="min")
    assert criterion.select(HISTORY).iteration == 2999
    assert CheckpointCriterion("metric", "bbox/AP").select(HISTORY) is None  # never computed: nothing kept


def test_universal_selection_uses_the_mean_over_datasets_not_the_pooled_value():
    history = [
        # the large data set dominates a pooled value; the mean over data sets treats them alike
        (99, {"a/ctc/SEG": 0.90, "b/ctc/SEG": 0.40, "ctc/SEG": 0.85}),
        (199, {"a/ctc/SEG": 0.80, "b/ctc/SEG": 0.60, "ctc/SEG": 0.78}),
    ]
    mean = CheckpointCriterion("metric", "ctc/SEG", aggregate="mean_over_datasets", val_datasets=("a", "b"))
    assert mean.select(history).iteration == 199
    assert mean.select(history).metric == pytest.approx(0.70)
    pooled = CheckpointCriterion("metric", "ctc/SEG", aggregate="single", val_datasets=("a", "b"))
    assert pooled.select(history).iteration == 99


def test_single_validation_set_reads_prefixed_or_plain_keys():
    criterion = CheckpointCriterion("metric", "ctc/SEG", aggregate="mean_over_datasets", val_datasets=("a",))
    assert criterion.metric_value({"ctc/SEG": 0.5}) == 0.5
    assert criterion.metric_value({"a/ctc/SEG": 0.25}) == 0.25


@pytest.mark.parametrize("kwargs, message", [
    (dict(criterion="best"), "BEST_CHECKPOINT_CRITERION"),
    (dict(criterion="metric", metric=""), "BEST_CHECKPOINT_METRIC"),
    (dict(criterion="loss", mode="up"), "BEST_CHECKPOINT_MODE"),
    (dict(criterion="loss", aggregate="sum"), "BEST_CHECKPOINT_AGGREGATE"),
    (dict(criterion="metric_then_loss", metric="segm/AP", tolerance=-1), "TOLERANCE"),
])
def test_bad_settings_name_the_key(kwargs, message):
    with pytest.raises(ValueError, match=message):
        CheckpointCriterion(**kwargs)
