"""Datasets, pixel IO, mappers."""
from deepcens.data import io, mappers  # noqa: F401
