"""Training loops, found by ``cfg.SOLVER.TRAIN_SCHEME`` in :data:`TRAIN_LOOP_REGISTRY`.

A loop builder is called as ``builder(cfg, model, optimizer, build_loader)`` where
``build_loader(cfg, dataset_names) -> iterable of batches`` builds one training loader over
the given registered datasets (with the config's mapper), and returns a detectron2
``TrainerBase`` (usually a ``SimpleTrainer`` subclass) whose ``run_step`` performs one
optimizer step. Universal-training schemes over several datasets (XB-Net's Mix / Seq / Fix /
Shu / Cho / Acc) register here too.
"""
from __future__ import annotations

from typing import Callable, Iterable, Sequence

from detectron2.config import CfgNode
from detectron2.engine import SimpleTrainer
from detectron2.utils.registry import Registry

TRAIN_LOOP_REGISTRY = Registry("TRAIN_LOOP")
TRAIN_LOOP_REGISTRY.__doc__ = "Training loops: (cfg, model, optimizer, build_loader) -> TrainerBase."

LoaderBuilder = Callable[[CfgNode, Sequence[str]], Iterable]


def register_loop(name: str):
    """Decorator: register a loop builder under ``name`` (fvcore's ``register`` takes no name)."""
    def decorator(builder):
        TRAIN_LOOP_REGISTRY._do_register(name, builder)
        return builder
    return decorator


@register_loop("single")
def build_single_loop(cfg: CfgNode, model, optimizer, build_loader: LoaderBuilder) -> SimpleTrainer:
    """detectron2's plain loop: one loader over all of ``DATASETS.TRAIN``, one step per batch."""
    return SimpleTrainer(model, build_loader(cfg, cfg.DATASETS.TRAIN), optimizer)


def build_train_loop(cfg: CfgNode, model, optimizer, build_loader: LoaderBuilder):
    """The loop named by ``cfg.SOLVER.TRAIN_SCHEME``."""
    return TRAIN_LOOP_REGISTRY.get(cfg.SOLVER.TRAIN_SCHEME)(cfg, model, optimizer, build_loader)
