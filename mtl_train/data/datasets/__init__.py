"""Dataset registry: ``dataset.name`` -> loader returning a :class:`~mtl_train.data.schema.DatasetBundle`."""
from __future__ import annotations

import importlib

from mtl_train.data.schema import DatasetBundle
from mtl_train.errors import ConfigError

# name -> "module:function"; modules are imported on use so that one dataset's
# dependencies never slow down another's start.
LOADERS = {
    "synthetic": "mtl_train.data.datasets.synthetic:generate",
    "census": "mtl_train.data.datasets.census:load",
}


def load_dataset(cfg, seed: int) -> DatasetBundle:
    """Build the dataset named by ``cfg.name`` with its config group ``cfg``.

    Raises:
        ConfigError: unknown dataset name.
    """
    if cfg.name not in LOADERS:
        raise ConfigError(f"dataset.name: unknown dataset '{cfg.name}' (choose from {sorted(LOADERS)})")
    module, fn = LOADERS[cfg.name].split(":")
    return getattr(importlib.import_module(module), fn)(cfg, seed)
