"""Meta-architectures registered in detectron2's ``META_ARCH_REGISTRY``."""
from deepcens.modeling.meta_arch.dense import DenseSegmentor  # noqa: F401  (registration)
from deepcens.modeling.meta_arch.rcnn import CompactMaskRCNN  # noqa: F401  (registration)
from deepcens.modeling.meta_arch.marker import MarkerSegmentor  # noqa: F401  (registration)
