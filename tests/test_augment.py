"""Normalisation and augmentation of the dense mapper, and the decoder's minimum score."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from detectron2.config import get_cfg

from deepcens.config import add_deepcens_config
from deepcens.data.augment import DenseAugmentation, percentile_normalize
from deepcens.data.dense_mapper import DenseTargetMapper
from deepcens.postprocess.decoders import decode_tertiary


def _cfg(**dense):
    cfg = get_cfg()
    add_deepcens_config(cfg)
    cfg.MODEL.DENSE.TARGET = "tertiary"
    for key, value in dense.items():
        node, _, leaf = key.rpartition(".")
        target = cfg.INPUT.DENSE
        for part in filter(None, node.split(".")):
            target = target[part]
        target[leaf] = value
    return cfg


def test_percentile_normalisation_is_the_same_for_any_linear_intensity_scale():
    rng = np.random.default_rng(0)
    frame = rng.gamma(2.0, 50.0, (64, 64)).astype(np.float32)
    a = percentile_normalize(frame, 1.0, 99.8)
    b = percentile_normalize(frame * 40.0 + 1000.0, 1.0, 99.8)  # 16-bit camera, another offset
    np.testing.assert_allclose(a, b, atol=1e-5)
    assert np.isclose(np.percentile(a, 1.0), 0.0, atol=1e-6) and np.isclose(np.percentile(a, 99.8), 1.0, atol=1e-5)


def test_mapper_applies_frame_percentile_at_training_and_prediction():
    rng = np.random.default_rng(1)
    image = (rng.random((40, 48)) * 60 + 20).astype(np.uint8)
    image[5, 5] = 255  # one hot pixel: min/max would squeeze everything else
    labels = np.zeros((40, 48), np.int32)
    labels[10:20, 10:20] = 1
    record = {"image": image, "height": 40, "width": 48, "file_name": "x.png", "intensity_range": (0, 255)}
    cfg = _cfg(NORMALIZATION="frame_percentile", CROP_SIZE=0, CONTEXT_PAD=0, FLIP=False, ROTATE_90=False)
    test_image = DenseTargetMapper(cfg, is_train=False)(dict(record))["image"][0].numpy()
    minmax = DenseTargetMapper(_cfg(), is_train=False)(dict(record))["image"][0].numpy()
    assert test_image.max() == 1.0 and np.median(test_image) > 2 * np.median(minmax)
    with pytest.raises(ValueError, match="NORMALIZATION"):
        DenseTargetMapper(_cfg(NORMALIZATION="zscore"), is_train=False)


def test_augmentation_keeps_image_and_target_aligned_and_in_range():
    augment = DenseAugmentation(gamma=(0.5, 2.0), contrast=(0.6, 1.4), brightness=0.1, noise_std=0.05,
                                blur_sigma=1.5, scale=(0.5, 2.0), probability=1.0)
    image = np.zeros((60, 60, 1), np.float32)
    image[20:40, 20:40] = 0.8
    target = (image[:, :, 0] > 0).astype(np.uint8) * 2
    rng = np.random.RandomState(3)
    scaled_image, scaled_target = augment.rescale(image, target, rng)
    assert scaled_image.shape[:2] == scaled_target.shape and scaled_image.shape[:2] != (60, 60)
    inside, outside = scaled_image[..., 0][scaled_target == 2], scaled_image[..., 0][scaled_target == 0]
    assert inside.mean() > 0.7 and outside.mean() < 0.05  # the object moved with the target
    out = augment.appearance(scaled_image, rng)
    assert out.shape == scaled_image.shape and 0.0 <= out.min() and out.max() <= 1.0
    assert not np.allclose(out, scaled_image)
    again = augment.appearance(scaled_image, np.random.RandomState(3))
    assert again.shape == out.shape  # seeded: reproducible draws
    assert DenseAugmentation().active is False
    with pytest.raises(ValueError, match="GAMMA"):
        DenseAugmentation(gamma=(2.0, 0.5))


def test_decoder_minimum_score_drops_faint_objects():
    probabilities = np.zeros((3, 32, 32), np.float32)
    probabilities[0] = 1.0
    probabilities[:, 4:12, 4:12] = np.array([0.05, 0.05, 0.9])[:, None, None]  # confident cell
    probabilities[:, 20:28, 20:28] = np.array([0.3, 0.15, 0.55])[:, None, None]  # faint structure
    assert len(decode_tertiary(probabilities)) == 2
    kept = decode_tertiary(probabilities, min_score=0.7)
    assert len(kept) == 1 and float(kept.scores[0]) == pytest.approx(0.9)
    box = kept.pred_boxes.tensor[0].tolist()
    assert box == [4.0, 4.0, 12.0, 12.0]
    assert torch.is_tensor(kept.scores)
