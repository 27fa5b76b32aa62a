"""The checkpoint kept as model_best: each criterion on a scripted validation history."""
from __future__ import annotations

import pytest

from deepcens.engine.best_checkpoint import CheckpointCriterion, CriterionBestCheckpointer

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


def test_training_keeps_model_best_by_the_criterion_and_scores_the_training_set(tmp_path):
    """A tiny U-Net run: validation loss + SEG every 2 iterations, the training set scored too
    (train/... keys), model_best.pth written by the AP-then-loss rule."""
    import json
    import os

    from test_ctc_data import make_ctc_tree  # tests/ is on sys.path under pytest

    from deepcens.data.ctc import register_ctc_dataset
    from deepcens.engine.setup import load_config
    from deepcens.engine.trainer import Trainer

    make_ctc_tree(tmp_path / "ctc", dataset="Tiny", frames=6, gt_frames=tuple(range(6)), shape=(32, 32))
    register_ctc_dataset("best_ckpt_train", str(tmp_path / "ctc"), "Tiny", ["01"], "GT", frames=range(0, 4))
    register_ctc_dataset("best_ckpt_val", str(tmp_path / "ctc"), "Tiny", ["01"], "GT", frames=range(4, 6))
    config = os.path.join(os.path.dirname(__file__), "..", "configs", "xbnet", "Base-XBNet.yaml")
    out = str(tmp_path / "run")
    cfg = load_config(config, [
        "OUTPUT_DIR", out, "MODEL.DEVICE", "cpu", "MODEL.DENSE.NETWORK", "UNet",
        "MODEL.DENSE.UNET.BASE_CHANNELS", "4", "MODEL.DENSE.UNET.DEPTH", "3", "MODEL.DENSE.SIZE_DIVISIBILITY", "4",
        "INPUT.DENSE.CROP_SIZE", "32", "DATASETS.TRAIN", "('best_ckpt_train',)",
        "DATASETS.VAL", "('best_ckpt_val',)", "DATASETS.TEST", "('best_ckpt_val',)",
        "DATALOADER.NUM_WORKERS", "0", "SOLVER.IMS_PER_BATCH", "2", "SOLVER.MAX_ITER", "4",
        "SOLVER.CHECKPOINT_PERIOD", "100", "SOLVER.COSINE_RESTARTS", "()", "SOLVER.VAL_LOSS_PERIOD", "2",
        "SOLVER.BEST_CHECKPOINT_CRITERION", "metric_then_loss", "SOLVER.BEST_CHECKPOINT_TOLERANCE", "1.0",
        "TEST.EVAL_PERIOD", "2", "TEST.EVAL_ON_TRAIN", "True", "SEED", "3"])
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    records = [json.loads(line) for line in open(os.path.join(out, "metrics.json")) if line.strip()]
    evaluated = [r for r in records if "ctc/SEG" in r]
    assert [r["iteration"] for r in evaluated] == [1, 4]  # the last evaluation is logged after training
    assert all("train/ctc/SEG" in r and "train/ctc/SEG-Tiny" in r for r in evaluated)
    assert any("val_total_loss" in r for r in records)
    (hook,) = [h for h in trainer._hooks if isinstance(h, CriterionBestCheckpointer)]
    assert hook.best is not None and hook.best.metric is not None and hook.best.loss is not None
    import torch

    saved = torch.load(os.path.join(out, "model_best.pth"), weights_only=False)
    assert saved["iteration"] == hook.best.iteration
