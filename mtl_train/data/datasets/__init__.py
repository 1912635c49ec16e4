"""The datasets: each module of this package registers its loader, a function
``(cfg, seed) -> DatasetBundle``, with its typed config (``@register("dataset", name, Config)``,
see :mod:`mtl_train.registry`)."""
from __future__ import annotations

import importlib
import logging

from mtl_train import registry
from mtl_train.data.schema import DatasetBundle
from mtl_train.errors import DataError

log = logging.getLogger(__name__)


def require_rows(bundle: DatasetBundle, name: str) -> None:
    """Raises DataError, one line naming the split and where its rows come from
    (``bundle.info["origins"]``, else the dataset ``name``), when a split has no rows: an empty
    val split would select no best.pt and an empty test split would score nothing, silently."""
    for split, table in bundle.splits():
        if len(table) == 0:
            origin = bundle.info.get("origins", {}).get(split) or f"in dataset {name}"
            raise DataError(f"{split} split: no rows {origin}")


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
        DataError: a split without rows (see :func:`require_rows`), and the loader's own.
    """
    bundle = registry.get("dataset", cfg.name).target(cfg, seed)
    require_rows(bundle, cfg.name)
    bundle.info["funnel_violations"] = funnel_violations(bundle)
    return bundle


def read_file(cfg, path: str):
    """Read one data file in the format of dataset ``cfg.name``, as raw columns
    (``pyarrow.Table``) ready for the checkpoint's :class:`~mtl_train.data.encode.Encoder`.

    A dataset module may define ``read_file(cfg, path)`` (census: the raw CSV with its
    derived label columns) or ``convert_file(path)`` (the CSV conversion its training uses,
    called on the checked path); otherwise the file is read as Parquet.

    Raises:
        DataError: missing, unreadable or corrupt file (naming it); a file without rows
            (``infer.input``: nothing to score).
    """
    raw = _read_file(cfg, path)
    if raw.num_rows == 0:
        raise DataError(f"infer.input: no rows in {path} (nothing to score)")
    return raw


def _read_file(cfg, path: str):
    from mtl_train.data.files import check_readable, read_parquet

    entry = registry.options("dataset").get(cfg.name)
    if entry is not None:  # the module that defines the loader (parquet: mtl_train.data.parquet)
        module = importlib.import_module(entry.target.__module__)
        if hasattr(module, "read_file"):
            return module.read_file(cfg, path)
        if hasattr(module, "convert_file"):
            return module.convert_file(check_readable(path))
    return read_parquet(path)
