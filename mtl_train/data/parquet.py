"""``dataset=parquet``: any Parquet file, directory or glob, described by a YAML schema.

The schema (in the dataset config, or in a separate YAML file named by ``schema_file``)
declares:

- ``categorical``: id columns (integer or string), each with a vocabulary of the training
  values seen at least ``min_count`` times, or hashed into ``hash_buckets`` buckets;
- ``numeric``: number columns with a normalisation (``standard``, ``minmax``, ``log``,
  ``none``) and a null fill (``mean``, ``zero`` or a number, applied before normalising);
  infinite values count as nulls;
- ``sequences``: list columns of ids (e.g. the last 20 item ids), vocabulary or hash like
  categorical columns, kept up to ``max_len`` ids and pooled by ``mean`` or ``sum``;
- ``tasks``: one label column per task with its type (binary/regression) and parent; an
  optional ``weight`` column (per-row weights >= 0 of the task's loss and weighted metrics) and,
  for a regression task, a ``transform`` of its label (``none``, ``standard``, ``log1p``) fitted
  on train (see :func:`fitted_tasks`).

Ids: 0 = null (and padding of id lists), 1 = out of vocabulary, known values 2..; hashed
columns use ids 2..hash_buckets+1. Integer ids never pass through floats. Null labels are
NaN (masked per task), never 0.

The **prepare step** (:func:`mtl_train.data.prepare.prepare`) reads the training rows once, by record batch with a
progress bar, to build the vocabularies and numeric statistics (training split only), then
the val/test rows to count their nulls and out-of-vocabulary ids. Its outputs are cached
(:mod:`mtl_train.data.cache`) under a key of the files (path, size, mtime) and of everything
in the config that shapes them, so a second run reuses them and any change rebuilds them.

Splits: ``train_path`` / ``val_path`` / ``test_path``; a split without a path is carved out
of the train files by a seeded hash of (file name, row number) with the fractions
``split`` (so the assignment of a row never depends on the order files are read in).

Reading: each split is held in memory as a :class:`~mtl_train.data.schema.Table` or
streamed (:class:`~mtl_train.data.stream.StreamSplit`), see ``mode``.

The named datasets (census, hillstrom, aliccp, aliexpress) take the same path: each converts
its files to Parquet, states its column schema and split assignment, and calls
:func:`open_dataset`.
"""
from __future__ import annotations

import logging
from pathlib import Path

from mtl_train.data import cache
from mtl_train.data.encode import Encoder
from mtl_train.data.prepare import prepare
from mtl_train.data.schema import DatasetBundle, DenseFeature, FeatureSchema, SequenceFeature, SparseFeature, Task
from mtl_train.data.sources import SPLITS, SplitSource, make_sources
from mtl_train.data.spec import ParquetSchema, load_schema
from mtl_train.system import memory_budget

log = logging.getLogger(__name__)

SCALE_RANGE = (0.01, 100.0)
"""A regression label whose training scale, max(std, |mean|), falls outside this range gets a
warning when its task sets no ``transform``: the towers' outputs start near 0 with unit-scale
weights, so a squared error on labels of 1e8 (or 1e-4) trains to a poor fit (issue 17: a
target reaching 1e8 trained to r2 = -0.015; the log of tests/e2e/test_targets_runs.py, a target
reaching 3e8, to a test r2 of -3.38 without a transform and 0.991 with ``standard``)."""


def fitted_tasks(spec: ParquetSchema, label_stats: dict[str, dict]) -> list[Task]:
    """The schema's tasks with their weight column and label transform, fitted on the training
    labels' statistics ``label_stats`` ({task: {mean, std, ...}}, the prepare step's): for
    ``standard``, target_mean and target_std (std 1 for a constant label). Logs a warning for
    each regression task without a transform whose label scale is outside :data:`SCALE_RANGE`."""
    tasks = []
    for t in spec.tasks:
        st = label_stats.get(t.name)
        if t.type == "regression" and st is not None and t.transform == "none":
            scale = max(abs(st["mean"]), st["std"])
            if scale > 0 and not SCALE_RANGE[0] <= scale <= SCALE_RANGE[1]:
                log.warning("dataset: regression task '%s' (label column '%s') has a training mean of %.4g and a "
                            "std of %.4g, far from 1 (max(|mean|, std) outside [%g, %g]); its loss trains poorly on "
                            "that scale: set transform: standard (or log1p for labels >= 0) on the task",
                            t.name, t.label, st["mean"], st["std"], *SCALE_RANGE)
        mean, std = (float(st["mean"]), float(st["std"])) if t.transform == "standard" else (0.0, 1.0)
        tasks.append(Task(t.name, t.label, t.type, t.parent, weight=t.weight, weighted_metrics=t.weighted_metrics,
                          transform=t.transform, target_mean=mean, target_std=std))
    return tasks


def feature_schema(spec: ParquetSchema, sizes: dict[str, int], encoder: Encoder,
                   label_stats: dict[str, dict] | None = None) -> FeatureSchema:
    """The model-facing schema of a prepared dataset: features with their embedding rows
    (``sizes``), tasks (with their label transforms fitted on ``label_stats``, see
    :func:`fitted_tasks`), and the encoder that checkpoints keep."""
    return FeatureSchema(
        sparse=[SparseFeature(c.name, sizes[c.name]) for c in spec.categorical],
        dense=[DenseFeature(c.name) for c in spec.numeric],
        tasks=fitted_tasks(spec, label_stats or {}),
        sequence=[SequenceFeature(c.name, sizes[c.name], int(c.max_len), c.pooling) for c in spec.sequences],
        encoders=encoder,
    )


def _log_report(name: str, report: dict, modes: dict) -> None:
    for split, r in report.items():
        parts = [f"{kind.replace('_', ' ')}: " + ", ".join(f"{k}={v}" for k, v in r[kind].items() if v)
                 for kind in ("null_ids", "oov_ids", "null_numeric", "null_labels", "null_weights")
                 if any(r.get(kind, {}).values())]
        log.info("%s %s: %d rows (%s); %s", name, split, r["rows"], modes[split],
                 "; ".join(parts) if parts else "no null or out-of-vocabulary values")


def open_dataset(name: str, spec: ParquetSchema, sources: dict[str, SplitSource], folder: Path, key: dict, *,
                 min_count: int = 1, mode: str = "memory", budget_mb: int | None = None, stream=None,
                 progress: bool = False) -> DatasetBundle:
    """Prepare (or reuse) the vocabularies and statistics of ``sources`` and open each split in
    memory or streamed: the one path of every file-based dataset.

    Args:
        name: the dataset, in log lines and the prepare cache folder's name.
        spec: the column schema. sources: {split: SplitSource} for train, val and test.
        folder: where the prepare cache goes. key: options that shape the prepared outputs.
        min_count: vocabulary threshold of the id columns that set none.
        mode: ``memory``, ``stream`` or ``auto`` (smallest splits in memory while they fit
            ``budget_mb``, see :func:`mtl_train.system.memory_budget`).
        stream: the streaming options (``shuffle_buffer``, ``num_workers``) of streamed splits.

    Returns:
        The bundle; its info holds ``report`` (see :func:`mtl_train.data.prepare.prepare`),
        ``modes`` {split: memory|stream}, ``row_bytes`` and ``origins`` {split: where its rows
        come from, :attr:`~mtl_train.data.sources.SplitSource.origin`}; the caller adds ``protocol``.
    """
    from mtl_train.data.stream import StreamSplit, read_table

    prep, root = prepare(spec, sources, folder, key, min_count=min_count, progress=progress, prefix=name)
    enc = Encoder(spec, prep, root)
    schema = feature_schema(spec, prep["sizes"], enc, prep["label_stats"])
    rows, report = prep["rows"], prep["report"]
    row_bytes = 8 * (len(schema.sparse) + schema.seq_width) + 4 * (len(schema.dense) + len(schema.tasks))
    if enc.weighted:
        row_bytes += 4 * len(schema.tasks)
    budget, used, splits, modes = memory_budget(budget_mb), 0, {}, {}
    for split in sorted(sources, key=lambda s: rows[s]):  # smallest split first
        need = rows[split] * row_bytes
        in_memory = mode == "memory" or (mode == "auto" and used + need <= budget)
        if in_memory:
            used += need
            splits[split] = read_table(sources[split], enc, rows[split])
        else:
            splits[split] = StreamSplit(sources[split], enc, rows[split], stream, report[split])
        modes[split] = "memory" if in_memory else "stream"
    _log_report(name, report, modes)
    return DatasetBundle(schema, splits["train"], splits["val"], splits["test"],
                         {"report": report, "modes": modes, "row_bytes": row_bytes,
                          "origins": {s: src.origin for s, src in sources.items()}})


def load(cfg, seed: int) -> DatasetBundle:
    """Build the parquet dataset (see the module docstring).

    Raises:
        ConfigError: a bad schema or option. DataError: missing files/columns, bad labels.
    """
    spec = load_schema(cfg)
    sources = make_sources(cfg, spec.columns())
    # the prepare cache: next to the training files (the folder that holds them all), whatever
    # folders the val/test files are in; the key covers every file
    folder = cache.cache_root(sorted({u.file for u in sources["train"].units}), cfg.cache_dir)
    key = {"split": list(cfg.split), "split_seed": cfg.split_seed, "paths": {k: cfg[f"{k}_path"] for k in SPLITS}}
    bundle = open_dataset("parquet", spec, sources, folder, key, min_count=cfg.min_count, mode=cfg.mode,
                          budget_mb=cfg.memory_budget_mb, stream=cfg, progress=cfg.progress)
    bundle.info["protocol"] = (f"parquet train={cfg.train_path} val={cfg.val_path or 'carved'} "
                               f"test={cfg.test_path or 'carved'} (modes {bundle.info['modes']})")
    return bundle
