"""Datasets, pixel IO, mappers."""
from deepcens.data import io, mappers  # noqa: F401
from deepcens.data import evican  # noqa: F401  (registers evican_* / synthetic_evican_* datasets)
from deepcens.data import ctc, targets  # noqa: F401  (registers ctc_* datasets, TARGET_REGISTRY)
from deepcens.data import dense_mapper  # noqa: F401  (registers DenseTargetMapper)
from deepcens.data import cellseg  # noqa: F401,E402  (CellSegMapper, interior_boundary target)
