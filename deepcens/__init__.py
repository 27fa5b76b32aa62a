"""deepcens: cell and nucleus instance segmentation methods on detectron2.

Importing the package registers every builder (backbones, anchor generators,
meta-architectures, networks, decoders, mappers, datasets, evaluators) in detectron2's and
deepcens' registries, so configs find them by name.
"""
from deepcens.utils.console import quiet_third_party_noise

quiet_third_party_noise()  # before torch / detectron2 are imported below

from deepcens.config import add_deepcens_config  # noqa: E402
from deepcens import data, modeling, postprocess, evaluation, engine  # noqa: E402,F401  (registrations)

__all__ = ["add_deepcens_config"]
__version__ = "0.1.0"
