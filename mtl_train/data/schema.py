"""The feature schema and the splits that every dataset produces.

A dataset is turned once into a :class:`FeatureSchema` (features with their vocabulary
sizes, tasks with label type and funnel parent) plus three :class:`Split` objects: an
in-memory :class:`Table` or a streamed split (:class:`mtl_train.data.stream.StreamSplit`).
Nothing downstream reads raw columns by name except through the schema.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Iterable

import torch

from mtl_train.data.hashing import NULL_ID, NUM_RESERVED_IDS, OOV_ID  # noqa: F401  (defined torch-free, for serving)
from mtl_train.errors import ConfigError

TASK_TYPES = ("binary", "regression")


@dataclass(frozen=True)
class SparseFeature:
    """A categorical id column.

    Attributes:
        name: column name.
        vocab_size: number of embedding rows, reserved ids (null=0, oov=1) included.
    """

    name: str
    vocab_size: int


@dataclass(frozen=True)
class SequenceFeature:
    """A multi-valued id column (a list of ids per row, e.g. the last 20 item ids), pooled
    into one embedding.

    In a :class:`Table` and in batches, the lists of all sequence features sit side by side
    in the ``seq`` block, feature k taking ``max_len`` consecutive columns; a list longer
    than ``max_len`` keeps its first ``max_len`` ids; shorter lists are padded with id 0.
    Id 0 (null, padding) takes no part in pooling, id 1 is out-of-vocabulary.

    Attributes:
        name: column name.
        vocab_size: number of embedding rows, reserved ids (null=0, oov=1) included.
        max_len: ids kept per row.
        pooling: ``mean`` (average of the non-null ids' vectors; zero vector for an empty
            list) or ``sum``.
    """

    name: str
    vocab_size: int
    max_len: int
    pooling: str = "mean"


POOLINGS = ("mean", "sum")


@dataclass(frozen=True)
class DenseFeature:
    """A numeric column, already normalised (for example standardised with training statistics)."""

    name: str


@dataclass(frozen=True)
class Task:
    """One prediction target.

    Attributes:
        name: task name used in metrics, TensorBoard tags and configs (``click``, ``income``).
        label: the label column in the data.
        type: ``binary`` (BCE, reported as auc/logloss) or ``regression`` (MSE, reported as mse/r2).
        parent: name of the task that must be positive for this one to happen (funnel order,
            e.g. ``purchase`` has parent ``click``), or None.
        weight: the column of per-row weights of this task's loss (``batch["weights"]``), or None.
        weighted_metrics: with ``weight``, report weighted metrics beside the unweighted ones.
        transform: regression label transform the loss sees: ``none``, ``standard``
            ((y - target_mean) / target_std) or ``log1p``; inverted in predictions and metrics.
        target_mean, target_std: the training label statistics of ``standard`` (0 and 1 otherwise).
    """

    name: str
    label: str
    type: str = "binary"
    parent: str | None = None
    weight: str | None = None
    weighted_metrics: bool = True
    transform: str = "none"
    target_mean: float = 0.0
    target_std: float = 1.0


@dataclass
class FeatureSchema:
    """Features and tasks of a dataset, in the column order of the split tensors.

    Raises:
        ConfigError: on duplicate names, unknown task types or parents, a parent declared after
            its child (tasks are in funnel order), or a label column that is also a feature
            (label leakage).
    """

    sparse: list[SparseFeature]
    dense: list[DenseFeature]
    tasks: list[Task]
    eval_columns: list[str] = field(default_factory=list)
    encoders: object = field(default=None, compare=False, repr=False)
    """The fitted :class:`~mtl_train.data.encode.Encoder` (raw columns -> Table) of a
    file-based dataset, or None; kept in checkpoints so that eval/predict can encode new files."""
    sequence: list[SequenceFeature] = field(default_factory=list)

    def __post_init__(self) -> None:
        names = [t.name for t in self.tasks]
        if not names:
            raise ConfigError("dataset.tasks: at least one task is needed")
        if len(set(names)) != len(names):
            raise ConfigError(f"dataset.tasks: duplicate task names in {names}")
        features = {f.name for f in self.sparse} | {f.name for f in self.dense} | {f.name for f in self.sequence}
        all_features = [f.name for f in [*self.sparse, *self.dense, *self.sequence]]
        if len(all_features) != len(features):
            raise ConfigError(f"dataset: duplicate feature names in {all_features}")
        for t in self.tasks:
            if t.type not in TASK_TYPES:
                raise ConfigError(f"dataset.tasks.{t.name}.type: '{t.type}' is not one of {TASK_TYPES}")
            if t.parent is not None and t.parent not in names:
                raise ConfigError(f"dataset.tasks.{t.name}.parent: unknown task '{t.parent}'")
            if t.parent is not None and names.index(t.parent) > names.index(t.name):
                raise ConfigError(
                    f"dataset.tasks.{t.name}.parent: parent '{t.parent}' must be declared before '{t.name}' "
                    f"(tasks are listed in funnel order)"
                )
            if t.label in features:
                raise ConfigError(f"dataset: label column '{t.label}' of task '{t.name}' is also a feature (label leakage)")
        for f in [*self.sparse, *self.sequence]:
            if f.vocab_size <= NUM_RESERVED_IDS - 1:
                raise ConfigError(f"dataset: feature '{f.name}' has vocab_size {f.vocab_size}")
        for f in self.sequence:
            if f.max_len <= 0:
                raise ConfigError(f"dataset: sequence feature '{f.name}' has max_len {f.max_len}")
            if f.pooling not in POOLINGS:
                raise ConfigError(f"dataset: sequence feature '{f.name}': pooling '{f.pooling}' is not one of {POOLINGS}")

    @property
    def seq_width(self) -> int:
        """Columns of the ``seq`` block: the sum of the sequence features' ``max_len``."""
        return sum(f.max_len for f in self.sequence)

    @property
    def task_names(self) -> list[str]:
        return [t.name for t in self.tasks]

    def task_index(self, name: str) -> int:
        return self.task_names.index(name)


class Split(ABC):
    """One split of a dataset (train, val or test), whether held in memory or streamed: what
    the trainer, evaluation and the dataset checks use, so that none of them tests the type.

    Attributes:
        kind: ``"memory"`` or ``"stream"``; a training loader's data position is valid only
            for a loader of the same kind (see :class:`mtl_train.data.loader.LoaderPosition`).
    """

    kind: str = "memory"

    @abstractmethod
    def __len__(self) -> int:
        """Rows of the split."""

    @abstractmethod
    def batches(self, batch_size: int) -> Iterable[dict[str, torch.Tensor]]:
        """Every row once, in order, as batches of ``batch_size`` rows (the last may be
        shorter): how evaluation reads a split. A batch maps block name to tensor:
        ``sparse`` int64 [B, F_sparse], ``dense`` float32 [B, F_dense], ``labels`` float32
        [B, T], ``seq`` int64 [B, seq_width] when there are sequence features, and any
        evaluation-only columns float32 [B]."""

    @abstractmethod
    def loader(self, batch_size: int, shuffle: bool = True, seed: int = 0, rank: int = 0, world_size: int = 1,
               drop_last: bool = False):
        """The training loader of this split (a :class:`~mtl_train.data.loader.LoaderPosition`:
        ``set_epoch``, ``__iter__`` of batches as in :meth:`batches`, ``__len__``,
        ``state_dict``/``load_state_dict``)."""

    @abstractmethod
    def positives(self, tasks: list[Task]) -> dict[str, int]:
        """{task: rows whose label is 1} for each task of ``tasks`` (in schema order)."""

    @abstractmethod
    def funnel_violations(self, tasks: list[Task]) -> dict[str, int]:
        """{task: rows where the task is positive (label > 0) while its parent's label is 0}
        for each task of ``tasks`` (in schema order) that has a parent."""


@dataclass
class Table(Split):
    """One split held in memory as columnar tensors (no per-row Python objects).

    Attributes:
        sparse: int64 [N, F_sparse] ids, columns in schema order; 0 is null, 1 is out-of-vocabulary.
        dense: float32 [N, F_dense] normalised numeric features.
        labels: float32 [N, T] task labels in schema order; NaN marks a missing label.
        extra: evaluation-only columns (never features), each float32 [N].
        seq: int64 [N, schema.seq_width] padded id lists of the sequence features (see
            :class:`SequenceFeature`); None means no sequence feature (an [N, 0] block).
            Batches carry a ``"seq"`` entry only when the block has columns.
        weights: float32 [N, T] per-task row weights (>= 0; 1 for a task without a weight
            column), or None when no task has one. Batches carry ``"weights"`` only when set.
    """

    sparse: torch.Tensor
    dense: torch.Tensor
    labels: torch.Tensor
    extra: dict[str, torch.Tensor] = field(default_factory=dict)
    seq: torch.Tensor | None = None
    weights: torch.Tensor | None = None

    def __post_init__(self) -> None:
        n = self.labels.shape[0]
        if self.seq is None:
            self.seq = torch.zeros(n, 0, dtype=torch.int64)
        blocks = [("sparse", self.sparse), ("dense", self.dense), ("seq", self.seq), *self.extra.items()]
        if self.weights is not None:
            blocks.append(("weights", self.weights))
        for name, t in blocks:
            if t.shape[0] != n:
                raise ValueError(f"column block '{name}' has {t.shape[0]} rows, labels have {n}")
        if self.sparse.dtype != torch.int64 or self.seq.dtype != torch.int64:
            raise TypeError("sparse and seq ids must be int64")

    def __len__(self) -> int:
        return self.labels.shape[0]

    def take(self, index: torch.Tensor) -> dict[str, torch.Tensor]:
        """Rows ``index`` (int64 [B]) as a batch: a mapping of block name to tensor."""
        batch = {
            "sparse": self.sparse.index_select(0, index),
            "dense": self.dense.index_select(0, index),
            "labels": self.labels.index_select(0, index),
        }
        if self.seq.shape[1]:
            batch["seq"] = self.seq.index_select(0, index)
        if self.weights is not None:
            batch["weights"] = self.weights.index_select(0, index)
        for k, v in self.extra.items():
            batch[k] = v.index_select(0, index)
        return batch

    def slice(self, start: int, stop: int) -> dict[str, torch.Tensor]:
        """Contiguous rows [start, stop) as a batch (views, no copy)."""
        batch = {"sparse": self.sparse[start:stop], "dense": self.dense[start:stop], "labels": self.labels[start:stop]}
        if self.seq.shape[1]:
            batch["seq"] = self.seq[start:stop]
        if self.weights is not None:
            batch["weights"] = self.weights[start:stop]
        for k, v in self.extra.items():
            batch[k] = v[start:stop]
        return batch

    def subset(self, index: torch.Tensor) -> "Table":
        """A new table with rows ``index``."""
        b = self.take(index)
        seq, weights = b.pop("seq", None), b.pop("weights", None)
        return Table(b.pop("sparse"), b.pop("dense"), b.pop("labels"), b, seq, weights)

    def to(self, device: torch.device, pin: bool = False) -> "Table":
        """The same table with every tensor on ``device`` (``pin``: in page-locked host memory,
        for asynchronous copies to a GPU; see :mod:`mtl_train.train.placement`)."""
        def move(t: torch.Tensor) -> torch.Tensor:
            return t.pin_memory() if pin else t.to(device)

        return Table(move(self.sparse), move(self.dense), move(self.labels), {k: move(v) for k, v in self.extra.items()},
                     move(self.seq))

    def batches(self, batch_size: int) -> Iterable[dict[str, torch.Tensor]]:
        """Every row once, in order, as contiguous batches of ``batch_size`` (the last may be
        shorter): how evaluation reads a split."""
        for s in range(0, len(self), batch_size):
            yield self.slice(s, min(s + batch_size, len(self)))

    def loader(self, batch_size: int, shuffle: bool = True, seed: int = 0, rank: int = 0, world_size: int = 1,
               drop_last: bool = False):
        """An :class:`~mtl_train.data.loader.InMemoryLoader` over this table."""
        from mtl_train.data.loader import InMemoryLoader

        return InMemoryLoader(self, batch_size, shuffle=shuffle, seed=seed, drop_last=drop_last, rank=rank,
                              world_size=world_size)

    def positives(self, tasks: list[Task]) -> dict[str, int]:
        return {t.name: int((self.labels[:, k] == 1).sum()) for k, t in enumerate(tasks)}

    def funnel_violations(self, tasks: list[Task]) -> dict[str, int]:
        names = [t.name for t in tasks]
        return {t.name: int(((self.labels[:, k] > 0) & (self.labels[:, names.index(t.parent)] == 0)).sum())
                for k, t in enumerate(tasks) if t.parent is not None}


@dataclass
class DatasetBundle:
    """What a dataset loader returns: the schema plus train, val and test splits.

    Each split is a :class:`Split`: a :class:`Table` (in memory) or a streamed split (see
    :class:`mtl_train.data.stream.StreamSplit`).
    """

    schema: FeatureSchema
    train: Split
    val: Split
    test: Split
    info: dict = field(default_factory=dict)

    def splits(self) -> Iterable[tuple[str, Split]]:
        return [("train", self.train), ("val", self.val), ("test", self.test)]
