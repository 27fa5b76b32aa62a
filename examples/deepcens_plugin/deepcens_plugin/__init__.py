"""An out-of-tree deepcens extension (see docs/extending.md in deepcens).

Importing the package registers, under names a config can use:

* ``MODEL.DENSE.NETWORK: "PluginMiniUNet"``: a small U-Net (``network.py``);
* ``MODEL.DENSE.DECODER: "plugin_distance_watershed"``: foreground -> distance-transform
  watershed instances (``decoder.py``);
* ``MODEL.BACKBONE.NAME: "build_plugin_fpn_backbone"``: a plain conv trunk with an FPN (``backbone.py``).

deepcens imports it in every process (launched ranks included) when its name is in the
``DEEPCENS_PLUGINS`` environment variable, and calls :func:`add_config` so that the keys
under ``MODEL.PLUGIN`` exist before a config file is merged.
"""
from detectron2.config import CfgNode as CN

from deepcens_plugin import backbone, decoder, network  # noqa: F401  (registrations)


def add_config(cfg: CN) -> None:
    """Declare the plugin's config keys with defaults (called by deepcens' add_deepcens_config)."""
    cfg.MODEL.PLUGIN = CN()
    cfg.MODEL.PLUGIN.WIDTH = 16  # maps at the first level of PluginMiniUNet / the plugin trunk, doubling per level
    cfg.MODEL.PLUGIN.LEVELS = 3  # stride-2 levels of PluginMiniUNet
    cfg.MODEL.PLUGIN.MIN_DISTANCE = 3  # pixels between watershed seeds of plugin_distance_watershed
