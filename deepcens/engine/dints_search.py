"""Training loops of the 2D DiNTS paper, registered in ``TRAIN_LOOP_REGISTRY``.

``EarlyStopping`` (Table 2 protocol for every model): detectron2's plain step over
``DATASETS.TRAIN``; every ``SOLVER.EARLY_STOP.PERIOD`` iterations the training loss over
``DATASETS.VAL`` (rank-sharded, averaged over ranks) is measured, and after
``SOLVER.EARLY_STOP.PATIENCE`` checks without a new minimum the remaining iterations take no
step (detectron2's loop runs to ``MAX_ITER``; the hooks that follow, checkpoints and the final
evaluation, see the stopped model).

``DiNTSSearch``: the DiNTS search (He et al., CVPR 2021, as MONAI's DiNTS tutorial runs
it). Each iteration:

1. a weight step: the loss of a ``DATASETS.TRAIN`` batch, back-propagated, stepped by the
   configured weight optimiser (AdamW lr 6e-4 in the paper's protocol) whose parameter
   groups no longer hold the architecture parameters;
2. after ``SOLVER.DINTS_SEARCH.WARMUP_ITERS`` weight-only iterations, an architecture step
   on a batch of ``SOLVER.DINTS_SEARCH.ARCH_DATASETS``: that batch's loss plus, scaled by
   the search progress ``(iter - warmup) / (max_iter - warmup)``, the entropy of the path
   (child-model) probabilities and of the cell-operation probabilities, the RAM term
   ``|RAM_COST_FACTOR - usage / full usage|`` (MONAI's ``get_ram_cost_usage``) and
   ``TOPOLOGY_WEIGHT`` x the topology entropy; two Adam optimisers (``ARCH_LR``,
   ``ARCH_BETAS``) step the path (``log_alpha_a``) and operation (``log_alpha_c``) parameters.

Every ``DECODE_PERIOD`` iterations and at the last one (or when early stopping ends it) the
main process decodes the architecture with MONAI's ``decode`` and writes
``OUTPUT_DIR/arch_code.json`` (:func:`deepcens.modeling.dense.dints.save_arch_code`), the
file the retraining config names in ``MODEL.DENSE.DINTS.ARCH_FILE``.

Both loops back-propagate through every parameter at every step (grads of the parameters
the step does not update are cleared), so DDP needs no unused-parameter search. Both are
``TrainLoop`` subclasses: forwards run under ``SOLVER.AMP``'s autocast and backward passes
go through its gradient scaler.
"""
from __future__ import annotations

import logging
import os
import time

import torch
from detectron2.config import CfgNode
from detectron2.data import build_detection_test_loader
from detectron2.utils import comm
from detectron2.utils.events import get_event_storage
from torch.nn import functional as F

from deepcens.data.mappers import build_mapper
from deepcens.engine.loops import TRAIN_LOOP_REGISTRY, LoaderBuilder, TrainLoop, amp_precision

logger = logging.getLogger(__name__)


@TRAIN_LOOP_REGISTRY.register()
class EarlyStopping(TrainLoop):
    """Plain steps over ``DATASETS.TRAIN`` that stop once the ``DATASETS.VAL`` loss stops improving."""

    def __init__(self, cfg: CfgNode, model, data_loader, optimizer, precision: torch.dtype | None = None):
        super().__init__(model, data_loader, optimizer, precision)
        e = cfg.SOLVER.EARLY_STOP
        self.patience = int(e.PATIENCE)
        self.period = int(e.PERIOD)
        if self.patience > 0 and self.period <= 0:
            raise ValueError("SOLVER.EARLY_STOP.PERIOD must be > 0 when SOLVER.EARLY_STOP.PATIENCE is set")
        if self.patience > 0 and not len(cfg.DATASETS.VAL):
            raise ValueError("SOLVER.EARLY_STOP.PATIENCE needs DATASETS.VAL (the held-back images it watches)")
        self._val_loaders = ([build_detection_test_loader(cfg, name, mapper=build_mapper(cfg, is_train=True))
                              for name in cfg.DATASETS.VAL] if self.patience > 0 else [])
        self.best_val_loss = float("inf")
        self.checks_without_improvement = 0
        self.stopped = False

    @classmethod
    def from_config(cls, cfg: CfgNode, model, optimizer, build_loader: LoaderBuilder) -> "EarlyStopping":
        return cls(cfg, model, build_loader(cfg, cfg.DATASETS.TRAIN), optimizer, amp_precision(cfg))

    def validation_loss(self) -> float:
        """Mean training loss over the ``DATASETS.VAL`` images, averaged over all ranks."""
        model = self.model.module if hasattr(self.model, "module") else self.model
        total, count = 0.0, 0
        with torch.no_grad():
            for loader in self._val_loaders:
                for inputs in loader:
                    total += float(self.forward_losses(inputs, model)[1])
                    count += 1
        gathered = comm.all_gather((total, count))
        return sum(t for t, _ in gathered) / max(sum(c for _, c in gathered), 1)

    def check_early_stop(self) -> None:
        """After a step: every ``period`` iterations, compare the validation loss with the best."""
        if self.patience <= 0 or self.stopped or (self.iter + 1) % self.period:
            return
        loss = self.validation_loss()
        if comm.is_main_process():
            get_event_storage().put_scalar("early_stop/val_loss", loss, smoothing_hint=False)
        if loss < self.best_val_loss:
            self.best_val_loss, self.checks_without_improvement = loss, 0
            return
        self.checks_without_improvement += 1
        if self.checks_without_improvement >= self.patience:
            self.stopped = True
            logger.info("Early stopping at iteration %d: no lower validation loss in %d checks (best %.5f)",
                        self.iter + 1, self.patience, self.best_val_loss)
            self.on_stop()

    def on_stop(self) -> None:
        """Called once when early stopping ends training."""

    def run_step(self) -> None:
        if self.stopped:
            return
        super().run_step()
        self.check_early_stop()


def _remove_from_optimizer(optimizer: torch.optim.Optimizer, parameters: list[torch.nn.Parameter]) -> None:
    """Drop ``parameters`` from every group of a not yet stepped optimizer."""
    ids = {id(p) for p in parameters}
    for group in optimizer.param_groups:
        group["params"] = [p for p in group["params"] if id(p) not in ids]
    optimizer.param_groups[:] = [g for g in optimizer.param_groups if g["params"]]


@TRAIN_LOOP_REGISTRY.register()
class DiNTSSearch(EarlyStopping):
    """Alternating weight and architecture steps of the DiNTS search (module docstring)."""

    def __init__(self, cfg: CfgNode, model, data_loader, arch_loader, optimizer, precision: torch.dtype | None = None):
        from deepcens.modeling.dense.dints import find_topology_search

        super().__init__(cfg, model, data_loader, optimizer, precision)
        s = cfg.SOLVER.DINTS_SEARCH
        self.cfg = cfg
        self.space = find_topology_search(model)
        _remove_from_optimizer(optimizer, [self.space.log_alpha_a, self.space.log_alpha_c])
        betas = tuple(float(b) for b in s.ARCH_BETAS)
        self.arch_optimizer_a = torch.optim.Adam([self.space.log_alpha_a], lr=float(s.ARCH_LR), betas=betas,
                                                 weight_decay=0.0)
        self.arch_optimizer_c = torch.optim.Adam([self.space.log_alpha_c], lr=float(s.ARCH_LR), betas=betas,
                                                 weight_decay=0.0)
        self.arch_loader = arch_loader
        self._arch_iter = None
        self.warmup_iters = int(s.WARMUP_ITERS)
        self.max_iter = int(cfg.SOLVER.MAX_ITER)
        self.ram_cost_factor = float(s.RAM_COST_FACTOR)
        self.topology_weight = float(s.TOPOLOGY_WEIGHT)
        self.decode_period = int(s.DECODE_PERIOD)
        self.arch_file = os.path.join(cfg.OUTPUT_DIR, "arch_code.json")

    def _zero_all_grads(self) -> None:
        self.optimizer.zero_grad()
        self.arch_optimizer_a.zero_grad()
        self.arch_optimizer_c.zero_grad()

    def architecture_losses(self, image_shape: tuple[int, ...]) -> dict[str, torch.Tensor]:
        """Entropy, RAM and topology terms of the current architecture parameters (unscaled)."""
        space = self.space
        probs_a, _ = space.get_prob_a(child=True)
        entropy_a = -(probs_a * torch.log(probs_a + 1e-5)).mean()
        entropy_c = -(F.softmax(space.log_alpha_c, dim=-1) * F.log_softmax(space.log_alpha_c, dim=-1)).mean()
        usage = space.get_ram_cost_usage(image_shape)
        full = space.get_ram_cost_usage(image_shape, full=True)
        return {"entropy": entropy_a + entropy_c, "ram": torch.abs(self.ram_cost_factor - usage / full),
                "topology": space.get_topology_entropy(probs_a)}

    def run_step(self) -> None:
        if self.stopped:
            return
        start = time.perf_counter()
        data = next(self._data_loader_iter)
        data_time = time.perf_counter() - start
        self._zero_all_grads()
        loss_dict, losses = self.forward_losses(data)
        self.backward(losses)
        self.after_backward()
        self._write_metrics(loss_dict, data_time)
        self.optimizer_step()
        if self.iter >= self.warmup_iters:
            self.architecture_step()
        if comm.is_main_process() and (self.iter + 1 == self.max_iter or
                                       (self.decode_period > 0 and (self.iter + 1) % self.decode_period == 0)):
            self.decode()
        self.check_early_stop()

    def architecture_step(self) -> None:
        if self._arch_iter is None:
            self._arch_iter = iter(self.arch_loader)
        data = next(self._arch_iter)
        self._zero_all_grads()
        loss_dict, losses = self.forward_losses(data)
        image = data[0]["image"]
        terms = self.architecture_losses((len(data), *image.shape))
        progress = (self.iter - self.warmup_iters) / max(self.max_iter - self.warmup_iters, 1)
        total = losses + progress * (terms["entropy"] + terms["ram"] + self.topology_weight * terms["topology"])
        self.backward(total)
        self.grad_scaler.step(self.arch_optimizer_a)
        self.grad_scaler.step(self.arch_optimizer_c)
        self.grad_scaler.update()
        self._zero_all_grads()
        metrics = {f"arch_{k}": v.detach() for k, v in loss_dict.items()}
        metrics.update({f"arch_{k}": v.detach() for k, v in terms.items()})
        self._write_metrics(metrics, 0.0, prefix="arch_")

    def decode(self) -> None:
        from deepcens.modeling.dense.dints import save_arch_code

        save_arch_code(self.arch_file, self.space, self.cfg, self.iter + 1)
        logger.info("DiNTS architecture decoded at iteration %d: %s", self.iter + 1, self.arch_file)

    def on_stop(self) -> None:
        if comm.is_main_process():
            self.decode()

    def state_dict(self) -> dict:
        state = super().state_dict()
        state["arch_optimizer_a"] = self.arch_optimizer_a.state_dict()
        state["arch_optimizer_c"] = self.arch_optimizer_c.state_dict()
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        if "arch_optimizer_a" in state_dict:
            self.arch_optimizer_a.load_state_dict(state_dict["arch_optimizer_a"])
            self.arch_optimizer_c.load_state_dict(state_dict["arch_optimizer_c"])

    @classmethod
    def from_config(cls, cfg: CfgNode, model, optimizer, build_loader: LoaderBuilder) -> "DiNTSSearch":
        """Weights from ``DATASETS.TRAIN``, architecture from ``SOLVER.DINTS_SEARCH.ARCH_DATASETS``
        (empty = ``DATASETS.TRAIN`` again, drawn in another order)."""
        return cls(cfg, model, build_loader(cfg, cfg.DATASETS.TRAIN), _arch_loader(cfg, build_loader), optimizer,
                   amp_precision(cfg))


def _arch_loader(cfg: CfgNode, build_loader: LoaderBuilder):
    arch_names = tuple(cfg.SOLVER.DINTS_SEARCH.ARCH_DATASETS)
    arch_cfg = cfg
    if not arch_names:
        arch_names = tuple(cfg.DATASETS.TRAIN)
        if cfg.SEED >= 0:  # same images, another order than the weight stream
            arch_cfg = cfg.clone()
            arch_cfg.defrost()
            arch_cfg.SEED = int(cfg.SEED) + 1
    return build_loader(arch_cfg, arch_names)
