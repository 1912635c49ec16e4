"""``dataset=parquet``: any Parquet impression log described by a column schema.

Registers :func:`mtl_train.data.parquet.load` with its typed config :class:`ParquetData` (the
column schema's fields come from :class:`~mtl_train.data.spec.ParquetSchema`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

from omegaconf import DictConfig

from mtl_train.data.parquet import load
from mtl_train.data.spec import ParquetSchema, normalise_parquet
from mtl_train.registry import param, register


@dataclass
class ParquetData(ParquetSchema):
    name: str = "parquet"
    train_path: Optional[str] = param(None, "required: file, directory or glob", path=True)
    val_path: Optional[str] = param(None, "null: carved from the train files by a seeded row hash (split)", path=True)
    test_path: Optional[str] = param(None, "null: carved from the train files by a seeded row hash (split)", path=True)
    split: List[float] = param(doc="train/val/test fractions for the splits without a path",
                               factory=lambda: [0.8, 0.1, 0.1])
    split_seed: Optional[int] = param(None, "null: 0")
    schema_file: Optional[str] = param(None, "a YAML file with categorical, numeric, sequences, tasks", path=True)
    min_count: int = param(1, "values seen fewer times in train map to the out-of-vocabulary id", positive=True)
    mode: str = param("auto", "auto (in memory while the splits fit memory_budget_mb), memory, stream",
                      choices=("auto", "memory", "stream"))
    memory_budget_mb: Optional[int] = param(None, "null: a quarter of physical memory (or of the lowest cgroup limit)",
                                            positive=True)
    shuffle_buffer: int = param(262144, "streaming: rows mixed across row groups", positive=True)
    num_workers: Optional[int] = param(None, "streaming: background reader threads (null: auto, see "
                                       "data.stream.reader_threads)", non_negative=True)
    cache_dir: Optional[str] = param(None, "null: .mtl_cache next to the data (or ~/.cache/mtl-train)", path=True)
    progress: bool = param(True, "progress bars of the prepare step")

    @staticmethod
    def normalise(cfg: DictConfig) -> DictConfig:
        """The short forms of the column lists (``[user_id]`` for ``[{name: user_id}]``) expanded."""
        return normalise_parquet(cfg)


register("dataset", "parquet", ParquetData)(load)
