"""The datasets: each module of this package registers its loader, a function
``(cfg, seed) -> DatasetBundle``, with its typed config (``@register("dataset", name, Config)``,
see :mod:`mtl_train.registry`)."""
from __future__ import annotations

import importlib
import logging

from mtl_train import registry
from mtl_train.data.schema import DatasetBundle

log = logging.getLogger(__name__)


def funnel_violations(bundle: DatasetBundle) -> dict[str, dict[str, int]]:
    """Rows where a task is positive (label 1, or > 0 for a regression task) while its parent's
    label is 0, per split and child task: {split: {task: count}} for every task with a parent.
    Each nonzero count is logged as a warning. Such rows are kept; graphs that need a
    consistent funnel (ESMM) use label AND parent label."""
    schema = bundle.schema
    out: dict[str, dict[str, int]] = {}
    for split, table in bundle.splits():
        counts = table.funnel_violations(schema.tasks)
        for task in schema.tasks:
            n = counts.get(task.name)
            if n:
                log.warning("%s split: %d rows have %s > 0 but parent %s = 0 (kept; esmm uses %s AND %s)",
                            split, n, task.name, task.parent, task.name, task.parent)
        out[split] = counts
    return out


def load_dataset(cfg, seed: int) -> DatasetBundle:
    """Build the dataset registered as ``cfg.name`` with its config group ``cfg``.

    Raises:
        ConfigError: unknown dataset name.
    """
    bundle = registry.get("dataset", cfg.name).target(cfg, seed)
    bundle.info["funnel_violations"] = funnel_violations(bundle)
    return bundle


def read_file(cfg, path: str):
    """Read one data file in the format of dataset ``cfg.name``, as raw columns
    (``pyarrow.Table``) ready for the checkpoint's :class:`~mtl_train.data.encode.Encoder`.

    A dataset module may define ``read_file(cfg, path)`` (census: the raw CSV with its
    derived label columns) or ``convert_file(path)`` (the CSV conversion its training uses,
    called on the checked path); otherwise the file is read as Parquet.

    Raises:
        DataError: missing, unreadable or corrupt file (naming it).
    """
    from mtl_train.data.files import check_readable, read_parquet

    entry = registry.options("dataset").get(cfg.name)
    if entry is not None:  # the module that defines the loader (parquet: mtl_train.data.parquet)
        module = importlib.import_module(entry.target.__module__)
        if hasattr(module, "read_file"):
            return module.read_file(cfg, path)
        if hasattr(module, "convert_file"):
            return module.convert_file(check_readable(path))
    return read_parquet(path)
