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


def read_file(cfg, path: str):
    """Read one data file in the format of dataset ``cfg.name``, as raw columns
    (``pyarrow.Table``) ready for the checkpoint's :class:`~mtl_train.data.encode.Encoders`.

    A dataset module may define ``read_file(cfg, path)`` (census: the raw CSV with its
    derived label columns); otherwise the file is read as Parquet.

    Raises:
        DataError: missing, unreadable or corrupt file (naming it).
    """
    from mtl_train.data.files import read_parquet

    if cfg.name in LOADERS:
        module = importlib.import_module(LOADERS[cfg.name].split(":")[0])
        if hasattr(module, "read_file"):
            return module.read_file(cfg, path)
    return read_parquet(path)
