"""The predictor of ``deepcens predict``: a config's model with its weights, images of any size.

Every method goes through one path: the config's test mapper (``INPUT.MAPPER``) builds the
model input and the model returns ``Instances``. R-CNN images larger than the tile size run
in overlapping tiles merged by :mod:`deepcens.postprocess.tiling`; dense (U-Net) models
tile inside their meta-architecture (``MODEL.DENSE.SLIDING_WINDOW``, which the tile size sets).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from detectron2.config import CfgNode
from detectron2.structures import Instances

from deepcens.errors import DeepcensInputError
from deepcens.postprocess.tiling import merge_tiled_instances, tile_grid

MIN_TILE_SIZE = 64  # smaller tiles hold too little context and multiply the model calls


class Predictor:
    """Builds the model of a config, loads its weights and predicts raw ``(H, W, C)`` images.

    Weights that leave model parameters uninitialised (a checkpoint of another model, wrong
    shapes, none at all) are refused unless ``allow_random_weights``.
    """

    def __init__(self, cfg: CfgNode, tile_size: int = 0, tile_overlap: float = 0.25, dataset_name: str | None = None,
                 allow_random_weights: bool = False):
        from detectron2.modeling import META_ARCH_REGISTRY, build_model

        from deepcens.data.mappers import build_mapper
        from deepcens.engine.weights import load_inference_weights

        check_tiling(tile_size, tile_overlap)
        self.is_dense = hasattr(META_ARCH_REGISTRY.get(cfg.MODEL.META_ARCHITECTURE), "predict_probabilities")
        if self.is_dense and tile_size > 0:
            cfg = cfg.clone()
            cfg.defrost()
            cfg.MODEL.DENSE.SLIDING_WINDOW = int(tile_size)  # the meta-architecture tiles itself
            cfg.MODEL.DENSE.SLIDING_OVERLAP = float(tile_overlap)
            cfg.freeze()
        self.cfg = cfg
        self.tile_size = 0 if self.is_dense else int(tile_size)
        self.tile_overlap = float(tile_overlap)
        self.dataset_name = dataset_name
        self.model = build_model(cfg)
        self.model.eval()
        uninitialised = load_inference_weights(self.model, cfg.MODEL.WEIGHTS, allow_unsafe=cfg.RUN.ALLOW_UNSAFE_CHECKPOINTS,
                                               allow_random=allow_random_weights)
        self.random_weights = bool(uninitialised)
        self.mapper = build_mapper(cfg, is_train=False)

    def _record(self, image: np.ndarray, file_name: str, extra: dict | None) -> dict:
        record = {"file_name": file_name, "image_id": file_name, "height": int(image.shape[0]),
                  "width": int(image.shape[1]), "image": image}
        if self.dataset_name:
            record["dataset_name"] = self.dataset_name
        record.update(extra or {})
        return record

    @torch.no_grad()
    def _run(self, records: list[dict], batch_size: int) -> list[Instances]:
        results = []
        for start in range(0, len(records), batch_size):
            inputs = [self.mapper(r) for r in records[start:start + batch_size]]
            results.extend(out["instances"].to("cpu") for out in self.model(inputs))
        return results

    def __call__(self, images: Sequence[np.ndarray], file_names: Sequence[str], batch_size: int = 1,
                 extra: dict | None = None) -> list[Instances]:
        """Instances (on the CPU, in each image's own size) for raw ``(H, W, C)`` images."""
        results: list[Instances | None] = [None] * len(images)
        whole = []
        for index, image in enumerate(images):
            height, width = image.shape[:2]
            if self.tile_size and max(height, width) > self.tile_size:
                results[index] = self._tiled(image, file_names[index], batch_size, extra)
            else:
                whole.append(index)
        outputs = self._run([self._record(images[i], file_names[i], extra) for i in whole], batch_size)
        for index, instances in zip(whole, outputs):
            results[index] = instances
        return results  # type: ignore[return-value]

    def _tiled(self, image: np.ndarray, name: str, batch_size: int, extra: dict | None) -> Instances:
        height, width = image.shape[:2]
        tile = self.tile_size
        offsets = tile_grid(height, width, tile, self.tile_overlap)
        records = [self._record(np.ascontiguousarray(image[t:t + tile, l:l + tile]), name, extra) for t, l in offsets]
        outputs = self._run(records, batch_size)
        return merge_tiled_instances([(inst, t, l) for inst, (t, l) in zip(outputs, offsets)], (height, width),
                                     mask_threshold=self.cfg.TEST.MASK_THRESHOLD)


def check_tiling(tile_size: int, tile_overlap: float) -> None:
    """Refuse tile settings that would give wrong results or run for hours."""
    if tile_size != 0 and tile_size < MIN_TILE_SIZE:
        raise DeepcensInputError(None, f"--tile-size must be 0 (whole images) or >= {MIN_TILE_SIZE}, got {tile_size}")
    if not 0.0 <= tile_overlap <= 0.75:
        raise DeepcensInputError(None, f"--tile-overlap must be in [0, 0.75], got {tile_overlap}")
