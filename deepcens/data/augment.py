"""Intensity normalisation and appearance / scale augmentation for the dense (U-Net) mappers.

A model trained on one time-lapse meets other microscopes, stains and exposure times. Two
things make that work in practice, and both are configurable (``INPUT.DENSE.*``):

- **normalisation** (``NORMALIZATION``): ``sequence_minmax`` maps the sequence's raw
  (min, max) to [0, 1] (the XB-Net paper, Sec. 3.2); ``frame_percentile`` maps each frame's
  ``INPUT.INTENSITY_PERCENTILES`` (default 1 / 99.8) to [0, 1], so that a few bright pixels
  or a different bit depth do not squeeze the cells into a narrow band. It is applied at
  training and at prediction alike (the mapper does both);
- **augmentation** (``AUGMENT.*``, training only): random gamma, contrast, brightness, additive
  Gaussian noise and Gaussian blur on the normalised image, and a random scale of image and
  target before cropping, so the network does not learn one data set's exposure and cell size.
"""
from __future__ import annotations

import cv2
import numpy as np
from detectron2.config import CfgNode

NORMALIZATIONS = ("sequence_minmax", "frame_percentile")


def percentile_normalize(image: np.ndarray, low: float = 1.0, high: float = 99.8) -> np.ndarray:
    """``image`` with its ``low`` / ``high`` percentiles mapped to 0 / 1 (float32, not clipped)."""
    lo, hi = np.percentile(image, (low, high))
    return ((image - lo) / max(float(hi - lo), 1e-6)).astype(np.float32, copy=False)


class DenseAugmentation:
    """Random appearance and scale changes of a training image and its target (see the module docstring)."""

    def __init__(self, gamma: tuple[float, float] = (1.0, 1.0), contrast: tuple[float, float] = (1.0, 1.0),
                 brightness: float = 0.0, noise_std: float = 0.0, blur_sigma: float = 0.0,
                 scale: tuple[float, float] = (1.0, 1.0), probability: float = 0.0):
        for name, (low, high) in (("GAMMA", gamma), ("CONTRAST", contrast), ("SCALE", scale)):
            if not 0 < low <= high:
                raise ValueError(f"INPUT.DENSE.AUGMENT.{name} must be (low, high) with 0 < low <= high, got {(low, high)}")
        if not 0.0 <= probability <= 1.0:
            raise ValueError(f"INPUT.DENSE.AUGMENT.PROBABILITY must be in [0, 1], got {probability}")
        if brightness < 0 or noise_std < 0 or blur_sigma < 0:
            raise ValueError("INPUT.DENSE.AUGMENT.BRIGHTNESS / NOISE_STD / BLUR_SIGMA must be >= 0")
        self.gamma, self.contrast, self.scale = tuple(gamma), tuple(contrast), tuple(scale)
        self.brightness, self.noise_std, self.blur_sigma = float(brightness), float(noise_std), float(blur_sigma)
        self.probability = float(probability)

    @classmethod
    def from_config(cls, cfg: CfgNode) -> "DenseAugmentation":
        a = cfg.INPUT.DENSE.AUGMENT
        return cls(tuple(a.GAMMA), tuple(a.CONTRAST), a.BRIGHTNESS, a.NOISE_STD, a.BLUR_SIGMA, tuple(a.SCALE),
                   a.PROBABILITY)

    @property
    def active(self) -> bool:
        return self.probability > 0

    def rescale(self, image: np.ndarray, target: np.ndarray, rng) -> tuple[np.ndarray, np.ndarray]:
        """Image (bilinear) and target (nearest) resized by one random factor of ``scale``."""
        if self.scale == (1.0, 1.0) or rng.rand() >= self.probability:
            return image, target
        factor = float(np.exp(rng.uniform(np.log(self.scale[0]), np.log(self.scale[1]))))
        height, width = (max(int(round(s * factor)), 1) for s in image.shape[:2])
        resized = cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)
        if resized.ndim == 2:
            resized = resized[:, :, None]
        target = cv2.resize(target, (width, height), interpolation=cv2.INTER_NEAREST)
        return resized, target

    def appearance(self, image: np.ndarray, rng) -> np.ndarray:
        """Gamma, contrast, brightness, blur and noise, each drawn with ``probability``; clipped to [0, 1]."""
        image = np.clip(image, 0.0, 1.0).astype(np.float32, copy=True)
        if self.gamma != (1.0, 1.0) and rng.rand() < self.probability:
            image = image ** np.float32(np.exp(rng.uniform(np.log(self.gamma[0]), np.log(self.gamma[1]))))
        if self.contrast != (1.0, 1.0) and rng.rand() < self.probability:
            mean = image.mean()
            image = (image - mean) * np.float32(rng.uniform(*self.contrast)) + mean
        if self.brightness > 0 and rng.rand() < self.probability:
            image = image + np.float32(rng.uniform(-self.brightness, self.brightness))
        if self.blur_sigma > 0 and rng.rand() < self.probability:
            sigma = float(rng.uniform(0.0, self.blur_sigma))
            if sigma > 0.1:
                blurred = cv2.GaussianBlur(image, (0, 0), sigma)
                image = blurred.reshape(image.shape)
        if self.noise_std > 0 and rng.rand() < self.probability:
            std = float(rng.uniform(0.0, self.noise_std))
            image = image + rng.normal(0.0, std, image.shape).astype(np.float32)
        return np.clip(image, 0.0, 1.0)
