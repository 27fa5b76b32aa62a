"""Exact resume: random states and the data position travel inside the checkpoint.

detectron2 restores weights, optimizer, scheduler and the iteration on ``--resume``, but
its ``TrainingSampler`` restarts its seeded permutation stream from the beginning (or from a
new random seed) and the torch / numpy / python random states are whatever the new process
drew. A resumed run therefore sees other images in another order with other augmentations.

Here:
- :class:`ResumableTrainingSampler` is detectron2's ``TrainingSampler`` stream with a seed
  and a start offset that can be saved and restored (fast-forwarding costs only index
  permutations, no image is read);
- :class:`ResumableLoader` wraps a training loader and counts the items in the batches it
  handed out, which is the position stored in the checkpoint;
- :func:`capture_rng_state` / :func:`restore_rng_state` turn the torch, numpy and python
  generator states into plain tensors / ints (loadable with ``torch.load(weights_only=True)``).

Exactness holds for ``DATALOADER.NUM_WORKERS 0`` when every batch empties its aspect-ratio
bucket (images of one orientation, or ``ASPECT_RATIO_GROUPING False``). With workers, or
items left pending in a second bucket, the stream continues after the items already used
(a close, not an identical, order); weights, optimizer and random states stay exact.
"""
from __future__ import annotations

import itertools
import logging
import random
from typing import Any, Iterator

import numpy as np
import torch
from detectron2.config import CfgNode
from detectron2.data import build_detection_train_loader
from detectron2.data.samplers import TrainingSampler
from detectron2.utils import comm


logger = logging.getLogger(__name__)


def capture_rng_state() -> dict[str, Any]:
    """The torch (CPU and CUDA), numpy and python generator states as weights-only-safe values."""
    np_state = np.random.get_state()
    py_version, py_internal, py_gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": {"version": int(py_version), "internal": torch.tensor(py_internal, dtype=torch.int64),
                   "gauss_next": py_gauss},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`."""
    torch.set_rng_state(state["torch"])
    numpy_state = state["numpy"]
    np.random.set_state(("MT19937", numpy_state["keys"].numpy().astype(np.uint32), numpy_state["pos"],
                         numpy_state["has_gauss"], numpy_state["cached_gaussian"]))
    python_state = state["python"]
    random.setstate((python_state["version"], tuple(int(v) for v in python_state["internal"].tolist()),
                     python_state["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = state["cuda"]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)


class ResumableTrainingSampler(TrainingSampler):
    """detectron2's infinite seeded ``TrainingSampler`` that can start ``start`` indices into
    this rank's stream (the same indices the uninterrupted stream would give next)."""

    def __init__(self, size: int, shuffle: bool = True, seed: int | None = None):
        super().__init__(size, shuffle=shuffle, seed=seed)
        self._start = 0

    @property
    def seed(self) -> int:
        return self._seed

    def set_position(self, seed: int, start: int) -> None:
        """Continue the stream of ``seed`` after ``start`` indices of this rank's shard."""
        self._seed = int(seed)
        self._start = int(start)

    def __iter__(self) -> Iterator[int]:
        first = self._rank + self._start * self._world_size
        skip_epochs, first = divmod(first, self._size)
        yield from itertools.islice(self._indices_from_epoch(skip_epochs), first, None, self._world_size)

    def _indices_from_epoch(self, skip_epochs: int) -> Iterator[int]:
        """The infinite stream of ``_infinite_indices`` without its first ``skip_epochs`` epochs."""
        generator = torch.Generator()
        generator.manual_seed(self._seed)
        for _ in range(skip_epochs if self._shuffle else 0):
            torch.randperm(self._size, generator=generator)  # advance the generator only
        while True:
            if self._shuffle:
                yield from torch.randperm(self._size, generator=generator).tolist()
            else:
                yield from range(self._size)


class ResumableLoader:
    """A training loader (iterable of batches) whose position can be saved and restored.

    ``state_dict()`` holds the sampler seed and the number of items (per rank) in the batches
    handed out so far; ``load_state_dict`` must come before the first ``iter()``.
    """

    def __init__(self, loader: Any, sampler: ResumableTrainingSampler):
        self.loader = loader
        self.sampler = sampler
        self.consumed = 0
        self._started = False

    def __iter__(self) -> Iterator[Any]:
        self._started = True
        for batch in self.loader:  # a worker's DeepcensInputError arrives rebuilt from its message
            self.consumed += len(batch)
            yield batch

    def state_dict(self) -> dict[str, int]:
        return {"seed": int(self.sampler.seed), "consumed": int(self.consumed)}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if self._started:
            logger.warning("Training loader already started: its saved position is not restored")
            return
        self.sampler.set_position(state["seed"], state["consumed"])
        self.consumed = int(state["consumed"])


def sampler_seed(cfg: CfgNode) -> int:
    """``cfg.SEED`` when set (>= 0), else one random seed shared by all ranks."""
    return int(cfg.SEED) if cfg.SEED >= 0 else int(comm.shared_random_seed())


def build_resumable_train_loader(cfg: CfgNode, dataset_dicts: list[dict], mapper: Any) -> ResumableLoader:
    """``build_detection_train_loader`` over ``dataset_dicts`` with a :class:`ResumableTrainingSampler`."""
    seed = sampler_seed(cfg)
    sampler = ResumableTrainingSampler(len(dataset_dicts), shuffle=True, seed=seed)
    # seed: the DataLoader draws its worker base seed from its own generator, not from torch's
    # global one, so creating the iterator (at the first step, or after a resume) does not shift
    # the random stream the model uses
    loader = build_detection_train_loader(cfg, dataset=dataset_dicts, mapper=mapper, sampler=sampler, seed=seed)
    return ResumableLoader(loader, sampler)


def find_resumable_loaders(loop: Any) -> list[ResumableLoader]:
    """The :class:`ResumableLoader` objects a training loop holds (attributes, lists, dicts), in a
    stable order, so loops over several datasets are resumed as well as ``SimpleTrainer``."""
    found: list[ResumableLoader] = []
    for name in sorted(vars(loop)):
        value = getattr(loop, name)
        candidates = value.values() if isinstance(value, dict) else value if isinstance(value, (list, tuple)) else [value]
        for candidate in candidates:
            if isinstance(candidate, ResumableLoader) and all(candidate is not f for f in found):
                found.append(candidate)
    return found
