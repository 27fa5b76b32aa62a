"""Training loops, found by ``cfg.SOLVER.TRAIN_SCHEME`` in :data:`TRAIN_LOOP_REGISTRY`.

A loop is a class registered with ``@TRAIN_LOOP_REGISTRY.register()`` (its class name is the
``TRAIN_SCHEME`` value) with a classmethod ``from_config(cfg, model, optimizer, build_loader)``,
where ``build_loader(cfg, dataset_names) -> iterable of batches`` builds one training loader over
the given registered datasets (with the config's mapper). Its ``run_step`` performs one
optimizer step.

Every loop derives from :class:`TrainLoop`, which honours ``SOLVER.AMP.ENABLED`` /
``SOLVER.AMP.PRECISION`` as detectron2's ``AMPTrainer`` does (forward under ``torch.autocast``,
``GradScaler`` for float16, the scaler's state under ``"grad_scaler"`` in checkpoints), on CUDA
and, for bfloat16, on the CPU. ``AMPTrainer`` itself asserts CUDA and does forward, backward and
step in one monolithic ``run_step``, so loops that draw several minibatches per step (the
universal-training schemes) or alternate two optimizers (architecture searches) could not reuse
it; :class:`TrainLoop` splits that step into :meth:`~TrainLoop.forward_losses`,
:meth:`~TrainLoop.backward` and :meth:`~TrainLoop.optimizer_step`, which a subclass combines as it
needs and which keep AMP on. :func:`build_train_loop` refuses a loop that is not a
:class:`TrainLoop` while AMP is enabled, so AMP can never be silently off.
"""
from __future__ import annotations

import contextlib
import time
from typing import Any, Callable, ContextManager, Iterable, Sequence

import torch
from detectron2.config import CfgNode
from detectron2.engine import SimpleTrainer
from detectron2.utils.registry import Registry

TRAIN_LOOP_REGISTRY = Registry("TRAIN_LOOP")
TRAIN_LOOP_REGISTRY.__doc__ = "Training loops: TrainLoop subclasses with from_config(cfg, model, optimizer, build_loader)."

LoaderBuilder = Callable[[CfgNode, Sequence[str]], Iterable]

_PRECISIONS = {"float16": torch.float16, "bfloat16": torch.bfloat16}


def amp_precision(cfg: CfgNode) -> torch.dtype | None:
    """The autocast dtype of ``SOLVER.AMP`` (``None`` when AMP is off).

    Raises ``ValueError`` for an unknown precision, and for float16 on a CPU device (torch's CPU
    autocast computes in bfloat16; float16 needs CUDA), instead of training in full precision.
    """
    if not cfg.SOLVER.AMP.ENABLED:
        return None
    name = str(cfg.SOLVER.AMP.PRECISION)
    if name not in _PRECISIONS:
        raise ValueError(f"SOLVER.AMP.PRECISION must be one of {sorted(_PRECISIONS)}, got {name!r}")
    if torch.device(cfg.MODEL.DEVICE).type == "cpu" and name != "bfloat16":
        raise ValueError(f"SOLVER.AMP.ENABLED on MODEL.DEVICE cpu needs SOLVER.AMP.PRECISION bfloat16 "
                         f"(CPU autocast has no {name}); got {name!r}")
    return _PRECISIONS[name]


def model_device_type(model: torch.nn.Module) -> str:
    """``"cuda"`` or ``"cpu"``: where the model's parameters live (autocast needs the device type)."""
    parameter = next(model.parameters(), None)
    return parameter.device.type if parameter is not None else "cpu"


class TrainLoop(SimpleTrainer):
    """``SimpleTrainer`` with detectron2's AMP behaviour, in parts a subclass can recombine.

    ``precision=None`` trains in full precision (exactly ``SimpleTrainer``); a dtype runs every
    forward under ``torch.autocast(device, dtype)``; float16 also scales the loss with a
    ``torch.amp.GradScaler`` (bfloat16 needs no scaling, as in ``AMPTrainer`` with a disabled
    scaler). A subclass's ``run_step`` should call :meth:`forward_losses`, :meth:`backward` and
    :meth:`optimizer_step` (and ``after_backward`` / ``_write_metrics`` like ``SimpleTrainer``).
    """

    def __init__(self, model: torch.nn.Module, data_loader: Iterable | None, optimizer: torch.optim.Optimizer,
                 precision: torch.dtype | None = None):
        super().__init__(model, data_loader, optimizer)
        self.precision = precision
        self.device_type = model_device_type(model)
        if precision is not None and self.device_type == "cpu" and precision != torch.bfloat16:
            raise ValueError(f"autocast on the CPU needs bfloat16, got {precision}")
        self.grad_scaler = torch.amp.GradScaler(self.device_type, enabled=precision == torch.float16)

    @classmethod
    def from_config(cls, cfg: CfgNode, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    build_loader: LoaderBuilder) -> "TrainLoop":
        """Subclasses build their loaders here; the base loop has none."""
        raise NotImplementedError

    def autocast(self) -> ContextManager:
        """The autocast context of this loop (a no-op in full precision)."""
        if self.precision is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.precision)

    def forward_losses(self, data: Any, model: torch.nn.Module | None = None) -> tuple[dict, torch.Tensor]:
        """``model(data)`` under autocast: the loss dict and its sum (a bare tensor becomes ``total_loss``)."""
        with self.autocast():
            loss_dict = (model or self.model)(data)
        if isinstance(loss_dict, torch.Tensor):
            return {"total_loss": loss_dict}, loss_dict
        return loss_dict, sum(loss_dict.values())

    def backward(self, loss: torch.Tensor) -> None:
        """Back-propagate ``loss`` (scaled when the precision is float16)."""
        self.grad_scaler.scale(loss).backward()

    def optimizer_step(self, optimizer: torch.optim.Optimizer | None = None) -> None:
        """Step ``optimizer`` (default: the loop's) through the scaler, then update the scale."""
        self.grad_scaler.step(optimizer or self.optimizer)
        self.grad_scaler.update()

    def run_step(self) -> None:
        """``SimpleTrainer.run_step`` / ``AMPTrainer.run_step``: one minibatch, one optimizer step."""
        assert self.model.training, f"[{type(self).__name__}] model was changed to eval mode!"
        start = time.perf_counter()
        data = next(self._data_loader_iter)
        data_time = time.perf_counter() - start
        loss_dict, losses = self.forward_losses(data)
        self.optimizer.zero_grad()
        self.backward(losses)
        self.after_backward()
        self._write_metrics(loss_dict, data_time)
        self.optimizer_step()

    def state_dict(self) -> dict:
        state = super().state_dict()
        if self.grad_scaler.is_enabled():
            state["grad_scaler"] = self.grad_scaler.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        if self.grad_scaler.is_enabled() and "grad_scaler" in state:
            self.grad_scaler.load_state_dict(state["grad_scaler"])


@TRAIN_LOOP_REGISTRY.register()
class Single(TrainLoop):
    """detectron2's plain loop: one loader over all of ``DATASETS.TRAIN``, one step per batch."""

    @classmethod
    def from_config(cls, cfg: CfgNode, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    build_loader: LoaderBuilder) -> "Single":
        return cls(model, build_loader(cfg, cfg.DATASETS.TRAIN), optimizer, amp_precision(cfg))


def build_train_loop(cfg: CfgNode, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                     build_loader: LoaderBuilder) -> TrainLoop:
    """The loop named by ``cfg.SOLVER.TRAIN_SCHEME``, with the precision of ``cfg.SOLVER.AMP``."""
    precision = amp_precision(cfg)  # validates SOLVER.AMP before any loader is built
    loop = TRAIN_LOOP_REGISTRY.get(cfg.SOLVER.TRAIN_SCHEME).from_config(cfg, model, optimizer, build_loader)
    if precision is not None and getattr(loop, "precision", None) != precision:
        raise ValueError(f"training loop {cfg.SOLVER.TRAIN_SCHEME!r} does not honour SOLVER.AMP "
                         f"(expected autocast in {precision}); build it as a TrainLoop with amp_precision(cfg)")
    return loop
