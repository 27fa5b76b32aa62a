"""XB-Net on 3D stacks: slices predicted, re-stacked, 3D connected components of "cell" (paper Sec. 5.5)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import tifffile
import torch

from deepcens.engine.setup import load_config
from deepcens.modeling.meta_arch.dense import DenseSegmentor
from deepcens.predict import predict

CONFIG = str(Path(__file__).resolve().parents[1] / "configs" / "xbnet" / "Base-XBNet.yaml")


def _stack() -> np.ndarray:
    """Five 32x40 slices: a ball crossing all of them and a blob on the last slice only."""
    stack = np.full((5, 32, 40), 100, np.uint16)
    stack[:, 8:16, 8:16] = 1000
    stack[4, 20:28, 26:34] = 1000
    return stack


def _tertiary_from_intensity(self, image: torch.Tensor) -> torch.Tensor:
    """Stand-in network output: cell where the (normalised) slice is bright, background elsewhere."""
    cell = (image[0] > 0.5).float()
    return torch.stack([1 - cell, torch.zeros_like(cell), cell])


def _predict(tmp_path, monkeypatch, volume_decoding: bool) -> np.ndarray:
    monkeypatch.setattr(DenseSegmentor, "predict_probabilities", _tertiary_from_intensity)
    tifffile.imwrite(tmp_path / "volume.tif", _stack())
    cfg = load_config(CONFIG, ["MODEL.DEVICE", "cpu", "MODEL.DENSE.XBNET.BASE_CHANNELS", "8",
                               "MODEL.DENSE.MIN_OBJECT_SIZE", "0", "MODEL.DENSE.MAX_HOLE_SIZE", "0",
                               "MODEL.DENSE.VOLUME_DECODING", str(volume_decoding)])
    out = tmp_path / f"out_{volume_decoding}"
    predict(cfg, [str(tmp_path / "volume.tif")], str(out), progress=False, allow_random_weights=True)
    return tifffile.imread(out / "labels" / "volume.tif")


def test_volume_decoding_gives_3d_objects(tmp_path, monkeypatch):
    labels = _predict(tmp_path, monkeypatch, volume_decoding=True)
    assert labels.shape == (5, 32, 40) and labels.dtype == np.uint16
    ball = labels[:, 12, 12]
    assert ball[0] > 0 and np.all(ball == ball[0])  # one id through the five slices
    assert len(np.unique(labels[labels > 0])) == 2  # the ball and the last slice's blob


def test_without_volume_decoding_every_slice_is_labelled_alone(tmp_path, monkeypatch):
    labels = _predict(tmp_path, monkeypatch, volume_decoding=False)
    assert labels.shape == (5, 32, 40)
    assert [int(labels[z, 12, 12]) for z in range(5)] == [1] * 5  # each page numbers its own objects
    assert labels[4].max() == 2 and labels[0].max() == 1
