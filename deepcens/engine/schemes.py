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
from typing import Iterable, Sequence

import numpy as np
import torch
from detectron2.config import CfgNode

from deepcens.engine.loops import TRAIN_LOOP_REGISTRY, LoaderBuilder, TrainLoop, amp_precision


def _train_names(cfg: CfgNode) -> list[str]:
    names = list(cfg.DATASETS.TRAIN)
    if not names:
        raise ValueError("DATASETS.TRAIN is empty")
    return names


@TRAIN_LOOP_REGISTRY.register()
class Mix(TrainLoop):
    """Mix: one loader over the union of ``DATASETS.TRAIN``, one step per minibatch."""

    @classmethod
    def from_config(cls, cfg: CfgNode, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    build_loader: LoaderBuilder) -> "Mix":
        return cls(model, build_loader(cfg, _train_names(cfg)), optimizer, amp_precision(cfg))


class MultiDatasetLoop(TrainLoop):
    """A loop over one loader per dataset; :meth:`schedule` says which loaders feed a step.

    A step with more than one loader accumulates their gradients before the optimizer step.
    Logged losses are the sums over the step's minibatches (what was back-propagated).
    """

    def __init__(self, model: torch.nn.Module, loaders: Sequence[Iterable], optimizer: torch.optim.Optimizer,
                 max_iter: int, seed: int = 0, dataset_names: Sequence[str] = (),
                 precision: torch.dtype | None = None):
        super().__init__(model, None, optimizer, precision)
        if not loaders:
            raise ValueError("a multi-dataset loop needs at least one loader")
        self.loaders = list(loaders)
        self._iters: list | None = None
        self.max_iter = int(max_iter)
        self.seed = int(seed)
        self.dataset_names = list(dataset_names)

    @classmethod
    def from_config(cls, cfg: CfgNode, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    build_loader: LoaderBuilder) -> "MultiDatasetLoop":
        names = _train_names(cfg)
        loaders = [build_loader(cfg, [name]) for name in names]
        return cls(model, loaders, optimizer, cfg.SOLVER.MAX_ITER, cfg.SOLVER.SCHEME_SEED, names, amp_precision(cfg))

    def schedule(self, iteration: int) -> list[int]:
        """Indices of the loaders whose minibatches make optimizer step ``iteration``."""
        raise NotImplementedError

    def _next_batch(self, index: int):
        if self._iters is None:
            self._iters = [iter(loader) for loader in self.loaders]
        return next(self._iters[index])

    def run_step(self) -> None:
        assert self.model.training, f"[{type(self).__name__}] model was changed to eval mode!"
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
                loss_dict, losses = self.forward_losses(data)
                self.backward(losses)
            for key, value in loss_dict.items():
                summed[key] = summed[key] + value.detach() if key in summed else value.detach()
        self.after_backward()
        self._write_metrics(summed, data_time)
        self.optimizer_step()


@TRAIN_LOOP_REGISTRY.register()
class Seq(MultiDatasetLoop):
    """Seq: the datasets one after the other, ``MAX_ITER / N`` steps each."""

    def schedule(self, iteration: int) -> list[int]:
        per_dataset = max(int(np.ceil(self.max_iter / len(self.loaders))), 1)
        return [min(iteration // per_dataset, len(self.loaders) - 1)]


@TRAIN_LOOP_REGISTRY.register()
class Fix(MultiDatasetLoop):
    """Fix: one minibatch per step from each dataset in turn, in the fixed order."""

    def schedule(self, iteration: int) -> list[int]:
        return [iteration % len(self.loaders)]


@TRAIN_LOOP_REGISTRY.register()
class Shu(MultiDatasetLoop):
    """Shu: in turn, the order reshuffled (seeded) after every N minibatches."""

    def schedule(self, iteration: int) -> list[int]:
        n = len(self.loaders)
        order = np.random.default_rng([self.seed, iteration // n]).permutation(n)
        return [int(order[iteration % n])]


@TRAIN_LOOP_REGISTRY.register()
class Cho(MultiDatasetLoop):
    """Cho: each step a dataset chosen uniformly at random (seeded by the iteration)."""

    def schedule(self, iteration: int) -> list[int]:
        return [int(np.random.default_rng([self.seed, iteration]).integers(len(self.loaders)))]


@TRAIN_LOOP_REGISTRY.register()
class Acc(MultiDatasetLoop):
    """Acc: one minibatch from every dataset, gradients summed, ONE optimizer step."""

    def schedule(self, iteration: int) -> list[int]:
        return list(range(len(self.loaders)))
