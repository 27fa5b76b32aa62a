"""The deepcens ``Trainer``: detectron2's ``DefaultTrainer`` made to serve every method.

What it changes, and why:
- mappers, training loops, LR schedules and evaluators are found through config names, so
  R-CNN and dense (U-Net) methods share one trainer;
- DDP is built without ``device_ids`` on CPU, and ``SyncBN`` becomes ``naiveSyncBN`` there
  (torch's SyncBatchNorm refuses CPU tensors), so ``--num-gpus 2`` works on a CPU machine;
- the training loop comes from ``SOLVER.TRAIN_SCHEME`` and honours ``SOLVER.AMP`` (every loop is
  a :class:`deepcens.engine.loops.TrainLoop`, detectron2's AMP step split into overridable parts);
- checkpoints are written atomically and loaded weights-only (:mod:`deepcens.engine.checkpoint`);
- periodic validation loss and AP on ``DATASETS.VAL`` and a best-checkpoint hook implement
  the checkpoint selection of the DeepCeNS paper.
"""
from __future__ import annotations

import contextlib
import logging
import os
import weakref
from collections import OrderedDict
from typing import Sequence

import torch
from detectron2.config import CfgNode
from detectron2.data import (
    MetadataCatalog,
    build_detection_test_loader,
    get_detection_dataset_dicts,
)
from detectron2.engine import DefaultTrainer, TrainerBase, hooks
from detectron2.engine.defaults import create_ddp_model
from detectron2.layers import NaiveSyncBatchNorm
from detectron2.modeling import build_model
from detectron2.solver.build import get_default_optimizer_params, maybe_add_gradient_clipping
from detectron2.utils import comm
from detectron2.utils.events import JSONWriter
from detectron2.utils.logger import setup_logger

from deepcens.data.mappers import build_mapper
from deepcens.engine.checkpoint import DeepcensCheckpointer
from deepcens.engine.best_checkpoint import CheckpointCriterion, CriterionBestCheckpointer
from deepcens.engine.hooks import BadInputReportHook, ResumeStateHook, nonfinite_loss_guard
from deepcens.engine.resume import build_resumable_train_loader
from deepcens.engine.loops import TrainLoop, build_train_loop
from deepcens.utils.metrics_log import SafeJSONWriter
from deepcens.engine.schedules import build_lr_scheduler

logger = logging.getLogger(__name__)


def convert_sync_batchnorm_for_cpu(module: torch.nn.Module) -> torch.nn.Module:
    """Replace ``nn.SyncBatchNorm`` by detectron2's ``NaiveSyncBatchNorm`` (works on gloo/CPU)."""
    converted = module
    if isinstance(module, torch.nn.SyncBatchNorm):
        converted = NaiveSyncBatchNorm(module.num_features, eps=module.eps, momentum=module.momentum,
                                       affine=module.affine, track_running_stats=module.track_running_stats)
        converted.load_state_dict(module.state_dict())
    for name, child in module.named_children():
        converted.add_module(name, convert_sync_batchnorm_for_cpu(child))
    return converted


def filter_empty(dataset_dicts: list[dict]) -> list[dict]:
    """Drop R-CNN training images without a non-crowd annotation; keep label-image dicts."""
    def keep(record: dict) -> bool:
        if "annotations" not in record:
            return True
        return any(ann.get("iscrowd", 0) == 0 for ann in record["annotations"])
    kept = [record for record in dataset_dicts if keep(record)]
    if len(kept) < len(dataset_dicts):
        logger.info(f"Removed {len(dataset_dicts) - len(kept)} images without annotations")
    return kept


def build_training_loader(cfg: CfgNode, dataset_names: Sequence[str]):
    """A training loader over ``dataset_names`` with the config's mapper."""
    dicts = get_detection_dataset_dicts(list(dataset_names), filter_empty=False)
    if cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS:
        dicts = filter_empty(dicts)
    if not dicts:
        raise ValueError(f"training datasets {list(dataset_names)} hold no usable image")
    # a seeded sampler whose position is saved in checkpoints, for exact --resume
    return build_resumable_train_loader(cfg, dicts, build_mapper(cfg, is_train=True))


class Trainer(DefaultTrainer):
    """``DefaultTrainer`` for every deepcens method (see the module docstring)."""

    def __init__(self, cfg: CfgNode):  # noqa: D107
        # DefaultTrainer.__init__ hard-codes the two things deepcens changes: DDP with
        # device_ids (fails for CPU models) and SimpleTrainer / AMPTrainer as the only loops.
        # This is its order of construction with those two made into overridable build_* hooks.
        TrainerBase.__init__(self)
        if not logging.getLogger("detectron2").isEnabledFor(logging.INFO):
            setup_logger()
        cfg = DefaultTrainer.auto_scale_workers(cfg, comm.get_world_size())
        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        model = self.build_ddp_model(cfg, model)
        self._trainer = self.build_train_loop(cfg, model, optimizer)
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.checkpointer = self.build_checkpointer(cfg, model, trainer=weakref.proxy(self))
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.register_hooks(self.build_hooks())

    @classmethod
    def build_ddp_model(cls, cfg: CfgNode, model: torch.nn.Module) -> torch.nn.Module:
        """DDP for >1 process; without ``device_ids`` for CPU models."""
        if comm.get_world_size() == 1:
            return model
        if cfg.MODEL.DEVICE == "cpu":
            return create_ddp_model(model, device_ids=None, broadcast_buffers=False)
        return create_ddp_model(model, broadcast_buffers=False)

    @classmethod
    def build_train_loop(cls, cfg: CfgNode, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> TrainLoop:
        """The loop of ``SOLVER.TRAIN_SCHEME`` (honouring ``SOLVER.AMP``), fed by :meth:`build_train_loader_for`."""
        return build_train_loop(cfg, model, optimizer, cls.build_train_loader_for)

    @classmethod
    def build_checkpointer(cls, cfg: CfgNode, model: torch.nn.Module, **checkpointables) -> DeepcensCheckpointer:
        """Atomic, weights-only checkpoints in ``OUTPUT_DIR`` (``RUN.ALLOW_UNSAFE_CHECKPOINTS``)."""
        return DeepcensCheckpointer(model, cfg.OUTPUT_DIR, allow_unsafe=cfg.RUN.ALLOW_UNSAFE_CHECKPOINTS,
                                    **checkpointables)

    @classmethod
    def build_model(cls, cfg: CfgNode) -> torch.nn.Module:
        model = build_model(cfg)
        if cfg.MODEL.DEVICE == "cpu" and comm.get_world_size() > 1:
            model = convert_sync_batchnorm_for_cpu(model)
        return model

    @classmethod
    def build_optimizer(cls, cfg: CfgNode, model: torch.nn.Module) -> torch.optim.Optimizer:
        name = cfg.SOLVER.OPTIMIZER
        if name == "SGD":
            return super().build_optimizer(cfg, model)
        if name != "AdamW":
            raise ValueError(f"SOLVER.OPTIMIZER must be SGD or AdamW, got {name!r}")
        params = get_default_optimizer_params(
            model, base_lr=cfg.SOLVER.BASE_LR, weight_decay_norm=cfg.SOLVER.WEIGHT_DECAY_NORM)
        return maybe_add_gradient_clipping(cfg, torch.optim.AdamW)(
            params, lr=cfg.SOLVER.BASE_LR, weight_decay=cfg.SOLVER.WEIGHT_DECAY, amsgrad=cfg.SOLVER.AMSGRAD)

    @classmethod
    def build_lr_scheduler(cls, cfg: CfgNode, optimizer: torch.optim.Optimizer):
        return build_lr_scheduler(cfg, optimizer)

    @classmethod
    def build_train_loader_for(cls, cfg: CfgNode, dataset_names: Sequence[str]):
        """A training loader over ``dataset_names``; the loops call it once per loader they need."""
        return build_training_loader(cfg, dataset_names)

    @classmethod
    def build_train_loader(cls, cfg: CfgNode):
        return cls.build_train_loader_for(cfg, cfg.DATASETS.TRAIN)

    @classmethod
    def build_test_loader(cls, cfg: CfgNode, dataset_name: str):
        return build_detection_test_loader(cfg, dataset_name, mapper=build_mapper(cfg, is_train=False))

    @classmethod
    def build_evaluator(cls, cfg: CfgNode, dataset_name: str, output_folder: str | None = None):
        from deepcens.evaluation import build_evaluator

        if output_folder is None:
            output_folder = os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        return build_evaluator(cfg, dataset_name, output_folder)

    @classmethod
    def test_on(cls, cfg: CfgNode, model: torch.nn.Module, dataset_names: Sequence[str]) -> OrderedDict:
        """Evaluate ``model`` on the given datasets (``DefaultTrainer.test`` over other names)."""
        cfg = cfg.clone()
        cfg.defrost()
        cfg.DATASETS.TEST = tuple(dataset_names)
        return cls.test(cfg, model)

    def build_hooks(self) -> list:
        cfg = self.cfg
        eval_datasets = tuple(cfg.DATASETS.VAL) or tuple(cfg.DATASETS.TEST)
        extra = []
        if cfg.SOLVER.VAL_LOSS_PERIOD > 0 and len(cfg.DATASETS.VAL):
            extra.append(ValidationLossHook(cfg, self.model, cfg.SOLVER.VAL_LOSS_PERIOD))
        default_hooks = super().build_hooks()
        result = []
        for hook in default_hooks:
            if isinstance(hook, hooks.EvalHook):
                hook = hooks.EvalHook(cfg.TEST.EVAL_PERIOD, self._eval_function(eval_datasets))
                result.extend(extra)
                result.append(hook)
                wants_best = cfg.SOLVER.BEST_CHECKPOINT_METRIC or cfg.SOLVER.BEST_CHECKPOINT_CRITERION == "loss"
                if wants_best and cfg.TEST.EVAL_PERIOD > 0 and comm.is_main_process():
                    result.append(CriterionBestCheckpointer(
                        cfg.TEST.EVAL_PERIOD, self.checkpointer, CheckpointCriterion.from_config(cfg)))
            else:
                result.append(hook)
        # first: random states are snapshot right after each step, before other hooks draw numbers
        return [ResumeStateHook(cfg), *result, BadInputReportHook()]

    def build_writers(self) -> list:
        """detectron2's writers with a crash-safe ``metrics.json`` writer."""
        writers = super().build_writers()
        return [SafeJSONWriter(os.path.join(self.cfg.OUTPUT_DIR, "metrics.json"))
                if isinstance(writer, JSONWriter) else writer for writer in writers]

    def run_step(self) -> None:
        """One step; a NaN/inf loss stops training with a clear message (``SOLVER.STOP_ON_NONFINITE_LOSS``)."""
        with nonfinite_loss_guard(self):
            super().run_step()

    def _eval_function(self, dataset_names: Sequence[str]):
        def evaluate():
            results = self.test_on(self.cfg, self.model, dataset_names)
            self._last_eval_results, self._last_eval_iter = results, self.iter
            if self.cfg.TEST.EVAL_ON_TRAIN and len(self.cfg.DATASETS.TRAIN):
                # XB-Net Sec. 5.4: the training sets are scored too (train/... in metrics.json)
                results = OrderedDict(results, train=self.test_on(self.cfg, self.model, self.cfg.DATASETS.TRAIN))
            return results
        return evaluate


class ValidationLossHook(hooks.HookBase):
    """Every ``period`` iterations, the training losses over ``DATASETS.VAL``, as ``val_*`` scalars.

    The model runs in training mode (so it returns losses) with normalisation layers frozen in
    eval mode and no gradients, over a rank-sharded loader; losses are averaged over all ranks.
    """

    def __init__(self, cfg: CfgNode, model: torch.nn.Module, period: int):
        self._period = period
        self._model = model
        self._loaders = [
            build_detection_test_loader(cfg, name, mapper=build_mapper(cfg, is_train=True))
            for name in cfg.DATASETS.VAL
        ]

    def _compute(self) -> dict[str, float]:
        model = self._model.module if hasattr(self._model, "module") else self._model
        norm_layers = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._NormBase)]
        states = [m.training for m in norm_layers]
        # the loop's autocast (SOLVER.AMP), so validation losses are computed as training losses are
        autocast = getattr(getattr(self.trainer, "_trainer", None), "autocast", contextlib.nullcontext)
        for layer in norm_layers:
            layer.eval()
        sums: dict[str, float] = {}
        count = 0
        try:
            with torch.no_grad():
                for loader in self._loaders:
                    for inputs in loader:
                        with autocast():
                            losses = model(inputs)
                        for key, value in losses.items():
                            sums[key] = sums.get(key, 0.0) + float(value)
                        count += 1
        finally:
            for layer, state in zip(norm_layers, states):
                layer.train(state)
        gathered = comm.all_gather((sums, count))
        total_count = max(sum(c for _, c in gathered), 1)
        merged: dict[str, float] = {}
        for part, _ in gathered:
            for key, value in part.items():
                merged[key] = merged.get(key, 0.0) + value
        result = {f"val_{key}": value / total_count for key, value in merged.items()}
        result["val_total_loss"] = sum(result.values())
        return result

    def after_step(self) -> None:
        next_iter = self.trainer.iter + 1
        if next_iter % self._period == 0 or next_iter == self.trainer.max_iter:
            scalars = self._compute()
            if comm.is_main_process():
                self.trainer.storage.put_scalars(**scalars, smoothing_hint=False)
            comm.synchronize()


def dataset_class_names(dataset_name: str) -> list[str]:
    """``thing_classes`` of a registered dataset."""
    return list(MetadataCatalog.get(dataset_name).get("thing_classes", []))
