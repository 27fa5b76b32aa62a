"""Adapters: every method's raw output becomes detectron2 ``Instances`` here (one place)."""
from deepcens.postprocess.instances import (  # noqa: F401
    instances_to_label_image,
    label_image_to_annotations,
    label_image_to_instances,
)
from deepcens.postprocess import decoders  # noqa: F401  (DECODER_REGISTRY)
from deepcens.postprocess import watershed  # noqa: F401  (marker_watershed decoder)
from deepcens.postprocess import ecs_decoders  # noqa: F401  (EfficientCellSeg decoders)
from deepcens.postprocess import interior_boundary  # noqa: F401,E402  (DECODER_REGISTRY: interior_boundary)
