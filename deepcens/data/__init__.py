"""Datasets, pixel IO, mappers."""
from deepcens.data import io, mappers  # noqa: F401
from deepcens.data import evican  # noqa: F401  (registers evican_* / synthetic_evican_* datasets)
from deepcens.data import ctc, targets  # noqa: F401  (registers ctc_* datasets, TARGET_REGISTRY)
from deepcens.data import dense_mapper  # noqa: F401  (registers DenseTargetMapper)
from deepcens.data.user_datasets import register_coco_json, register_label_folder  # noqa: F401  (the user's own data)
from deepcens.data import nas_targets, pair_mapper  # noqa: F401  (nas_unet target, FramePairMapper)
from deepcens.data import pseudocolor, ecs_mapper, ecs_datasets  # noqa: F401  (EfficientCellSeg transforms, mapper, datasets)
from deepcens.data import cellseg  # noqa: F401,E402  (CellSegMapper, interior_boundary target)
