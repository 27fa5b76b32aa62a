"""Architecture search loop of NAS U-Net (Zhu & Meijering 2021, Sec. 2.2-2.3), ``SOLVER.TRAIN_SCHEME NasSearch``.

The training frames (``DATASETS.TRAIN``) are split by frame into a weight split and an
architecture split (``MODEL.NAS.SEARCH.VAL_FRACTION`` = 0.4: the paper's 60/40). Every
iteration is two steps on the supernet (``MODEL.NAS.GENOTYPE`` empty):

1. an architecture step on a batch of the architecture split: kernels frozen, the BO and CU
   parameters updated by their own Adam (``ARCH_LR``, ``ARCH_WEIGHT_DECAY``);
2. a weight step on a batch of the weight split: architecture frozen, kernels updated by the
   trainer's optimizer (``SOLVER.*``).

Paths are drawn from a generator seeded by ``SEED`` and the iteration, so every rank runs the
same sampled architecture; gradients are averaged over ranks by hand (the sampled sub-network
leaves most parameters unused, which DDP's reducer does not allow). After every epoch (one
pass over the weight split) the derived architecture is written to ``OUTPUT_DIR/genotype.json``
and ``genotype.png``; the search stops (remaining iterations skipped) when it has not changed
for ``PATIENCE_EPOCHS`` epochs, or at ``SOLVER.MAX_ITER``. Every ``LOG_PERIOD`` iterations the
softmax of every BO / CU parameter vector goes into ``metrics.json`` as ``arch/...`` scalars.
Both steps run through :class:`~deepcens.engine.loops.TrainLoop`'s ``forward_losses`` /
``backward`` / ``optimizer_step``, so ``SOLVER.AMP`` applies to them.
"""
from __future__ import annotations

import json
import logging
import math
import os
import time

import numpy as np
import torch
from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.utils import comm
from detectron2.utils.events import get_event_storage

from deepcens.engine.loops import TRAIN_LOOP_REGISTRY, LoaderBuilder, TrainLoop, amp_precision
from deepcens.utils.atomic import atomic_save_json

logger = logging.getLogger(__name__)


def split_records(dicts: list[dict], val_fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """Seeded split of dataset dicts by frame (``(sequence, frame)``, else ``file_name``)."""
    def key(record: dict) -> tuple:
        return (str(record.get("sequence")), int(record["frame"])) if "frame" in record else (str(record["file_name"]),)

    keys = sorted({key(d) for d in dicts})
    count = min(max(int(round(val_fraction * len(keys))), 1), len(keys) - 1) if len(keys) >= 2 else 0
    chosen = {keys[i] for i in np.random.default_rng(seed).permutation(len(keys))[:count]}
    return [d for d in dicts if key(d) not in chosen], [d for d in dicts if key(d) in chosen]


def register_search_splits(names: list[str], val_fraction: float, seed: int) -> tuple[str, str]:
    """Register (lazily) the weight / architecture splits of the datasets ``names``; returns their names."""
    base = "+".join(names)
    split_names = (f"{base}@nas_weights", f"{base}@nas_arch")
    for index, split_name in enumerate(split_names):
        def load(index: int = index) -> list[dict]:
            dicts = [dict(d) for name in names for d in DatasetCatalog.get(name)]
            part = split_records(dicts, val_fraction, seed)[index]
            for image_id, record in enumerate(part):
                record["image_id"] = image_id
            return part

        if split_name in DatasetCatalog.list():
            DatasetCatalog.remove(split_name)
            MetadataCatalog.remove(split_name)
        DatasetCatalog.register(split_name, load)
        MetadataCatalog.get(split_name).set(**{k: v for k, v in MetadataCatalog.get(names[0]).as_dict().items()
                                               if k != "name"})
    return split_names


def _average_gradients(parameters: list[torch.nn.Parameter]) -> None:
    """Sum-reduce the gradients of ``parameters`` over ranks and divide (missing gradients count as 0)."""
    world = comm.get_world_size()
    if world == 1 or not parameters:
        return
    for p in parameters:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    flat = torch.cat([p.grad.reshape(-1) for p in parameters])
    torch.distributed.all_reduce(flat)
    flat /= world
    offset = 0
    for p in parameters:
        p.grad.copy_(flat[offset:offset + p.numel()].view_as(p))
        offset += p.numel()


@TRAIN_LOOP_REGISTRY.register()
class NasSearch(TrainLoop):
    """Alternating architecture / weight steps on a supernet (see the module docstring)."""

    def __init__(self, model, weight_loader, arch_loader, optimizer, arch_optimizer, *, iters_per_epoch: int,
                 max_iter: int, patience_epochs: int, warmup_epochs: int, log_period: int, seed: int, output_dir: str,
                 precision: torch.dtype | None = None):
        super().__init__(model, weight_loader, optimizer, precision)
        self.arch_loader = arch_loader
        self._arch_iter = None
        self.arch_optimizer = arch_optimizer
        self.iters_per_epoch = max(int(iters_per_epoch), 1)
        self.max_iter = int(max_iter)
        self.patience_epochs = int(patience_epochs)
        self.warmup_epochs = int(warmup_epochs)
        self.log_period = int(log_period)
        self.seed = int(seed)
        self.output_dir = output_dir
        self.stable_epochs = 0
        self.last_genotype: dict | None = None
        self.stopped_at: int | None = None
        self.history: list[dict] = []

    @property
    def module(self) -> torch.nn.Module:
        return self.model.module if hasattr(self.model, "module") else self.model

    @property
    def network(self):
        return self.module.network

    def _set_trainable(self, arch: bool) -> None:
        for p in self.network.arch_parameters():
            p.requires_grad_(arch)
        for p in self.network.weight_parameters():
            p.requires_grad_(not arch)
        for name, p in self.module.named_parameters():  # parameters outside the network (none by default)
            if not name.startswith("network."):
                p.requires_grad_(not arch)

    def _step(self, data, phase: str, optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
        self.network.begin_step(phase, self.seed * 1_000_003 + 2 * self.iter + (phase == "arch"))
        self._set_trainable(phase == "arch")
        loss_dict, losses = self.forward_losses(data, self.module)
        optimizer.zero_grad(set_to_none=True)
        self.backward(losses)
        trained = self.network.arch_parameters() if phase == "arch" else [
            p for p in self.module.parameters() if p.requires_grad]
        _average_gradients(trained)
        self.optimizer_step(optimizer)
        return loss_dict

    def start_iterators(self) -> None:
        super().start_iterators()
        if self._arch_iter is None:
            self._arch_iter = iter(self.arch_loader)

    def run_step(self) -> None:
        assert self.module.training, "[NasSearch] model was changed to eval mode!"
        if self.stopped_at is not None:
            return
        epoch = self.iter // self.iters_per_epoch
        arch_losses = {}
        if epoch >= self.warmup_epochs:
            self.start_iterators()
            arch_losses = self._step(next(self._arch_iter), "arch", self.arch_optimizer)
        start = time.perf_counter()
        data = next(self._data_loader_iter)
        data_time = time.perf_counter() - start
        loss_dict = self._step(data, "weight", self.optimizer)
        self._set_trainable(False)
        self._write_metrics({k: v.detach() for k, v in loss_dict.items()}, data_time)
        if arch_losses and comm.is_main_process():
            get_event_storage().put_scalars(**{f"arch_{k}": float(v.detach()) for k, v in arch_losses.items()}, smoothing_hint=False)
        if self.log_period > 0 and (self.iter + 1) % self.log_period == 0 and comm.is_main_process():
            get_event_storage().put_scalars(**architecture_scalars(self.network), smoothing_hint=False)
        if (self.iter + 1) % self.iters_per_epoch == 0 or self.iter + 1 >= self.max_iter:
            self._end_of_epoch(epoch)

    def _end_of_epoch(self, epoch: int) -> None:
        from deepcens.modeling.dense.nas_genotype import save_genotype, save_genotype_picture

        genotype = self.network.derive()
        data = genotype.to_dict()
        changed = data != self.last_genotype
        self.stable_epochs = 0 if changed else self.stable_epochs + 1
        self.last_genotype = data
        self.history.append({"epoch": epoch, "iteration": self.iter + 1, "changed": changed})
        stop = self.patience_epochs > 0 and self.stable_epochs >= self.patience_epochs
        if comm.is_main_process():
            extra = {"search": {"epoch": epoch, "iteration": self.iter + 1, "stable_epochs": self.stable_epochs,
                                "stopped": stop, "mode": self.network.search_mode},
                     "architecture_weights": self.network.architecture_weights()}
            save_genotype(os.path.join(self.output_dir, "genotype.json"), genotype, extra)
            if changed or stop or self.iter + 1 >= self.max_iter:
                title = f"NAS U-Net derived cells, epoch {epoch} (iteration {self.iter + 1})"
                save_genotype_picture(os.path.join(self.output_dir, "genotype.png"), genotype, title)
            get_event_storage().put_scalars(nas_stable_epochs=float(self.stable_epochs), smoothing_hint=False)
        if stop:
            self.stopped_at = self.iter + 1
            logger.info(f"Derived architecture unchanged for {self.stable_epochs} epochs: search stops at "
                        f"iteration {self.stopped_at} (epoch {epoch})")

    def state_dict(self) -> dict:
        state = super().state_dict()
        state["arch_optimizer"] = self.arch_optimizer.state_dict()
        state["search"] = json.dumps({"stable_epochs": self.stable_epochs, "last_genotype": self.last_genotype,
                                      "stopped_at": self.stopped_at})
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        if "arch_optimizer" in state_dict:
            self.arch_optimizer.load_state_dict(state_dict["arch_optimizer"])
        if "search" in state_dict:
            search = json.loads(state_dict["search"])
            self.stable_epochs, self.last_genotype = search["stable_epochs"], search["last_genotype"]
            self.stopped_at = search["stopped_at"]

    @classmethod
    def from_config(cls, cfg: CfgNode, model, optimizer, build_loader: LoaderBuilder) -> "NasSearch":
        """The search over the weight / architecture splits of ``DATASETS.TRAIN`` (see the module docstring)."""
        return build_nas_search(cfg, model, optimizer, build_loader)


def architecture_scalars(network) -> dict[str, float]:
    """``arch/<block>/node<k>/<source>/<BO>`` and ``arch/<block>/node<k>/path/<source>`` probabilities."""
    scalars = {}
    for kind, blocks in (("D", network.down_blocks), ("U", network.up_blocks)):
        for b, block in enumerate(blocks):
            name = f"arch/{kind}{b + 1}"
            for edge_name, cu in block.edges.items():
                node, source = edge_name.split("_")
                if cu.searching:
                    for op, p in zip(cu.candidates, torch.softmax(cu.arch_bo.detach(), 0).tolist()):
                        scalars[f"{name}/node{node}/in{source}/{op}"] = p
            if block.searching:
                for node, logits in enumerate(block.arch_cu):
                    for source, p in enumerate(torch.softmax(logits.detach(), 0).tolist()):
                        scalars[f"{name}/node{node}/path/in{source}"] = p
            if kind == "D":
                for node, cu in enumerate(block.down):
                    for op, p in zip(cu.candidates, torch.softmax(cu.arch_bo.detach(), 0).tolist()):
                        scalars[f"{name}/node{node}/down/{op}"] = p
    return scalars



def build_nas_search(cfg: CfgNode, model, optimizer, build_loader: LoaderBuilder) -> NasSearch:
    """A :class:`NasSearch` for ``cfg`` (splits registered, loaders and the architecture optimizer built)."""
    s = cfg.MODEL.NAS.SEARCH
    module = model.module if hasattr(model, "module") else model
    network = getattr(module, "network", None)
    if network is None or not getattr(network, "is_supernet", False):
        raise ValueError("SOLVER.TRAIN_SCHEME NasSearch needs a NAS supernet: MODEL.DENSE.NETWORK NasUNet "
                         "with MODEL.NAS.GENOTYPE empty")
    names = list(cfg.DATASETS.TRAIN)
    weight_name, arch_name = register_search_splits(names, float(s.VAL_FRACTION), int(s.SPLIT_SEED))
    num_weight_frames = len(DatasetCatalog.get(weight_name))
    iters_per_epoch = math.ceil(num_weight_frames / int(cfg.SOLVER.IMS_PER_BATCH))
    arch_optimizer = torch.optim.Adam(network.arch_parameters(), lr=float(s.ARCH_LR), weight_decay=float(s.ARCH_WEIGHT_DECAY))
    # the trainer's optimizer holds every parameter; architecture ones never get a gradient in its steps
    logger.info(f"NAS search: {num_weight_frames} weight frames ({weight_name}), "
                f"{len(DatasetCatalog.get(arch_name))} architecture frames ({arch_name}), {iters_per_epoch} iterations per epoch")
    if comm.is_main_process():
        atomic_save_json(os.path.join(cfg.OUTPUT_DIR, "nas_split.json"), {
            "weights": sorted({d["file_name"] for d in DatasetCatalog.get(weight_name)}),
            "architecture": sorted({d["file_name"] for d in DatasetCatalog.get(arch_name)})})
    return NasSearch(
        model, build_loader(cfg, [weight_name]), build_loader(cfg, [arch_name]), optimizer, arch_optimizer,
        iters_per_epoch=iters_per_epoch, max_iter=cfg.SOLVER.MAX_ITER, patience_epochs=s.PATIENCE_EPOCHS,
        warmup_epochs=s.WARMUP_EPOCHS, log_period=s.LOG_PERIOD, seed=cfg.SEED if cfg.SEED >= 0 else 0,
        output_dir=cfg.OUTPUT_DIR, precision=amp_precision(cfg))
