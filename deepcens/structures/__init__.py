"""Data structures that travel inside detectron2 ``Instances``."""
from deepcens.structures.masks import CroppedMasks  # noqa: F401
