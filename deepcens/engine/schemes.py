"""Universal-training schemes over several datasets (XB-Net paper, Sec. 4.1), as training loops.

``SOLVER.TRAIN_SCHEME`` picks one; the datasets are ``DATASETS.TRAIN`` in their listed order.
Except for Mix, every dataset has its own (infinite) loader of ``SOLVER.IMS_PER_BATCH`` images.
One detectron2 iteration is one optimizer step:

- ``Mix``: all datasets in one loader; each minibatch is drawn from the union, every image
  with equal probability (small datasets are under-represented);
- ``Seq``: the datasets one after the other, ``MAX_ITER / N`` steps each;
- ``Fix``: one minibatch per step from each dataset in turn, in the fixed order;
- ``Shu``: in turn, the order reshuffled after every N minibatches;
- ``Cho``: each step a dataset chosen uniformly at random;
- ``Acc``: each step draws one minibatch from every dataset in the fixed order, back-propagates
  each (gradients accumulate, summed, not averaged, as the paper) and takes ONE optimizer step.

Random orders come from ``SOLVER.SCHEME_SEED`` and the iteration number, so every rank draws
the same dataset at the same step and a resumed run continues the same order. Under DDP, Acc
runs its first N-1 backward passes in ``no_sync`` and all-reduces once with the last; every rank
always does the same number of backward passes.
"""
from __future__ import annotations

import contextlib
import time
from typing import Sequence

import numpy as np
import torch
from detectron2.config import CfgNode
from detectron2.engine import SimpleTrainer

from deepcens.engine.loops import LoaderBuilder, register_loop


class MultiDatasetTrainer(SimpleTrainer):
    """``SimpleTrainer`` over one loader per dataset; :meth:`schedule` says which loaders feed a step.

    A step with more than one loader accumulates their gradients before the optimizer step.
    Logged losses are the sums over the step's minibatches (what was back-propagated).
    """

    def __init__(self, model, loaders: Sequence, optimizer, scheme: str, max_iter: int, seed: int = 0,
                 dataset_names: Sequence[str] = ()):
        super().__init__(model, loaders[0], optimizer)
        if scheme not in ("Seq", "Fix", "Shu", "Cho", "Acc"):
            raise ValueError(f"unknown multi-dataset scheme {scheme!r}")
        self.loaders = list(loaders)
        self._iters: list | None = None
        self.scheme = scheme
        self.max_iter = int(max_iter)
        self.seed = int(seed)
        self.dataset_names = list(dataset_names)

    def schedule(self, iteration: int) -> list[int]:
        """Indices of the loaders whose minibatches make optimizer step ``iteration``."""
        n = len(self.loaders)
        if self.scheme == "Acc":
            return list(range(n))
        if self.scheme == "Fix":
            return [iteration % n]
        if self.scheme == "Shu":
            order = np.random.default_rng([self.seed, iteration // n]).permutation(n)
            return [int(order[iteration % n])]
        if self.scheme == "Cho":
            return [int(np.random.default_rng([self.seed, iteration]).integers(n))]
        per_dataset = max(int(np.ceil(self.max_iter / n)), 1)  # Seq
        return [min(iteration // per_dataset, n - 1)]

    def _next_batch(self, index: int):
        if self._iters is None:
            self._iters = [iter(loader) for loader in self.loaders]
        return next(self._iters[index])

    def run_step(self) -> None:
        assert self.model.training, "[MultiDatasetTrainer] model was changed to eval mode!"
        indices = self.schedule(self.iter)
        self.optimizer.zero_grad()
        summed: dict[str, torch.Tensor] = {}
        data_time = 0.0
        for position, index in enumerate(indices):
            start = time.perf_counter()
            data = self._next_batch(index)
            data_time += time.perf_counter() - start
            last = position == len(indices) - 1
            sync = contextlib.nullcontext() if last or not hasattr(self.model, "no_sync") else self.model.no_sync()
            with sync:
                loss_dict = self.model(data)
                if isinstance(loss_dict, torch.Tensor):
                    loss_dict = {"total_loss": loss_dict}
                sum(loss_dict.values()).backward()
            for key, value in loss_dict.items():
                summed[key] = summed[key] + value.detach() if key in summed else value.detach()
        self.after_backward()
        self._write_metrics(summed, data_time)
        self.optimizer.step()


def _names(cfg: CfgNode) -> list[str]:
    names = list(cfg.DATASETS.TRAIN)
    if not names:
        raise ValueError("DATASETS.TRAIN is empty")
    return names


def _multi(scheme: str):
    def build(cfg: CfgNode, model, optimizer, build_loader: LoaderBuilder) -> MultiDatasetTrainer:
        names = _names(cfg)
        loaders = [build_loader(cfg, [name]) for name in names]
        return MultiDatasetTrainer(model, loaders, optimizer, scheme, cfg.SOLVER.MAX_ITER,
                                   cfg.SOLVER.SCHEME_SEED, names)
    build.__name__ = f"build_{scheme.lower()}_loop"
    build.__doc__ = f"The {scheme} universal-training scheme (see :mod:`deepcens.engine.schemes`)."
    return build


@register_loop("Mix")
def build_mix_loop(cfg: CfgNode, model, optimizer, build_loader: LoaderBuilder) -> SimpleTrainer:
    """Mix: one loader over the union of ``DATASETS.TRAIN``, one step per minibatch."""
    return SimpleTrainer(model, build_loader(cfg, _names(cfg)), optimizer)


for _scheme in ("Seq", "Fix", "Shu", "Cho", "Acc"):
    register_loop(_scheme)(_multi(_scheme))
