"""Out-of-tree extensions named in ``$DEEPCENS_PLUGINS`` (comma-separated module names).

Each module is imported (its registrations happen: networks, decoders, backbones, mappers,
...) and, when it has one, its ``add_config(cfg)`` declares its config keys. This runs
inside :func:`deepcens.config.add_deepcens_config`, i.e. in every process that builds a
config, ranks started by ``launch`` included (they inherit the environment). See
docs/extending.md and examples/deepcens_plugin.
"""
from __future__ import annotations

import importlib
import os
from types import ModuleType

from deepcens.errors import DeepcensInputError

PLUGINS_ENV = "DEEPCENS_PLUGINS"


def plugin_names() -> list[str]:
    """Module names listed in ``$DEEPCENS_PLUGINS``."""
    return [name.strip() for name in os.environ.get(PLUGINS_ENV, "").split(",") if name.strip()]


def import_plugins() -> list[ModuleType]:
    """Import every listed plugin module (cached by Python after the first time)."""
    modules = []
    for name in plugin_names():
        try:
            modules.append(importlib.import_module(name))
        except ImportError as exc:
            raise DeepcensInputError(None, f"{PLUGINS_ENV}: cannot import plugin {name!r} ({exc}); "
                                           "install it or put its folder on PYTHONPATH") from None
    return modules


def add_plugin_configs(cfg) -> None:
    """Import the plugins and let each declare its config keys (``add_config(cfg)``)."""
    for module in import_plugins():
        add_config = getattr(module, "add_config", None)
        if callable(add_config):
            add_config(cfg)
