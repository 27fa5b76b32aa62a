"""2D DiNTS (Azzuni et al., NeurIPS 2022 Cell Segmentation challenge): MONAI's DiNTS in 2D.

Two networks in ``DENSE_NETWORK_REGISTRY``, both MONAI's ``DiNTS`` over a 2D topology
(``spatial_dims=2``) with ``MODEL.DENSE.DINTS.CHANNEL_MUL`` (the paper's "Mul") and
``NUM_BLOCKS`` (the paper's "Depth"):

- ``"DiNTSSearch"``: the search supernet, a ``TopologySearch`` whose architecture
  parameters (``log_alpha_a`` paths, ``log_alpha_c`` cell operations) the ``DiNTSSearch``
  training loop learns (:mod:`deepcens.engine.dints_search`);
- ``"DiNTS2D"``: the searched network, a ``TopologyInstance`` built from the architecture file
  the search decoded (``MODEL.DENSE.DINTS.ARCH_FILE``, JSON written by
  :func:`save_arch_code`), trained from random initialisation.

``MODEL.DENSE.DINTS.CELL`` picks the cell: ``"monai"`` is MONAI's 2D cell (skip connection,
3x3 conv); ``"six_ops"`` is :class:`SixOpCell`, the paper's six operations (Sec. 2.2).
"""
from __future__ import annotations

import os

import numpy as np
import torch
from detectron2.config import CfgNode
from monai.networks.layers.factories import Conv
from monai.networks.layers.utils import get_act_layer, get_norm_layer
from monai.networks.nets import DiNTS, TopologyInstance, TopologySearch
from monai.networks.nets.dints import Cell, MixedOp, _ActiConvNormBlockWithRAMCost, _IdentityWithRAMCost
from torch import nn

from deepcens.data.io import read_json
from deepcens.errors import DeepcensInputError
from deepcens.modeling.dense import DENSE_NETWORK_REGISTRY
from deepcens.modeling.dense.monai_nets import wrap_for_inference
from deepcens.utils.atomic import atomic_save_json


class DepthwiseActiConvNorm(nn.Sequential):
    """ReLU -> depthwise 3x3 conv -> norm, with MONAI's RAM estimate (activation, conv and
    norm maps: ``1 + 2 * in / out`` output sizes, as ``_ActiConvNormBlockWithRAMCost``)."""

    def __init__(self, channels: int, act_name, norm_name):
        super().__init__()
        self.add_module("acti", get_act_layer(name=act_name))
        self.add_module("conv", Conv[Conv.CONV, 2](channels, channels, kernel_size=3, stride=1, padding=1,
                                                    groups=channels, bias=False))
        self.add_module("norm", get_norm_layer(name=norm_name, spatial_dims=2, channels=channels))
        self.ram_cost = 1 + 2 * channels / channels


def _conv(kernel: int, act_name, norm_name):
    return lambda c: _ActiConvNormBlockWithRAMCost(c, c, kernel, padding=kernel // 2, spatial_dims=2,
                                                   act_name=act_name, norm_name=norm_name)


class SixOpCell(Cell):
    """MONAI's DiNTS ``Cell`` with the 2D DiNTS paper's six operations (Sec. 2.2, in its order).

    ``OPS2D`` (class attribute, read by MONAI's topology classes to size the search) lists
    skip connection, 1x1, 3x3, depthwise 3x3, 5x5 and 7x7 convolutions; every operation has a
    ``ram_cost`` (feature-map memory per output element, MONAI's estimate that the search's
    RAM term uses): 0 for the skip connection, 3 for each conv block (activation, conv and
    norm maps of equal size; the kernel changes weights, not feature maps).
    """

    OPS2D = {
        "skip_connect": lambda _c: _IdentityWithRAMCost(),
        "conv_1x1": lambda c: _ActiConvNormBlockWithRAMCost(c, c, 1, padding=0, spatial_dims=2),
        "conv_3x3": lambda c: _ActiConvNormBlockWithRAMCost(c, c, 3, padding=1, spatial_dims=2),
        "dwconv_3x3": lambda c: DepthwiseActiConvNorm(c, "RELU", ("INSTANCE", {"affine": True})),
        "conv_5x5": lambda c: _ActiConvNormBlockWithRAMCost(c, c, 5, padding=2, spatial_dims=2),
        "conv_7x7": lambda c: _ActiConvNormBlockWithRAMCost(c, c, 7, padding=3, spatial_dims=2),
    }

    def __init__(self, c_prev: int, c: int, rate: int, arch_code_c=None, spatial_dims: int = 2,
                 act_name="RELU", norm_name=("INSTANCE", {"affine": True})):
        if spatial_dims != 2:
            raise ValueError("SixOpCell is a 2D cell (spatial_dims=2)")
        super().__init__(c_prev, c, rate, arch_code_c, spatial_dims, act_name, norm_name)
        # Cell.__init__ rebuilds its own 2-op table per instance; replace it with the six ops,
        # built with this cell's activation and normalisation.
        self.OPS2D = {
            "skip_connect": lambda _c: _IdentityWithRAMCost(),
            "conv_1x1": _conv(1, act_name, norm_name),
            "conv_3x3": _conv(3, act_name, norm_name),
            "dwconv_3x3": lambda ch: DepthwiseActiConvNorm(ch, act_name, norm_name),
            "conv_5x5": _conv(5, act_name, norm_name),
            "conv_7x7": _conv(7, act_name, norm_name),
        }
        self.OPS = self.OPS2D
        self.op = MixedOp(c, self.OPS, arch_code_c)


CELLS = {"monai": Cell, "six_ops": SixOpCell}


def _cell(cfg: CfgNode):
    name = cfg.MODEL.DENSE.DINTS.CELL
    if name not in CELLS:
        raise ValueError(f"MODEL.DENSE.DINTS.CELL must be one of {sorted(CELLS)}, got {name!r}")
    return CELLS[name]


def _space_kwargs(cfg: CfgNode) -> dict:
    c = cfg.MODEL.DENSE.DINTS
    return {"channel_mul": float(c.CHANNEL_MUL), "cell": _cell(cfg), "num_blocks": int(c.NUM_BLOCKS),
            "num_depths": int(c.NUM_DEPTHS), "spatial_dims": 2, "use_downsample": bool(c.USE_DOWNSAMPLE),
            "device": cfg.MODEL.DEVICE}


def _size_divisibility(cfg: CfgNode) -> int:
    c = cfg.MODEL.DENSE.DINTS
    return 2 ** (int(c.NUM_DEPTHS) + int(bool(c.USE_DOWNSAMPLE)))


def _dints(cfg: CfgNode, space: nn.Module, node_a=None) -> DiNTS:
    d = cfg.MODEL.DENSE
    return DiNTS(dints_space=space, in_channels=int(d.INPUT_CHANNELS), num_classes=int(d.NUM_OUTPUTS),
                 spatial_dims=2, use_downsample=bool(d.DINTS.USE_DOWNSAMPLE), node_a=node_a)


@DENSE_NETWORK_REGISTRY.register()
def DiNTSSearch(cfg: CfgNode) -> nn.Module:
    """The DiNTS search supernet (MONAI ``TopologySearch`` in 2D)."""
    return wrap_for_inference(cfg, _dints(cfg, TopologySearch(**_space_kwargs(cfg))), _size_divisibility(cfg))


@DENSE_NETWORK_REGISTRY.register()
def DiNTS2D(cfg: CfgNode) -> nn.Module:
    """The searched network (MONAI ``TopologyInstance``) from ``MODEL.DENSE.DINTS.ARCH_FILE``."""
    path = cfg.MODEL.DENSE.DINTS.ARCH_FILE
    if not path:
        raise DeepcensInputError(None, "MODEL.DENSE.DINTS.ARCH_FILE is empty: give the architecture file the "
                                       "DiNTS search wrote (arch_code.json)")
    code = load_arch_code(path, cfg)
    space = TopologyInstance(arch_code=[code["arch_code_a"], code["arch_code_c"]], **_space_kwargs(cfg))
    network = _dints(cfg, space, node_a=torch.from_numpy(code["node_a"]))
    return wrap_for_inference(cfg, network, _size_divisibility(cfg))


def find_topology_search(model: nn.Module) -> TopologySearch:
    """The ``TopologySearch`` inside a (DDP-wrapped) model; a clear error when there is none."""
    for module in model.modules():
        if isinstance(module, TopologySearch):
            return module
    raise ValueError("the DiNTSSearch training loop needs MODEL.DENSE.NETWORK DiNTSSearch (no TopologySearch in the model)")


# ---- architecture files ----------------------------------------------------------------------
def save_arch_code(path: str, space: TopologySearch, cfg: CfgNode, iteration: int) -> dict:
    """Decode ``space`` with MONAI's ``decode`` (Dijkstra over path probabilities, arg-max
    cell operations) and write the JSON architecture file atomically; returns its content."""
    node_a, arch_code_a, arch_code_c, arch_code_a_max = space.decode()
    c = cfg.MODEL.DENSE.DINTS
    content = {
        "format": "deepcens-dints-arch/1",
        "cell": c.CELL, "operations": list(_cell(cfg).OPS2D),
        "channel_mul": float(c.CHANNEL_MUL), "num_blocks": int(c.NUM_BLOCKS), "num_depths": int(c.NUM_DEPTHS),
        "use_downsample": bool(c.USE_DOWNSAMPLE), "iteration": int(iteration),
        "node_a": np.asarray(node_a).astype(int).tolist(),
        "arch_code_a": np.asarray(arch_code_a).astype(int).tolist(),
        "arch_code_a_max": np.asarray(arch_code_a_max).astype(int).tolist(),
        "arch_code_c": np.asarray(arch_code_c).astype(int).tolist(),
    }
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    atomic_save_json(path, content, indent=1)
    return content


def load_arch_code(path: str, cfg: CfgNode) -> dict:
    """Read an architecture file and check it against the config (cell, blocks, depths)."""
    content = read_json(path)
    c = cfg.MODEL.DENSE.DINTS
    if not isinstance(content, dict) or content.get("format") != "deepcens-dints-arch/1":
        raise DeepcensInputError(path, "not a DiNTS architecture file (format deepcens-dints-arch/1)")
    expected = {"cell": c.CELL, "num_blocks": int(c.NUM_BLOCKS), "num_depths": int(c.NUM_DEPTHS),
                "use_downsample": bool(c.USE_DOWNSAMPLE)}
    for key, value in expected.items():
        if content.get(key) != value:
            raise DeepcensInputError(path, f"searched with {key}={content.get(key)!r}, the config asks for {value!r}")
    num_paths = 3 * int(c.NUM_DEPTHS) - 2
    try:
        node_a = np.asarray(content["node_a"], dtype=np.int64)
        arch_code_a = np.asarray(content["arch_code_a"], dtype=np.float32)
        arch_code_c = np.asarray(content["arch_code_c"], dtype=np.int64)
    except (KeyError, ValueError, TypeError) as exc:
        raise DeepcensInputError(path, f"malformed architecture codes ({exc})") from None
    blocks = int(c.NUM_BLOCKS)
    shapes = {"node_a": (node_a.shape, (blocks + 1, int(c.NUM_DEPTHS))),
              "arch_code_a": (arch_code_a.shape, (blocks, num_paths)),
              "arch_code_c": (arch_code_c.shape, (blocks, num_paths))}
    for key, (got, want) in shapes.items():
        if tuple(got) != want:
            raise DeepcensInputError(path, f"{key} has shape {tuple(got)}, expected {want}")
    if arch_code_c.size and (arch_code_c.min() < 0 or arch_code_c.max() >= len(_cell(cfg).OPS2D)):
        raise DeepcensInputError(path, f"arch_code_c names operations outside 0..{len(_cell(cfg).OPS2D) - 1}")
    return {"node_a": node_a, "arch_code_a": arch_code_a, "arch_code_c": arch_code_c}
